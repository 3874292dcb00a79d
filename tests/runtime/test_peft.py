"""[peft] against Hugging Face peft: LoRA and DoRA adapters saved by peft, loaded through [peft] adapter, trained
10 steps in fp32 on the same batches with Adam; per-step losses within 1e-5 of peft's at TP1, TP2 and PP2, and an
adapters-only checkpoint after step 5 that a fresh build resumes bit for bit.

One torchrun launch per layout (tests/runtime/peft_worker.py) trains both methods and, on rank 0, the peft
reference. The same launch checks that the base weights stay frozen (not moved, no gradient, no DDP buffer, no
optimizer state) and that the trainable parameter count is the adapter table's (the script's TRAINABLE_PARAMETERS).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import attrs
import pytest
import torch
import transformers

from bridgec.compiler.cli import main as bridgec
from tests import warm
from tests.runtime.hf_models import families, save
from tests.runtime.launch import HANG_GUARD_SECONDS

REPO = Path(__file__).resolve().parents[2]
RANK, ALPHA = 4, 8.0
HF_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGETS = ["linear_q", "linear_k", "linear_v", "linear_proj", "linear_fc1_gate", "linear_fc1_up", "linear_fc2"]
FUSED = ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
"""megatron-core's own linears: one adapter on the fused q/k/v rows (per key/value group) and [gate; up] rows."""
LAYOUTS = {"tp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2)}
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    llama = next(family for family in families() if family.name == "llama")
    return save(llama, tmp_path_factory.mktemp("peft") / "model")


def make_adapter(base: Path, folder: Path, *, dora: bool, shared: bool = False, rank: int = RANK) -> Path:
    """A peft adapter with random (not zero) B, so it changes the output from the first step.

    ``shared``: q/k/v and gate/up share their A, as one adapter on the fused linear_qkv and linear_fc1 does.
    """
    import peft
    import transformers

    torch.manual_seed(3)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=ALPHA * rank / RANK,
        target_modules=HF_TARGETS,
        use_dora=dora,
        init_lora_weights=False,
        lora_dropout=0.0,
    )
    adapted = peft.get_peft_model(model, config)
    if shared:
        with torch.no_grad():
            for layer in adapted.base_model.model.model.layers:
                for first, others in (
                    (layer.self_attn.q_proj, ("k_proj", "v_proj")),
                    (layer.mlp.gate_proj, ("up_proj",)),
                ):
                    for name in others:
                        parent = layer.self_attn if name in ("k_proj", "v_proj") else layer.mlp
                        getattr(parent, name).lora_A["default"].weight.copy_(first.lora_A["default"].weight)
    adapted.save_pretrained(folder)
    return folder


def write_spec(
    base: Path,
    spec: Path,
    *,
    method: str,
    adapter: Path,
    tensor: int,
    pipeline: int,
    targets: list[str],
    checkpoint: str | None = None,
) -> Path:
    """``bridgec import hf``, then the training and [peft] tables; compiled next to it."""
    procs = tensor * pipeline
    assert bridgec(["import", "hf", str(base), "--devices", str(procs), "--device", "cpu", "-o", str(spec)]) == 0
    text = re.sub(r"^seq_length = .*$", "seq_length = 16", spec.read_text(encoding="utf-8"), flags=re.M)
    head, _, tail = text.partition("\n[batch]")
    tail = re.sub(r"^\[(train|optimizer|scheduler)\][^\[]*", "", "[batch]" + tail, flags=re.M)
    tail = re.sub(r"^\[batch\][^\[]*", "", tail, flags=re.M)
    listed = ", ".join(f'"{t}"' for t in targets)
    text = (
        head
        + f"\n[parallel]\ntensor = {tensor}\npipeline = {pipeline}\n\n"
        + "[batch]\nglobal_batch_size = 4\nmicro_batch_size = 2\n\n"
        + '[train]\nmode = "finetune"\niters = 10\n\n'
        + '[optimizer]\nname = "adam"\nlr = 0.01\nweight_decay = 0.0\nclip_grad = 0.0\n\n'
        + '[scheduler]\ndecay = "constant"\n\n'
        + f'[peft]\nmethod = "{method}"\ntarget_modules = [{listed}]\nrank = {RANK}\nalpha = {ALPHA}\n'
        + f'adapter = "{adapter}"\n\n'
        + (f'[checkpoint]\ndir = "{checkpoint}"\n\n' if checkpoint else "")
        + tail
    )
    spec.write_text(text, encoding="utf-8")
    script = spec.with_suffix(".py")
    assert bridgec(["compile", str(spec), "-o", str(script)]) == 0
    return script


@pytest.fixture(scope="module")
def adapters(base: Path) -> dict[str, Path]:
    made = {
        method: make_adapter(base, base.parent / f"adapter_{method}", dora=method == "dora")
        for method in ("lora", "dora")
    }
    return {**made, "fused": make_adapter(base, base.parent / "adapter_fused", dora=False, shared=True)}


