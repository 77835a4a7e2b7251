"""One sweep worker (a local process or an element of a SLURM array): it asks the study for trials, drops
duplicate points, trains each trial as a ``TrainJob`` on all of its tasks and tells the study the result."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import sys
import traceback
from typing import Any

from sdpg.orchestration.core import Experiment
from sdpg.orchestration.launch import TrainJob, export_distributed_env
from sdpg.orchestration.sweep.resolve import Sweep
from sdpg.orchestration.sweep.study import (
    FINISHED,
    _ask_lock,
    _Heartbeat,
    _requeue_trial,
    finished_count,
    load_study,
    make_sampler,
    progress_line,
    reap_stale_trials,
    worker_seed,
)


class OptunaTrial:
    """A ``TrialHook``: feeds evaluations of the objective metric to Optuna and stops the run when
    the pruner says so; the run's MLflow status follows (FINISHED, or KILLED when pruned)."""

    def __init__(self, trial, metric: str, prune: bool):
        self.trial, self.metric, self.prune = trial, metric, prune
        self.values: list[tuple[int, float]] = []
        self.pruned_at: int | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.metric in metrics:
            v = float(metrics[self.metric])
            self.values.append((step, v))
            if self.prune and self.pruned_at is None:
                self.trial.report(v, step)
                if self.trial.should_prune():
                    self.pruned_at = step

    def close(self) -> None:
        pass

    def should_stop(self) -> bool:
        return self.pruned_at is not None

    def end_status(self, result: dict) -> tuple[str, dict[str, str]]:
        if self.pruned_at is not None:
            return "KILLED", {"sdpg.trial_state": "pruned", "sdpg.pruned_at_step": str(self.pruned_at)}
        return "FINISHED", {"sdpg.trial_state": "complete"}


_PruneSink = OptunaTrial  # the former name


def reduce_values(values: list[tuple[int, float]], how: str, direction: str) -> float:
    if not values:
        return float("nan")
    vs = [v for _, v in values]
    if how == "last":
        return vs[-1]
    if how == "best":
        return max(vs) if direction == "maximize" else min(vs)
    return float(sum(vs) / len(vs))  # auc: mean over evaluations (equal spacing)


class _Ranks:
    """The tasks of a multi-task worker: rank 0 runs the study and tells the others which config to
    train next (None: stop); they join every trial's training in one process group."""

    def __init__(self):
        import torch
        import torch.distributed as dist

        self.dist = dist
        if not dist.is_initialized():  # one group for the worker's life; the trainer reuses it
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
            from datetime import timedelta

            dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def send(self, message: dict | None) -> None:
        self.dist.broadcast_object_list([message], src=0, device=_cpu())

    def receive(self) -> dict | None:
        box: list[Any] = [None]
        self.dist.broadcast_object_list(box, src=0, device=_cpu())
        return box[0]

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


def _cpu():
    import torch

    return torch.device("cpu")


