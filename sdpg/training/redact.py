"""Secrets out of everything the tool writes or prints: params, tags, artifacts, console lines, job scripts,
error messages.

Redaction works by value as well as by name, because a secret does not announce itself by where it sits:

* credentials in URIs (``postgresql://user:pw@host``, ``s3://key:secret@bucket``) -> ``scheme://***@host``;
* secret-looking query-string or ``key=value`` parameters (``?password=..``, ``&token=..``, ``api_key=..``);
* known token shapes: GitHub (``ghp_``, ``gho_``, ``github_pat_``...), Hugging Face (``hf_``), OpenAI-style
  (``sk-``), AWS access key ids (``AKIA``/``ASIA``), Slack (``xox?-``), JWTs, ``Bearer`` headers;
* every value of an environment variable whose name looks secret (TOKEN, SECRET, PASSWORD, PASSWD, KEY,
  PAT, CREDENTIAL, AUTH, PRIVATE...), wherever it appears.

The environment is read from a snapshot (``dict(os.environ)`` taken once, or passed in): iterating the live
``os.environ`` while another thread (MLflow's telemetry) changes it raised ``KeyError`` at random.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
MIN_SECRET_LEN = 6
"""Shorter environment values are not replaced (``1``, ``yes``... would blank out ordinary text)."""

SECRET_NAME = re.compile(
    r"(TOKEN|SECRET|PASSW(OR)?D|PASSPHRASE|(^|_)PWD($|_)|(^|_)KEY($|_)|APIKEY|API_KEY|ACCESS_KEY|PRIVATE"
    r"|(^|_)PAT($|_)|CREDENTIAL|(^|_)AUTH|SESSION|COOKIE|SIGNATURE|(^|_)DSN($|_))",
    re.IGNORECASE,
)
"""Names of environment variables (and query / key=value parameters) whose values are secrets."""

_SAFE_ENV_NAMES = {"SSH_AUTH_SOCK", "GPG_AGENT_INFO", "XAUTHORITY", "TOKENIZERS_PARALLELISM", "PATH", "PWD", "OLDPWD"}
"""Secret-looking names that hold paths or sockets, not secrets (left alone, or every path would vanish)."""

URI_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<cred>[^\s'\"<>]+@)", re.IGNORECASE)
"""Everything between ``scheme://`` and the last ``@`` of the URI: a password holding ``#``, ``?`` or ``/``
(not percent-encoded, as people write them) is masked whole; a later ``@`` in the path masks more, never less."""
QUERY_SECRET = re.compile(
    r"(?P<key>(?<![\w.-])[\w.-]*?(?:token|secret|passw(?:or)?d|pwd|api[_-]?key|apikey|access[_-]?key|private[_-]?key"
    r"|credentials?|client[_-]?secret|signature))(?P<sep>=|:[ \t]*)(?P<val>\"[^\"\n]*\"|'[^'\n]*'|[^\s&;,'\"}\])]+)",
    re.IGNORECASE,
)
"""``password=..`` / ``?token=..`` / ``secret: ..``: the key must end in the secret word (``max_prompt_tokens``
is not a secret)."""
TOKEN_SHAPES = re.compile(
    r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{20,}|hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,}"
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}|xox[abposr]-[A-Za-z0-9-]{10,}|glpat-[A-Za-z0-9_-]{16,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
)
"""Known token shapes, also right after ``_`` or ``-`` (``key_hf_...``): only a letter or digit before one
means it is part of a longer word."""
BEARER = re.compile(r"(?P<pre>\b(?:Bearer|Basic|token)\s+)[A-Za-z0-9._~+/=-]{12,}", re.IGNORECASE)


def env_snapshot() -> dict[str, str]:
    """A copy of the environment taken now, safely: ``dict(os.environ)`` iterates keys and then reads each,
    so a variable removed meanwhile by another thread (MLflow's telemetry) raised ``KeyError``; the copy
    of the underlying dict is one C-level operation under the GIL."""
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict):
        raw = dict(data)
        decode = getattr(os.environ, "decodevalue", None) or (lambda b: b.decode() if isinstance(b, bytes) else b)
        decodek = getattr(os.environ, "decodekey", None) or decode
        out = {}
        for k, v in raw.items():
            try:
                out[decodek(k)] = decode(v)
            except (UnicodeDecodeError, AttributeError):
                continue
        return out
    for _ in range(10):
        try:
            return dict(os.environ)
        except (KeyError, RuntimeError):
            continue
    return {}


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-named variables, longest first (so a value containing another is masked whole)."""
    env = env_snapshot() if env is None else env
    vals = {
        v
        for k, v in list(env.items())
        if k not in _SAFE_ENV_NAMES and SECRET_NAME.search(k) and isinstance(v, str) and len(v) >= MIN_SECRET_LEN
    }
    return sorted(vals, key=len, reverse=True)


def redact(text: Any, env: Mapping[str, str] | None = None, extra: list[str] | tuple[str, ...] = ()) -> str:
    """``text`` as a string with every secret it holds replaced by ``***`` (see the module doc);
    ``extra``: more literal values to mask (e.g. a password given on the command line)."""
    s = str(text)
    for v in list(extra) + secret_values(env):
        if v and v in s:
            s = s.replace(v, MASK)
    s = URI_CREDENTIALS.sub(lambda m: m.group("scheme") + MASK + "@", s)
    s = QUERY_SECRET.sub(lambda m: m.group("key") + m.group("sep") + MASK, s)
    s = TOKEN_SHAPES.sub(MASK, s)
    s = BEARER.sub(lambda m: m.group("pre") + MASK, s)
    return s


def redact_obj(obj: Any, env: Mapping[str, str] | None = None, extra: tuple[str, ...] = ()) -> Any:
    """A copy of a nested dict / list structure with every string (and every value under a secret-named key)
    redacted; numbers and booleans under ordinary keys stay as they are."""
    env = env_snapshot() if env is None else env
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(k, str) and SECRET_NAME.search(k.rsplit(".", 1)[-1]) and v not in (None, "", False):
                out[k] = MASK if not isinstance(v, (dict, list)) else redact_obj(v, env, extra)
            else:
                out[k] = redact_obj(v, env, extra)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_obj(v, env, extra) for v in obj)
    if isinstance(obj, str):
        return redact(obj, env, extra)
    return obj


