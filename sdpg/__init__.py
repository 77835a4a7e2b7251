"""sdpg: run, ablate, sweep and report Self-Distilled Policy Gradient experiments."""

__version__ = "0.1.0"

from sdpg import _media  # noqa: F401,E402  # before transformers or vLLM: hide media builds for another torch


def train(config):
    """Train one run from a ``TrainConfig`` (or a dict / YAML path); see ``sdpg.training.trainer``."""
    from sdpg.training.trainer import train as _train

    return _train(config)
