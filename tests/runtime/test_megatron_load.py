"""[init.checkpoint] format = "megatron": weights from a Megatron-LM torch_dist checkpoint, at another layout.

The checkpoint is written by tests/runtime/megatron_lm_checkpoint.py (megatron-core's
dist_checkpointing.save in Megatron-LM's structure) from a compiled script's model
at one process (TP1, PP1). A script at TP2 that starts from it must see the same
losses as the script whose weights were saved (fp32, <= 1e-6); a script of another
shape is refused before anything loads; damaged folders are named file by file.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
import torch

from bridgec.runtime import megatron_load
from bridgec.runtime.errors import ExitCode, RunError
from tests import warm
from tests.runtime import launch as runs

HERE = Path(__file__).resolve().parent


def spec(
    *,
    procs: int = 1,
    tensor: int = 1,
    hidden: int = 64,
    vocab: int = 128,
    init: str | None = None,
    iters: int = 2,
    extra: str = "",
    optimizer_state: bool = False,
) -> str:
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
iters = {iters}
eval_interval = 2
eval_iters = 2
[optimizer]
lr = 1e-3
{extra}"""
    if init is not None:
        text += f'[init.checkpoint]\nformat = "megatron"\npath = "{init}"\n'
        text += "optimizer_state = true\n" if optimizer_state else ""
    return text


def compiled(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / runs.SPEC).write_text(text)
    from bridgec.compiler.cli import main as bridgec

    assert bridgec(["compile", str(folder / runs.SPEC), "-o", str(folder / runs.SCRIPT)]) == 0
    return folder


def write_megatron_lm(folder: Path, iteration: int) -> None:
    """folder/mlm: the Megatron-LM checkpoint tests/runtime/megatron_lm_checkpoint.py writes from folder's script."""
    procs = tomllib.loads((folder / runs.SPEC).read_text(encoding="utf-8"))["launch"]["procs_per_node"]
    writer = [str(HERE / "megatron_lm_checkpoint.py"), str(folder / runs.SCRIPT), str(folder / "mlm"), str(iteration)]
    written = warm.torchrun(procs, writer, cwd=folder, timeout=runs.HANG_GUARD_SECONDS)
    assert written.returncode == 0, written.stdout[-3000:] + written.stderr[-3000:]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TP1 script's initial weights saved as Megatron-LM checkpoint source/mlm (iteration 5); the same script run."""
    folder = compiled(tmp_path_factory.mktemp("megatron_source"), spec())
    write_megatron_lm(folder, 5)
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


def test_fp32_weights_start_a_bf16_run_cast_on_load(source: Path, tmp_path: Path) -> None:
    """Weights alone are cast to the run's dtype (megatron-core's load rounds to nearest); the losses are the fp32
    run's within bf16's resolution (2^-8 relative per value; the bound allows the losses' accumulated error)."""
    folder = compiled(
        tmp_path, spec(procs=2, tensor=2, init=str(source / "mlm"), extra='[precision]\ndtype = "bf16"\n')
    )
    result = runs.launch(folder)
    assert result.returncode == 0, result.explain()
    assert (
        f"{source / 'mlm' / 'iter_0000005'}: weights stored as float32 -> bfloat16 (this run's dtype), cast on load"
        in (result.output)
    )
    expected, got = runs.losses(source), runs.losses(folder)
    assert sorted(got) == sorted(expected)
    assert all(abs(got[step] - expected[step]) <= 0.02 * expected[step] for step in expected), (got, expected)


def test_a_checkpoint_of_another_shape_is_refused_naming_each_difference(source: Path, tmp_path: Path) -> None:
    folder = compiled(tmp_path, spec(hidden=32, vocab=256, init=str(source / "mlm")))
    result = runs.launch(folder)
    assert runs.failed_with(result, ExitCode.CHECKPOINT_ERROR), result.explain()
    assert f"cannot start from {source / 'mlm' / 'iter_0000005'}; nothing was loaded:" in result.output
    assert "hidden_size: 64 in the checkpoint's args, 32 in this run" in result.output
    assert "vocab_size: 128 in the checkpoint's args, 256 in this run" in result.output
    assert "Traceback" not in result.output
    assert not (folder / "out" / "spec.metrics.jsonl").exists() or not runs.losses(folder)