def contains_secret(text: str, env: Mapping[str, str] | None = None) -> bool:
    """True when ``redact`` would change ``text``."""
    return redact(text, env) != str(text)


SHELL_EXPANSION = re.compile(r"""(["']?)(\$\{[^}]*\}|\$\([^)]*\)|\$\w+|`[^`]*`)\1""")
"""A shell expansion (``$VAR``, ``${VAR}``, ``$(cmd)``, backticks), optionally quoted: a reference to a
secret, not the secret."""


def holds_literal_secret(shell_line: str, env: Mapping[str, str] | None = None) -> bool:
    """True when a shell line written into a job script would carry a secret itself (a token, URI
    credentials, a ``PASSWORD=...`` literal, a secret environment variable's value), not a reference to
    one: ``export HF_TOKEN=$HF_TOKEN`` or ``$(cat ~/.token)`` are fine."""
    literal = SHELL_EXPANSION.sub("", shell_line)
    literal = re.sub(r"://:?@", "://", literal)  # credentials that were only expansions
    return contains_secret(literal, env)


# --------------------------------------------------------------------------------------------
# References instead of secrets (what a job pickle holds), and the console


def find_secrets(text: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The secret substrings of ``text`` (the parts ``redact`` masks), longest first."""
    s = REFERENCE.sub(" ", str(text))  # a reference is not a secret (nor is what surrounds it)
    found = {v for v in secret_values(env) if v in s}
    found |= {m.group("cred")[:-1] for m in URI_CREDENTIALS.finditer(s)}
    found |= {m.group("val") for m in QUERY_SECRET.finditer(s)}
    found |= {m.group(0) for m in TOKEN_SHAPES.finditer(s)}
    found |= {m.group(0)[len(m.group("pre")) :] for m in BEARER.finditer(s)}
    found = {f for f in found if f and not REFERENCE.fullmatch(f) and f != MASK}
    return sorted(found, key=len, reverse=True)


REFERENCE = re.compile(r"\$\{(SDPG_SECRET_[0-9a-f]{16})\}")
"""How a secret is written where a job pickle would otherwise hold it: ``${SDPG_SECRET_<hash>}``, the name of
an environment variable the submitting process sets and the job inherits (local processes inherit the
environment; ``sbatch`` exports it by default)."""


def to_references(text: str) -> str:
    """``text`` with every secret replaced by a reference ``${SDPG_SECRET_<hash>}``; the value is put into
    this process's environment under that name (so ``redact`` masks it too, by its secret-looking name)."""
    import hashlib

    s = str(text)
    for secret in find_secrets(s):
        name = "SDPG_SECRET_" + hashlib.sha256(secret.encode()).hexdigest()[:16]
        os.environ[name] = secret
        s = s.replace(secret, "${" + name + "}")
    return s


def from_references(text: str) -> str:
    """``text`` with every ``${SDPG_SECRET_<hash>}`` replaced by the environment's value; a reference whose
    variable is missing (a job started without the submitter's environment) is a ``KeyError`` naming it."""

    def value(m: re.Match) -> str:
        try:
            return os.environ[m.group(1)]
        except KeyError:
            raise KeyError(
                f"{m.group(1)} is not in this job's environment (the job needs a secret its submitter had; "
                f"submit with the environment exported)"
            ) from None

    return REFERENCE.sub(value, text) if "${SDPG_SECRET_" in text else text


class RedactingStream:
    """A text stream (``sys.stdout``, ``sys.stderr``, a log file) whose every ``write`` is redacted."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, s: str) -> int:
        self._stream.write(redact(s) if isinstance(s, str) and s.strip() else s)
        return len(s)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def redact_console() -> Any:
    """Make ``sys.stdout``, ``sys.stderr`` and every logging handler writing to them redact what they write;
    returns a function that puts them back. Idempotent: already redacting streams are left as they are."""
    import logging
    import sys

    saved: list[tuple[Any, str, Any]] = []
    originals = {}
    for attr in ("stdout", "stderr"):
        stream = getattr(sys, attr)
        if stream is not None and not isinstance(stream, RedactingStream):
            wrapped = RedactingStream(stream)
            originals[id(stream)] = wrapped
            saved.append((sys, attr, stream))
            setattr(sys, attr, wrapped)
    loggers = [logging.getLogger()] + [
        lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for h in list(lg.handlers):
            stream = getattr(h, "stream", None)
            if isinstance(h, logging.StreamHandler) and stream is not None and id(stream) in originals:
                saved.append((h, "stream", stream))
                h.stream = originals[id(stream)]

    def restore() -> None:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)

    return restore
