"""The compiled program trains like MaxText in JAX, step for step, and its checkpoints go both ways.

One setup (tests/e2e/jax_curve/case.py): a tiny MaxText-layout Llama (2 layers,
GQA, SwiGLU, RMSNorm, RoPE, query kernel pre-scaled), optax.adamw with eps_root
and an adamw_mask, clip_by_global_norm, MaxText's cosine schedule with warmup,
MaxText's loss with z-loss, fp32, dropout 0. The JAX side is a Flax + optax
loop written from MaxText's train step (jax_curve/jax_reference.py), run in one
long-lived JAX process; the bridgec side is the compiled script under torchrun.

* Both start from the same Orbax checkpoint (step 0, params only, written by
  the JAX side) and train on the same token batches: the compiled script's own
  sampler output, dumped to .npz (jax_curve/dump_batches.py).
* Per-step losses of the compiled program (metrics.jsonl) match JAX's within
  1e-4 at TP=1 and TP=2, for 20 steps.
* The JAX loop saves its whole state after 10 updates; a spec with
  ``[init.checkpoint] optimizer_state = true`` continues from it, and so does
  a script resuming a checkpoint made by ``bridgec convert orbax-to-megatron``:
  steps 11-20 match JAX's.
* ``bridgec convert megatron-to-orbax`` of the trained checkpoint, restored by
  Orbax the way MaxText's load_parameters_path does, holds the compiled
  program's final weights bit for bit.
"""

from __future__ import annotations

import functools
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest

from bridgec.compiler.cli import main as bridgec
from tests.e2e.harness import HANG_GUARD_SECONDS, Launch, compile_to, launch
from tests.e2e.jax_curve import case

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data" / "tiny.jsonl"
TOLERANCE = 1e-4
INIT_ITEMS = "jax/init/0/items"
STATE_ITEMS = f"jax/state/{case.SAVE_STEP}/items"


class JaxWorker:
    """tests/e2e/jax_curve/jax_reference.py in a subprocess: one JSON request per line, one RESULT line back."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.jax_curve.jax_reference"],
            cwd=REPO,
            env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
        )

    def send(self, **request: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request, default=str) + "\n")
        self.process.stdin.flush()

    def receive(self) -> dict[str, Any]:
        """The next RESULT line (hang guard: HANG_GUARD_SECONDS)."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], deadline - time.monotonic())
            if not ready:
                break
            line = self.process.stdout.readline()
            if not line:
                pytest.fail(f"the JAX worker exited ({self.process.poll()}):\n{self.log.read_text()[-4000:]}")
            if line.startswith("RESULT "):
                return json.loads(line.removeprefix("RESULT "))
        pytest.fail(f"the JAX worker gave no answer in {HANG_GUARD_SECONDS} s:\n{self.log.read_text()[-4000:]}")

    def call(self, **request: Any) -> dict[str, Any]:
        self.send(**request)
        return self.receive()

    def close(self) -> None:
        if self.process.poll() is None:
            self.send(command="quit")
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log_file.close()


class Curve:
    """The shared folder, and the JAX loop's results once they are needed (JAX trains while torchrun runs)."""

    def __init__(self, folder: Path, worker: JaxWorker) -> None:
        self.folder = folder
        self.worker = worker

    @functools.cached_property
    def reference(self) -> dict[str, Any]:
        """The JAX loop's losses, raw grad_norms and learning_rates per step (index 0 = step 1)."""
        reference = self.worker.receive()  # the answer to the train request the fixture sent
        assert reference["items"] == str(self.folder / STATE_ITEMS)
        return reference

    def restore(self, items: Path, out: Path) -> dict[str, Any]:
        """Orbax's restore of ``items`` as MaxText's load_parameters_path does it, leaves written to ``out``."""
        _ = self.reference  # answers come in request order
        return self.worker.call(command="restore", items=items, out=out)


