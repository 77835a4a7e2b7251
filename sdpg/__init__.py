"""sdpg: run, ablate, sweep and report Self-Distilled Policy Gradient experiments."""

__version__ = "0.1.0"


def train(config):
    """Train one run from a ``TrainConfig`` (or a dict / YAML path); see ``sdpg.training.trainer``."""
    from sdpg.training.trainer import train as _train

    return _train(config)
