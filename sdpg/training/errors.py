"""The error every bad input becomes: one sentence naming the file, the key and the value (exit code 2).

Below everything else of ``sdpg.training`` so that any module can raise it without importing the configuration."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad config: the message names the source, the key and the value."""
