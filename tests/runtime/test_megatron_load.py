"""[init.checkpoint] format = "megatron": weights from a Megatron-LM torch_dist checkpoint, at another layout.

The checkpoint is written by tests/runtime/megatron_lm_checkpoint.py (megatron-core's
dist_checkpointing.save in Megatron-LM's structure) from a compiled script's model
at one process (TP1, PP1). A script at TP2 that starts from it must see the same
losses as the script whose weights were saved (fp32, <= 1e-6); a script of another
shape is refused before anything loads; damaged folders are named file by file.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from bridgec.runtime import megatron_load
from bridgec.runtime.errors import ExitCode, RunError
from tests.runtime import launch as runs

HERE = Path(__file__).resolve().parent


def spec(*, procs: int = 1, tensor: int = 1, hidden: int = 64, vocab: int = 128, init: str | None = None) -> str:
    text = f"""[run]
name = "megatron-in"
output_dir = "out"
[launch]
procs_per_node = {procs}
[model]
num_layers = 2
hidden_size = {hidden}
num_attention_heads = 4
vocab_size = {vocab}
make_vocab_size_divisible_by = 64
seq_length = 32
[parallel]
tensor = {tensor}
[batch]
global_batch_size = 8
micro_batch_size = 2
[train]
iters = 2
eval_interval = 2
eval_iters = 2
[optimizer]
lr = 1e-3
"""
    if init is not None:
        text += f'[init.checkpoint]\nformat = "megatron"\npath = "{init}"\n'
    return text


def compiled(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / runs.SPEC).write_text(text)
    from bridgec.compiler.cli import main as bridgec

    assert bridgec(["compile", str(folder / runs.SPEC), "-o", str(folder / runs.SCRIPT)]) == 0
    return folder


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TP1 script's initial weights saved as Megatron-LM checkpoint source/mlm (iteration 5); the same script run."""
    folder = compiled(tmp_path_factory.mktemp("megatron_source"), spec())
    written = subprocess.run(
        [*runs.command(folder)[:-1], str(HERE / "megatron_lm_checkpoint.py"), str(folder / runs.SCRIPT),
         str(folder / "mlm"), "5"],
        cwd=folder, env=runs.environment({}), capture_output=True, text=True, timeout=runs.HANG_GUARD_SECONDS,
    )  # fmt: skip
    assert written.returncode == 0, written.stdout[-3000:] + written.stderr[-3000:]
    reference = runs.launch(folder)
    assert reference.returncode == 0, reference.explain()
    return folder


def test_a_megatron_lm_checkpoint_loads_at_tp2_with_the_same_losses(source: Path, tmp_path: Path) -> None:
    folder = compiled(tmp_path, spec(procs=2, tensor=2, init=str(source / "mlm")))
    result = runs.launch(folder)
    assert result.returncode == 0, result.explain()
    assert f"init: weights from {source / 'mlm' / 'iter_0000005'} (saved at iteration 5)" in result.output
    for kind in ("train", "valid"):
        expected, got = runs.losses(source, kind), runs.losses(folder, kind)
        assert sorted(got) == sorted(expected) and expected
        assert all(abs(got[step] - expected[step]) <= 1e-6 for step in expected), (kind, got, expected)


def test_a_checkpoint_of_another_shape_is_refused_naming_each_difference(source: Path, tmp_path: Path) -> None:
    folder = compiled(tmp_path, spec(hidden=32, vocab=256, init=str(source / "mlm")))
    result = runs.launch(folder)
    assert runs.failed_with(result, ExitCode.CHECKPOINT_ERROR), result.explain()
    assert f"cannot start from {source / 'mlm' / 'iter_0000005'}; nothing was loaded:" in result.output
    assert "hidden_size: 64 in the checkpoint's args, 32 in this run" in result.output
    assert "vocab_size: 128 in the checkpoint's args, 256 in this run" in result.output
    assert "Traceback" not in result.output
    assert not (folder / "out" / "spec.metrics.jsonl").exists() or not runs.losses(folder)


