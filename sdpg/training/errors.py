"""The error every bad input becomes: one sentence naming the file, the key and the value (exit code 2).

Below everything else of ``sdpg.training`` so that any module can raise it without importing the configuration."""

from __future__ import annotations

from sdpg.training.redact import redact


class ConfigError(ValueError):
    """A bad config: the message names the source, the key and the value."""


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters in its middle, for messages about values that may be huge: the end is
    kept, since a long path's file name or a long value's last part is what tells a reader which one it is."""
    if len(text) <= limit:
        return text
    head = (limit - 3) * 2 // 5
    return text[:head] + "..." + text[len(text) - (limit - 3 - head) :]


def short_repr(value: object, limit: int = 80, redacted: bool = True) -> str:
    """``repr(value)`` shortened by :func:`shorten`, secrets masked first (``redacted``)."""
    text = repr(value)
    if redacted:
        text = redact(text)
    return shorten(text, limit)
