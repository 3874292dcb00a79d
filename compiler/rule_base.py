"""What every validation rule builds on: the spec's context, findings, derived sizes, wording helpers.

Rules live in ``rules_layout.py``, ``rules_training.py``, ``rules_files.py`` and
``validate_interop.py`` (optax semantics, MaxText/optax schedules,
JAX meshes and the MaxText model options); all take these pieces from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn, Protocol

import attrs

from bridgec.compiler import derive
from bridgec.compiler.derive import model_parallel, world_size
from bridgec.compiler.errors import KeyPath, Severity
from bridgec.compiler.spec import Spec


class FileView(Protocol):
    """The read-only view of the disk that validation may use (the CLI passes the real disk)."""

    def exists(self, path: Path) -> bool: ...

    def read_text(self, path: Path) -> str:
        """The file's text; raises OSError or UnicodeDecodeError when it cannot be read."""
        ...

    def read_head(self, path: Path, size: int) -> bytes:
        """The file's first ``size`` bytes (fewer when it is shorter); raises OSError when it cannot be read."""
        ...

    def read_bytes(self, path: Path) -> bytes:
        """The whole file (a tokenizer's); raises OSError (FileNotFoundError, IsADirectoryError) when it cannot be read."""
        ...


@attrs.frozen(kw_only=True)
class SpecContext:
    """Where the spec lives, for messages and for the files it names."""

    file: str
    """The spec file as the user gave it; shown in every diagnostic."""
    spec_dir: Path
    """The spec's folder: relative paths in the spec are relative to it."""
    files: FileView
    require_data: bool = True
    """Whether the files a run reads but a repository does not commit (the datasets' .bin/.idx, the
    [init.checkpoint] folder) must exist. ``bridgec check`` regenerates without them: CI and pre-commit
    machines hold the spec, the dataset's small tokenizer file and the hooks file, not the data."""

    def resolve(self, path: str) -> Path:
        """A path written in the spec, made usable (absolute paths stay as they are)."""
        return self.spec_dir / path


@attrs.frozen(kw_only=True)
class Finding:
    """What a rule reports; validate adds the file and line."""

    about: tuple[KeyPath, ...]
    """The keys the finding is about, most relevant first; the first one the spec writes gives the line."""
    message: str
    hint: str
    severity: Severity = "error"


Rule = Callable[[Spec, SpecContext], Iterable[Finding]]


# -- a spec with fields that did not load ---------------------------------------------------


class NotLoaded(Exception):
    """A rule used a field that did not load (its own diagnostic says why); the rule is skipped."""


class _NotLoadedValue:
    """Stands in a partly loaded spec for a field whose value was wrong or missing.

    Every use of it in a rule (arithmetic, comparison, truth, formatting,
    iteration, attribute access) raises NotLoaded, so a cross-field rule runs
    exactly when every value it reads loaded. ``is None`` stays false: the key
    was written (or is required).
    """

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise NotLoaded

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _refuse  # type: ignore[assignment]
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _refuse
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __pow__ = __rpow__ = __neg__ = __abs__ = _refuse
    __bool__ = __int__ = __float__ = __index__ = __len__ = __iter__ = __contains__ = _refuse  # type: ignore[assignment]
    __getitem__ = __str__ = __repr__ = __format__ = __fspath__ = __reversed__ = _refuse  # type: ignore[assignment]
    __round__ = __trunc__ = __floor__ = __ceil__ = __divmod__ = __rdivmod__ = __complex__ = _refuse

    def __getattr__(self, name: str) -> NoReturn:
        raise NotLoaded

    def __hash__(self) -> int:
        return 0


NOT_LOADED: object = _NotLoadedValue()
"""The value of every field that did not load, in the partly loaded spec rules run on after load errors."""


# -- derived sizes (validate needs them to check; lower derives them for the script) --------


def data_parallel_size(spec: Spec) -> int | None:
    """world / (tensor x pipeline x context), or None when that is not a whole number >= 1."""
    sizes = (
        spec.launch.nodes,
        spec.launch.procs_per_node,
        spec.parallel.tensor,
        spec.parallel.pipeline,
        spec.parallel.context,
    )
    if min(sizes) < 1 or world_size(spec) % model_parallel(spec):
        return None
    return derive.data_parallel(spec)


def microbatches(spec: Spec) -> int | None:
    """global / (micro x data parallel), or None when that is not a whole number >= 1."""
    dp = data_parallel_size(spec)
    g, m = spec.batch.global_batch_size, spec.batch.micro_batch_size
    if dp is None or g < 1 or m < 1 or g % (m * dp):
        return None
    return derive.microbatches(spec)


# -- wording helpers ----------------------------------------------------------------------


def or_list(items: Iterable[object]) -> str:
    texts = [str(i) for i in items]
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " or " + texts[-1]


MAX_LISTED = 10**6  # above this, hints name "a divisor of n" instead of listing them


def divisors(n: int) -> list[int]:
    """n's divisors in order; empty when n is too large to list them quickly."""
    if n > MAX_LISTED:
        return []
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def divisors_text(n: int) -> str:
    """``1, 2, 3 or 6``, or ``a divisor of n`` when n is large."""
    return or_list(divisors(n)) if n <= MAX_LISTED else f"a divisor of {n}"


def multiples_near(value: int, factor: int) -> str:
    """The multiples of ``factor`` either side of ``value`` (just the upper one below ``factor``)."""
    lower, upper = value // factor * factor, (value // factor + 1) * factor
    return or_list([lower, upper] if lower >= 1 else [upper])


def split_hint(value: int, size: int, noun: str) -> str:
    """``tensor = 2 or 3, or 8 heads``: smaller tensor sizes that divide, or the count rounded up."""
    smaller = [d for d in divisors(value) if 1 < d < size]
    rounded = f"{-(-value // size) * size} {noun}"
    return f"tensor = {or_list(smaller)}, or {rounded}" if smaller else f"{rounded}, or tensor = 1"
