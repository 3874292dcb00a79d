"""``bridgec schema``: the JSON Schema TOML editors read accepts every spec the project ships and refuses bad ones."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest

from bridgec.compiler import cli
from bridgec.compiler.schema import spec_schema
from tests.compiler.conftest import MINIMAL

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted([*ROOT.glob("examples/*/spec.toml"), *ROOT.glob("tests/golden/good/*/spec.toml")])


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = spec_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_there_are_specs_to_check() -> None:
    assert len(SPECS) >= 15


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_spec_is_valid(path: Path, validator: jsonschema.Draft7Validator) -> None:
    errors = [error.message for error in validator.iter_errors(tomllib.loads(path.read_text()))]
    assert errors == []


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"model": {**MINIMAL["model"], "hiden_size": 3}}, "'hiden_size' was unexpected"),
        ({"model": {**MINIMAL["model"], "normalization": "rms"}}, "'rms' is not one of ['layernorm', 'rmsnorm']"),
        ({"train": {"iters": "10"}}, "'10' is not of type 'integer'"),
        ({"optimizer": {"lr": 1e-3, "betas": [0.9]}}, "[0.9] is too short"),
        ({"train": {}}, "'iters' is a required property"),
        ({"tain": {"iters": 1}}, "'tain' was unexpected"),
    ],
)
def test_a_bad_spec_fails(change: dict, complaint: str, validator: jsonschema.Draft7Validator) -> None:
    errors = [error.message for error in validator.iter_errors({**MINIMAL, **change})]
    assert any(complaint in message for message in errors), errors


def test_a_file_that_extends_a_base_writes_only_what_it_changes(validator: jsonschema.Draft7Validator) -> None:
    assert list(validator.iter_errors({"extends": "base.toml", "train": {"iters": 5}})) == []
    assert list(validator.iter_errors({"train": {"iters": 5}}))  # without a base, run/model/... are required


def test_keys_carry_their_documentation_default_and_choices() -> None:
    model = spec_schema()["definitions"]["Model"]["properties"]
    assert model["normalization"]["enum"] == ["layernorm", "rmsnorm"]
    assert model["normalization"]["default"] == "layernorm"
    assert model["normalization"]["description"] == "layernorm or rmsnorm."


def test_the_command_prints_the_schema(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == spec_schema()
    assert cli.main(["schema", "-o", str(tmp_path / "spec.schema.json")]) == 0
    assert json.loads((tmp_path / "spec.schema.json").read_text()) == spec_schema()