SCHEDULE = "[scheduler]\nwarmup_iters = 1\n"
"""Warmup, then cosine decay over 4 updates: the learning rate differs at every step."""
TRAINED = SCHEDULE + '[checkpoint]\ndir = "ckpt"\nsave_interval = 2\n'
"""4 updates at TP1, saved every 2."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TP1 run of 4 updates (the reference), and its step-2 state saved as Megatron-LM checkpoint trained/mlm."""
    folder = compiled(tmp_path_factory.mktemp("megatron_trained"), spec(iters=4, extra=TRAINED))
    reference = runs.launch(folder)
    assert reference.returncode == 0, reference.explain()
    write_megatron_lm(folder, 2)
    return folder


def test_megatron_lm_optimizer_state_continues_at_tp2_as_at_tp1(trained: Path, tmp_path: Path) -> None:
    continued = spec(procs=2, tensor=2, iters=4, extra=SCHEDULE, init=str(trained / "mlm"), optimizer_state=True)
    folder = compiled(tmp_path, continued)
    result = runs.launch(folder)
    assert result.returncode == 0, result.explain()
    assert (
        f"init: weights and optimizer state from {trained / 'mlm' / 'iter_0000002'} (continuing after iteration 2)"
        in result.output
    )
    expected = {record["step"]: record for record in runs.metrics(trained) if record["kind"] == "train"}
    got = {record["step"]: record for record in runs.metrics(folder) if record["kind"] == "train"}
    assert sorted(got) == [3, 4]  # the step count continues
    for step in (3, 4):
        assert abs(got[step]["loss"] - expected[step]["loss"]) <= 1e-6, (step, got[step], expected[step])
        assert got[step]["lr"] == expected[step]["lr"], (step, got[step]["lr"], expected[step]["lr"])
    assert expected[3]["lr"] != expected[2]["lr"]  # the schedule moves, so a restarted one would show
    valid_expected, valid_got = runs.losses(trained, "valid"), runs.losses(folder, "valid")
    assert abs(valid_got[4] - valid_expected[4]) <= 1e-6


def test_optimizer_state_from_a_checkpoint_without_one_is_refused(source: Path, tmp_path: Path) -> None:
    folder = compiled(tmp_path, spec(init=str(source / "mlm"), optimizer_state=True))
    result = runs.launch(folder)
    assert runs.failed_with(result, ExitCode.CHECKPOINT_ERROR), result.explain()
    common = source / "mlm" / "iter_0000005" / "common.pt"
    assert (
        f"{common}: no optimizer state or scheduler (saved with --no-save-optim?); optimizer_state = true needs both"
        in result.output
    )
    assert "Traceback" not in result.output


def test_a_plain_optimizer_state_into_the_distributed_optimizer_is_refused(trained: Path, tmp_path: Path) -> None:
    distributed = "[parallel]\ndistributed_optimizer = true\n"
    text = spec(procs=2, iters=4, init=str(trained / "mlm"), optimizer_state=True).replace("[parallel]\n", distributed)
    folder = compiled(tmp_path, text)
    result = runs.launch(folder)
    assert runs.failed_with(result, ExitCode.CHECKPOINT_ERROR), result.explain()
    assert (
        f"{trained / 'mlm' / 'iter_0000002'}: the checkpoint holds a plain (not distributed) optimizer's state; "
        "this run uses the distributed optimizer (set parallel.distributed_optimizer = false to continue it)"
        in result.output
    )
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
        "and not an iter_NNNNNNN or release folder) nor a bridgec one (no latest and no complete iter_NNNNNNN inside)"
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
