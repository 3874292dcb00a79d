"""``bridgec new``: every preset, at a few GPU counts, writes a spec that validates and compiles."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bridgec.compiler import cli, presets
from bridgec.compiler.compile import compile_spec

COUNTS = [
    pytest.param(preset, gpus, nodes, id=f"{preset.name}-{gpus}gpus-{nodes}nodes")
    for preset in presets.CATALOGUE.values()
    for gpus, nodes in ((preset.min_gpus, 1), (4 * preset.min_gpus, 4), (24 * preset.min_gpus, 3))
]


def test_the_catalogue_has_the_families_and_both_variants() -> None:
    names = set(presets.CATALOGUE)
    for family in ("llama3-8b", "llama3-70b", "qwen3-8b", "mixtral-8x7b", "gpt3-125m", "gpt3-175b"):
        assert {f"{family}-pretrain", f"{family}-finetune"} <= names


@pytest.mark.parametrize(("preset", "gpus", "nodes"), COUNTS)
def test_every_preset_validates_and_compiles(
    preset: presets.Preset, gpus: int, nodes: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.toml"
    assert cli.main(["new", preset.name, "--gpus", str(gpus), "--nodes", str(nodes), "-o", str(spec)]) == 0
    capsys.readouterr()
    text = spec.read_text()
    data = tomllib.loads(text)
    assert data["launch"]["nodes"] * data["launch"]["procs_per_node"] == gpus
    parallel = data["parallel"]
    replica = parallel["tensor"] * parallel.get("pipeline", 1)
    assert data["batch"]["global_batch_size"] % (gpus // replica) == 0
    result = compile_spec(
        text, spec_name="spec.toml", spec_path=spec, output_path=tmp_path / "run.py", files=cli.DiskFiles()
    )
    assert result.source is not None, result.diagnostics


def test_finetune_says_what_it_needs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.toml"
    assert cli.main(["new", "llama3-8b-finetune", "--gpus", "8", "-o", str(spec)]) == 0
    text = spec.read_text()
    assert "# [init.checkpoint]" in text
    assert tomllib.loads(text)["optimizer"]["lr"] < presets.CATALOGUE["llama3-8b-pretrain"].shape.lr


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["new", "--list"]) == 0
    out = capsys.readouterr().out
    assert "llama3-70b-pretrain            32  Llama 3 70B pretraining" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lama3-8b-pretrain", "--gpus", "8"], "no preset 'lama3-8b-pretrain'; did you mean 'llama3-8b-pretrain'?"),
        (["llama3-70b-pretrain", "--gpus", "16"], "--gpus 16 is not a multiple of 32"),
        (["llama3-70b-pretrain", "--gpus", "32", "--nodes", "8"], "4 GPUs per node (--gpus 32 / --nodes 8)"),
        (["mixtral-8x7b-pretrain", "--gpus", "8"], "use a multiple of 16 GPUs"),
        (["gpt3-125m-pretrain", "--gpus", "3", "--nodes", "2"], "every node needs the same number of GPUs"),
    ],
)
def test_what_a_preset_cannot_do_is_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.toml"
    assert cli.main(["new", *args, "-o", str(spec)]) == 2
    assert message in capsys.readouterr().err
    assert not spec.exists()
