"""bridgec plot: a PNG and an HTML page from metrics files, several runs named; bad input is a message (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from bridgec.compiler.cli import main as bridgec


def _metrics(path: Path, scale: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [{"kind": "launch", "spec": "../../spec.toml", "spec_sha256": "0" * 64, "step": 0}]
    for step in range(1, 11):
        records.append(
            {"kind": "train", "step": step, "loss": scale * 5.0 / step, "lr": 1e-3 * step / 10, "grad_norm": 1.0,
             "tokens_per_second": 1000.0 + step}
        )  # fmt: skip
    records.append({"kind": "train", "step": 11, "loss": "nan", "lr": 1e-3, "grad_norm": "inf", "tokens_per_second": 0})
    records.append({"kind": "valid", "step": 10, "loss": scale * 0.6, "perplexity": 1.8})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_png_and_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = _metrics(tmp_path / "out/bridgec/spec.metrics.jsonl", 1.0)
    second = _metrics(tmp_path / "ref/jax.jsonl", 1.1)
    png = tmp_path / "report.png"
    assert bridgec(["plot", str(first), str(second), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert width > 500 and height > 400
    assert f"wrote {png}: bridgec/spec, ref/jax" in capsys.readouterr().out

    page = tmp_path / "report.html"
    assert bridgec(["plot", str(first), str(second), "--label", "bridgec run", "-o", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "<b>bridgec run</b>" in text and "<b>ref/jax</b>" in text and "11 steps" in text
    assert text.count("<svg") == 1 and "bridgec run (validation)" in text  # the legend names the runs too


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (None, "bridgec: plot: cannot read {path}: No such file or directory"),
        ('{"kind": "train", "step": 1, "loss": 1.0}\n{"kind": "tr', "bridgec: plot: {path}:2: not a JSON record ("),
        ('[1, 2]\n', "bridgec: plot: {path}:1: not a metrics record (a JSON object with an integer step)"),
        ('{"kind": "launch", "step": 0}\n', "bridgec: plot: {path}: no training records (kind = train): is it a "
         "bridgec metrics file?"),
    ],
)  # fmt: skip
def test_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], write: str | None, message: str) -> None:
    path = tmp_path / "m.jsonl"
    if write is not None:
        path.write_text(write)
    assert bridgec(["plot", str(path), "-o", str(tmp_path / "r.png")]) == 2
    assert capsys.readouterr().err.startswith(message.format(path=path))
    assert not (tmp_path / "r.png").exists() and not (tmp_path / "r.png.tmp").exists()


def test_report_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = _metrics(tmp_path / "m.jsonl", 1.0)
    assert bridgec(["plot", str(metrics), "-o", str(tmp_path / "r.pdf")]) == 2
    assert capsys.readouterr().err == f"bridgec: plot: {tmp_path / 'r.pdf'}: the report must end in .png or .html\n"
