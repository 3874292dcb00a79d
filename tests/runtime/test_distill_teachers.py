"""[distill.teacher.checkpoint] in every format the student's [init.checkpoint] reads: the same teacher logits.

One Hugging Face teacher (tests/e2e/test_distill.py's tiny Llama) is saved three more ways by
tests/runtime/teacher_worker.py (python -m) in one launch, through the converters a user runs: a bridgec
checkpoint (convert hf-to-megatron), a Megatron-LM torch_dist checkpoint of the same weights,
and a scanned MaxText Orbax checkpoint (convert megatron-to-orbax). Then one launch per layout
(TP1 x PP2, TP2) builds each distillation script's teacher with its generated build_teacher() and
compares its vocabulary-parallel logits with the Hugging Face teacher's on the same rank (under
pipeline parallelism the last stage keeps the whole teacher, the first keeps none); the TP2 launch
also loads teachers whose [distill.teacher] does not fit their checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bridgec.runtime.errors import ExitCode
from tests import warm
from tests.e2e.harness import compile_to
from tests.e2e.test_distill import TEACHER, make_teacher

REPO = Path(__file__).resolve().parents[2]
WORKER = ["-m", "tests.runtime.teacher_worker"]
STUDENT = """
num_layers = 2
hidden_size = 32
num_attention_heads = 2
vocab_size = 128
seq_length = 32
position_embedding = "rope"
tie_embeddings = false
"""
COMMON = """
[launch]
procs_per_node = {procs}

[parallel]
tensor = {tensor}
pipeline = {pipeline}

[batch]
global_batch_size = 8
micro_batch_size = 4

[train]
iters = 1

