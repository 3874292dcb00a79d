"""megatron-core GPTModel -> MaxText Orbax checkpoint: bit-exact round trips, and MaxText's own restore reads it.

MaxText -> bridgec -> MaxText: the Flax-written checkpoints of
tests/runtime/flax_llama.py are imported (runtime/maxtext_import.py), exported
(runtime/maxtext_export.py) and compared leaf by leaf, bit for bit; one JAX
subprocess then restores the exports exactly as MaxText's load_parameters_path
does and reruns the Flax forward.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bridgec.runtime.init import shard
from bridgec.runtime.maxtext_export import ExportReport, export_maxtext, gather_full_params, unshard
from bridgec.runtime.maxtext_import import load_maxtext_weights
from bridgec.runtime.maxtext_layout import Dims
from bridgec.runtime.model import build_chunks, build_model, unwrap
from bridgec.runtime.models.gpt import GPTConfig
from bridgec.runtime.optim import build_optimizer
from bridgec.runtime.orbax_read import OrbaxItem
from tests.runtime import flax_llama
from tests.runtime.orbax_scripts import megatron_llama as ml

# (case, query_scaling, export dtype, zarr3)
ROUND_TRIPS = [
    ("scanned", "undo", "float32", True),
    ("unscanned", "keep", "float32", False),
    ("bf16", "undo", "bfloat16", True),
    ("tied_padded", "keep", "float32", True),
    ("llama31", "undo", "float32", False),
]


@pytest.fixture(scope="session")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return flax_llama.build_cases(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def exported(cases: Path, megatron_world1: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExportReport]:
    """Each case imported at TP=1 and exported again, in the layout it came in."""
    out = tmp_path_factory.mktemp("exported")
    layout = ml.single_process_layout()
    reports = {}
    for name, query_scaling, dtype, zarr3 in ROUND_TRIPS:
        config, data = ml.read_case(cases / name)
        rope = "interleaved" if config["rope_type"] == "llama3.1" else "rotate_half"
        chunks = build_chunks(ml.provider(config, tensor=1, pipeline=1, query_scaling=query_scaling), layout)
        report = load_maxtext_weights(
            chunks,
            path=str(cases / name / data["items"]),
            vocab_size=config["vocab_size"],
            tensor_parallel=1,
            tensor_rank=0,
            query_scaling=query_scaling,
            rope_layout=rope,
        )
        full = gather_full_params(chunks, tensor_group=None, pipeline_group=None, tied=config["tied"])
        assert full is not None
        reports[name] = export_maxtext(
            full.__getitem__,
            directory=out / name,
            step=0,
            dims=Dims.of(chunks[0], vocab_size=config["vocab_size"]),
            scanned=report.scanned,
            dtype=dtype,
            query_scaling=query_scaling,
            rope_layout=rope,
            zarr3=zarr3,
        )
    return reports


@pytest.mark.parametrize("name", [case[0] for case in ROUND_TRIPS])
def test_round_trip_is_bit_exact(cases: Path, exported: dict[str, ExportReport], name: str) -> None:
    _, data = ml.read_case(cases / name)
    original, back = OrbaxItem(cases / name / data["items"]), OrbaxItem(exported[name].items)
    weights = [leaf for leaf in original.names if leaf.startswith("params.")]
    assert sorted(back.names) == weights
    zarr3 = next(case[3] for case in ROUND_TRIPS if case[0] == name)
    assert (back.use_zarr3, back.use_ocdbt) == (zarr3, True)  # llama31 goes from zarr3 to zarr2
    for leaf in weights:
        assert back.info(leaf) == original.info(leaf), leaf
        assert back.read(leaf).tobytes() == original.read(leaf).tobytes(), leaf


def test_maxtext_restore_reads_the_exports(cases: Path, exported: dict[str, ExportReport]) -> None:
    """orbax Checkpointer + PyTreeCheckpointHandler restoring {"params": ...} (load_params_from_path), in JAX."""
    pairs = [(Path(exported[name].items), cases / name) for name in ("scanned", "bf16", "tied_padded")]
    results = flax_llama.restore_in_jax(pairs)
    for items, case in pairs:
        result = results[str(items)]
        assert result["mismatched"] == [], case.name
        assert result["logits_max_diff"] == 0.0, case.name
    assert results[str(pairs[1][0])]["dtypes"] == ["bfloat16"]


def test_step_layout_like_maxtext_converters(exported: dict[str, ExportReport]) -> None:
    items = Path(exported["scanned"].items)
    assert items.name == "items" and items.parent.name == "0"
    assert (items.parent / "_CHECKPOINT_METADATA").is_file()
    assert (items / "manifest.ocdbt").is_file() and (items / "_METADATA").is_file()


def test_export_refuses_an_existing_step(exported: dict[str, ExportReport]) -> None:
    step_dir = Path(exported["scanned"].items).parent
    with pytest.raises(FileExistsError):
        export_maxtext(
            lambda name: torch.zeros(1),
            directory=step_dir.parent,
            step=0,
            dims=Dims(
                model=GPTConfig(
                    num_layers=1,
                    hidden=4,
                    heads=1,
                    groups=1,
                    head_dim=4,
                    ffn=4,
                    vocab=4,
                    seq_length=4,
                    layernorm=False,
                    gated=True,
                    bias=False,
                    qk_norm=False,
                    tied=False,
                    learned_positions=False,
                ),
                vocab=4,
            ),
            scanned=True,
            dtype="float32",
            query_scaling="keep",
            rope_layout="rotate_half",
        )


@pytest.mark.parametrize("distributed", [False, True])
def test_mixed_precision_export_uses_the_fp32_main_params(
    cases: Path, megatron_world1: None, tmp_path: Path, distributed: bool
) -> None:
    """A bf16 model trains on fp32 main parameters: given the optimizer, export writes those, bit for bit."""
    config, data = ml.read_case(cases / "scanned")
    items = cases / "scanned" / data["items"]
    model = build_model(
        ml.provider(config, tensor=1, pipeline=1, query_scaling="keep", dtype="bf16"),
        layout=ml.single_process_layout(),
        init_scheme="megatron",
        seed=1,
        init_std=0.02,
        num_layers=config["num_layers"],
        tied_output=False,
        dtype="bf16",
        distributed_optimizer=distributed,
    )
    optimizer = build_optimizer(model, ml.adam_settings(data, dtype="bf16", distributed=distributed))
    chunks = [unwrap(chunk) for chunk in model]
    load_maxtext_weights(
        chunks,
        path=str(items),
        vocab_size=config["vocab_size"],
        tensor_parallel=1,
        tensor_rank=0,
        query_scaling="keep",
        rope_layout="rotate_half",
        optimizer=optimizer,
    )
    full = gather_full_params(chunks, tensor_group=None, pipeline_group=None, tied=False, optimizer=optimizer)
    rounded = gather_full_params(chunks, tensor_group=None, pipeline_group=None, tied=False)
    assert full is not None and rounded is not None
    assert any(not torch.equal(full[name], rounded[name]) for name in full)
    report = export_maxtext(
        full.__getitem__,
        directory=tmp_path,
        step=0,
        dims=Dims.of(chunks[0], vocab_size=config["vocab_size"]),
        scanned=True,
        dtype="float32",
        query_scaling="keep",
        rope_layout="rotate_half",
    )
    original, back = OrbaxItem(items), OrbaxItem(report.items)
    for leaf in (name for name in original.names if name.startswith("params.")):
        assert back.read(leaf).tobytes() == original.read(leaf).tobytes(), leaf


@pytest.mark.parametrize(("dim", "stride", "tensor"), [(0, 1, 2), (1, 1, 4), (0, 2, 2), (0, 2, 4)])
def test_unshard_inverts_init_shard(dim: int, stride: int, tensor: int) -> None:
    full = torch.arange(16 * 8, dtype=torch.float32).reshape(16, 8)
    pieces = [shard(full, axis=dim, stride=stride, tensor_parallel=tensor, tensor_rank=rank) for rank in range(tensor)]
    assert torch.equal(unshard(pieces, dim=dim, stride=stride), full)


@pytest.mark.parametrize("layout_name", ["tp2", "pp2"])
def test_export_from_two_ranks_is_bit_exact(
    cases: Path, tmp_path_factory: pytest.TempPathFactory, layout_name: str
) -> None:
    """Exported from two tensor-parallel ranks or two pipeline stages (gathered on rank 0) by orbax_scripts/parallel_import.py."""
    results = ml.run_parallel(cases, tmp_path_factory.mktemp("parallel"))
    for name in ("scanned", "unscanned"):
        assert results[0][layout_name][name]["export_mismatched"] == []
        assert results[0][layout_name][name]["export_leaves"] > 0
        assert "export_leaves" not in results[1][layout_name][name]


def test_dp2_bf16_export_gathers_the_distributed_main_params(
    cases: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    results = ml.run_parallel(cases, tmp_path_factory.mktemp("parallel"))
    assert results[0]["dp2"]["bf16_export"] == {"export_mismatched": []}
    assert results[1]["dp2"]["bf16_export"] == {}
