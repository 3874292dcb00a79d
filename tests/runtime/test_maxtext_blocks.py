"""MaxText's mistral, qwen3, mixtral, gemma and gpt3 decoder blocks: their checkpoints into megatron-core and back.

The checkpoints and the reference logits come from tests/runtime/flax_llama.py's
``make-blocks`` (a Flax model written from MaxText's layers: mistral is llama2's
layer with its own RoPE base; qwen3 adds per-head RMSNorm of q and k before RoPE
and scales queries at run time, head_dim != emb / heads; gemma names its norms
``pre_self_attention_norm`` and ``pre_ffw_norm`` and uses tanh GeGLU; gpt3 has a
fused biased qkv_proj, LayerNorm with biases applied as 1 + scale, learned
positions, a biased tanh-gelu MLP and tied logits; mixtral is llama2's attention with MaxText's MoE block,
4 experts, top 2), two layers, scanned and
unscanned, every norm scale and bias perturbed, and per block ten optax.adamw
steps (full state saved after three); and a llama2 block trained in MaxText's
default precision (dtype bfloat16, weight_dtype float32) and in float32. TP=1 runs
in this process; TP=2 (and EP=2 for mixtral) in one torchrun launch
(orbax_scripts/parallel_import.py), which also exports there and compares bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bridgec.runtime.errors import RunError
from bridgec.runtime.maxtext_export import ExportReport, export_maxtext, gather_full_params
from bridgec.runtime.maxtext_import import load_maxtext_optimizer_state, load_maxtext_weights
from bridgec.runtime.maxtext_layout import Dims, check_model
from bridgec.runtime.model import build_chunks, build_model, unwrap
from bridgec.runtime.optim import build_optimizer, build_scheduler
from bridgec.runtime.orbax_read import OrbaxItem
from bridgec.runtime.step import train_step
from tests.runtime import flax_llama
from tests.runtime.orbax_scripts import megatron_llama as ml

TOLERANCE = 1e-4
CASES = [f"{block}_{kind}" for block in flax_llama.BLOCKS for kind in ("scanned", "unscanned")]
"""The forward cases; ``<block>_curve`` holds each block's training run."""
NAMING = {"mistral": "llama2", "qwen3": "llama2", "mixtral": "llama2", "gemma": "gemma", "gpt3": "gpt3"}
"""Whose leaf names each block's checkpoint uses (mistral, qwen3 and mixtral name theirs as llama2 does)."""
MOE_CASES = [name for name in CASES if flax_llama.BLOCKS[name.split("_")[0]].num_experts]


@pytest.fixture(scope="session")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return flax_llama.build_cases(tmp_path_factory.getbasetemp(), "make-blocks")


