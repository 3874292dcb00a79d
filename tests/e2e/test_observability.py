"""[logging]: the sinks hold the metrics file's history, a failing sink is dropped, the console obeys its level.

One launch on two pipeline stages (the logging rank is the last stage's, rank 1)
with TensorBoard, an offline W&B run and an MLflow sqlite store; every store is
read back with its own library's reader; rank 1 profiles steps 2-3. A second launch points TensorBoard
below a regular file (it cannot start) and has a loss hook replace MLflow's
sqlite database with a folder at step 3 (its next write fails): both fail for
real, training goes on, each says so once, and the metrics file is complete.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.e2e.harness import Launch, compile_to, launch
from tests.e2e.wandb_history import history

SPEC = """
[run]
name = "watched"

[launch]
procs_per_node = {procs}

[model]
num_layers = 2
hidden_size = 32
num_attention_heads = 4
vocab_size = 128
seq_length = 32

[parallel]
pipeline = {procs}

[batch]
global_batch_size = 4
micro_batch_size = 2

[train]
iters = 6
eval_interval = 3
eval_iters = 1

[optimizer]
lr = 1e-3

[logging]
{logging}
"""

SINKS = """
level = "debug"
params_norm = true

[logging.tensorboard]
dir = "tb"

[logging.wandb]
project = "bridgec-tests"
mode = "offline"
tags = ["e2e"]

[logging.mlflow]
tracking_uri = "{uri}"
experiment = "observability"

[profile]
start_step = 2
end_step = 3
ranks = [1]
"""

TRAIN_KEYS = {
    "lm loss": "loss",
    "learning-rate": "lr",
    "grad-norm": "grad_norm",
    "params-norm": "params_norm",
    "loss-scale": "loss_scale",
    "skipped-iterations": "skipped_total",
    "throughput/tokens-per-sec": "tokens_per_second",
    "throughput/tflops-per-device": "tflops_per_device",
    "consumed-samples": "consumed_samples",
    "consumed-tokens": "consumed_tokens",
}
"""Sink scalar -> the metrics file's key for the same number."""

TIMERS = {
    "batch-generator-time": "data",
    "forward-backward-time": "forward_backward",
    "optimizer-time": "optimizer",
    "save-checkpoint-time": "save_checkpoint",
}


def _expected(records: list[dict]) -> dict[str, dict[int, float]]:
    """Every sink scalar by step, from the metrics file."""
    expected: dict[str, dict[int, float]] = {}
    for record in records:
        step = record["step"]
        if record["kind"] == "train":
            for scalar, key in TRAIN_KEYS.items():
                expected.setdefault(scalar, {})[step] = float(record[key])
            for scalar, key in TIMERS.items():
                expected.setdefault(scalar, {})[step] = record["timers_s"][key]
            expected.setdefault("mem-rss-bytes", {})[step] = float(record["memory_bytes"]["rss"])
        elif record["kind"] == "valid":
            expected.setdefault("lm loss validation", {})[step] = record["loss"]
            expected.setdefault("lm loss validation ppl", {})[step] = record["perplexity"]
    return expected


def _close(got: dict[int, float], want: dict[int, float], name: str) -> None:
    assert sorted(got) == sorted(want), name
    for step, value in want.items():
        assert math.isclose(got[step], value, rel_tol=1e-5, abs_tol=1e-9), (name, step, got[step], value)


@attrs.frozen
class Watched:
    folder: Path
    uri: str
    result: Launch


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Watched:
    """The two-stage launch with every sink (shared: the failure test compares its parameters' norm with it)."""
    folder = tmp_path_factory.mktemp("watched")
    uri = f"sqlite:///{folder}/mlflow.db"
    result = launch(compile_to(folder, SPEC.format(procs=2, logging=SINKS.format(uri=uri))), 2)
    assert result.returncode == 0, result.explain()
    return Watched(folder=folder, uri=uri, result=result)


