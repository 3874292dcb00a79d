"""Every golden good spec that runs on CPU also trains: its committed expected_run.py, launched with torchrun.

tests/compiler/test_golden_good.py only compares the scripts as text, which is how a schedule name that
megatron-core rejects after warmup, fp16 without a loss scale, or a blend that crashed at its first step went
unnoticed. Here each case's folder is copied and its script's main() run under torchrun with the number of
processes it was compiled for (a multi-node spec runs them on this one machine; a spec that stops at
exit_interval is run again until it ends, resuming from its checkpoint). Cases with the same number of
processes share one launch (tests/e2e/scripts/run_scripts.py), because starting processes costs more than
their few steps. Goldens for CUDA (device = "cuda") are skipped; their paths that can run on a CPU have twins
here (fp16_cpu_twin: mixed precision with megatron's loss scale at TP 2; the CP loss runs through megatron's
schedule in tests/runtime/two_rank_worker.py).

Every run must log each step once, with finite losses that fall, and finite gradient norms wherever an update
was applied. Some cases are read further below (WSD's learning rate at every step; fp16's loss scale).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from bridgec.runtime.errors import ExitCode
from tests.e2e.harness import launch
from tests.runtime.test_optim import wsd_lr

GOOD = Path(__file__).resolve().parents[1] / "golden" / "good"
RUN_SCRIPTS = Path(__file__).parent / "scripts" / "run_scripts.py"


def _spec(case: str) -> dict[str, Any]:
    return tomllib.loads((GOOD / case / "spec.toml").read_text(encoding="utf-8"))


def _runs_on_cpu(case: str) -> bool:
    return _spec(case).get("launch", {}).get("device", "cpu") == "cpu"


CASES = sorted(path.name for path in GOOD.iterdir() if (path / "spec.toml").is_file())
NOT_RUN = {
    "distill": "its teacher folder holds only a placeholder config.json (compiling needs the path, not weights); "
    "tests/e2e/test_distill.py trains a student against a real Hugging Face teacher",
    "distill-layers": "its teacher folder holds only a placeholder latest (compiling needs the path); "
    "tests/e2e/test_distill.py distils with layer pairs at tensor 2 and at tensor 2 x pipeline 2 x virtual pipeline 2",
    "distill-megatron": "its teacher folder holds only a placeholder latest (compiling needs the path); "
    "tests/runtime/test_distill_teachers.py loads teachers from Megatron-LM and bridgec checkpoints",
    "distill-orbax": "its teacher folder holds only a placeholder _METADATA (compiling needs the path); "
    "tests/runtime/test_distill_teachers.py loads a teacher from a MaxText Orbax checkpoint",
    "distill-pipeline": "its teacher folder holds only a placeholder latest (compiling needs the path); "
    "tests/e2e/test_distill.py distils at tensor 2 x pipeline 2 x virtual pipeline 2 and "
    "tests/runtime/test_distill_teachers.py loads a Megatron teacher at pipeline 2",
}
"""CPU goldens that are compiled but not run here, each with the reason."""
CPU_CASES = [case for case in CASES if _runs_on_cpu(case) and case not in NOT_RUN]


def _world(case: str) -> int:
    launch_table = _spec(case).get("launch", {})
    return launch_table.get("nodes", 1) * launch_table.get("procs_per_node", 1)


@attrs.frozen(kw_only=True)
class GoldenRun:
    folder: Path
    exits: tuple[int, ...]
    """The exit code of each launch (75, STOPPED_TO_RESUME, means it was launched again)."""
    output: str
    """What rank 0 printed while running this case."""
    records: tuple[dict[str, Any], ...]
    """The spec's metrics file (spec.metrics.jsonl) after the last launch."""

    @property
    def train(self) -> list[dict[str, Any]]:
        return [record for record in self.records if record["kind"] == "train"]


def _run_group(cases: list[str], world: int, base: Path) -> dict[str, GoldenRun]:
    """Copy each case's folder under ``base`` and run their scripts in one launch of ``world`` processes."""
    scripts = []
    for case in cases:
        shutil.copytree(GOOD / case, base / case)
        scripts.append(base / case / "expected_run.py")
    done = launch(RUN_SCRIPTS, world, args=tuple(str(script) for script in scripts))
    assert done.returncode == 0, done.explain()
    runs = {}
    for case, script in zip(cases, scripts):
        pattern = re.compile(rf"^=== {re.escape(str(script))} (launch|exit) (\d+)$", re.MULTILINE)
        marks = list(pattern.finditer(done.stdout))
        exits = tuple(int(mark[2]) for mark in marks if mark[1] == "exit")
        output = done.stdout[marks[0].start() : marks[-1].end()] if marks else ""
        spec = _spec(case)
        output_dir = script.parent / spec["run"].get("output_dir", f"out/{spec['run']['name']}")
        metrics = output_dir / "spec.metrics.jsonl"  # named after the spec file (runtime.outputs)
        records = tuple(json.loads(line) for line in metrics.read_text().splitlines()) if metrics.is_file() else ()
        runs[case] = GoldenRun(folder=script.parent, exits=exits, output=output, records=records)
    return runs


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], GoldenRun]:
    """case -> its run. The cases compiled for the same number of processes share one launch, made the first
    time one of them is asked for (tests/e2e/scripts/run_scripts.py)."""
    runs: dict[str, GoldenRun] = {}

    def get(case: str) -> GoldenRun:
        if case not in runs:
            world = _world(case)
            group = [other for other in CPU_CASES if _world(other) == world]
            runs.update(_run_group(group, world, tmp_path_factory.mktemp(f"world{world}")))
        return runs[case]

    return get