@pytest.fixture(scope="module")
def refused(base: Path) -> dict[str, Path]:
    """Adapters that do not fit the run's: rank 8 (same scaling), and one of a base with a wider MLP."""
    llama = next(family for family in families() if family.name == "llama")
    sizes = {key: getattr(llama.config, key) for key in ("vocab_size", "hidden_size", "num_hidden_layers")}
    heads = {key: getattr(llama.config, key) for key in ("num_attention_heads", "num_key_value_heads")}
    wider = transformers.LlamaConfig(**sizes, **heads, intermediate_size=128, tie_word_embeddings=False)
    other = save(attrs.evolve(llama, config=wider), base.parent / "wider")
    return {
        "refused_rank": make_adapter(base, base.parent / "adapter_r8", dora=False, rank=8),
        "refused_base": make_adapter(other, base.parent / "adapter_wider", dora=False),
    }


def _launch(
    base: Path, adapters: dict[str, Path], root: Path, layout: str, refused: dict[str, Path] | None = None
) -> dict[int, dict]:
    tensor, pipeline = LAYOUTS[layout]
    procs = tensor * pipeline
    triples = []
    for method, adapter in adapters.items():
        script = write_spec(
            base,
            root / f"{method}.toml",
            method="dora" if method == "dora" else "lora",
            adapter=adapter,
            tensor=tensor,
            pipeline=pipeline,
            targets=FUSED if method == "fused" else TARGETS,
            checkpoint=None if method == "fused" else f"ckpt_{method}",
        )
        triples.append(f"{method}={script}={adapter}")
    lora = triples[0].split("=")[1]
    triples += [f"{name}={lora}={adapter}" for name, adapter in (refused or {}).items()]
    out = root / "out"
    worker = ["-m", "tests.runtime.peft_worker", str(out), str(base), *triples]
    done = warm.torchrun(procs, worker, cwd=REPO, timeout=HANG_GUARD_SECONDS)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return {rank: json.loads((out / f"rank{rank}.json").read_text()) for rank in range(procs)}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_losses_match_hugging_face_peft(
    base: Path, adapters: dict[str, Path], refused: dict[str, Path], tmp_path: Path, layout: str
) -> None:
    ranks = _launch(base, adapters, tmp_path, layout, refused if layout == "tp1" else None)
    if layout == "tp1":
        # An adapter that does not fit: exit 6 (CHECKPOINT_ERROR), every difference named, nothing loaded.
        rank8 = ranks[0]["refused_rank"]["message"]
        assert rank8.startswith("6 untouched=True PEFT adapter "), rank8
        assert (
            "1 difference(s):\n  - r = 8, lora_alpha = 16 (scaling 2); this run's adapters: rank 4, scaling 2\n"
            in rank8
        )
        wider = ranks[0]["refused_base"]["message"]
        assert wider.startswith("6 untouched=True "), wider
        assert "base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight: (128, 4), expected (96, 4)" in wider
    for method in ("lora", "dora"):
        found = ranks[0][method]
        reference = found["reference"]
        assert len(found["losses"]) == len(reference) == 10
        differences = [abs(a - b) for a, b in zip(found["losses"], reference, strict=True)]
        assert max(differences) <= TOLERANCE, (method, found["losses"], reference)
        assert reference[-1] < reference[0] - 0.1, reference  # it trains: the check is not between two flat lines
        for rank in ranks.values():
            mine = rank[method]
            assert mine["frozen_moved"] == [] and mine["frozen_with_grads"] == [], mine
            assert mine["in_optimizer"] == mine["trainable"] == mine["grad_buffer"], mine
        # The adapter table's count is the whole model's; each rank holds its tensor/pipeline share of it.
        if layout == "tp1":
            assert found["trainable"] == found["table_trainable"]
        # [checkpoint]: saved after step 5; a fresh build (base and peft adapter first, as main() on resume) that
        # loads it runs steps 6-10 to the same losses bit for bit. Only adapters and their Adam moments are in it.
        assert found["resumed_losses"] == found["losses"][5:], found
        keys = found["checkpoint_keys"]
        tensors = [key for key in keys if not key.startswith("rng_state/")]
        assert tensors and all("peft.layers." in key for key in tensors), [
            k for k in tensors if "peft.layers." not in k
        ]
        assert "peft.layers.1.linear_fc1_gate.lora_b" in keys  # the model's own entry, besides the moments
        assert "optimizer.state.exp_avg_sq.peft.layers.0.linear_q.lora_a" in keys
        # bridgec convert megatron-to-hf (its runtime, in the launch) of the step-10 checkpoint: the PEFT folder
        # loads with peft.PeftModel.from_pretrained onto the base and gives peft's trained model's logits, as does
        # the merged folder with transformers alone; the adapter tensors are peft's, by the same names.
        assert found["adapter_keys_equal"] == 1.0, found
        assert found["adapter_tensor_diff"] <= 1e-4, found
        assert found["adapter_logits_diff"] <= 1e-4 and found["merged_logits_diff"] <= 1e-4, found
        assert found["logits_scale"] > 1.0
    # Fused targets: peft trains q/k/v's A matrices apart from step 2 on, so only the first step's loss (the
    # loaded adapter's forward, rows interleaved per group and split [gate; up] per rank) compares.
    fused = ranks[0]["fused"]
    assert abs(fused["losses"][0] - fused["reference"][0]) <= TOLERANCE, fused
    assert abs(fused["losses"][0] - ranks[0]["lora"]["losses"][0]) > 1e-3  # another adapter: another loss
