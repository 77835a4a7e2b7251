"""Reading sources into raw rows, and writing outputs whole or not at all (with their data cards).

Sources: ``hf:ID_OR_FOLDER`` goes through ``datasets.load_dataset`` (hub id, or a local folder of data files:
the same call), or ``datasets.load_from_disk`` for a folder written by ``save_to_disk``; a local ``.parquet``,
``.jsonl``, ``.json`` (an array) or ``.csv`` file is read directly. Every problem with a source is an
input error naming the file, the key and the value (``sdpg.training.config.ConfigError``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdpg.training.config import ConfigError

LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")
OUTPUT_SUFFIXES = (".jsonl", ".parquet")


@dataclass
class Source:
    """What was read, and what the data card says about where it came from."""

    raws: list[dict]
    meta: dict[str, Any] = field(default_factory=dict)


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_text(p: Path) -> str:
    data = p.read_bytes()
    if b"\x00" in data[:65536]:
        raise ConfigError(f"{p}: is a binary file, not {p.suffix.lstrip('.').upper()} text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: byte {e.start} is not UTF-8 text") from None


def read_local(p: Path) -> list[dict]:
    if p.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with p.open("rb") as f:
            head = f.read(4)
        if head != b"PAR1":
            raise ConfigError(f"{p}: is not a parquet file (starts with {head!r}, not b'PAR1')")
        try:
            return pq.read_table(p).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise ConfigError(f"{p}: unreadable parquet: {e}") from None
    text = _read_text(p)
    if p.suffix == ".csv":
        try:
            return [dict(r) for r in csv.DictReader(io.StringIO(text, newline=""))]
        except csv.Error as e:
            raise ConfigError(f"{p}: not CSV: {e}") from None
    if p.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: not JSON: {e}") from None
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
        if bad is not None:
            raise ConfigError(f"{p}: item {bad} is a {type(rows[bad]).__name__}, not an object")
        return rows
    rows = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: line {i + 1} is not JSON ({e.msg})") from None
        if not isinstance(r, dict):
            raise ConfigError(f"{p}: line {i + 1} is a JSON {type(r).__name__}, not an object")
        rows.append(r)
    return rows


def read_hf(ref: str, split: str, revision: str | None, name: str | None) -> Source:
    """A ``datasets`` source: a hub id or a local folder, through the same ``load_dataset`` call."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"source 'hf:{ref}' needs the 'datasets' package (pip install 'sdpg[data]')") from None
    folder = Path(ref)
    meta: dict[str, Any] = {"kind": "datasets", "id": ref, "split": split, "revision": revision, "config": name}
    try:
        if folder.is_dir() and ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(folder))
            meta["kind"] = "datasets.load_from_disk"
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ConfigError(f"source 'hf:{ref}': split {split!r} not in {sorted(ds)}")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(ref, name, split=split, revision=revision)
    except ConfigError:
        raise
    except Exception as e:  # the library's many error types: one line naming the source
        raise ConfigError(f"source 'hf:{ref}' (split {split!r}, revision {revision!r}): {type(e).__name__}: {e}") from None
    if not folder.exists():  # a hub id: the commit the revision resolved to, so the card pins the data
        try:
            from huggingface_hub import HfApi

            meta["resolved_revision"] = HfApi().dataset_info(ref, revision=revision).sha
        except Exception:  # offline or a private mirror: the card says so
            meta["resolved_revision"] = "unknown (hub not reachable)"
    meta["fingerprint"] = getattr(ds, "_fingerprint", None)
    meta["columns"] = list(ds.column_names)
    return Source([dict(r) for r in ds], meta)


def read_source(source: str, split: str = "train", revision: str | None = None, name: str | None = None) -> Source:
    """Raw rows of ``source`` (see the module docstring)."""
    if source.startswith("hf:"):
        return read_hf(source[3:], split, revision, name)
    p = Path(source)
    if p.is_dir():
        raise ConfigError(f"source {source!r} is a folder: name a file, or hf:{source} for a datasets folder")
    if not p.is_file():
        from sdpg.training import embedded

        if embedded.task_of_source(source) is not None:  # a built-in task's rows
            return Source([dict(r) for r in embedded.rows_of(source, split)], {"kind": "builtin", "id": source, "split": split})
        raise ConfigError(f"source {source!r}: no such file")
    if p.suffix not in LOCAL_SUFFIXES:
        raise ConfigError(f"source {source!r}: expected one of {', '.join(LOCAL_SUFFIXES)} (or hf:ID)")
    return Source(read_local(p), {"kind": "file", "path": str(p), "sha256": _sha256_file(p)})


# --------------------------------------------------------------------------------------------
# Writing: rows, cards, and refusing to replace a different dataset
# --------------------------------------------------------------------------------------------


def rows_bytes(rows: list[dict], suffix: str) -> bytes:
    """The bytes of ``rows`` as JSONL or parquet (deterministic: no timestamps in the file)."""
    if suffix == ".jsonl":
        return b"".join(json.dumps(r, ensure_ascii=False, sort_keys=False).encode("utf-8") + b"\n" for r in rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue().to_pybytes()


def card_paths(out: Path) -> tuple[Path, Path]:
    """``data.jsonl`` -> (``data.jsonl.card.md``, ``data.jsonl.card.json``): one card per file, so the plain and
    the verl file of one dataset (``x.jsonl``, ``x.parquet``) each have their own."""
    return out.with_name(out.name + ".card.md"), out.with_name(out.name + ".card.json")


def check_output(out: Path, overwrite: bool, new_bytes: bytes | None = None, what: str = "--out") -> None:
    """Refuse an output path that holds something else, unless ``overwrite``. Holding the same bytes is fine."""
    if out.suffix not in OUTPUT_SUFFIXES:
        raise ConfigError(f"{what} {str(out)!r}: expected a .jsonl or .parquet file name")
    if out.is_symlink() or out.is_dir():
        raise ConfigError(f"{what} {str(out)!r}: is a {'symlink' if out.is_symlink() else 'folder'}; name a plain file")
    if not out.parent.is_dir():
        raise ConfigError(f"{what} {str(out)!r}: folder {str(out.parent)!r} does not exist")
    if out.exists() and not overwrite:
        from sdpg.training.dataprep.card import load_card

        # before the work: a file without a data card is not ours; after it: only the same bytes may stay
        if (new_bytes is None and load_card(out) is None) or (new_bytes is not None and out.read_bytes() != new_bytes):
            raise ConfigError(f"{what} {str(out)!r} already holds a different dataset; pass --overwrite to replace it")


def write_atomic(files: list[tuple[Path, bytes]]) -> None:
    """Write every file to a temporary name beside it, then rename each into place (data files last). A link
    at any of the paths is refused (``sdpg.fsio.LinkRefused``) before anything is written."""
    from sdpg.fsio import LinkRefused

    for path, _ in files:
        if os.path.islink(path):
            raise LinkRefused(path)
    tmps = []
    umask = os.umask(0)
    os.umask(umask)
    try:
        for path, data in files:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.fchmod(fd, 0o666 & ~umask)  # as open() would create it (mkstemp makes 0600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            tmps.append((tmp, path))
        for tmp, path in sorted(tmps, key=lambda t: t[1].suffix in OUTPUT_SUFFIXES):
            os.replace(tmp, path)
    finally:
        for tmp, _ in tmps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def content_sha256(rows: list[dict]) -> str:
    return hashlib.sha256(rows_bytes(rows, ".jsonl")).hexdigest()
