"""The one way sdpg writes a file or makes a folder: never through a symbolic link, secrets redacted.

Every writer in the package (run folders, ``config.yaml``, ``result.json``, ``metrics.jsonl``, lock files,
checkpoints, ``jobs.json``, reports, sweep exports, rehearsal reports, the built-in model cache) goes through
this module, so the guarantees below hold everywhere or nowhere:

* **No write follows a link.** A file is opened with ``O_NOFOLLOW`` on its last component, inside a folder
  opened without following links (``openat``-style, by descriptor, so a link swapped in between a check
  and the write is not followed either). A whole-file write goes to a temporary file in the same folder,
  is fsynced and renamed over the target: a reader sees the old file or the new one, never half of one.
* **Folders are made without following links below the output root.** ``ensure_dir(path, root=R)`` follows
  ``R`` and the folders above it (the user named them; a home folder or a scratch mount may well be a link),
  and refuses a link anywhere between ``R`` and ``path``. Without ``root`` the nearest existing ancestor is
  the root: folders made now are checked, folders already there are trusted.
* **A link found where sdpg writes** is ``LinkRefused`` (a ``ValueError`` subclass the console scripts turn
  into one line and exit code 2) naming the path; nothing is written, the link and its target are unchanged.
* **Text is redacted** (``sdpg.training.redact.redact``: secret patterns and values of secret-looking
  environment variables) before it reaches disk, unless a caller writes bytes whose exact value matters
  (checkpoints, model weights).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class LinkRefused(ValueError):
    """A symbolic link (or something that is not a plain file / folder) where sdpg was about to write."""

    def __init__(self, path: str | Path, what: str = "a symbolic link"):
        self.path = Path(path)
        why = "sdpg never writes through links" if "link" in what else "sdpg writes only plain files and folders"
        super().__init__(f"{path}: is {what}; {why} (remove it or choose another path); nothing was written")


class WriteRefused(ValueError):
    """A path sdpg cannot write to (a special file such as ``/dev/full``, a read-only or pseudo filesystem):
    one sentence naming it and why."""


def _redact(text: str) -> str:
    from sdpg.training.redact import redact

    return redact(text)


def expand_path(value: str | os.PathLike, key: str = "path") -> Path:
    """A path setting as the user meant it: a leading ``~`` is the home folder and ``$VAR`` / ``${VAR}`` are
    environment variables. A variable that is not set (or a ``~user`` that does not exist) is a
    ``WriteRefused`` naming ``key``: sdpg never makes a folder literally named ``$HOME`` or ``~``."""
    s = os.fspath(value)
    if not isinstance(s, str):
        s = os.fsdecode(s)
    out = os.path.expandvars(os.path.expanduser(s)) if ("$" in s or s.startswith("~")) else s
    if out.startswith("~") or "$" in out:
        bad = "~" if out.startswith("~") else out[out.index("$") :].split("/")[0]
        raise WriteRefused(f"{key}: {s!r}: {bad} is not set (sdpg expands ~ and $VAR in paths; no folder named {bad})")
    return Path(out)


def _open_dir(path: str | Path) -> int:
    return os.open(path, _DIR_FLAGS)


def _enter(dfd: int, name: str, where: Path) -> int:
    """Open the sub-folder ``name`` of the folder open as ``dfd`` without following a link."""
    try:
        return os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=dfd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            try:
                st = os.lstat(name, dir_fd=dfd)
            except OSError:
                raise e from None
            if stat.S_ISLNK(st.st_mode):
                raise LinkRefused(where) from None
            raise WriteRefused(f"{where}: is a file, not a folder; nothing was written") from None
        raise


def _nearest_existing(p: Path) -> Path:
    q = p
    while not os.path.lexists(q) and q != q.parent:
        q = q.parent
    return q


def _walk(path: Path, root: Path | None) -> int:
    """A descriptor of folder ``path`` (made when absent), reached from ``root`` without following links."""
    path = Path(os.path.abspath(path))
    if root is None:
        root = _nearest_existing(path)
    root = Path(os.path.abspath(root))
    try:
        rel = path.relative_to(root)
    except ValueError:
        raise ValueError(f"{path} is not inside {root}") from None
    _make_root(root)
    fd = _open_dir(root)
    here = root
    try:
        for part in rel.parts:
            here = here / part
            try:
                os.mkdir(part, 0o777, dir_fd=fd)
            except FileExistsError:
                pass
            except OSError as e:
                raise _refusal(here, e) from e
            nfd = _enter(fd, part, here)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _make_root(root: Path) -> None:
    if os.path.isdir(root):
        return
    if os.path.lexists(root) and not os.path.exists(root):
        raise LinkRefused(root, "a symbolic link to nothing")
    if os.path.lexists(root):
        raise WriteRefused(f"{root}: is a file, not a folder; nothing was written")
    try:
        _make_root(root.parent) if root.parent != root else None
        os.mkdir(root)
    except FileExistsError:
        pass
    except OSError as e:
        raise _refusal(root, e) from e


def _refusal(path: Path, e: OSError) -> WriteRefused:
    return WriteRefused(f"{path}: cannot be written ({e.strerror or e}); nothing was written")


def ensure_dir(path: str | Path, root: str | Path | None = None) -> Path:
    """Make folder ``path`` (and its parents) unless present; a link between ``root`` and ``path`` is
    ``LinkRefused``. Returns ``path``."""
    os.close(_walk(Path(path), None if root is None else Path(root)))
    return Path(path)


@contextlib.contextmanager
def _folder(path: Path, root: str | Path | None) -> Iterator[int]:
    fd = _walk(path.parent, None if root is None else Path(root))
    try:
        yield fd
    finally:
        os.close(fd)


def _check_target(dfd: int, name: str, path: Path) -> None:
    try:
        st = os.lstat(name, dir_fd=dfd)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise LinkRefused(path)
    if not stat.S_ISREG(st.st_mode):
        raise LinkRefused(path, "not a plain file")


def _fsync_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.fsync(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, root: str | Path | None = None, fsync: bool = True) -> Iterator[IO[Any]]:
    """A file object whose contents replace ``path`` whole when the block ends without an error: written to a
    temporary file in the same folder, fsynced, renamed over ``path`` (folder fsynced). An error inside the
    block leaves ``path`` as it was. ``mode`` is ``"w"`` (text; not redacted: use ``write_text``) or ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode {mode!r}")
    p = Path(path)
    with _folder(p, root) as dfd:
        _check_target(dfd, p.name, p)
        tmp_name = None
        for _ in range(100):
            cand = f".{p.name}.{next(tempfile._get_candidate_names())}.tmp"  # type: ignore[attr-defined]
            try:
                fd = os.open(cand, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
            except FileExistsError:
                continue
            except OSError as e:
                raise _refusal(p, e) from e
            tmp_name = cand
            break
        if tmp_name is None:
            raise _refusal(p, OSError(errno.EEXIST, "no temporary name free"))
        try:
            f = os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8")
        except BaseException:
            os.close(fd)
            os.unlink(tmp_name, dir_fd=dfd)
            raise
        try:
            with f:
                yield f
                f.flush()
                if fsync:
                    _fsync_fd(f.fileno())
            _check_target(dfd, p.name, p)  # a link planted while writing is refused too
            os.rename(tmp_name, p.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            tmp_name = None
            if fsync:
                _fsync_fd(dfd)
        except OSError as e:
            if isinstance(e, (LinkRefused, WriteRefused)):
                raise
            raise _refusal(p, e) from e
        finally:
            if tmp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name, dir_fd=dfd)


def write_text(path: str | Path, text: str, *, root: str | Path | None = None, redact: bool = True) -> Path:
    """Replace ``path`` whole with ``text`` (redacted unless ``redact=False``), atomically, never through a link."""
    with atomic_open(path, "w", root=root) as f:
        f.write(_redact(text) if redact else text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes, *, root: str | Path | None = None) -> Path:
    """Replace ``path`` whole with ``data``, atomically, never through a link (bytes are not redacted)."""
    with atomic_open(path, "wb", root=root) as f:
        f.write(data)
    return Path(path)


def write_json(path: str | Path, obj: Any, *, root: str | Path | None = None, **dump: Any) -> Path:
    """``json.dumps(obj, **dump)`` written with ``write_text`` (redacted)."""
    import json

    return write_text(path, json.dumps(obj, **dump), root=root)


def save_figure(fig: Any, out: str | Path, dpi: int = 200) -> tuple[Path, Path]:
    """A matplotlib figure as ``out``.png (``dpi``) and ``out``.pdf, each written like ``write_bytes``."""
    out = Path(out)
    png, pdf = out.with_suffix(".png"), out.with_suffix(".pdf")
    with atomic_open(png, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    with atomic_open(pdf, "wb") as f:
        fig.savefig(f, format="pdf")
    return png, pdf


def _open_nofollow(path: Path, flags: int, root: str | Path | None, perm: int = 0o644) -> int:
    with _folder(path, root) as dfd:
        try:
            return os.open(path.name, flags | _NOFOLLOW | os.O_CLOEXEC, perm, dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise LinkRefused(path) from None
            raise _refusal(path, e) from e


class _RedactingAppend:
    """A text file open for appending whose every ``write`` is redacted."""

    def __init__(self, f: IO[str]):
        self._f = f

    def write(self, s: str) -> int:
        return self._f.write(_redact(s))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _RedactingAppend:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def open_append(path: str | Path, *, root: str | Path | None = None, redact: bool = True) -> Any:
    """``path`` open for appending text (created when absent), never through a link; each write redacted."""
    p = Path(path)
    fd = _open_nofollow(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, root)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LinkRefused(p, "not a plain file")
    except BaseException:
        os.close(fd)
        raise
    f = os.fdopen(fd, "a", encoding="utf-8")
    return _RedactingAppend(f) if redact else f


def open_lock(path: str | Path, *, root: str | Path | None = None) -> int:
    """A descriptor of lock file ``path`` (``O_RDWR | O_CREAT``), never through a link; the caller closes it."""
    p = Path(path)
    fd = _open_nofollow(p, os.O_RDWR | os.O_CREAT, root)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LinkRefused(p, "not a plain file")
    return fd


def check_writable_target(path: str | Path, *, allow_link: bool = False) -> None:
    """Refuse, before anything is written, a link (unless ``allow_link``: an output root the user named may be
    one, but never a dangling one) or a special file (``/dev/full``, a FIFO) at ``path``, and a path on a
    system pseudo filesystem (``/proc``, ``/sys``, ``/dev`` except ``/dev/shm``)."""
    p = Path(os.path.abspath(path))
    if os.path.islink(p) and not (allow_link and os.path.exists(p)):
        raise LinkRefused(p, "a symbolic link" if os.path.exists(p) else "a symbolic link to nothing")
    if os.path.exists(p) and not (os.path.isfile(p) or os.path.isdir(p)):
        raise LinkRefused(p, "not a plain file")
    top = p.parts[1] if len(p.parts) > 1 else ""
    if top in ("proc", "sys") or (top == "dev" and (len(p.parts) < 3 or p.parts[2] != "shm")):
        raise WriteRefused(f"{path}: is under /{top}, a system folder, not a place for outputs; nothing was written")


def check_no_links(folder: str | Path, names: tuple[str, ...] = (), sub: tuple[str, ...] = ()) -> None:
    """Refuse (``LinkRefused``), before a command writes anything, a link at ``folder/name`` for each of
    ``names``, or anywhere directly inside ``folder/s`` for each of ``sub`` (e.g. ``checkpoints``)."""
    folder = Path(folder)
    if os.path.islink(folder) and not os.path.exists(folder):
        raise LinkRefused(folder, "a symbolic link to nothing")
    for name in (*names, *sub):
        p = folder / name
        if os.path.islink(p):
            raise LinkRefused(p)
    for s in sub:
        d = folder / s
        if os.path.isdir(d):
            for child in sorted(os.listdir(d)):
                if os.path.islink(d / child):
                    raise LinkRefused(d / child)


def check_no_links_below(root: str | Path, paths: list[str | Path] | tuple[str | Path, ...]) -> None:
    """Refuse (``LinkRefused``) a link at any of ``paths`` or at a folder between ``root`` and it (paths
    outside ``root``: only the path itself is checked); run before a command writes anything."""
    root = Path(os.path.abspath(root))
    for path in paths:
        p = Path(os.path.abspath(path))
        try:
            rel = p.relative_to(root)
        except ValueError:
            rel, here = Path(p.name), p.parent
        else:
            here = root
        for part in rel.parts:
            here = here / part
            if os.path.islink(here):
                raise LinkRefused(here)
