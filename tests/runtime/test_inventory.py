"""The GPT parameter inventory (runtime/models/gpt.py) against real megatron-core GPTModels.

For every golden and example spec, on TP2, PP2 (and PP2 x virtual 2 when the layers divide, EP2 for MoE),
the inventory built from the spec (compiler/derive.py gpt_config) must list exactly what each rank's chunks
hold: local names, local shapes and megatron's tensor-parallel split (partition_dim, partition_stride).
The models are built by the scripts bridgec compiles for these layouts, in one torchrun launch of 2
processes (tests/runtime/inventory_worker.py). transformer_engine layer specs cannot be built without a
GPU (and transformer-engine must not be installed here), so TE specs are compiled with the local layer
spec: the table's transformer_engine names (norms fused into linear_qkv/linear_fc1) are not checked
against a real model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bridgec.compiler import derive
from bridgec.compiler.cli import main as bridgec
from bridgec.compiler.load import load
from bridgec.runtime.models import gpt
from bridgec.runtime.optim import no_decay
from tests.e2e.harness import launch
from tests.runtime import inventory_worker

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted([*ROOT.glob("tests/golden/good/*/spec.toml"), *ROOT.glob("examples/*/spec.toml")])


def _tables(spec_path: Path) -> dict[str, Any]:
    """The spec's tables with its ``extends`` chain applied (as bridgec compiles it)."""
    from bridgec.compiler.cli import DiskFiles
    from bridgec.compiler.compose import compose

    composed = compose(spec_path.read_text(), spec_path.name, spec_path.parent, DiskFiles())
    assert composed.raw is not None, composed.diagnostics
    return composed.raw


def _toml(tables: dict[str, dict[str, Any]]) -> str:
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _layouts(model: dict[str, Any]) -> list[dict[str, Any]]:
    # bridgec refuses MoE with tensor parallelism on the local layer spec (no sequence parallelism).
    layouts = [] if model.get("num_experts") else [{"tensor": 2, "pipeline": 1, "virtual": None, "expert": 1}]
    if model["num_layers"] % 2 == 0:
        layouts.append({"tensor": 1, "pipeline": 2, "virtual": None, "expert": 1})
    if model["num_layers"] % 4 == 0:
        layouts.append({"tensor": 1, "pipeline": 2, "virtual": 2, "expert": 1})
    if model.get("num_experts"):
        layouts.append({"tensor": 1, "pipeline": 1, "virtual": None, "expert": 2})
    return layouts


def _variant(spec_path: Path, layout: dict[str, Any], folder: Path) -> Path:
    """The spec's [model] (local layer spec) in a 2-process run with ``layout``, compiled by bridgec."""
    model = {**_tables(spec_path)["model"], "transformer_impl": "local"}
    parallel = {"tensor": layout["tensor"], "pipeline": layout["pipeline"], "expert": layout["expert"]}
    if layout["virtual"]:
        parallel["virtual_pipeline"] = layout["virtual"]
    folder.mkdir(parents=True)
    (folder / "spec.toml").write_text(_toml({
        "run": {"name": "inventory"},
        "launch": {"procs_per_node": 2},
        "model": model,
        "parallel": parallel,
        "batch": {"global_batch_size": 4, "micro_batch_size": 1},
        "train": {"iters": 1},
        "optimizer": {"lr": 1e-3},
    }))  # fmt: skip
    code = bridgec(["compile", str(folder / "spec.toml"), "-o", str(folder / "run.py")])
    assert code == 0, f"bridgec compile {folder / 'spec.toml'} exited {code}"
    return folder


def _expected(folder: Path, layout: dict[str, Any], pipeline_rank: int, expert_rank: int) -> list[list[list[Any]]]:
    spec = load((folder / "spec.toml").read_text(), "spec.toml").spec
    assert spec is not None
    config = derive.gpt_config(spec)
    chunks = gpt.rank_parameters(
        config, tensor=layout["tensor"], pipeline=layout["pipeline"], virtual=layout["virtual"],
        expert=layout["expert"], pipeline_rank=pipeline_rank, expert_rank=expert_rank,
    )  # fmt: skip
    return [
        [[p.local_name, list(p.local_shape), [p.split.axis, p.stride] if p.split else None] for p in chunk]
        for chunk in chunks
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, tuple[Path, dict[str, Any]]], dict[int, Any]]:
    root = tmp_path_factory.mktemp("inventory")
    cases: dict[str, tuple[Path, dict[str, Any]]] = {}
    for spec_path in SPECS:
        model = _tables(spec_path)["model"]
        for layout in _layouts(model):
            case = f"{spec_path.parent.name}-tp{layout['tensor']}-pp{layout['pipeline']}-vp{layout['virtual']}-ep{layout['expert']}"
            cases[case] = (_variant(spec_path, layout, root / case), layout)
    listing = [{"id": case, "script": str(folder / "run.py"), **layout} for case, (folder, layout) in cases.items()]
    (root / "cases.json").write_text(json.dumps(listing))
    done = launch(Path(inventory_worker.__file__), 2, args=(str(root / "cases.json"), str(root)))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return cases, {rank: json.loads((root / f"rank{rank}.json").read_text()) for rank in (0, 1)}


def test_every_spec_is_covered(built: tuple[dict[str, Any], dict[int, Any]]) -> None:
    cases, _ = built
    names = {case.split("-tp")[0] for case in cases}
    assert names == {path.parent.name for path in SPECS}
    assert any("-vp2-" in case for case in cases) and any(case.endswith("-ep2") for case in cases)


def test_inventory_matches_named_parameters_on_every_rank(built: tuple[dict[str, Any], dict[int, Any]]) -> None:
    cases, ranks = built
    for case, (folder, layout) in cases.items():
        for rank, found in ranks.items():
            real = found[case]
            expected = _expected(folder, layout, real["pipeline_rank"], real["expert_rank"])
            assert real["chunks"] == expected, f"{case} rank {rank}"


def test_whole_model_names_are_global() -> None:
    """One rank holding everything: local names are the global names (no tied copy, no local expert numbers)."""
    config = gpt.GPTConfig(num_layers=2, hidden=8, heads=2, groups=1, head_dim=4, ffn=16, vocab=32, seq_length=4,
                           layernorm=False, gated=True, bias=False, qk_norm=False, tied=True,
                           learned_positions=False, num_experts=2)  # fmt: skip
    names = [p.name for p in gpt.parameters(config)]
    assert "decoder.layers.1.mlp.experts.1.linear_fc2.weight" in names
    assert all(not p.tied_copy for p in gpt.parameters(config))
    assert gpt.find(config, "decoder.layers.1.mlp.router.weight").shape == (2, 8)
    with pytest.raises(KeyError, match="decoder.layers.2.mlp.router.weight: the model has 2 layers"):
        gpt.find(config, "decoder.layers.2.mlp.router.weight")


def test_decay_rule_is_megatrons() -> None:
    """The table's decay column says what megatron semantics do (runtime.optim.no_decay: biases and 1-D)."""
    config = gpt.GPTConfig(num_layers=1, hidden=8, heads=2, groups=2, head_dim=4, ffn=16, vocab=32, seq_length=4,
                           layernorm=True, gated=False, bias=True, qk_norm=True, tied=False,
                           learned_positions=True)  # fmt: skip
    for parameter in gpt.parameters(config):
        expected = gpt.Decay.NO_DECAY if no_decay(parameter.name, len(parameter.shape)) else gpt.Decay.DECAY
        assert parameter.entry.decay is expected, parameter.name