@pytest.mark.parametrize("case", CPU_CASES)
def test_golden_trains_on_cpu(case: str, golden_run: Callable[[str], GoldenRun]) -> None:
    run = golden_run(case)
    assert run.exits and run.exits[-1] == ExitCode.OK, run.output[-6000:]
    assert all(code == ExitCode.STOPPED_TO_RESUME for code in run.exits[:-1]), run.exits
    train = run.train
    iters = _spec(case)["train"]["iters"]
    assert [record["step"] for record in train] == list(range(1, iters + 1)), run.output[-6000:]
    losses = [record["loss"] for record in train]
    assert all(isinstance(loss, float) and math.isfinite(loss) for loss in losses), losses
    applied = [record for record in train if not record["skipped"]]
    assert applied and all(isinstance(record["grad_norm"], float) for record in applied), applied
    assert losses[-1] < losses[0], f"{case}: the loss did not fall: {losses}"


def test_only_the_cuda_goldens_and_the_listed_ones_are_skipped() -> None:
    """A golden that runs on CPU is never left out by accident (the filter reads [launch] device and NOT_RUN)."""
    assert [case for case in CASES if case not in CPU_CASES] == [
        "cuda_te_fp8_cp",
        "cuda_te_perf_knobs",
        "distill",
        "distill-layers",
        "distill-megatron",
        "distill-orbax",
        "distill-pipeline",
    ]
    assert all(not _runs_on_cpu(case) for case in ("cuda_te_fp8_cp", "cuda_te_perf_knobs"))


def test_wsd_golden_runs_megatrons_wsd_schedule_across_its_resume(golden_run: Callable[[str], GoldenRun]) -> None:
    """wsd_microbatch_checkpoint stops at exit_interval 12 and resumes: update k runs at megatron's WSD lr(k),
    warmup 3, stable, cosine to min_lr over the last 8 of 24 (before, megatron-core raised at step 4)."""
    run = golden_run("wsd_microbatch_checkpoint")
    assert run.exits == (ExitCode.STOPPED_TO_RESUME, ExitCode.OK) and "stopping after step 12" in run.output
    seen = [record["lr"] for record in run.train]
    expected = [wsd_lr(step - 1, lr=3e-3, min_lr=3e-5, warmup=3, total=24, decay=8) for step in range(1, 25)]
    assert seen == pytest.approx(expected, rel=1e-12), list(zip(seen, expected))
    # keep_last = 2: the two checkpoints published last.
    assert sorted(path.name for path in (run.folder / "checkpoints").iterdir()) == [
        "iter_0000020", "iter_0000024", "latest",
    ]  # fmt: skip


def test_fp16_twin_scales_its_loss_and_resumes_the_scale(golden_run: Callable[[str], GoldenRun]) -> None:
    """fp16 at TP 2: megatron's dynamic loss scale starts at 2^32, overflowed steps are skipped while it comes
    down, then the model trains. The run stops at step 16, while the scale is still coming down, and the resumed
    launch continues from the saved scale (it would otherwise start at 2^32 again and skip those steps twice)."""
    run = golden_run("fp16_cpu_twin")
    assert run.exits == (ExitCode.STOPPED_TO_RESUME, ExitCode.OK) and "stopping after step 16" in run.output
    train = run.train
    scales = [record["loss_scale"] for record in train]
    assert scales[0] == 2.0**32
    for before, after in zip(train, train[1:]):
        assert after["loss_scale"] / before["loss_scale"] in (0.5, 1.0, 2.0), (before, after)
    skipped = [record["step"] for record in train if record["skipped"]]
    assert skipped and skipped == list(range(1, len(skipped) + 1)) and len(skipped) < len(train) - 4, skipped
    assert train[15]["skipped"], "the stop at step 16 should come while steps are still skipped"
    first = train[len(skipped)]
    # The first applied update's gradient norm is an fp32-sized one (~1), not 2^-32 of it.
    assert 0.1 < first["grad_norm"] < 10.0, first
    assert train[-1]["loss"] < first["loss"] - 0.5, [record["loss"] for record in train]


def _validation_tokens(script: Path, count: int) -> list[list[int]]:
    """The first tokens of the first ``count`` validation samples, from the script's own datasets() (which
    finds the split in its cache)."""
    spec = importlib.util.spec_from_file_location("golden_evaluation_resume", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    valid = module.datasets().valid
    return [valid[index]["tokens"][:4].tolist() for index in range(count)]


def test_evaluations_read_successive_validation_samples_across_a_resume(
    golden_run: Callable[[str], GoldenRun],
) -> None:
    """evaluation_resume evaluates after steps 2, 4 and 6 (eval_iters 1 of 4 samples) and stops after step 3:
    the evaluations read the split's samples 0-3, 4-7 and 8-11, as Megatron-LM's validation iterator does,
    the third from the position saved in the checkpoint (before, every evaluation read samples 0-3)."""
    run = golden_run("evaluation_resume")
    assert run.exits == (ExitCode.STOPPED_TO_RESUME, ExitCode.OK) and "stopping after step 3" in run.output
    seen: dict[int, list[list[int]]] = {}
    for line in (run.folder / "evaluated.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        seen.setdefault(record["step"], []).append(record["tokens"])
    valid = _validation_tokens(run.folder / "expected_run.py", 12)
    assert seen == {2: valid[0:4], 4: valid[4:8], 6: valid[8:12]}
    assert valid[0:4] != valid[4:8] != valid[8:12]
