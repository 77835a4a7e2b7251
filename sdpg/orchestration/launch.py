"""The one job type of sdpg-ablate and sdpg-sweep, and the executors that run it.

``TrainJob`` trains one run and owns its MLflow run's life cycle: RUNNING while it trains, FINISHED
when done, FAILED with the error as a tag and the traceback as an artifact when it raises, SCHEDULED
while preempted; the parent run is ended when its last child ends. It is submitit-checkpointable: on
SIGUSR2 (preemption or the time limit's warning) it lets the current step finish, the trainer saves a
checkpoint, and the job requeues itself; the requeued job resumes from that checkpoint and keeps
writing to the same MLflow run. A multi-task SLURM job exports the torch.distributed environment
(ranks from SLURM via submitit) before training, so its tasks join one process group.

A sweep trial is the same job with a ``TrialHook`` attached: the hook's sink sees every metric (and
reports to Optuna), its ``should_stop`` stops the run (pruning), its ``end_status`` names how the
MLflow run ends.
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Protocol

from sdpg import fsio
from sdpg.orchestration.core import EXECUTORS
from sdpg.orchestration.specs import SlurmProfile

__all__ = ["EXECUTORS", "TrainJob", "TrialHook", "export_distributed_env", "make_executor"]


class TrialHook(Protocol):
    """What a sweep attaches to a ``TrainJob``."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...
    def should_stop(self) -> bool: ...
    def end_status(self, result: dict) -> tuple[str, dict[str, str]]:
        """(MLflow status, tags) of a run that returned without preemption."""
        ...


