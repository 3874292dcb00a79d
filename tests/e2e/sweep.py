"""Accepted by the compiler implies runs: generate specs, validate and compile them, run each for 2 steps.

``python -m tests.e2e.sweep --seeds 0-199`` draws the specs of those seeds
(``tests/e2e/specgen.py``), builds their corpora with ``bridgec data build``,
compiles each with ``bridgec compile`` (a spec it refuses is counted, not
run), and launches every compiled script: twice when the spec checkpoints with
``resume = true`` (the second launch resumes). A launch must end the way the
spec says: exit 0 after all steps, or exit 75 after ``exit_interval`` (then the
resumed launch finishes with 0), on every rank, with no traceback. Anything else
(a crash, a hang, an undocumented exit) is printed with the seed, the spec and
the ranks' output; ``--seeds N`` replays one seed and ``--keep DIR`` leaves its
folder (spec, data, run.py, logs) for a look. Exit status 1 when any seed failed.

``--launcher fork`` (the default) runs many launches from one warm Python
(``tests/e2e/forkrun.py``); ``--launcher torchrun`` runs each with the real
torchrun (about 10 s a launch; a forked one takes about 1 s).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from bridgec.compiler.cli import main as bridgec
from tests.e2e.specgen import Generated, generate

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
HANG_GUARD_SECONDS = 300
_TORCHRUN_FAILURE = re.compile(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)")


@attrs.frozen(kw_only=True)
class Prepared:
    generated: Generated
    folder: Path
    compile_code: int
    compile_output: str


@attrs.frozen(kw_only=True)
class Job:
    """``folder/run.py`` launched ``launches`` times in a row on ``procs`` processes."""

    folder: Path
    procs: int
    launches: int = 1


@attrs.frozen(kw_only=True)
class LaunchResult:
    number: int
    codes: dict[int, int]
    hung: bool
    outputs: dict[int, tuple[str, str]]
    """rank -> (stdout, stderr)."""


@attrs.frozen(kw_only=True)
class Outcome:
    seed: int
    status: str
    """"ran", "refused" (validation errors: not run) or "failed"."""
    problem: str = ""
    report: str = ""


def prepare(generated: Generated, folder: Path) -> Prepared:
    """Write the spec and its files into ``folder``, build its corpora, and compile it to ``folder/run.py``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.py").unlink(missing_ok=True)  # a refused spec must leave none (--keep may reuse a folder)
    (folder / "spec.toml").write_text(generated.toml(), encoding="utf-8")
    for name, text in generated.files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        for corpus in generated.corpora:
            jsonl = folder / (corpus.prefix + ".jsonl")
            jsonl.parent.mkdir(parents=True, exist_ok=True)
            jsonl.write_text("".join(json.dumps({"text": text}) + "\n" for text in corpus.documents), encoding="utf-8")
            code = bridgec(["data", "build", "--input", str(jsonl), "--output", str(folder / corpus.prefix)])
            assert code == 0, f"seed {generated.seed}: bridgec data build exited {code}: {output.getvalue()}"
        code = bridgec(["compile", str(folder / "spec.toml"), "-o", str(folder / "run.py")])
    return Prepared(generated=generated, folder=folder, compile_code=code, compile_output=output.getvalue())


def run_fork(jobs: Sequence[Job]) -> dict[Path, list[LaunchResult]]:
    """Every launch of ``jobs`` through tests/e2e/forkrun.py (one Python start for all)."""
    if not jobs:
        return {}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump([{"folder": str(job.folder), "procs": job.procs, "launches": job.launches} for job in jobs], handle)
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "tests.e2e.forkrun", handle.name], cwd=REPO, env=_environment(),
            capture_output=True, text=True, timeout=HANG_GUARD_SECONDS * sum(job.launches for job in jobs),
        )  # fmt: skip
    finally:
        Path(handle.name).unlink()
    if completed.returncode != 0:
        raise AssertionError(f"forkrun exited {completed.returncode}:\n{completed.stderr[-4000:]}")
    results: dict[Path, list[LaunchResult]] = {job.folder: [] for job in jobs}
    for line in completed.stdout.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        folder = Path(record["folder"])
        logs = folder / "logs" / f"launch{record['launch']}"
        codes = {int(rank): code for rank, code in record["codes"].items()}
        results[folder].append(
            LaunchResult(
                number=record["launch"],
                codes=codes,
                hung=record["hung"],
                outputs={rank: _read_logs(logs, rank) for rank in codes},
            )
        )
    return results


