"""Rehearsals: every run of a spec, resolved as it would be submitted, executed for two RL steps
here, before a cluster spends a week on it (``sdpg-ablate SPEC --rehearse``, ``sdpg-sweep SPEC --rehearse``).

What changes for the rehearsal, and nothing else:

* the model is shrunk in place (``sdpg.training.shrink``): the architecture family, config and tokenizer
  of ``model.path`` (or of ``--rehearse-model PATH`` standing in for a hub id), two layers, random weights;
* data: every row of every file is read and checked as the trainer reads it, then the run trains on a
  copy of the first rows (same format) and evaluates on the first problems of each benchmark;
* sizes: prompts per step, group size, minibatches, micro-batches, generation batches and response
  lengths scaled down with their structure kept (two minibatches per RL step where the run has several,
  two micro-batches where it accumulates gradients, a token budget where it packs by tokens);
  ``eval.n_samples`` at most 2 (``mean@2`` stands for ``mean@32``);
* two RL steps, run the way a preempted job runs them: the submitted job stops after step 1 and
  checkpoints, the job it requeues resumes from that checkpoint and finishes step 2;
* the jobs go to the local executor (one process for all runs: a vLLM engine cannot be built twice in
  a process, so runs with the same engine settings share one, as sweep trials do; each run puts its own
  initial weights back into it), and MLflow writes to a store of its own in the rehearsal folder.

Checks before anything runs, each failure one sentence: data files exist and every row parses; the
student and teacher prompts render through the templates and the tokenizer's chat template; the
configured scorer gives full reward to the first gold answers written as it expects (and as the prompt
asks) and none to a wrong one; the run's batch fits its ranks. After the runs: the checkpoint was
written and resumed, every step was logged once to MLflow, the run ended FINISHED, the sweep objective
was logged. The report (console, ``report.md``, ``report.json``) also says what was not rehearsed here.

Modules: ``plan`` (the runs, their scaled settings, the folder, what is not rehearsed here), ``checks`` (before
anything runs), ``worker`` (the local job that trains the runs), ``run`` (``rehearse``, ``rehearse_plan``,
``rehearse_sweep``), ``report``. The rehearsal imports neither ``ablate`` nor ``sweep``: they hand it their
runs.
"""

from sdpg.orchestration.rehearse.checks import check_source, scorer_checks, structure_checks
from sdpg.orchestration.rehearse.plan import (
    Context,
    Outcome,
    RehearsalError,
    RunItem,
    default_folder,
    not_rehearsed,
    prepare_folder,
    scaled_layer,
)
from sdpg.orchestration.rehearse.report import exit_code, write_report
from sdpg.orchestration.rehearse.run import rehearse, rehearse_plan, rehearse_sweep, sweep_items
from sdpg.orchestration.rehearse.worker import rehearse_run

__all__ = [
    "Context",
    "Outcome",
    "RehearsalError",
    "RunItem",
    "check_source",
    "default_folder",
    "exit_code",
    "not_rehearsed",
    "prepare_folder",
    "rehearse",
    "rehearse_plan",
    "rehearse_run",
    "rehearse_sweep",
    "scaled_layer",
    "scorer_checks",
    "structure_checks",
    "sweep_items",
    "write_report",
]
