"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def megatron_world1() -> Iterator[None]:
    """torch.distributed (gloo, one process) and megatron's parallel state at TP = PP = 1, CPU compat applied.

    For in-process tests of runtime pieces that need a process group; layouts
    with several ranks are tested through torchrun instead.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state

    from bridgec.runtime import cpu_compat

    cpu_compat.apply()
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        dist.init_process_group("gloo", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    model_parallel_cuda_manual_seed(1234)
    yield


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process, every child it (or its children) waited for, and the ranks of the
    warm launcher's launches (tests/warm.py)."""
    import resource

    from tests import warm

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + warm.cpu_seconds()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """BRIDGEC_TEST_COST=FILE appends each test's wall and CPU seconds (children included) to FILE.

    CPU seconds barely depend on what else the machine runs, so a run on a busy machine still says
    which tests cost the suite its time on CI's two cores (tests/cost_report.py sums them per file).
    """
    path = os.environ.get("BRIDGEC_TEST_COST")
    if not path:
        yield
        return
    import json
    import time

    wall, cpu = time.perf_counter(), _cpu_seconds()
    yield
    record = {"test": item.nodeid, "wall": time.perf_counter() - wall, "cpu": _cpu_seconds() - cpu}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")
