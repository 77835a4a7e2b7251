"""Running trainer configs as submitit jobs: local processes, in-process (debug) or SLURM arrays.

``TrainJob`` is the submitted callable. It is submitit-checkpointable: on SIGUSR2 (preemption or
the time limit's warning) it lets the current step finish, the trainer saves a checkpoint, and the
job requeues itself; the requeued job resumes from that checkpoint and keeps writing to the same
MLflow run. Multi-task jobs get the torch.distributed environment from submitit.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from sdpg.orchestration.specs import SlurmProfile

EXECUTORS = ("local", "debug", "slurm")


class TrainJob:
    """A picklable training job: a resolved config dict, its MLflow run, nothing else."""

    def __init__(self, config: dict, tracking_uri: str | None = None, run_id: str | None = None,
                 stop_after_step: int | None = None):
        self.config, self.tracking_uri, self.run_id = config, tracking_uri, run_id
        self.stop_after_step = stop_after_step  # rehearsals: stop as a preemption would, then requeue

    def __call__(self) -> dict:
        from sdpg.training.config import build_config
        from sdpg.training.trainer import default_sinks, latest_checkpoint, train

        cfg = build_config(self.config)
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # SLURM's tasks are the ranks, whatever was inherited
            _export_distributed_env()
        if int(os.environ.get("RANK", "0")) != 0:  # other ranks train; rank 0 logs and checkpoints
            return train(cfg, sinks=[], should_stop=_usr2_flag())
        stop = threading.Event()
        previous = signal.getsignal(signal.SIGUSR2)
        signal.signal(signal.SIGUSR2, lambda signum, frame: stop.set())
        out = Path(cfg.run.output_dir)
        ck = latest_checkpoint(out) if cfg.run.resume else None
        start = int(ck.stem.split("_")[1]) if ck else 0
        sinks = default_sinks(out, start, cfg.run.total_steps)
        mlflow_sink = None
        if self.tracking_uri and self.run_id:
            from sdpg.orchestration.tracking import MlflowSink

            mlflow_sink = MlflowSink(self.tracking_uri, self.run_id)
            sinks.append(mlflow_sink)
        try:
            result = train(cfg, sinks=sinks, should_stop=stop.is_set, stop_after_step=self.stop_after_step)
        except BaseException:
            if mlflow_sink is not None:
                mlflow_sink.finish("FAILED")
            raise
        finally:
            signal.signal(signal.SIGUSR2, previous if previous is not None else signal.SIG_DFL)
        if result["status"] == "interrupted":
            if mlflow_sink is not None:
                from mlflow.entities import RunStatus
                from sdpg.orchestration.tracking import retry

                retry(mlflow_sink.c.update_run, mlflow_sink.run_id, status=RunStatus.to_string(RunStatus.SCHEDULED))
            if callable(previous) and stop.is_set():  # submitit's handler: checkpoint() below, requeue, exit
                previous(signal.SIGUSR2, None)
            return result
        if mlflow_sink is not None:
            mlflow_sink.finish("FINISHED")
        return result

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit when the job is signalled; the trainer has already saved its state,
        so the same job is simply submitted again (it resumes from the newest checkpoint)."""
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.config, self.tracking_uri, self.run_id))


def _usr2_flag():
    """A should_stop for non-zero ranks: set by SIGUSR2 (the trainer ORs it over ranks)."""
    stop = threading.Event()
    signal.signal(signal.SIGUSR2, lambda signum, frame: stop.set())
    return stop.is_set


def _export_distributed_env() -> None:
    """MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from SLURM via submitit."""
    try:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except Exception as e:  # not under submitit: torchrun already set them
        print(f"[sdpg] torch.distributed environment not exported by submitit: {e}", file=sys.stderr)


def make_executor(kind: str, folder: str | Path, profile: SlurmProfile | None, name: str, max_parallel: int):
    """A submitit executor for ``local`` (subprocesses), ``debug`` (in this process) or ``slurm``."""
    import submitit

    if kind == "debug":
        ex = submitit.AutoExecutor(folder=folder, cluster="debug")
        return ex
    if kind == "local":
        ex = submitit.AutoExecutor(folder=folder, cluster="local")
        ex.update_parameters(timeout_min=profile.timeout_min if profile else 24 * 60, tasks_per_node=1)
        return ex
    p = profile or SlurmProfile()
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=p.max_num_timeout)
    params: dict[str, Any] = dict(
        name=name, timeout_min=p.timeout_min, nodes=p.nodes, tasks_per_node=p.tasks_per_node,
        cpus_per_task=p.cpus_per_task, mem_gb=p.mem_gb, slurm_array_parallelism=max_parallel,
        slurm_signal_delay_s=p.signal_delay_s,
    )
    if p.gpus_per_node:
        params["gpus_per_node"] = p.gpus_per_node
    if p.partition:
        params["slurm_partition"] = p.partition
    extra = dict(p.additional_parameters)
    if p.account:
        extra["account"] = p.account
    if p.qos:
        extra["qos"] = p.qos
    if extra:
        params["slurm_additional_parameters"] = extra
    if p.setup:
        params["slurm_setup"] = list(p.setup)
    ex.update_parameters(**params)
    return ex
