"""Names that become folders, MLflow experiments, SLURM job names and shell words.

A spec's ``name``, its variant names and the values of its grid axes all end up in paths. Names people choose
(spec, variant, experiment) are *checked*: ``[A-Za-z0-9._-]``, 1 to 100 characters, no leading dot, so a
name is never a path, never hidden, never two lines. Values nobody chose as names (grid values such as a
template, a path, a float) are *sanitized*: their readable part is kept, the rest replaced, and a hash of the
exact value appended, so two different values never share a folder.

Grid sizes are computed from the axis lengths before any run is expanded, so a 10^6-run grid is refused in
microseconds, not planned for minutes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import AfterValidator

from sdpg.training import errors

NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
MAX_NAME = 100
MAX_RUNS = 10_000
"""Runs one spec may plan without ``--max-runs``."""
MAX_SWEEP_GRID = 100_000
"""Points a grid sampler's space may hold."""


def name_problem(name: Any) -> str | None:
    """Why ``name`` is not a safe name, or None when it is."""
    if not isinstance(name, str):
        return f"must be text, got {type(name).__name__}"
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME:
        return f"is {len(name)} characters long (at most {MAX_NAME})"
    if name.startswith("."):
        return "must not start with a dot"
    if NAME_RE.fullmatch(name) is None:  # fullmatch: '$' would accept a trailing newline
        bad = sorted({c for c in name if not re.fullmatch(r"[A-Za-z0-9._-]", c)})
        shown = ", ".join(repr(c) for c in bad[:5])
        return f"may hold only letters, digits, '.', '_' and '-' (found {shown})"
    from sdpg.training.redact import contains_secret

    if contains_secret(name):
        return "looks like a secret (a token or key): names become folders, job names and MLflow run names"
    return None


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr`` cut to ``limit`` characters, for error messages about values that may be huge."""
    return errors.short_repr(value, limit, redacted=False)


def value_hash(value: Any, n: int = 8) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:n]


def sanitize(value: Any, max_len: int = 40) -> str:
    """A folder-safe word for any grid value: simple values keep their text (``0.1``, ``urkl``, ``true``);
    anything with other characters (a template, a path, a list) keeps its safe characters, cut to ``max_len``,
    plus a hash of the exact value. A secret in the value (a token in a template) is masked first: folder
    names are never redacted later."""
    from sdpg.training.redact import contains_secret, redact

    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    if contains_secret(text):
        text = redact(text).replace("***", "secret")
        kept = re.sub(r"[^A-Za-z0-9._-]+|\.{2,}", "_", text).strip("._-")[: max_len - 9] or "v"
        return f"{kept}-{value_hash(value)}"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        text = repr(value)
    if NAME_RE.fullmatch(text) and len(text) <= max_len and not text.startswith("."):
        return text
    kept = re.sub(r"[^A-Za-z0-9._-]+|\.{2,}", "_", text).strip("._-")[: max_len - 9] or "v"
    return f"{kept}-{value_hash(value)}"


def grid_size(axes: Iterable[Iterable[Any] | int]) -> int:
    """Product of the axis lengths (an int per axis or the axis itself), without expanding anything."""
    return math.prod(a if isinstance(a, int) else len(list(a)) for a in axes)


def checked_name(v: str) -> str:
    """A spec's ``name`` as its validator: refused with :func:`name_problem`'s reason."""
    why = name_problem(v)
    if why is not None:
        raise ValueError(f"a name {why}")
    return v


SpecName = Annotated[str, AfterValidator(checked_name)]
"""The ``name`` of an ablation or sweep spec: an MLflow experiment and a folder name."""
