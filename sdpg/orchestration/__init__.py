"""Orchestration: ablation and sweep specs, executors (local and SLURM through submitit), MLflow tracking,
and a dev SLURM cluster. Wraps ``sdpg.training``; the trainer never imports it."""