def test_sinks_hold_the_metrics_history(watched: Watched) -> None:
    tmp_path, uri, result = watched.folder, watched.uri, watched.result
    records = result.metrics("out/watched")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all("mfu" not in r for r in train)  # no peak on the CPU
    expected = _expected(records)
    assert len(expected) == len(TRAIN_KEYS) + len(TIMERS) + 3

    (events,) = (tmp_path / "tb").glob("events.out.tfevents.*")  # one writer: the logging rank's
    board = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    board.Reload()
    for name, want in expected.items():
        _close({event.step: event.value for event in board.Scalars(name)}, want, f"tensorboard {name}")

    (run_folder,) = (tmp_path / "out/watched/wandb").glob("offline-run-*")
    rows = history(run_folder)
    for name, want in expected.items():
        _close({row["_step"]: row[name] for row in rows if name in row}, want, f"wandb {name}")

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("observability").experiment_id])
    assert run.info.run_name == "watched" and run.data.params["model.hidden_size"] == "32"
    for name, want in expected.items():
        _close({m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}, want, f"mlflow {name}")

    # [profile]: rank 1 alone traced steps 2 and 3, as Chrome-trace JSON with each step's two phases.
    (trace,) = (tmp_path / "out/watched/profile").iterdir()
    assert trace.name.startswith("rank1.") and trace.name.endswith(".pt.trace.json")
    events = json.loads(trace.read_text())["traceEvents"]
    assert all({"ph", "name", "pid", "tid"} <= set(event) for event in events if event.get("ph") == "X")
    for name in ("forward-backward", "optimizer"):
        spans = [e for e in events if e.get("name") == name and e.get("ph") == "X"]
        assert len(spans) == 2 and all(e["dur"] > 0 for e in spans), name
    fb, opt = (
        sorted(e["ts"] for e in events if e.get("name") == n and e.get("ph") == "X")
        for n in ("forward-backward", "optimizer")
    )
    assert fb[0] < opt[0] < fb[1] < opt[1]  # step 2's phases, then step 3's

    # level = "debug": a line every step, with its timers and memory; a progress estimate until the last step.
    lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len([line for line in lines if "validation" not in line]) == 6
    assert "ETA 0:00:" in lines[0] and "TFLOP/s/device" in lines[0]
    assert result.stdout.count("    timers: data ") == 6


BREAKER = """
import torch
from pathlib import Path

calls = 0


def loss_that_breaks_mlflow(loss_mask, output_tensor):
    \"\"\"Cross entropy; at step 3 (this rank's 5th microbatch) MLflow's database becomes a folder under the run.\"\"\"
    global calls
    calls += 1
    if calls == 5:
        database = Path("mlflow.db")
        database.unlink()
        database.mkdir()
    mask = loss_mask.reshape(-1).float()
    losses = output_tensor.float().reshape(-1) * mask
    count = mask.sum()
    return losses.sum(), count.to(torch.int), {"lm loss": torch.stack([losses.sum().detach(), count])}
"""


def test_a_failing_sink_is_dropped_and_training_goes_on(tmp_path: Path, watched: Watched) -> None:
    """TensorBoard cannot start (its folder would lie below a file); MLflow's store breaks at step 3.

    On one process without a pipeline, the same training (portable initialisation, the hook's loss is the
    default's): the parameters' norm, reduced over two pipeline stages there, is the same here.
    """
    (tmp_path / "not_a_folder").write_text("a file, so no folder can be made below it\n")
    (tmp_path / "breaker.py").write_text(BREAKER)
    logging = f"""
level = "quiet"
peak_tflops = 0.5
params_norm = true

[logging.tensorboard]
dir = "not_a_folder/tb"

[logging.mlflow]
tracking_uri = "sqlite:///{tmp_path}/mlflow.db"

[hooks]
file = "breaker.py"
loss = "loss_that_breaks_mlflow"
"""
    script = compile_to(tmp_path, SPEC.format(procs=1, logging=logging))
    result = launch(script, 1)
    assert result.returncode == 0, result.explain()
    assert (tmp_path / "mlflow.db").is_dir()  # the hook did break the store
    train = [r for r in result.metrics("out/watched") if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all(r["mfu"] == r["tflops_per_device"] / 0.5 for r in train)  # the spec's peak, on any device
    staged = [r["params_norm"] for r in watched.result.metrics("out/watched") if r["kind"] == "train"]
    assert [r["params_norm"] for r in train] == pytest.approx(staged, rel=1e-5)
    assert staged[0] != staged[-1]  # it follows the updates
    warnings = [line for line in result.stderr.splitlines() if "bridgec: warning: the" in line]
    assert len(warnings) == 2, result.explain()
    assert warnings[0].startswith("bridgec: warning: the tensorboard sink failed opening (NotADirectoryError: ")
    assert warnings[1].startswith("bridgec: warning: the mlflow sink failed writing step"), warnings[1]
    assert "caused by OperationalError: attempt to write a readonly database" in warnings[1], warnings[1]
    suffix = "it is disabled for the rest of this launch, the metrics file keeps every record"
    assert all(warning.endswith(suffix) for warning in warnings)
    # level = "quiet": no banner and no step lines, only the end summary.
    assert result.stdout.strip().startswith("this launch: steps 1-6"), result.explain()