def run_torchrun(jobs: Sequence[Job]) -> dict[Path, list[LaunchResult]]:
    """Every launch of ``jobs`` through the real torchrun, one after another."""
    results: dict[Path, list[LaunchResult]] = {}
    for job in jobs:
        results[job.folder] = []
        for number in range(1, job.launches + 1):
            log_dir = job.folder / "logs" / f"torchrun{number}"
            command = [
                str(BIN / "torchrun"),
                "--standalone",
                "--nproc-per-node",
                str(job.procs),
                "--log-dir",
                str(log_dir),
                "--redirects",
                "3",
                "run.py",
            ]
            try:
                completed = subprocess.run(
                    command,
                    cwd=job.folder,
                    env=_environment(),
                    capture_output=True,
                    text=True,
                    timeout=HANG_GUARD_SECONDS,
                )
                hung, report = False, completed.stdout + completed.stderr
            except subprocess.TimeoutExpired as expired:
                hung, report = True, str(expired.stdout or "") + str(expired.stderr or "")
            failed = {int(rank): int(code) for rank, code in _TORCHRUN_FAILURE.findall(report)}
            outputs = {}
            for stderr in sorted(log_dir.glob("**/attempt_*/*/stderr.log")):
                rank = int(stderr.parent.name)
                stdout = stderr.with_name("stdout.log")
                outputs[rank] = (
                    stdout.read_text(errors="replace") if stdout.exists() else "",
                    stderr.read_text(errors="replace"),
                )
            codes = {rank: failed.get(rank, 0) for rank in range(job.procs)}
            results[job.folder].append(LaunchResult(number=number, codes=codes, hung=hung, outputs=outputs))
            if hung:
                break
    return results


def _environment() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def _read_logs(folder: Path, rank: int) -> tuple[str, str]:
    def read(path: Path) -> str:
        return path.read_text(errors="replace") if path.exists() else ""

    return read(folder / f"{rank}.out"), read(folder / f"{rank}.err")


def judge(generated: Generated, launches: Sequence[LaunchResult]) -> str | None:
    """What is wrong with how the launches ended, or None when they ended as the spec says."""
    expected = [75, 0] if generated.stops_early_at is not None else [0, 0]
    wanted = len(expected) if generated.resumes else 1
    if len(launches) < wanted:
        return f"{len(launches)} of {wanted} launches reported"
    for launch, code in zip(launches, expected[:wanted]):
        if launch.hung:
            return f"launch {launch.number} hung (killed by the hang guard)"
        if set(launch.codes.values()) != {code}:
            return f"launch {launch.number} exited {launch.codes} (rank: code), expected {code} on every rank"
        for rank, (_, stderr) in launch.outputs.items():
            if "Traceback" in stderr:
                return f"launch {launch.number}: rank {rank} printed a traceback"
        stdout = "".join(out for out, _ in launch.outputs.values())
        if (
            code == 0
            and not re.search(rf"step +{generated.iters}/{generated.iters} \| loss", stdout)
            and "nothing to train" not in stdout
        ):
            return f"launch {launch.number} exited 0 without logging step {generated.iters}/{generated.iters}"
        if code == 75 and f"stopping after step {generated.stops_early_at}" not in stdout:
            return f"launch {launch.number} exited 75 without saying it stopped after step {generated.stops_early_at}"
        if _evaluates(generated, launch.number) and "validation loss" not in stdout:
            return f"launch {launch.number} logged no evaluation (eval_interval = {generated.eval_interval})"
    return None


def _evaluates(generated: Generated, number: int) -> bool:
    """Whether launch ``number`` trains a step that is a multiple of eval_interval (so it logs an evaluation)."""
    interval, stop = generated.eval_interval, generated.stops_early_at
    if interval is None:
        return False
    first, last = (1, stop or generated.iters) if number == 1 else ((stop or generated.iters) + 1, generated.iters)
    return any(step % interval == 0 for step in range(first, last + 1))