@pytest.fixture(scope="module")
def imported(cases: Path, megatron_world1: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Each case imported at TP=1 ("keep": the query kernel as stored, as MaxText trains it), then exported."""
    out = tmp_path_factory.mktemp("blocks_exported")
    layout = ml.single_process_layout()
    tokens = np.load(cases / "tokens.npy").astype(np.int64)
    results: dict[str, dict] = {}
    for name in CASES:
        config, data = ml.read_case(cases / name)
        chunks = build_chunks(ml.provider(config, tensor=1, pipeline=1, query_scaling="keep"), layout)
        report = load_maxtext_weights(
            chunks,
            path=str(cases / name / data["items"]),
            vocab_size=config["vocab_size"],
            tensor_parallel=1,
            tensor_rank=0,
            query_scaling="keep",
            rope_layout="rotate_half",
        )
        logits = ml.logits(chunks[0], torch.from_numpy(tokens))[..., : config["vocab_size"]].numpy()
        full = gather_full_params(chunks, tensor_group=None, pipeline_group=None, tied=config["tied"])
        assert full is not None
        exported: ExportReport = export_maxtext(
            full.__getitem__,
            directory=out / name,
            step=0,
            dims=Dims.of(chunks[0], vocab_size=config["vocab_size"], block=config["block"]),
            scanned=report.scanned,
            dtype="float32",
            query_scaling="keep",
            rope_layout="rotate_half",
            zarr3=report.zarr3,
        )
        results[name] = {
            "report": report,
            "max_logit_diff": float(np.abs(logits - np.load(cases / name / "logits.npy")).max()),
            "exported": exported,
        }
    return results


@pytest.mark.parametrize("name", CASES)
def test_logits_match_maxtext_at_tp1(imported: dict[str, dict], cases: Path, name: str) -> None:
    config, _ = ml.read_case(cases / name)
    result = imported[name]
    print(f"{name} TP1: max |logit diff| = {result['max_logit_diff']:.2e}")
    assert result["max_logit_diff"] <= TOLERANCE
    assert result["report"].scanned == config["scanned"]
    assert result["report"].block == NAMING[config["block"]]


@pytest.mark.parametrize("name", CASES)
def test_export_round_trip_is_bit_exact(imported: dict[str, dict], cases: Path, name: str) -> None:
    _, data = ml.read_case(cases / name)
    original, back = OrbaxItem(cases / name / data["items"]), OrbaxItem(imported[name]["exported"].items)
    weights = [leaf for leaf in original.names if leaf.startswith("params.")]
    assert sorted(back.names) == weights
    for leaf in weights:
        assert back.info(leaf) == original.info(leaf), leaf
        assert back.read(leaf).tobytes() == original.read(leaf).tobytes(), leaf


def test_qwen3_norms_are_per_head_and_perturbed(cases: Path) -> None:
    """The q/k norm scales are head_dim wide and not all 1, so a dropped or swapped norm moves the logits."""
    _, data = ml.read_case(cases / "qwen3_scanned")
    item = OrbaxItem(cases / "qwen3_scanned" / data["items"])
    query = item.read("params.params.decoder.layers.self_attention.query_norm.scale")
    key = item.read("params.params.decoder.layers.self_attention.key_norm.scale")
    assert query.shape == key.shape == (24, 2)  # [head_dim, layers]
    assert not np.array_equal(query, key) and np.abs(query - 1).max() > 0.05


def test_an_unmapped_block_is_refused_by_name(megatron_world1: None) -> None:
    config = flax_llama.dataclasses.asdict(flax_llama.BLOCKS["mistral"])
    chunks = build_chunks(ml.provider(config, tensor=1, pipeline=1, query_scaling="keep"), ml.single_process_layout())
    with pytest.raises(RunError, match="decoder block 'gemma2' is not mapped; bridgec reads and writes llama2, "):
        Dims.of(chunks[0], vocab_size=128, block="gemma2")


def test_a_block_that_does_not_fit_the_model_is_refused_naming_each_difference(megatron_world1: None) -> None:
    """gpt3's checkpoints fit LayerNorm models with biases and learned positions only, and the others the reverse
    (checked on import, and before ``megatron-to-orbax --decoder-block`` writes anything)."""
    layout = ml.single_process_layout()
    built = {}
    for block in ("gpt3", "mistral"):
        config = flax_llama.dataclasses.asdict(flax_llama.BLOCKS[block])
        built[block] = build_chunks(ml.provider(config, tensor=1, pipeline=1, query_scaling="keep"), layout)[0]
    gpt3_model, mistral_model = built["gpt3"], built["mistral"]
    as_llama = check_model(Dims.of(gpt3_model, vocab_size=128, block="mistral"), gpt3_model, query_scaling="keep")
    assert as_llama == [
        "model normalization is LayerNorm; MaxText Llama-family blocks use RMSNorm",
        "model has linear biases (add_bias_linear); MaxText Llama-family checkpoints have none",
        "model position embedding is learned_absolute; MaxText Llama-family uses rope",
        "query_scaling 'keep' needs TransformerConfig(softmax_scale=1.0) (the query kernel carries 1/sqrt(head_dim)); "
        "model has softmax_scale=None",
    ]
    as_gpt3 = check_model(Dims.of(mistral_model, vocab_size=128, block="gpt3"), mistral_model, query_scaling="keep")
    assert as_gpt3 == [
        "model normalization is RMSNorm; MaxText's gpt3 block uses LayerNorm",
        "model has no linear biases (add_bias_linear); MaxText's gpt3 checkpoints have them",
        "model position embedding is rope; MaxText's gpt3 block learns absolute positions (trainable_position_size)",
        "model MLP is gated; MaxText's gpt3 MLP is one wi with one activation",
        "model has 2 query groups for 4 heads; gpt3 needs as many as heads",
        "MaxText's gpt3 block divides the query by sqrt(head_dim) at run time (its kernel is not pre-scaled): the "
        "model needs megatron's default softmax scale; it has softmax_scale=1.0",
    ]


# --------------------------------------------------------------------------------------------
# Training: ten steps from the imported weights, and a resume from JAX's full state after three.


def _curve(cases: Path, name: str, *, resume: bool, dtype: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """megatron's losses and optax's for the block's curve case: from step 0, or from the state after 3 updates.

    ``dtype`` "bf16": megatron's bf16 model with fp32 main weights in the optimizer.
    """
    config, data = ml.read_case(cases / name)
    layout = ml.single_process_layout()
    model = build_model(
        ml.provider(config, tensor=1, pipeline=1, query_scaling="keep", dtype=dtype),
        layout=layout,
        init_scheme="megatron",
        seed=1,
        init_std=0.02,
        num_layers=config["num_layers"],
        tied_output=config["tied"],
        dtype=dtype,
        distributed_optimizer=False,
    )
    settings = ml.adam_settings(data, dtype=dtype, distributed=False)
    optimizer = build_optimizer(model, settings)
    chunks = [unwrap(chunk) for chunk in model]
    common = dict(
        path=str(cases / name / (data["items"] if resume else "init/0/items")),
        vocab_size=config["vocab_size"],
        tensor_parallel=1,
        tensor_rank=0,
        query_scaling="keep",
        rope_layout="rotate_half",
    )
    load_maxtext_weights(chunks, optimizer=optimizer, **common)
    step = 0
    if resume:
        step = load_maxtext_optimizer_state(
            chunks, optimizer, opt_type="adamw", adam_beta1=data["betas"][0], adam_beta2=data["betas"][1], **common
        )
    scheduler = build_scheduler(
        optimizer,
        lr=settings.lr,
        min_lr=settings.min_lr,
        weight_decay=settings.weight_decay,
        schedule=ml.constant_schedule(settings.lr),
    )
    batches = torch.from_numpy(np.load(cases / name / "batches.npy").astype(np.int64))
    losses = []
    for batch in batches[step:]:
        result = train_step(
            ml.forward_step,
            [iter([{"tokens": batch[:, :-1], "labels": batch[:, 1:]}])],
            model,
            optimizer,
            scheduler,
            num_microbatches=1,
            micro_batch_size=2,
            seq_length=16,
            clip_grad=0.0,
        )
        losses.append(result.loss)
    return np.array(losses), np.load(cases / name / "losses.npy")[step:]


@pytest.mark.parametrize("resume", [False, True], ids=["from_step_0", "resume_after_3"])
@pytest.mark.parametrize("block", list(flax_llama.BLOCKS))
def test_training_curve_matches_optax(cases: Path, megatron_world1: None, block: str, resume: bool) -> None:
    """optax.adamw in JAX vs megatron's Adam (decoupled decay, 1-D norm scales excluded on both sides), fp32."""
    losses, expected = _curve(cases, f"{block}_curve", resume=resume)
    assert len(losses) == (7 if resume else 10)
    diff = np.abs(losses - expected)
    print(f"{block} {'resume' if resume else 'curve'}: max per-step |loss - optax loss| = {diff.max():.1e}")
    assert diff.max() <= TOLERANCE


def test_bf16_curve_is_within_bf16_noise_of_maxtext_s(cases: Path, megatron_world1: None) -> None:
    """MaxText's default precision (dtype bfloat16, weight_dtype float32) as megatron's bf16 with fp32 main weights.

    The two bf16 programs round in different places (megatron keeps bf16 weight copies, MaxText casts its float32
    weights at each use; the norms, softmax and reductions differ), so they agree to bf16 noise, not to float32
    rounding. The noise N is measured on the JAX side: the largest per-step distance between the bf16 run and the
    same run in float32. Two programs that are each within N of the float32 run are within 2N of each other, so the
    bound is 2N (measured: megatron's bf16 within 8.0e-3 of JAX's bf16 over ten steps, N = 8.2e-3, losses ~5).
    """
    losses, expected = _curve(cases, "llama2_bfloat16_curve", resume=False, dtype="bf16")
    fp32 = np.load(cases / "llama2_float32_curve" / "losses.npy")
    diff, noise = np.abs(losses - expected), np.abs(expected - fp32)
    print(f"bf16: per-step |megatron bf16 - JAX bf16| = {[f'{d:.1e}' for d in diff]}")
    print(f"bf16: per-step |JAX bf16 - JAX fp32| = {[f'{d:.1e}' for d in noise]}")
    assert len(losses) == 10
    assert diff.max() <= 2 * noise.max()


# --------------------------------------------------------------------------------------------
# TP=2 (one torchrun launch for every block).


@pytest.fixture(scope="module")
def parallel(cases: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    out = tmp_path_factory.mktemp("blocks_parallel")
    return ml.run_parallel(cases, out, "--layouts", "tp2", "ep2", "--query-scaling", "keep", "--cases", *CASES)


@pytest.mark.parametrize("name", CASES)
def test_logits_match_maxtext_at_tp2_and_export_is_bit_exact(parallel: dict[int, dict], name: str) -> None:
    for rank in (0, 1):
        result = parallel[rank]["tp2"][name]
        print(f"{name} TP2 rank {rank}: max |logit diff| = {result['max_logit_diff']:.2e}")
        assert result["max_logit_diff"] <= TOLERANCE
    assert parallel[0]["tp2"][name]["export_mismatched"] == []
    assert parallel[0]["tp2"][name]["export_leaves"] > 0


@pytest.mark.parametrize("name", MOE_CASES)
def test_mixtral_at_ep2_reads_its_experts_matches_maxtext_and_exports_bit_exact(
    parallel: dict[int, dict], cases: Path, name: str
) -> None:
    """Each expert-parallel rank reads half the experts of each stacked expert leaf; the export gathers them."""
    _, data = ml.read_case(cases / name)
    item = OrbaxItem(cases / name / data["items"])
    for rank in (0, 1):
        result = parallel[rank]["ep2"][name]
        print(f"{name} EP2 rank {rank}: max |logit diff| = {result['max_logit_diff']:.2e}")
        assert result["max_logit_diff"] <= TOLERANCE
        experts = [leaf for leaf in result["per_leaf"] if leaf.split(".")[-1] in ("wi_0", "wi_1", "wo")]
        assert len(experts) == 3 * (1 if "_scanned" in name else 2)
        for leaf in experts:
            assert result["per_leaf"][leaf] == item.info(leaf).nbytes // 2, leaf
    assert parallel[0]["ep2"][name]["export_mismatched"] == []
    assert parallel[0]["ep2"][name]["export_leaves"] > 0


def test_moe_models_fit_mixtral_s_routing_only(megatron_world1: None) -> None:
    """A mixtral checkpoint needs megatron's MoE to route as MaxText's does; a dense block's checkpoint has no
    experts at all (checked on import, and before ``megatron-to-orbax`` writes anything)."""
    config = flax_llama.dataclasses.asdict(flax_llama.BLOCKS["mixtral"])
    chunk = build_chunks(ml.provider(config, tensor=1, pipeline=1, query_scaling="keep"), ml.single_process_layout())[0]
    assert check_model(Dims.of(chunk, vocab_size=128, block="mixtral"), chunk, query_scaling="keep") == []
    assert check_model(Dims.of(chunk, vocab_size=128, block="gemma"), chunk, query_scaling="keep") == [
        "model has MoE layers (4 experts); MaxText's gemma block is dense"
    ]
    chunk.config.moe_router_pre_softmax = True
    chunk.config.moe_aux_loss_coeff = 0.01
    assert check_model(Dims.of(chunk, vocab_size=128, block="mixtral"), chunk, query_scaling="keep") == [
        "model has moe_router_pre_softmax=True; mixtral's MoE needs False (top-k of the router logits first, "
        "then the softmax over those k)",
        "model has moe_aux_loss_coeff=0.01; mixtral's MoE needs 0.0 (no load-balancing loss "
        "(load_balance_loss_weight 0))",
    ]


@pytest.mark.parametrize("block", sorted({name.rsplit("_", 1)[0] for name in MOE_CASES}))
def test_mixtral_curve_at_ep2_matches_optax(parallel: dict[int, dict], block: str) -> None:
    """Ten steps with the experts split over two expert-parallel ranks (each rank one sequence of the batch)."""
    for rank in (0, 1):
        curve = parallel[rank]["ep2"]["curves"][block]
        diff = np.abs(np.array(curve["losses"]) - np.array(curve["expected"]))
        print(f"{block} EP2 rank {rank}: max per-step |loss - optax loss| = {diff.max():.1e}")
        assert len(curve["losses"]) == 10
        assert diff.max() <= TOLERANCE


# --------------------------------------------------------------------------------------------
# The compiled script: [init.checkpoint] from a mixtral checkpoint, experts split over expert-parallel ranks.

_MIXTRAL_SPEC = """
[run]
name = "mixtral"
seed = 7

[launch]
procs_per_node = {procs}

[model]
num_layers = 2
hidden_size = 64
num_attention_heads = 4
num_query_groups = 2
head_dim = 16
ffn_hidden_size = 96
vocab_size = 128
make_vocab_size_divisible_by = 1
seq_length = 16
normalization = "rmsnorm"
activation = "swiglu"
position_embedding = "rope"
rotary_base = 1000000
query_scaling = "initial_weights"
tie_embeddings = false
add_bias_linear = false
num_experts = 4
moe_router_topk = 2

[init.checkpoint]
format = "orbax"
path = "{items}"

[parallel]
expert = {expert}

[batch]
global_batch_size = 2
micro_batch_size = 1

[train]
iters = 3

[optimizer]
lr = 3e-3
"""


def test_compiled_script_starts_from_a_mixtral_checkpoint_alike_at_ep1_and_ep2(cases: Path, tmp_path: Path) -> None:
    """Each expert-parallel rank of the compiled script reads its own experts: its losses are the one-process run's
    (a rank reading another's experts, or all of them, would change the first loss or fail the load)."""
    from tests.e2e.harness import compile_to, launch

    items = cases / "mixtral_curve" / "init" / "0" / "items"
    runs = []
    for procs, expert in ((1, 1), (2, 2)):
        script = compile_to(tmp_path / f"ep{expert}", _MIXTRAL_SPEC.format(procs=procs, expert=expert, items=items))
        result = launch(script, procs)
        assert result.returncode == 0, result.explain()
        runs.append(result.train_losses("out/mixtral"))
    print(f"mixtral from Orbax, EP1 vs EP2 losses: {runs}")
    assert len(runs[0]) == 3 and max(abs(a - b) for a, b in zip(*runs, strict=True)) <= 1e-5
