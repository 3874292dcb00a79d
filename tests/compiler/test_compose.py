"""Command-line overrides and ``extends``: precedence, where every diagnostic says the value came from, check."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridgec.compiler import cli
from bridgec.compiler.compose import OverrideError, compose, parse_override
from tests.compiler.conftest import SPEC_DIR, MemoryFiles, spec_toml


def _bridgec(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _constant(script: Path, name: str) -> str:
    match = re.search(rf"^{name} = (.+?)(?:  #.*)?$", script.read_text(), re.M)
    assert match is not None, name
    return match[1]


@pytest.fixture()
def layered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """base.toml (a whole spec) and exp/spec.toml extending it with one change."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.toml").write_text(spec_toml(train={"iters": 10, "log_interval": 2}))
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "spec.toml").write_text('extends = "../base.toml"\n\n[train]\niters = 20\n')
    return tmp_path


def test_parse_override_reads_toml_values_and_falls_back_to_text() -> None:
    assert parse_override("train.iters=10").value == 10
    assert parse_override("optimizer.betas=[0.9, 0.95]").value == [0.9, 0.95]
    assert parse_override("optimizer.lr=3e-4").value == 3e-4
    assert parse_override("model.normalization=rmsnorm").value == "rmsnorm"
    assert parse_override('run.name="a b"').value == "a b"
    assert parse_override('data."odd key"=1').path == ("data", "odd key")
    for bad in ("iters", "=3", "train..iters=1", "extends=x.toml", "run.name=a\nb"):
        with pytest.raises(OverrideError):
            parse_override(bad)


def test_precedence_base_then_extending_file_then_overrides(layered: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _bridgec(capsys, "compile", "exp/spec.toml", "-o", "exp/run.py")
    assert code == 0, err
    assert _constant(layered / "exp" / "run.py", "TRAIN_ITERS") == "20"  # the extending file beats the base
    assert _constant(layered / "exp" / "run.py", "LOG_INTERVAL") == "2"  # the base's, not the default
    code, out, err = _bridgec(
        capsys, "compile", "exp/spec.toml", "-o", "exp/run.py", "train.iters=30", "train.iters=40", "model.num_layers=4"
    )
    assert code == 0, err
    assert out.startswith("wrote exp/run.py from exp/spec.toml with train.iters=30 train.iters=40 model.num_layers=4")
    script = layered / "exp" / "run.py"
    assert _constant(script, "TRAIN_ITERS") == "40"  # overrides beat both; the last one wins
    assert _constant(script, "NUM_LAYERS") == "4"
    head = script.read_text().splitlines()[:5]
    assert head[3] == "# overrides: train.iters=30 train.iters=40 model.num_layers=4"
    assert head[4].endswith("bridgec compile spec.toml -o run.py train.iters=30 train.iters=40 model.num_layers=4")


def test_check_regenerates_with_the_recorded_overrides(layered: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _bridgec(capsys, "compile", "exp/spec.toml", "-o", "exp/run.py", "train.iters=7")[0] == 0
    code, out, err = _bridgec(capsys, "check", "exp/spec.toml", "exp/run.py")
    assert (code, err) == (0, "")
    assert _bridgec(capsys, "check", "--all", ".")[0] == 0
    # Changing the base stales the script compiled from the file that extends it.
    (layered / "base.toml").write_text(spec_toml(train={"iters": 10, "log_interval": 3}))
    code, out, err = _bridgec(capsys, "check", "exp/spec.toml", "exp/run.py")
    assert code == 1
    assert "+LOG_INTERVAL = 3" in out
    assert "bridgec compile exp/spec.toml -o exp/run.py train.iters=7" in err


def test_the_identity_covers_bases_and_overrides(layered: Path) -> None:
    text = (layered / "exp" / "spec.toml").read_text()
    files = cli.DiskFiles()

    def sha(*overrides: str) -> str:
        return compose(text, "spec.toml", layered / "exp", files, [parse_override(o) for o in overrides]).sha256

    plain = sha()
    assert sha("train.iters=3") != plain
    (layered / "base.toml").write_text(spec_toml(train={"iters": 11}))
    assert sha() != plain


def test_diagnostics_name_the_file_or_override_that_set_the_value(
    layered: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (layered / "base.toml").write_text(spec_toml(batch={"global_batch_size": 6, "micro_batch_size": 4}))
    code, out, err = _bridgec(capsys, "compile", "exp/spec.toml", "-o", "exp/run.py", "train.iter=5", "train.iters=x")
    assert code == 2
    assert "override train.iter=5: unknown key 'iter' in [train]; hint: did you mean 'iters'?" in err
    assert 'override train.iters=x: $.train.iters = "x" must be an integer, got a string' in err
    # The batch rule's diagnostic points into the base, where the value is written.
    assert re.search(r"^base\.toml:\d+: .*global_batch_size", err, re.M), err
    assert not (layered / "exp" / "run.py").exists()


def test_override_into_a_value_that_is_no_table(layered: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _bridgec(capsys, "validate", "exp/spec.toml", "train.iters.x=1")
    assert code == 2
    assert "override train.iters.x=1: $.train.iters is an integer, not a table, so it has no key 'x'" in err


def test_bad_override_syntax_is_exit_2(layered: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _bridgec(capsys, "compile", "exp/spec.toml", "-o", "exp/run.py", "=3")
    assert code == 2
    assert err.startswith("bridgec: override '=3' is not key=value")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"spec.toml": 'extends = "base.toml"\n'}, 'spec.toml:1: extends = "base.toml": no such file base.toml'),
        (
            {"spec.toml": 'extends = "a.toml"\n', "a.toml": '\nextends = "spec.toml"\n'},
            'a.toml:2: extends = "spec.toml" makes a cycle: spec.toml -> a.toml -> spec.toml',
        ),
        ({"spec.toml": "extends = 3\n"}, "spec.toml:1: extends must be a string, got an integer"),
        ({"spec.toml": 'extends = "a.toml"\n', "a.toml": "[run\n"}, "a.toml:1: invalid TOML"),
    ],
)
def test_broken_extends_chains(files: dict[str, str], expected: str) -> None:
    from bridgec.compiler.errors import format_diagnostic

    composed = compose(files["spec.toml"], "spec.toml", SPEC_DIR, MemoryFiles(files))
    assert composed.raw is None
    assert format_diagnostic(composed.diagnostics[0]).startswith(expected)