def report(prepared: Prepared, problem: str, launches: Sequence[LaunchResult]) -> str:
    generated = prepared.generated
    corpora = ", ".join(f"{c.prefix} ({len(c.documents)} documents)" for c in generated.corpora) or "none"
    lines = [
        f"seed {generated.seed}: {problem}",
        f"replay: python -m tests.e2e.sweep --seeds {generated.seed} --keep /tmp/sweep-{generated.seed}",
        f"corpora: {corpora}",
        "--- spec.toml",
        generated.toml().rstrip(),
    ]
    for launch in launches:
        for rank, (stdout, stderr) in sorted(launch.outputs.items()):
            lines += [
                f"--- launch {launch.number} rank {rank} (exit {launch.codes.get(rank)}) stdout",
                stdout[-1500:].rstrip(),
                f"--- launch {launch.number} rank {rank} stderr",
                stderr[-3000:].rstrip(),
            ]
    return "\n".join(lines)


def sweep(seeds: Iterable[int], root: Path, *, launcher: str = "fork") -> list[Outcome]:
    """Generate, compile and run every seed under ``root``; one Outcome per seed."""
    outcomes: dict[int, Outcome] = {}
    compiled: list[Prepared] = []
    for seed in seeds:
        prepared = prepare(generate(seed), root / f"seed{seed}")
        unclean = "Traceback" in prepared.compile_output or (prepared.folder / "run.py").exists()
        if prepared.compile_code == 2 and unclean:
            problem = "bridgec compile refused the spec with a traceback or left a script behind"
            outcomes[seed] = Outcome(
                seed=seed,
                status="failed",
                problem=problem,
                report=report(prepared, problem + ":\n" + prepared.compile_output, ()),
            )
        elif prepared.compile_code == 2:
            outcomes[seed] = Outcome(seed=seed, status="refused", report=prepared.compile_output)
        elif prepared.compile_code != 0:
            problem = f"bridgec compile exited {prepared.compile_code}"
            outcomes[seed] = Outcome(
                seed=seed,
                status="failed",
                problem=problem,
                report=report(prepared, problem + ":\n" + prepared.compile_output, ()),
            )
        else:
            compiled.append(prepared)
    jobs = [Job(folder=p.folder, procs=p.generated.procs, launches=2 if p.generated.resumes else 1) for p in compiled]
    results = (run_fork if launcher == "fork" else run_torchrun)(jobs)
    for prepared in compiled:
        launches = results.get(prepared.folder, [])
        problem = judge(prepared.generated, launches)
        seed = prepared.generated.seed
        outcomes[seed] = (
            Outcome(seed=seed, status="ran")
            if problem is None
            else Outcome(seed=seed, status="failed", problem=problem, report=report(prepared, problem, launches))
        )
    return [outcomes[seed] for seed in sorted(outcomes)]


def parse_seeds(text: str) -> list[int]:
    """``7``, ``0-99`` or ``1,5,9-12``."""
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        seeds += range(int(first), int(last or first) + 1)
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0-99", help="seeds to draw: 7, 0-99 or 1,5,9-12 (default 0-99)")
    parser.add_argument("--launcher", choices=("fork", "torchrun"), default="fork")
    parser.add_argument("--keep", type=Path, help="run in this folder and leave it (default: a temporary folder)")
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    with contextlib.ExitStack() as stack:
        root = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bridgec-sweep-")))
        outcomes = sweep(seeds, root, launcher=args.launcher)
    failed = [o for o in outcomes if o.status == "failed"]
    for outcome in failed:
        print(outcome.report + "\n", flush=True)
    counts = {status: sum(o.status == status for o in outcomes) for status in ("ran", "refused", "failed")}
    print(
        f"{len(outcomes)} specs (seeds {args.seeds}): {counts['ran']} ran as specified, {counts['refused']} "
        f"refused by validation, {counts['failed']} failed"
        + (f" (seeds {', '.join(str(o.seed) for o in failed)})" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
