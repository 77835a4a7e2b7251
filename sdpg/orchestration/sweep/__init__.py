"""sdpg-sweep: Optuna coefficient sweeps shared by many workers (local processes or a SLURM array).

A sweep spec (``sweeps/*.yaml``) names a base config, a search space over dotted trainer keys, an
objective (a metric reduced as last / best / auc over the trial's evaluations, averaged over its
seeds), a sampler, a pruner fed by the trainer's intermediate evaluations, a trial budget and a
storage. Every worker pulls trials from the shared study until the budget of finished (complete or
pruned) trials is spent. A trial is the orchestration core's ``TrainJob`` with the Optuna trial
attached (``OptunaTrial``): its MLflow run ends FINISHED, KILLED (pruned, with the step) or FAILED
(with the error and its traceback), and a worker on a multi-task SLURM profile trains every trial
on all of its tasks, joined in one process group.

No point twice: each worker seeds its sampler differently, and a proposal whose effective config
equals that of a running or finished trial is dropped (recorded as ``sdpg.duplicate_of``) and
another one asked for, under a lock so that two workers cannot both take the same point.

Dead workers: with an RDB storage Optuna's heartbeat fails their trials and a retry callback
re-enqueues them; with a journal file (no heartbeat in Optuna) each running trial refreshes an
``sdpg.heartbeat`` attribute and any worker that starts fails stale trials and re-enqueues their
parameters. A preempted worker re-enqueues its trial itself before it requeues. A retried trial
resumes the dead trial's training from its checkpoint, and only finished trials count toward the
budget, so no trial is lost or counted twice.

Modules, in the order they build on each other: ``spec`` (the file format), ``study`` (storage, sampler,
pruner, heartbeats), ``resolve`` (``Sweep``: a spec resolved and checked), ``worker`` (``SweepWorker``: one
worker's loop over trials), ``submit`` (``launch``, ``status``, ``export``). The names below are the package's
interface; ``sdpg-sweep`` (``sdpg.commands.sweep``) reads the command line.
"""

from sdpg.orchestration.sweep.resolve import Sweep
from sdpg.orchestration.sweep.spec import Objective, Param, PrunerSpec, SamplerSpec, SweepSpec
from sdpg.orchestration.sweep.study import finished_count, load_study, load_study_read_only
from sdpg.orchestration.sweep.submit import export, launch, status
from sdpg.orchestration.sweep.worker import OptunaTrial, SweepWorker

__all__ = [
    "Objective",
    "OptunaTrial",
    "Param",
    "PrunerSpec",
    "SamplerSpec",
    "Sweep",
    "SweepSpec",
    "SweepWorker",
    "export",
    "finished_count",
    "launch",
    "load_study",
    "load_study_read_only",
    "status",
]