class _ReferencingPickler(pickle.Pickler):
    """Pickles every string holding a secret as a reference (``redact.to_references``)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._made: set[str] = set()

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is str and len(obj) >= 6 and obj not in self._made:
            from sdpg.training.redact import find_secrets, to_references

            if find_secrets(obj):
                ref = to_references(obj)
                self._made.add(ref)  # the reference itself is pickled as it is
                return ("sdpg-ref", ref)
        return None


class _ResolvingUnpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        from sdpg.training.redact import from_references

        tag, text = pid
        if tag != "sdpg-ref":
            raise pickle.UnpicklingError(f"unknown reference {tag!r}")
        return from_references(text)


class SecretFreeJob:
    """What sdpg hands to submitit: the job ``fn``, pickled so that every secret it holds (a token in a
    template, a password in a URI, a secret environment value) is stored as a reference to an environment
    variable the submitting process sets and the job inherits, never as its value. Submitit's job pickle
    therefore holds no secret; the job resolves the references when it is loaded."""

    def __init__(self, fn: Any):
        self.fn = fn

    def __getstate__(self) -> dict:
        buf = io.BytesIO()
        _ReferencingPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(self.fn)
        return {"payload": buf.getvalue()}

    def __setstate__(self, state: dict) -> None:
        self.fn = _ResolvingUnpickler(io.BytesIO(state["payload"])).load()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from sdpg.training.redact import redact, redact_console

        restore = redact_console()  # what the job prints lands in submitit's logs
        try:
            return self.fn(*args, **kwargs)
        except Exception as e:  # its message goes into the result pickle and the log: redacted
            e.args = tuple(redact(a) if isinstance(a, str) else a for a in e.args)
            raise
        finally:
            restore()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        if not hasattr(self.fn, "checkpoint"):
            return None
        delayed = self.fn.checkpoint(*args, **kwargs)
        if delayed is not None and not isinstance(delayed.function, SecretFreeJob):
            delayed.function = SecretFreeJob(delayed.function)
        return delayed


def _secret_free_submits(ex: Any) -> Any:
    submit = ex.submit

    def wrapped(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return submit(SecretFreeJob(fn), *args, **kwargs)

    ex.submit = wrapped
    return ex


class TrainJob:
    """A picklable training job: a resolved config dict, its MLflow run (and parent), nothing else."""

    lock_wait_s: float = 120.0
    """How long a job waits for its run folder's lock before leaving the run to the holder."""

    def __init__(
        self, config: dict, tracking_uri: str | None = None, run_id: str | None = None, parent_run_id: str | None = None
    ):
        self.config, self.tracking_uri, self.run_id, self.parent_run_id = config, tracking_uri, run_id, parent_run_id

    def __call__(self) -> dict:
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # SLURM's tasks are the ranks, whatever was inherited
            export_distributed_env()
        return self.run()

    def run(self, trial: TrialHook | None = None, requeue: bool = True) -> dict:
        """Train (resuming from the newest checkpoint); returns the trainer's result with
        ``preempted`` set when SIGUSR2 stopped it. ``requeue``: hand a preempted job to submitit's
        handler (requeue and exit); a sweep worker requeues itself instead."""
        from sdpg.training.config import build_config
        from sdpg.training.trainer import train

        cfg = build_config(self.config)
        preempted = threading.Event()
        previous = signal.getsignal(signal.SIGUSR2)
        signal.signal(signal.SIGUSR2, lambda signum, frame: preempted.set())
        if int(os.environ.get("RANK", "0")) != 0:  # other ranks train; rank 0 logs, checkpoints and tracks
            result = train(cfg, sinks=[], should_stop=preempted.is_set)
            return {**result, "preempted": preempted.is_set()}
        tracked = bool(self.tracking_uri and self.run_id)

        def should_stop() -> bool:
            return preempted.is_set() or (trial is not None and trial.should_stop())

        # One writer per run folder: two jobs of one run (a spec submitted twice, a requeue racing its
        # predecessor's exit) must never train it side by side. The second waits a little (a preempted
        # predecessor is still saving), then leaves the run to the holder without touching its MLflow run.
        from sdpg.training.locks import RUN_LOCK, LockBusy, file_lock

        out_dir = Path(cfg.run.output_dir)
        run_lock = file_lock(out_dir / RUN_LOCK, timeout=self.lock_wait_s, info={"mlflow_run": self.run_id or ""})
        try:
            fsio.ensure_dir(out_dir, root=out_dir.parent)  # the run folder itself is never a link
            run_lock.__enter__()
        except LockBusy as e:
            signal.signal(signal.SIGUSR2, previous if previous is not None else signal.SIG_DFL)
            print(f"[sdpg] {e}; this job leaves the run to it", file=sys.stderr, flush=True)
            return {"status": "busy", "step": 0, "output_dir": str(out_dir), "preempted": False, "holder": e.holder}
        except BaseException as e:  # the folder cannot be made: the run fails with that reason
            signal.signal(signal.SIGUSR2, previous if previous is not None else signal.SIG_DFL)
            if tracked:
                from sdpg.orchestration.tracking import client

                self._end(client(self.tracking_uri), "FAILED", error=e, tb=traceback.format_exc())
            raise
        try:
            return self._run_locked(cfg, trial, requeue, preempted, previous, should_stop, tracked)
        finally:
            run_lock.__exit__(None, None, None)

    def _run_locked(self, cfg, trial, requeue, preempted, previous, should_stop, tracked) -> dict:
        from sdpg.training.trainer import default_sinks, latest_checkpoint, train

        c = None
        done = _finished_result(Path(cfg.run.output_dir), cfg.run.total_steps)
        if done is not None:  # trained meanwhile by the job that held the folder
            signal.signal(signal.SIGUSR2, previous if previous is not None else signal.SIG_DFL)
            return {**done, "preempted": False}
        try:
            if tracked:
                from sdpg.orchestration.tracking import MlflowSink

                mlflow_sink = MlflowSink(self.tracking_uri, self.run_id)
                c = mlflow_sink.c
            out = Path(cfg.run.output_dir)
            ck = latest_checkpoint(out) if cfg.run.resume else None
            start = int(ck.stem.split("_")[1]) if ck else 0
            sinks = default_sinks(out, start, cfg.run.total_steps)
            sinks += ([mlflow_sink] if tracked else []) + ([trial] if trial is not None else [])
            result = train(cfg, sinks=sinks, should_stop=should_stop)
        except BaseException as e:
            if c is not None:
                self._end(c, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", error=e, tb=traceback.format_exc())
            raise
        finally:
            signal.signal(signal.SIGUSR2, previous if previous is not None else signal.SIG_DFL)
        result = {**result, "preempted": result["status"] == "interrupted" and preempted.is_set()}
        if result["preempted"]:
            if tracked:
                from mlflow.entities import RunStatus

                from sdpg.orchestration.tracking import retry

                retry(c.update_run, self.run_id, status=RunStatus.to_string(RunStatus.SCHEDULED))
            if requeue and callable(previous):  # submitit's handler: checkpoint() below, requeue, exit
                previous(signal.SIGUSR2, None)
            return result
        if tracked:
            status, tags = trial.end_status(result) if trial is not None else ("FINISHED", {})
            from sdpg.orchestration.tracking import retry

            for k, v in {"sdpg.world_size": str(result.get("world_size", 1)), **tags}.items():
                retry(c.set_tag, self.run_id, k, v)
            self._end(c, status)
        return result

    def _end(self, c, status: str, error: BaseException | None = None, tb: str = "") -> None:
        """End this job's MLflow run, then its parent if no sibling is still running."""
        from sdpg.orchestration import tracking

        try:
            if error is not None and status == "FAILED":
                tracking.fail_run(c, self.run_id, error, tb)
            else:
                tracking.finish_run(c, self.run_id, status)
            if self.parent_run_id:
                tracking.end_parent_if_done(c, self.parent_run_id)
        except Exception as e:  # tracking must not hide the run's own outcome
            print(
                f"[sdpg] could not record the end of MLflow run {self.run_id}: {tracking.redact(repr(e))}",
                file=sys.stderr,
                flush=True,
            )

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit when the job is signalled; the trainer has already saved its state,
        so the same job is simply submitted again (it resumes from the newest checkpoint)."""
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.config, self.tracking_uri, self.run_id, self.parent_run_id))


def _finished_result(out: Path, total_steps: int) -> dict | None:
    """The run's result.json when it says the run finished all its steps."""

    from sdpg.training.records import read_json_object

    r, _ = read_json_object(out / "result.json")
    if r is None:  # none, or cut short by a kill: not finished
        return None
    return r if r.get("status") == "finished" and r.get("step") == total_steps else None


def export_distributed_env() -> None:
    """MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from SLURM via submitit."""
    try:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except Exception as e:  # not under submitit: torchrun already set them
        print(f"[sdpg] torch.distributed environment not exported by submitit: {e}", file=sys.stderr)


_export_distributed_env = export_distributed_env  # the former private name


def make_executor(kind: str, folder: str | Path, profile: SlurmProfile | None, name: str, max_parallel: int):
    """A submitit executor for ``local`` (subprocesses), ``debug`` (in this process) or ``slurm``."""
    import submitit

    if kind == "debug":
        ex = submitit.AutoExecutor(folder=folder, cluster="debug")
        return _secret_free_submits(ex)
    if kind == "local":
        ex = submitit.AutoExecutor(folder=folder, cluster="local")
        ex.update_parameters(timeout_min=profile.timeout_min if profile else 24 * 60, tasks_per_node=1)
        return _secret_free_submits(ex)
    p = profile or SlurmProfile()
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=p.max_num_timeout)
    params: dict[str, Any] = dict(
        name=name,
        timeout_min=p.timeout_min,
        nodes=p.nodes,
        tasks_per_node=p.tasks_per_node,
        cpus_per_task=p.cpus_per_task,
        mem_gb=p.mem_gb,
        slurm_array_parallelism=max_parallel,
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
    return _secret_free_submits(ex)