class SweepWorker:
    """A submitted worker: pulls trials until the study has ``n_trials`` finished ones."""

    _desync = False
    """Set when a trial failed on rank 0 after the other tasks had started it (a class default:
    workers pickled by an older sdpg still unpickle)."""

    def __init__(self, sweep: Sweep, worker_index: int = 0):
        self.sweep, self.worker_index = sweep, worker_index

    def __call__(self) -> dict:
        ranks = None
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
            export_distributed_env()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            ranks = _Ranks()
        try:
            if ranks is not None and ranks.rank != 0:
                return self._follow(ranks)
            return self._lead(ranks)
        finally:
            if ranks is not None:
                ranks.close()

    def _follow(self, ranks: _Ranks) -> dict:
        n = 0
        while (msg := ranks.receive()) is not None:
            TrainJob(msg["config"]).run(requeue=False)
            n += 1
        return {"worker": self.worker_index, "rank": ranks.rank, "runs": n}

    def _log(self, msg: str) -> None:
        print(f"[sdpg-sweep] worker {self.worker_index}: {msg}", file=sys.stderr, flush=True)

    def _lead(self, ranks: _Ranks | None) -> dict:
        sw, spec = self.sweep, self.sweep.spec
        study = load_study(sw)
        study.sampler = make_sampler(
            spec, worker_seed(spec.sampler.seed, self.worker_index, len(study.get_trials(deepcopy=False)))
        )
        journal = sw.storage_url.startswith("journal:")
        exp = sw.experiment_tracker().open(log_spec=False)
        handler = signal.getsignal(signal.SIGUSR2)  # submitit's: requeue this worker
        done_here, dropped = 0, 0
        try:
            while True:
                if journal:
                    reap_stale_trials(study, spec.heartbeat_s, log=self._log)
                if finished_count(study) >= spec.n_trials:
                    break
                trial, params, dup_of = self._propose(study)
                if dup_of is not None:
                    dropped += 1
                    if dropped >= 50:
                        self._log(
                            "the sampler proposed 50 points in a row that other trials already hold: "
                            "the space looks exhausted; stopping"
                        )
                        break
                    continue
                dropped = 0
                state, value, preempted = self._run_trial(study, trial, params, exp, ranks)
                if self._desync:  # the other tasks are inside that trial's training: they cannot follow
                    raise RuntimeError(
                        f"trial {trial.number} failed on rank 0 while the worker's other tasks trained it; "
                        "this worker stops (its other tasks end when rank 0's connections close)"
                    )
                if preempted:
                    if ranks is not None:
                        ranks.send(None)
                        ranks = None
                    if callable(handler):  # checkpoint() below, requeue, exit
                        handler(signal.SIGUSR2, None)
                    return {"worker": self.worker_index, "trials_run": done_here, "preempted": True}
                done_here += state in FINISHED
                self._log(
                    f"trial {trial.number} {state.lower()} {'' if value is None else f'value {value:.4f} '}"
                    f"params {params}; {progress_line(study, spec.n_trials)}"
                )
        finally:
            if ranks is not None and not self._desync:
                ranks.send(None)
        self._end_parent_if_done(study, exp)
        return {"worker": self.worker_index, "trials_run": done_here}

    def _propose(self, study):
        """(trial, params, number of the trial already holding this point or None). Under the ask
        lock: ask, suggest, compare with running and finished trials, claim."""
        import optuna
        from optuna.trial import TrialState

        sw, spec = self.sweep, self.sweep.spec
        with _ask_lock(sw.output_dir):
            trial = study.ask()
            params = {}
            for k, p in spec.space.items():
                if p.type == "categorical":
                    params[k] = trial.suggest_categorical(k, p.choices)
                elif p.type == "int":
                    params[k] = trial.suggest_int(k, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
                else:
                    params[k] = trial.suggest_float(k, p.low, p.high, step=p.step, log=p.log)
            key = sw.point_key(params)
            holders = [
                t.number
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED))
                if t.number != trial.number and t.user_attrs.get("sdpg.point") == key
            ]
            if holders:
                trial.set_user_attr("sdpg.duplicate_of", holders[0])
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                self._log(f"trial {trial.number} dropped: params {params} are trial {holders[0]}'s point")
                return trial, params, holders[0]
            trial.set_user_attr("sdpg.point", key)
            trial.set_user_attr("sdpg.worker", f"{socket.gethostname()}:{os.getpid()}:{os.environ.get('SLURM_JOB_ID', '-')}")
        return trial, params, None

    def _run_trial(self, study, trial, params: dict, exp: Experiment, ranks: _Ranks | None):
        """Train the trial's seeds as TrainJobs; tell Optuna. Returns (state, value, preempted)."""
        import optuna

        from sdpg.orchestration import tracking

        sw, spec = self.sweep, self.sweep.spec
        hb = _Heartbeat(study, trial._trial_id, spec.heartbeat_s) if sw.storage_url.startswith("journal:") else None
        origin = trial.user_attrs.get("sdpg.retry_of", trial.number)
        rid, sent = None, False
        try:
            per_seed, pruned_at = [], None
            for si, seed in enumerate(spec.seeds):
                cfg = sw.trial_config(params, seed, origin, f"{sw.path}: trial {trial.number}")
                rid = exp.child(
                    f"{spec.name}/trial{origin}/s{seed}",
                    f"trial{trial.number}-s{seed}",
                    cfg,
                    tags={
                        "sdpg.trial": trial.number,
                        "seed": seed,
                        "method": cfg.algo.method,
                        "run_hash": cfg.effective().config_hash(),
                        "variant": f"trial{trial.number}",
                        "sdpg.trial_params": json.dumps(params),
                    },
                )
                if trial.number != origin:
                    tracking.retry(exp.client.set_tag, rid, "sdpg.trial", trial.number)
                hook = OptunaTrial(trial, spec.objective.metric, prune=(si == 0 and spec.pruner.type != "none"))
                if ranks is not None:
                    ranks.send({"config": cfg.resolved()})
                    sent = True
                result = TrainJob(cfg.resolved(), sw.tracking_uri, rid).run(trial=hook, requeue=False)
                sent = False
                if result.get("status") == "busy":
                    raise RuntimeError(
                        f"trial folder {result['output_dir']} is being trained by another process ({result.get('holder')})"
                    )
                if result.get("preempted"):
                    _requeue_trial(study, study._storage.get_trial(trial._trial_id))
                    self._log(f"trial {trial.number} preempted at step {result['step']}: re-enqueued; requeueing")
                    return "PREEMPTED", None, True
                if hook.pruned_at is not None:
                    pruned_at = hook.pruned_at
                    break
                values = hook.values
                if not values:  # the metric was never logged: read the final one
                    m = result["metrics"].get(spec.objective.metric)
                    values = [(result["step"], m)] if m is not None else []
                per_seed.append(reduce_values(values, spec.objective.reduce, spec.objective.direction))
            if pruned_at is not None:
                trial.set_user_attr("sdpg.pruned_at_step", pruned_at)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return "PRUNED", None, False
            value = float(sum(per_seed) / len(per_seed))
            if math.isnan(value):
                raise RuntimeError(f"objective metric {spec.objective.metric!r} was never logged")
            study.tell(trial, value)
            return "COMPLETE", value, False
        except Exception as e:  # noqa: BLE001 - a failed trial is recorded, the worker goes on
            tb = traceback.format_exc()
            self._log(f"trial {trial.number} failed: {tracking.redact(repr(e))}\n{tracking.redact(tb)}")
            with contextlib.suppress(Exception):
                trial.set_user_attr("sdpg.error", tracking.redact(f"{type(e).__name__}: {e}")[:2000])
            if rid is not None:
                with contextlib.suppress(Exception):
                    if tracking.retry(exp.client.get_run, rid).info.status not in tracking.TERMINAL:
                        tracking.fail_run(exp.client, rid, e, tb)
            with contextlib.suppress(Exception):
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self._desync = sent
            return "FAIL", None, False
        finally:
            if hb is not None:
                hb.stop()

    def _end_parent_if_done(self, study, exp: Experiment) -> None:
        """The budget is spent and no trial runs any more: the sweep's parent run is FINISHED."""
        from optuna.trial import TrialState

        if finished_count(study) >= self.sweep.spec.n_trials and not study.get_trials(
            deepcopy=False, states=(TrialState.RUNNING,)
        ):
            exp.end("FINISHED")

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(SweepWorker(self.sweep, self.worker_index))