def _copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "mlm"
    shutil.copytree(source / "mlm", target)
    return target / "iter_0000005"


def test_a_missing_common_pt_is_named(source: Path, tmp_path: Path) -> None:
    folder = _copy(source, tmp_path)
    (folder / "common.pt").unlink()
    with pytest.raises(RunError) as raised:
        megatron_load.read_common(megatron_load.iteration_folder(folder.parent))
    assert raised.value.code == ExitCode.CHECKPOINT_ERROR
    assert str(raised.value) == (
        f"{folder / 'common.pt'}: missing; {folder} is not a complete torch_dist checkpoint "
        "(an unfinished save, or another format)"
    )


def test_an_unknown_checkpoint_version_is_named(source: Path, tmp_path: Path) -> None:
    folder = _copy(source, tmp_path)
    common = torch.load(folder / "common.pt", weights_only=False)
    torch.save({**common, "checkpoint_version": 9.0}, folder / "common.pt")
    with pytest.raises(RunError) as raised:
        megatron_load.read_common(folder)
    assert str(raised.value) == (
        f"{folder / 'common.pt'}: checkpoint_version 9.0; this loader reads 3.0 (Megatron-LM's torch_dist checkpoints)"
    )


def test_a_truncated_distcp_is_named_with_its_sizes(source: Path, tmp_path: Path) -> None:
    folder = _copy(source, tmp_path)
    assert megatron_load.truncated_files(folder) == []
    shard = max(folder.glob("__*.distcp"), key=lambda path: path.stat().st_size)
    size = shard.stat().st_size
    with shard.open("r+b") as file:
        file.truncate(size // 2)
    [problem] = megatron_load.truncated_files(folder)
    assert problem == f"{shard}: {size // 2} bytes, the index reads up to byte {size} (truncated)"


def test_a_megatron_bridge_run_config_is_compared_with_the_model(source: Path, tmp_path: Path) -> None:
    folder = _copy(source, tmp_path)
    assert megatron_load.read_run_config(folder) is None  # a Megatron-LM checkpoint has none
    ours = megatron_load.args_view(torch.load(folder / "common.pt", weights_only=False)["args"])
    (folder / "run_config.yaml").write_text(
        "model:\n  num_layers: 2\n  hidden_size: 96\n  seq_length: 64\n  share_embeddings_and_output_weights: true\n"
        "  activation_func:\n    _target_: torch.nn.functional.gelu\ncheckpoint:\n  save_optim: true\n"
    )
    view = megatron_load.run_config_view(megatron_load.read_run_config(folder))
    assert view == {"num_layers": 2, "hidden_size": 96, "max_sequence_length": 64, "tied_output": True}
    assert megatron_load.differences(view, ours, "run_config.yaml") == [
        "hidden_size: 96 in run_config.yaml, 64 in this run",
        "max_sequence_length: 64 in run_config.yaml, 32 in this run",
    ]
    (folder / "run_config.yaml").write_text("model: [unclosed")
    with pytest.raises(RunError) as raised:
        megatron_load.read_run_config(folder)
    assert str(raised.value).startswith(f"{folder / 'run_config.yaml'} cannot be read (ParserError:")


def test_a_folder_that_is_no_megatron_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(RunError) as raised:
        megatron_load.iteration_folder(tmp_path)
    assert str(raised.value) == (
        f"{tmp_path}: not a Megatron-LM checkpoint folder (no latest_checkpointed_iteration.txt, "
        "and not an iter_NNNNNNN or release folder)"
    )
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("release\n")
    assert megatron_load.iteration_folder(tmp_path) == tmp_path / "release"
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("iter 5")
    with pytest.raises(RunError) as raised:
        megatron_load.iteration_folder(tmp_path)
    assert str(raised.value) == (
        f"{tmp_path / 'latest_checkpointed_iteration.txt'} should hold an iteration number or 'release', "
        "it holds 'iter 5'"
    )
