"""Training: configuration, data and prompts, rewards, rollouts, the embedded task, and the RL loop.

Imports only ``sdpg.objective`` and ``sdpg.paths``; orchestration wraps it, it never imports orchestration."""