[optimizer]
lr = 1e-3
"""
WRITER = (
    '[run]\nname = "writer"\noutput_dir = "out"\n\n[model]'
    + TEACHER
    + COMMON.format(procs=1, tensor=1, pipeline=1)
    + '\n[init.checkpoint]\nformat = "huggingface"\npath = "../teacher"\n'
)
SOURCES = {
    "hf": ("huggingface", "teacher"),
    "orbax": ("orbax", "orbax/0/items"),
    "orbax_unscanned": ("orbax", "orbax_unscanned/0/items"),
    "megatron_lm": ("megatron", "mlm"),
    "bridgec": ("megatron", "bridgec"),
}
"""Each check's [distill.teacher.checkpoint] format and path (under the test's folder); hf first: the reference."""
MISFITS = {
    "orbax_ffn": ("orbax", "ffn_hidden_size = 128", "ffn_hidden_size = 96"),
    "megatron_lm_layers": ("megatron_lm", "num_layers = 2", "num_layers = 3"),
    "bridgec_ffn": ("bridgec", "ffn_hidden_size = 128", "ffn_hidden_size = 96"),
    "megatron_lm_rope": (
        "megatron_lm",
        'position_embedding = "rope"',
        'position_embedding = "rope"\nrotary_base = 500000',
    ),
    "bridgec_rope": ("bridgec", 'position_embedding = "rope"', 'position_embedding = "rope"\nrotary_base = 500000'),
}
"""Teachers whose [distill.teacher] does not fit their checkpoint: source, and the key changed."""


def distill_spec(tensor: int, pipeline: int, fmt: str, path: Path, teacher: str = TEACHER) -> str:
    return (
        '[run]\nname = "student"\noutput_dir = "out"\n\n[model]'
        + STUDENT
        + COMMON.format(procs=tensor * pipeline, tensor=tensor, pipeline=pipeline)
        + "\n[distill]\n\n[distill.teacher]"
        + teacher
        + f'\n[distill.teacher.checkpoint]\nformat = "{fmt}"\npath = "{path}"\n'
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("teachers")
    make_teacher(root / "teacher")
    writer = compile_to(root / "writer", WRITER)
    written = warm.torchrun(1, [*WORKER, "write", str(writer), str(root)], cwd=REPO)
    assert written.returncode == 0, written.stdout[-3000:] + written.stderr[-3000:]
    return root


def _check(root: Path, layout: str, procs: int, scripts: dict[str, Path]) -> dict[int, dict[str, Any]]:
    folder = root / layout
    out = folder / "found.json"
    pairs = [f"{name}={script}" for name, script in scripts.items()]
    ran = warm.torchrun(procs, [*WORKER, "check", str(out), *pairs], cwd=REPO)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    return {rank: json.loads((folder / f"found.{rank}.json").read_text()) for rank in range(procs)}


def _scripts(root: Path, layout: str, tensor: int, pipeline: int) -> dict[str, Path]:
    return {
        name: compile_to(root / layout / name, distill_spec(tensor, pipeline, fmt, root / path))
        for name, (fmt, path) in SOURCES.items()
    }


@pytest.fixture(scope="module")
def tp1pp2(root: Path) -> dict[int, dict[str, Any]]:
    """Rank 0: the first pipeline stage (no teacher kept); rank 1: the last, the whole teacher at tensor 1."""
    return _check(root, "tp1pp2", 2, _scripts(root, "tp1pp2", 1, 2))


@pytest.fixture(scope="module")
def tp2(root: Path) -> dict[int, dict[str, Any]]:
    scripts = _scripts(root, "tp2", 2, 1)
    for name, (source, key, changed) in MISFITS.items():
        fmt, path = SOURCES[source]
        spec = distill_spec(2, 1, fmt, root / path, TEACHER.replace(key, changed))
        scripts[name] = compile_to(root / "tp2" / name, spec)
    return _check(root, "tp2", 2, scripts)


@pytest.mark.parametrize("source", ["orbax", "orbax_unscanned", "megatron_lm", "bridgec"])
@pytest.mark.parametrize("layout", ["tp1pp2", "tp2"])
def test_a_teacher_from_each_format_gives_the_hugging_face_teachers_logits(
    source: str, layout: str, request: pytest.FixtureRequest
) -> None:
    found: dict[int, dict[str, Any]] = dict(request.getfixturevalue(layout))  # a copy: the fixture is shared
    tensor = 2 if layout == "tp2" else 1
    if layout == "tp1pp2":  # the first stage loaded the teacher (every rank does) and kept none of it
        first = found.pop(0)
        assert first[source] == {"kept": False}, first[source]
    for rank, checks in found.items():
        assert checks["hf"]["max_diff"] == 0.0
        assert checks[source]["shape"] == [2, 32, 128 // tensor], checks[source]  # this rank's vocabulary slice
        assert checks[source]["frozen"], checks[source]
        assert checks[source]["max_diff"] <= 1e-6, (rank, checks[source])  # fp32; measured: 0.0 for each


def test_a_teacher_checkpoint_that_does_not_fit_the_teacher_stops_naming_what_differs(
    tp2: dict[int, dict[str, Any]], root: Path
) -> None:
    for checks in tp2.values():
        for name in MISFITS:
            assert checks[name]["code"] == ExitCode.CHECKPOINT_ERROR, checks[name]
            assert checks[name]["message"].startswith(
                "loading the teacher's weights failed ([distill.teacher]; below, 'this model' and 'this run' mean "
                "the teacher):\n"
            ), checks[name]
    orbax, megatron_lm, bridgec, megatron_lm_rope, bridgec_rope = (tp2[0][name]["message"] for name in MISFITS)
    assert (
        "leaf params.params.decoder.layers.mlp.wo.kernel has shape [128, 2, 64]; the model needs [96, 2, 64]" in orbax
    )
    assert "num_layers: 2 in the checkpoint's args, 3 in this run" in megatron_lm, megatron_lm
    manifest = root / "bridgec" / "iter_0000000" / "bridgec.json"
    assert f"ffn_hidden_size: 128 in {manifest}, 96 in this run" in bridgec, bridgec
    # RoPE's base changes no shape: only the recorded architecture tells a wrong one apart.
    assert "rotary_base: 10000 in the checkpoint's args, 500000 in this run" in megatron_lm_rope, megatron_lm_rope
    assert f"rotary_base: 10000 in {manifest}, 500000 in this run" in bridgec_rope, bridgec_rope


def test_a_bridgec_checkpoint_is_a_students_megatron_init_checkpoint_weights_only(root: Path) -> None:
    """format = "megatron" reads a bridgec checkpoint's weights into a (zeroed) student; its optimizer state
    continues with [checkpoint] resume, not as Megatron-LM's."""
    found = json.loads((root / "student.json").read_text())
    assert found["student"] == 0.0
    refused, folder = found["refused"], root / "bridgec" / "iter_0000000"
    assert refused["code"] == ExitCode.CHECKPOINT_ERROR
    assert refused["message"] == (
        f"cannot start from {folder}; nothing was loaded:\n  {folder}: a bridgec checkpoint; optimizer_state = true "
        "reads Megatron-LM's optimizer state and schedule (continue a bridgec run with [checkpoint] dir and "
        "resume = true, or set optimizer_state = false)"
    )