@pytest.fixture(scope="module")
def curve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Curve]:
    folder = tmp_path_factory.mktemp("jax_curve")
    worker = JaxWorker(folder / "jax_worker.log")
    try:
        worker.send(command="init", out=folder / "jax" / "init")  # JAX starts while the data is built
        assert bridgec(["data", "build", "--input", str(DATA), "--output", str(folder / "tiny")]) == 0
        assert worker.receive()["items"] == str(folder / INIT_ITEMS)
        spec = case.spec_text("tp1", init_checkpoint=INIT_ITEMS)
        script = compile_to(folder, spec, name="tp1.toml", output="run_tp1.py")
        dumped = subprocess.run(
            [sys.executable, "-m", "tests.e2e.jax_curve.dump_batches", str(script), str(folder / "batches.npz")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=HANG_GUARD_SECONDS,
        )
        assert dumped.returncode == 0, dumped.stderr[-4000:]
        worker.send(command="train", batches=folder / "batches.npz", out=folder / "jax" / "state")
        yield Curve(folder, worker)
    finally:
        worker.close()


def _train_records(run: Launch, name: str) -> dict[int, dict[str, Any]]:
    assert run.returncode == 0, run.explain()
    return {record["step"]: record for record in run.metrics(f"out/{name}", spec=name) if record["kind"] == "train"}


def _compare(records: dict[int, dict[str, Any]], reference: dict[str, Any], steps: range, label: str) -> float:
    """Largest |loss - JAX loss| over ``steps``; also checks that each step ran at JAX's learning rate."""
    assert sorted(records) == list(steps), label
    diffs = [abs(records[step]["loss"] - reference["losses"][step - 1]) for step in steps]
    print(f"{label}: max per-step |loss - JAX loss| over steps {steps.start}-{steps.stop - 1} = {max(diffs):.2e}")
    for step in steps:
        assert records[step]["lr"] == pytest.approx(reference["learning_rates"][step - 1], rel=1e-6, abs=1e-12), step
    return max(diffs)


@pytest.mark.parametrize("tensor", [1, 2])
def test_losses_match_jax_every_step(curve: Curve, tensor: int) -> None:
    name = f"tp{tensor}"
    spec = case.spec_text(name, tensor=tensor, init_checkpoint=INIT_ITEMS)
    script = compile_to(curve.folder, spec, name=f"{name}.toml", output=f"run_{name}.py")
    records = _train_records(launch(script, tensor), name)
    assert _compare(records, curve.reference, range(1, case.STEPS + 1), f"TP={tensor}") <= TOLERANCE


def test_the_reference_exercises_clipping_warmup_and_decay(curve: Curve) -> None:
    """Guards the setup itself: some steps clip and some do not, warmup starts at lr 0, and the loss falls."""
    norms, rates, losses = (curve.reference[key] for key in ("grad_norms", "learning_rates", "losses"))
    threshold = case.HYPER["gradient_clipping_threshold"]
    assert any(norm > threshold for norm in norms) and any(norm < threshold for norm in norms)
    assert rates[0] == 0.0 and max(rates) == pytest.approx(case.HYPER["learning_rate"])
    assert losses[-1] < losses[0] - 1.0


def test_resume_from_the_jax_state_matches_jax(curve: Curve) -> None:
    """[init.checkpoint] optimizer_state = true on JAX's step-10 TrainState: the run starts at step 11."""
    reference = curve.reference  # the JAX loop has saved its state
    spec = case.spec_text("resume", init_checkpoint=STATE_ITEMS, optimizer_state=True)
    script = compile_to(curve.folder, spec, name="resume.toml", output="run_resume.py")
    records = _train_records(launch(script, 1), "resume")
    assert _compare(records, reference, range(case.SAVE_STEP + 1, case.STEPS + 1), "resume") <= TOLERANCE


# --------------------------------------------------------------------------------------------
# bridgec convert: Orbax -> bridgec checkpoint -> training -> Orbax.


def _convert(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "bridgec.compiler.cli", "convert", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


@attrs.frozen(kw_only=True)
class Converted:
    folder: Path
    run: Launch
    converted: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def converted(curve: Curve) -> Converted:
    """JAX's step-10 state -> orbax-to-megatron -> a TP=2 script resumes from it and trains steps 11-20."""
    _ = curve.reference  # the JAX loop has saved its state
    spec = case.spec_text("convert", tensor=2, checkpoint_dir="converted")
    compile_to(curve.folder, spec, name="convert.toml", output="run_convert.py")
    done = _convert(
        "orbax-to-megatron",
        "run_convert.py",
        "--checkpoint",
        STATE_ITEMS,
        "--output",
        "converted",
        "--optimizer-state",
        cwd=curve.folder,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return Converted(folder=curve.folder, run=launch(curve.folder / "run_convert.py", 2), converted=done)


def test_orbax_to_megatron_resumes_like_jax(curve: Curve, converted: Converted) -> None:
    assert f"-> {curve.folder / 'converted' / 'iter_0000010'}: Adam state at update 10" in converted.converted.stdout
    assert 'put dir = "converted" and resume = true under [checkpoint]' in converted.converted.stdout
    spec_copy = curve.folder / "converted" / "iter_0000010" / "spec.toml"
    assert spec_copy.read_text() == (curve.folder / "convert.toml").read_text()
    assert f"resume: continuing from step {case.SAVE_STEP}" in converted.run.stdout
    records = _train_records(converted.run, "convert")
    steps = range(case.SAVE_STEP + 1, case.STEPS + 1)
    assert _compare(records, curve.reference, steps, "converted, TP=2") <= TOLERANCE


def _megatron_weights(checkpoint: Path) -> dict[str, np.ndarray]:
    """Every model tensor of a bridgec checkpoint by global megatron name, read with torch.distributed.checkpoint."""
    import torch
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = FileSystemReader(str(checkpoint)).read_metadata()
    tensors = {
        key: torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
        for key, entry in metadata.state_dict_metadata.items()
        if isinstance(entry, TensorStorageMetadata) and not key.startswith("optimizer.")
    }
    load(tensors, storage_reader=FileSystemReader(str(checkpoint)))
    return {key: value.numpy() for key, value in tensors.items()}


def _as_maxtext(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Megatron's global tensors in MaxText's scanned layout (layer axis 1), written out here independently.

    Layers are stacked on axis 0 in megatron's checkpoint; linear_qkv rows are
    grouped per key/value head as [q heads..., k, v]; linear_fc1 is [gate; up].
    """
    m = case.MODEL
    heads, groups, d, f, e = m["num_heads"], m["num_kv_heads"], m["head_dim"], m["mlp_dim"], m["emb_dim"]
    layers = m["num_layers"]
    qkv = weights["decoder.layers.self_attention.linear_qkv.weight"].reshape(layers, groups, heads // groups + 2, d, e)
    query = qkv[:, :, : heads // groups].reshape(layers, heads, d, e)
    fc1 = weights["decoder.layers.mlp.linear_fc1.weight"]
    proj = weights["decoder.layers.self_attention.linear_proj.weight"]
    layer = "params/decoder/layers"
    # megatron's checkpoint names the local spec's norms as Transformer Engine's fused ones.
    attention_norm = weights["decoder.layers.self_attention.linear_qkv.layer_norm_weight"]
    mlp_norm = weights["decoder.layers.mlp.linear_fc1.layer_norm_weight"]
    return {
        "params/token_embedder/embedding": weights["embedding.word_embeddings.weight"][: m["vocab_size"]],
        "params/decoder/logits_dense/kernel": weights["output_layer.weight"][: m["vocab_size"]].T,
        "params/decoder/decoder_norm/scale": weights["decoder.final_layernorm.weight"],
        f"{layer}/pre_self_attention_layer_norm/scale": attention_norm.T,
        f"{layer}/post_self_attention_layer_norm/scale": mlp_norm.T,
        f"{layer}/self_attention/query/kernel": query.transpose(3, 0, 1, 2),
        f"{layer}/self_attention/key/kernel": qkv[:, :, -2].transpose(3, 0, 1, 2),
        f"{layer}/self_attention/value/kernel": qkv[:, :, -1].transpose(3, 0, 1, 2),
        f"{layer}/self_attention/out/kernel": proj.reshape(layers, e, heads, d).transpose(2, 0, 3, 1),
        f"{layer}/mlp/wi_0/kernel": fc1[:, :f].transpose(2, 0, 1),
        f"{layer}/mlp/wi_1/kernel": fc1[:, f:].transpose(2, 0, 1),
        f"{layer}/mlp/wo/kernel": weights["decoder.layers.mlp.linear_fc2.weight"].transpose(2, 0, 1),
    }


def test_megatron_to_orbax_holds_the_final_weights_bit_for_bit(curve: Curve, converted: Converted) -> None:
    assert converted.run.returncode == 0, converted.run.explain()
    done = _convert(
        "megatron-to-orbax", "run_convert.py", "--checkpoint", "converted", "--output", "exported", cwd=curve.folder
    )
    assert done.returncode == 0, done.stdout + done.stderr
    items = curve.folder / "exported" / str(case.STEPS) / "items"
    assert f"load_parameters_path={items}" in done.stdout
    restored = curve.restore(items, curve.folder / "restored.npz")
    assert restored["dtypes"] == ["float32"]
    expected = _as_maxtext(_megatron_weights(curve.folder / "converted" / "iter_0000020"))
    with np.load(curve.folder / "restored.npz") as leaves:
        assert sorted(leaves.files) == sorted(expected)
        different = [
            name
            for name in expected
            if leaves[name].shape != expected[name].shape or leaves[name].tobytes() != expected[name].tobytes()
        ]
    print(f"megatron-to-orbax: {len(expected)} leaves restored by Orbax, {len(different)} differ from the checkpoint")
    assert different == []


def test_megatron_to_orbax_step_selects_the_checkpoint_it_exports(curve: Curve, converted: Converted) -> None:
    """--step N exports iter_N (here the imported JAX state of update 10, older than the latest, 20), into OUT/N."""
    assert converted.run.returncode == 0, converted.run.explain()
    done = _convert(
        "megatron-to-orbax",
        "run_convert.py",
        "--checkpoint",
        "converted",
        "--step",
        str(case.SAVE_STEP),
        "--output",
        "exported_old",
        cwd=curve.folder,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"checkpoint: loaded step {case.SAVE_STEP} from" in done.stdout
    assert sorted(p.name for p in (curve.folder / "exported_old").iterdir()) == [str(case.SAVE_STEP)]
    items = curve.folder / "exported_old" / str(case.SAVE_STEP) / "items"
    curve.restore(items, curve.folder / "restored_old.npz")
    expected = _as_maxtext(_megatron_weights(curve.folder / "converted" / f"iter_{case.SAVE_STEP:07d}"))
    latest = _as_maxtext(_megatron_weights(curve.folder / "converted" / f"iter_{case.STEPS:07d}"))
    with np.load(curve.folder / "restored_old.npz") as leaves:
        assert all(leaves[name].tobytes() == expected[name].tobytes() for name in expected)
        assert any(leaves[name].tobytes() != latest[name].tobytes() for name in latest)

    absent = _convert(
        "megatron-to-orbax",
        "run_convert.py",
        "--checkpoint",
        "converted",
        "--step",
        "7",
        "--output",
        "exported_absent",
        cwd=curve.folder,
    )
    assert absent.returncode == 2
    assert (
        f"converted holds no complete checkpoint of step 7; it has steps {case.SAVE_STEP}, {case.STEPS} "
        f"(latest {case.STEPS})"
    ) in absent.stderr
    assert not (curve.folder / "exported_absent").exists()
