"""runtime/orbax_read.py against checkpoints written by real orbax (zarr3 / zarr2, with and without OCDBT)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.orbax_read import OrbaxItem, ReadStats, to_numpy, to_torch
from tests.runtime import flax_llama

FORMATS = ("zarr3_ocdbt", "zarr2_ocdbt", "zarr2_plain")


@pytest.fixture(scope="session")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return flax_llama.build_cases(tmp_path_factory.getbasetemp())


def _item(cases: Path, fmt: str, stats: ReadStats | None = None) -> OrbaxItem:
    return OrbaxItem(cases / "synthetic" / fmt / "ckpt" / "1" / "items", stats=stats)


@pytest.mark.parametrize("fmt", FORMATS)
def test_metadata_names_formats_and_shapes(cases: Path, fmt: str) -> None:
    item = _item(cases, fmt)
    assert (item.use_zarr3, item.use_ocdbt) == {
        "zarr3_ocdbt": (True, True),
        "zarr2_ocdbt": (False, True),
        "zarr2_plain": (False, False),
    }[fmt]
    # EmptyState / MaskedState nodes have no array; only real leaves are listed.
    assert item.names == (
        "opt_state.0.count",
        "opt_state.0.mu.w",
        "opt_state.0.nu.w",
        "params.params.dense.kernel",
        "params.params.norm.scale",
        "step",
    )
    assert item.info("params.params.dense.kernel").shape == (6, 5, 4)
    assert item.info("params.params.norm.scale").dtype.name == "bfloat16"


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_leaf_bit_exact(cases: Path, fmt: str) -> None:
    item = _item(cases, fmt)
    originals = np.load(cases / "synthetic" / "originals.npz")
    for name in originals.files:
        got = item.read(name)
        if got.dtype.name == "bfloat16":
            got = got.view(np.uint16)
        assert got.dtype == originals[name].dtype, name
        assert got.tobytes() == originals[name].tobytes(), name
    assert int(item.read("step")) == 42


def test_box_reads_only_the_box(cases: Path) -> None:
    stats = ReadStats()
    item = _item(cases, "zarr3_ocdbt", stats)
    kernel = np.load(cases / "synthetic" / "originals.npz")["params.params.dense.kernel"]
    box = item.read("params.params.dense.kernel", (slice(1, 3), slice(None), 2))
    np.testing.assert_array_equal(box, kernel[1:3, :, 2])
    assert stats.bytes_read == box.nbytes == 2 * 5 * 4
    assert stats.per_leaf == {"params.params.dense.kernel": 40}


def test_bf16_goes_to_torch_and_back_bit_exact(cases: Path) -> None:
    item = _item(cases, "zarr2_ocdbt")
    bits = np.load(cases / "synthetic" / "originals.npz")["params.params.norm.scale"]
    tensor = item.read_torch("params.params.norm.scale")
    assert tensor.dtype == torch.bfloat16
    assert tensor.view(torch.int16).numpy().view(np.uint16).tobytes() == bits.tobytes()
    assert to_numpy(tensor).view(np.uint16).tobytes() == bits.tobytes()
    assert to_torch(to_numpy(tensor)).view(torch.int16).equal(tensor.view(torch.int16))


def test_step_folder_instead_of_item_folder_says_which_to_use(cases: Path) -> None:
    step = cases / "synthetic" / "zarr3_ocdbt" / "ckpt" / "1"
    with pytest.raises(RunError) as raised:
        OrbaxItem(step)
    assert raised.value.code == ExitCode.CHECKPOINT_ERROR
    assert f"use {step / 'items'}" in raised.value.message


def test_unknown_leaf_is_a_checkpoint_error(cases: Path) -> None:
    with pytest.raises(RunError, match="no leaf named params.params.nope") as raised:
        _item(cases, "zarr3_ocdbt").read("params.params.nope")
    assert raised.value.code == ExitCode.CHECKPOINT_ERROR


def test_runtime_modules_do_not_import_jax() -> None:
    code = (
        "import sys, bridgec.runtime.orbax_read, bridgec.runtime.maxtext_import, bridgec.runtime.maxtext_export; "
        "found = sorted(m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'flax', 'orbax'))); "
        "print(found); sys.exit(1 if found else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
