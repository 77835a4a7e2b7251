"""Reading the bookkeeping files a run and its orchestration write (``result.json``, ``metrics.jsonl``,
``jobs.json``): every one of them may be cut short by a kill, a full disk or a hand edit, and a reader
never fails on that with a traceback.

* A file replaced whole (``result.json``, ``jobs.json``) that does not parse is *unreadable*: the reader
  gets ``None`` and the reason, and says in one line what it does about it.
* A file appended to (``metrics.jsonl``) keeps every whole row; a last line cut by a kill is dropped (and a
  garbled line elsewhere is skipped), so the rows read are exactly the rows that were written whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path) -> tuple[Any, str | None]:
    """(value, None) for a JSON file that parses; (None, reason) when it is missing, cut short, binary or
    not JSON. The reason is a few words, for a one-line message naming the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return None, "no such file"
    except OSError as e:
        return None, f"cannot be read: {e.strerror or e}"
    if not data.strip():
        return None, "it is empty"
    try:
        return json.loads(data.decode("utf-8")), None
    except UnicodeDecodeError:
        return None, "it is not UTF-8 text"
    except ValueError as e:
        return None, f"not valid JSON: {e.msg if isinstance(e, json.JSONDecodeError) else e}"


def read_json_object(path: str | Path) -> tuple[dict | None, str | None]:
    """``read_json`` for a file that must hold a JSON object."""
    value, why = read_json(path)
    if why is None and not isinstance(value, dict):
        return None, f"it holds a JSON {type(value).__name__}, not an object"
    return value, why


def jsonl_rows(path: str | Path) -> list[dict]:
    """The whole rows (JSON objects with an integer ``step``) of a metrics file, in order; a line cut short
    by a kill, or any line that does not parse, is left out. A missing or unreadable file has none."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return []
    rows = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row.get("step"), bool):
            rows.append(row)
    return rows


class WriteFailed(RuntimeError):
    """A run could not write one of its files (a full disk, a file-size limit, a folder or file made
    unwritable): ``path`` and ``step`` say which and when, ``cause`` is the ``OSError``. The trainer raises it
    so that ``sdpg-train`` can say in one line what failed and where the run can resume from."""

    def __init__(self, path: str | Path, step: int | None, cause: OSError):
        self.path, self.step, self.cause = Path(path), step, cause
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(f"cannot write {self.path} ({reason})")
