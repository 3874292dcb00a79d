"""MaxText checkpoints written by a Flax model with orbax -> megatron-core GPTModel: parity, reads, state, errors.

The checkpoints and the Flax reference logits/losses come from
tests/runtime/flax_llama.py (run once per session in a JAX subprocess). TP=1 runs
in this process; TP=2 and PP=2 run under torchrun (orbax_scripts/parallel_import.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.maxtext_import import load_maxtext_optimizer_state, load_maxtext_weights, read_maxtext_adam_state
from bridgec.runtime.maxtext_slots import main_slots
from bridgec.runtime.model import build_chunks, build_model, unwrap
from bridgec.runtime.optim import build_optimizer, build_scheduler
from bridgec.runtime.step import train_step
from tests.runtime import flax_llama
from tests.runtime.orbax_scripts import megatron_llama as ml

TOLERANCE = 1e-4


@pytest.fixture(scope="session")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return flax_llama.build_cases(tmp_path_factory.getbasetemp())


@pytest.fixture
def layout(megatron_world1: None) -> ml.Layout:
    return ml.single_process_layout()


def _case(cases: Path, name: str) -> tuple[dict, dict, str]:
    config, data = ml.read_case(cases / name)
    return config, data, str(cases / name / data["items"])


def _rope(config: dict) -> str:
    return "interleaved" if config["rope_type"] == "llama3.1" else "rotate_half"


def _chunks(layout: ml.Layout, config: dict, query_scaling: str) -> list[torch.nn.Module]:
    return build_chunks(ml.provider(config, tensor=1, pipeline=1, query_scaling=query_scaling), layout)


def _load(chunks: list, config: dict, path: str, query_scaling: str, **extra: Any) -> Any:
    return load_maxtext_weights(
        chunks,
        path=path,
        vocab_size=config["vocab_size"],
        tensor_parallel=1,
        tensor_rank=0,
        query_scaling=query_scaling,
        rope_layout=extra.pop("rope_layout", _rope(config)),
        **extra,
    )


def _max_logit_diff(cases: Path, name: str, chunk: torch.nn.Module, vocab: int) -> float:
    tokens = torch.from_numpy(np.load(cases / "tokens.npy").astype(np.int64)) % vocab
    logits = ml.logits(chunk, tokens)[..., :vocab].numpy()
    return float(np.abs(logits - np.load(cases / name / "logits.npy")).max())


@pytest.mark.parametrize(
    ("name", "query_scaling"),
    [
        ("scanned", "undo"),
        ("scanned", "keep"),
        ("unscanned", "undo"),
        ("tied_padded", "undo"),
        ("llama31", "keep"),
        ("bf16", "undo"),
    ],
)
def test_logits_match_flax_at_tp1(cases: Path, layout: ml.Layout, name: str, query_scaling: str) -> None:
    config, _, path = _case(cases, name)
    chunks = _chunks(layout, config, query_scaling)
    report = _load(chunks, config, path, query_scaling)
    diff = _max_logit_diff(cases, name, chunks[0], config["vocab_size"])
    print(f"{name} {query_scaling}: max |logit diff| = {diff:.2e}")
    assert diff <= TOLERANCE
    assert report.scanned == config["scanned"]
    assert report.padded_vocab_rows == ml.padded_vocab(config["vocab_size"], 1) - config["vocab_size"]


def test_rope_layout_is_not_a_no_op(cases: Path, layout: ml.Layout) -> None:
    """The llama3.1 checkpoint read as rotate-half gives visibly wrong logits: the permutation is what fixes them."""
    config, _, path = _case(cases, "llama31")
    chunks = _chunks(layout, config, "keep")
    _load(chunks, config, path, "keep", rope_layout="rotate_half")
    assert _max_logit_diff(cases, "llama31", chunks[0], config["vocab_size"]) > 1e-2


@pytest.mark.parametrize("query_scaling", ["undo", "keep"])
def test_bf16_leaves_arrive_bit_exact(cases: Path, layout: ml.Layout, query_scaling: str) -> None:
    """The bf16 checkpoint holds the fp32 case's values rounded to bf16; megatron gets exactly those values.

    (head_dim 16: undoing the query scale multiplies by 4, which is exact.)
    """
    config, _, fp32_path = _case(cases, "scanned")
    _, _, bf16_path = _case(cases, "bf16")
    exact, rounded = _chunks(layout, config, query_scaling), _chunks(layout, config, query_scaling)
    _load(exact, config, fp32_path, query_scaling)
    report = _load(rounded, config, bf16_path, query_scaling)
    assert report.dtypes == ("bfloat16",)
    for (name, a), (_, b) in zip(exact[0].named_parameters(), rounded[0].named_parameters(), strict=True):
        assert torch.equal(a.to(torch.bfloat16).float(), b), name


def _megatron_model(layout: ml.Layout, config: dict, *, query_scaling: str, dtype: str, distributed: bool) -> list:
    return build_model(
        ml.provider(config, tensor=1, pipeline=1, query_scaling=query_scaling, dtype=dtype),
        layout=layout,
        init_scheme="megatron",
        seed=1,
        init_std=0.02,
        num_layers=config["num_layers"],
        tied_output=config["tied"],
        dtype=dtype,
        distributed_optimizer=distributed,
    )


@pytest.mark.parametrize("distributed", [False, True])
def test_mixed_precision_main_params_get_the_fp32_values(cases: Path, layout: ml.Layout, distributed: bool) -> None:
    """bf16 model + fp32 main params: the model holds the bf16 rounding, the optimizer the exact fp32 weights."""
    config, data, path = _case(cases, "scanned")
    model = _megatron_model(layout, config, query_scaling="keep", dtype="bf16", distributed=distributed)
    optimizer = build_optimizer(model, ml.adam_settings(data, dtype="bf16", distributed=distributed))
    chunks = [unwrap(chunk) for chunk in model]
    _load(chunks, config, path, "keep", optimizer=optimizer)
    reference = _chunks(layout, config, "keep")
    _load(reference, config, path, "keep")
    exact = dict(reference[0].named_parameters())
    slots = main_slots(optimizer)
    for name, param in chunks[0].named_parameters():
        assert param.dtype == torch.bfloat16
        assert torch.equal(param, exact[name].to(torch.bfloat16)), name
        slot = slots[param]
        assert slot.main.dtype == torch.float32
        assert torch.equal(slot.main.reshape(-1), exact[name].reshape(-1)[slot.start : slot.end]), name


def _optimizer(builder: str, model: list, config: dict, data: dict, *, distributed: bool) -> tuple[Any, Any]:
    """megatron's AdamW (OptimizerParamScheduler) or runtime.optax_optim's OptaxAdamW (CountScheduler), constant lr."""
    settings = ml.adam_settings(data, dtype="fp32", distributed=distributed)
    if builder == "megatron":
        optimizer = build_optimizer(model, settings)
        return optimizer, lambda step: build_scheduler(
            optimizer,
            lr=settings.lr,
            min_lr=settings.min_lr,
            weight_decay=settings.weight_decay,
            schedule=ml.constant_schedule(settings.lr),
        )
    from bridgec.runtime.optax_optim import build_optax_optimizer
    from bridgec.runtime.schedules import CountScheduler, constant_schedule

    optimizer = build_optax_optimizer(
        model,
        lr=settings.lr,
        beta1=settings.rule.beta1,
        beta2=settings.rule.beta2,
        eps=settings.rule.eps,
        eps_root=0.0,
        weight_decay=settings.weight_decay,
        decay_exclude=["scale"],
        gated_mlp=True,
        scan_layers=config["scanned"],
        tied_output=config["tied"],
        path_style="linen",
        dtype="fp32",
        distributed_optimizer=distributed,
    )
    # The imported count is the number of updates done: the schedule continues from there.
    return optimizer, lambda step: CountScheduler(
        optimizer, constant_schedule(settings.lr), weight_decay=settings.weight_decay, num_steps=step
    )


@pytest.mark.parametrize(
    ("name", "distributed", "builder"),
    [
        ("adamw_resume", False, "megatron"),
        ("adam_pax_resume", True, "megatron"),
        ("adamw_resume", True, "optax"),
        ("adam_pax_resume", False, "optax"),
    ],
)
def test_resume_from_jax_optimizer_state_matches_optax(
    cases: Path, layout: ml.Layout, name: str, distributed: bool, builder: str
) -> None:
    """JAX trained 3 steps and saved (params, opt_state, step); megatron continues 4 steps like optax does.

    optax.adamw keeps raw moments (opt_state.0.mu/nu/count); adam_pax keeps
    bias-corrected ones (opt_state.mu/nu/count). Both continue in megatron's
    AdamW (decoupled decay, 1-D norms excluded as the JAX side's mask does) and
    in runtime.optax_optim's OptaxAdamW (adamw_mask "scale").
    """
    config, data, path = _case(cases, name)
    model = _megatron_model(layout, config, query_scaling="keep", dtype="fp32", distributed=distributed)
    optimizer, make_scheduler = _optimizer(builder, model, config, data, distributed=distributed)
    chunks = [unwrap(chunk) for chunk in model]
    common = dict(
        path=path,
        vocab_size=config["vocab_size"],
        tensor_parallel=1,
        tensor_rank=0,
        query_scaling="keep",
        rope_layout="rotate_half",
    )
    _load(chunks, config, path, "keep", optimizer=optimizer)
    step = load_maxtext_optimizer_state(
        chunks,
        optimizer,
        opt_type=data["optimizer"],
        adam_beta1=data["betas"][0],
        adam_beta2=data["betas"][1],
        **common,
    )
    assert step == data["steps_before"]
    scheduler = make_scheduler(step)
    batches = torch.from_numpy(np.load(cases / name / "batches.npy").astype(np.int64))
    expected = np.load(cases / name / "losses.npy")[step:]
    losses = []
    for batch in batches[step:]:
        data_iterator = iter([{"tokens": batch[:, :-1], "labels": batch[:, 1:]}])
        result = train_step(
            ml.forward_step,
            [data_iterator],
            model,
            optimizer,
            scheduler,
            num_microbatches=1,
            micro_batch_size=2,
            seq_length=16,
            clip_grad=0.0,
        )
        losses.append(result.loss)
    diff = np.abs(np.array(losses) - expected)
    print(f"{name} {builder}: per-step |loss - optax loss| after resume = {[f'{d:.1e}' for d in diff]}")
    assert diff.max() <= TOLERANCE


def test_adam_pax_moments_are_un_bias_corrected(cases: Path, layout: ml.Layout) -> None:
    """Same JAX run, two optimizers: adam_pax's m^ (1 - b1^t) equals optax.adamw's m (within fp32 rounding).

    Moments that nearly cancel over the 3 steps carry relative rounding of up to
    ~1e-3, so the tolerance is relative to each tensor's largest entry.
    """
    pax_config, pax, pax_path = _case(cases, "adam_pax_resume")
    _, _, adamw_path = _case(cases, "adamw_resume")
    chunks = _chunks(layout, pax_config, "keep")
    common = dict(
        vocab_size=pax_config["vocab_size"],
        tensor_parallel=1,
        tensor_rank=0,
        query_scaling="keep",
        rope_layout="rotate_half",
        adam_beta1=pax["betas"][0],
        adam_beta2=pax["betas"][1],
    )
    from_pax = read_maxtext_adam_state(chunks, path=pax_path, opt_type="adam_pax", **common)
    from_adamw = read_maxtext_adam_state(chunks, path=adamw_path, opt_type="adamw", **common)
    assert from_pax.step == from_adamw.step == 3
    for param in from_pax.moments:
        for key in ("exp_avg", "exp_avg_sq"):
            reference = from_adamw.moments[param][key]
            torch.testing.assert_close(
                from_pax.moments[param][key], reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max())
            )


# --------------------------------------------------------------------------------------------
# Mismatches: every difference listed, nothing loaded.


def _snapshot(chunks: list) -> list[torch.Tensor]:
    return [param.detach().clone() for chunk in chunks for param in chunk.parameters()]


def _refused(chunks: list, config: dict, path: str, query_scaling: str = "undo") -> str:
    before = _snapshot(chunks)
    with pytest.raises(RunError) as raised:
        _load(chunks, config, path, query_scaling)
    assert raised.value.code == ExitCode.CHECKPOINT_ERROR
    assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(chunks), strict=True)), "something was loaded"
    return raised.value.message


def test_wrong_model_dims_list_every_leaf(cases: Path, layout: ml.Layout) -> None:
    config, _, path = _case(cases, "scanned")
    wrong = {**config, "mlp_dim": 128, "num_layers": 2}
    message = _refused(_chunks(layout, wrong, "undo"), wrong, path)
    assert "does not fit this model; nothing was loaded. 9 difference(s)" in message
    assert (
        "leaf params.params.decoder.layers.mlp.wi_0.kernel has shape [64, 4, 96]; the model needs [64, 2, 128]"
        in message
    )
    assert (
        "leaf params.params.decoder.layers.self_attention.query.kernel has shape [64, 4, 4, 16]; the model needs [64, 2, 4, 16]"
        in message
    )
    assert "ffn_hidden_size=128" in message


def test_missing_and_unexpected_leaves_are_listed(cases: Path, layout: ml.Layout) -> None:
    config, _, path = _case(cases, "missing_leaf")
    message = _refused(_chunks(layout, config, "undo"), config, path)
    assert "missing leaf params.params.decoder.layers.mlp.wi_1.kernel (the model needs shape [64, 4, 96])" in message
    assert "unexpected leaf params.params.decoder.layers.mlp.wi_2.kernel" in message


def test_extra_unscanned_layers_are_listed(cases: Path, layout: ml.Layout) -> None:
    config, _, path = _case(cases, "unscanned")
    fewer = {**config, "num_layers": 2}
    message = _refused(_chunks(layout, fewer, "undo"), fewer, path)
    assert "unexpected leaf params.params.decoder.layers_3.mlp.wo.kernel" in message
    assert "18 difference(s)" in message  # 9 leaves in each of layers_2 and layers_3


def test_untied_model_on_tied_checkpoint(cases: Path, layout: ml.Layout) -> None:
    config, _, path = _case(cases, "tied_padded")
    untied = {**config, "tied": False}
    message = _refused(_chunks(layout, untied, "undo"), untied, path)
    assert "missing leaf params.params.decoder.logits_dense.kernel (the model needs shape [64, 100])" in message


def test_non_maxtext_tree(cases: Path, layout: ml.Layout) -> None:
    config, _, _ = _case(cases, "scanned")
    path = str(cases / "synthetic" / "zarr3_ocdbt" / "ckpt" / "1" / "items")
    message = _refused(_chunks(layout, config, "undo"), config, path)
    assert "is not a MaxText decoder checkpoint: found no decoder layers under params.params" in message
    assert "params.params.dense" in message


def test_keep_needs_softmax_scale_one(cases: Path, layout: ml.Layout) -> None:
    config, _, path = _case(cases, "scanned")
    chunks = _chunks(layout, config, "undo")  # default softmax scale
    message = _refused(chunks, config, path, query_scaling="keep")
    assert "query_scaling 'keep' needs TransformerConfig(softmax_scale=1.0)" in message


# --------------------------------------------------------------------------------------------
# TP=2 and PP=2 (torchrun, two processes).


@pytest.fixture(scope="module")
def parallel(cases: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    return ml.run_parallel(cases, tmp_path_factory.mktemp("parallel"))


@pytest.mark.parametrize("layout_name", ["tp2", "pp2"])
@pytest.mark.parametrize("name", ["scanned", "unscanned"])
def test_logits_match_flax_in_parallel(parallel: dict[int, dict], layout_name: str, name: str) -> None:
    holders = [
        parallel[rank][layout_name][name] for rank in (0, 1) if "max_logit_diff" in parallel[rank][layout_name][name]
    ]
    assert len(holders) == (2 if layout_name == "tp2" else 1)
    for result in holders:
        print(f"{layout_name} {name}: max |logit diff| = {result['max_logit_diff']:.2e}")
        assert result["max_logit_diff"] <= TOLERANCE
    assert not parallel[0]["jax_imported"] and not parallel[1]["jax_imported"]


_TP_SPLIT = ("query", "key", "value", "out", "wi_0", "wi_1", "wo", "token_embedder", "logits_dense")


@pytest.mark.parametrize("name", ["scanned", "unscanned"])
def test_tp2_rank_reads_half_of_each_split_leaf(parallel: dict[int, dict], name: str) -> None:
    for rank in (0, 1):
        result = parallel[rank]["tp2"][name]
        for leaf, nbytes in result["per_leaf"].items():
            module = leaf.split(".")[-2]
            share = 0.5 if module in _TP_SPLIT else 1.0
            assert nbytes == share * result["leaf_bytes"][leaf], leaf


def test_tp2_disk_reads_follow_the_checkpoint_chunks(parallel: dict[int, dict]) -> None:
    """The scanned case was saved from two JAX devices split like TP (one chunk per shard): a rank reads about half."""
    for rank in (0, 1):
        sharded, whole = parallel[rank]["tp2"]["scanned"], parallel[rank]["tp2"]["unscanned"]
        print(
            f"rank {rank}: file bytes read {sharded['file_bytes_read']} of {sharded['data_bytes']} (TP-chunked), "
            f"{whole['file_bytes_read']} of {whole['data_bytes']} (one chunk per leaf)"
        )
        assert sharded["file_bytes_read"] <= 0.6 * sharded["data_bytes"]


def test_pp2_stage_reads_only_its_layers(parallel: dict[int, dict]) -> None:
    first, last = parallel[0]["pp2"]["unscanned"], parallel[1]["pp2"]["unscanned"]
    assert {leaf.split(".")[3] for leaf in first["per_leaf"] if ".layers_" in leaf} == {"layers_0", "layers_1"}
    assert {leaf.split(".")[3] for leaf in last["per_leaf"] if ".layers_" in leaf} == {"layers_2", "layers_3"}
    assert not any("logits_dense" in leaf for leaf in first["per_leaf"])
    assert not any("token_embedder" in leaf for leaf in last["per_leaf"])
    stacked = parallel[0]["pp2"]["scanned"]
    query = "params.params.decoder.layers.self_attention.query.kernel"
    assert stacked["per_leaf"][query] == stacked["leaf_bytes"][query] / 2


def test_dp2_distributed_optimizer_resumes_like_optax(parallel: dict[int, dict]) -> None:
    """Each data-parallel rank keeps only its range of the Adam state (one parameter is split between them)."""
    for rank in (0, 1):
        resume = parallel[rank]["dp2"]["resume"]
        diff = np.abs(np.array(resume["losses"]) - np.array(resume["expected"]))
        print(f"dp2 rank {rank}: per-step |loss - optax loss| = {[f'{d:.1e}' for d in diff]}")
        assert diff.max() <= TOLERANCE
        assert resume["params_with_partial_range"] >= 1
        assert 0.45 < resume["owned_fraction"] < 0.55
