"""A rehearsal from start to end: models shrunk, data read, checks, the runs submitted to one local job, their
results and MLflow records read back, the report written; ``rehearse_plan`` and ``rehearse_sweep`` for the
two kinds of spec."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdpg import fsio
from sdpg.orchestration import standins
from sdpg.orchestration.rehearse.checks import Scorers, SourceReader, check_run
from sdpg.orchestration.rehearse.plan import (
    STEPS,
    Context,
    Outcome,
    RunItem,
    _scaled_objective,
    default_folder,
    one_sentence,
    prepare_folder,
    vllm_available,
    world_size,
)
from sdpg.orchestration.rehearse.report import exit_code, write_report
from sdpg.orchestration.rehearse.worker import RehearsalWorker
from sdpg.training.config import ConfigError, TrainConfig


def rehearse(
    items: list[RunItem],
    ctx: Context,
    folder: str | Path | None = None,
    stand_in: str | None = None,
    log: Callable[[str], None] = print,
    stand_in_data: str | None = None,
) -> list[Outcome]:
    """Rehearse ``items``; returns one outcome per run (and writes the report files). ``stand_in``: a model
    folder standing in for ``model.path``, or ``builtin``; ``stand_in_data``: ``builtin`` replaces the data
    files that are not here by stand-in rows (``sdpg.orchestration.standins``)."""
    t_start, cpu_start = time.time(), _cpu_seconds()
    if vllm_available() and any(it.config.rollout.backend == "vllm" for it in items):
        _check_media(ctx)
    folder = prepare_folder(Path(folder) if folder else default_folder(ctx.spec_name))
    tag = f"[{ctx.tool}]"
    log(f"{tag} rehearsing {len(items)} runs of {ctx.spec_name} in {folder}")
    outcomes = {it.name: Outcome(it.name, it.hash) for it in items}
    world = world_size(ctx.profile) if ctx.executor == "slurm" else 1
    have_vllm = vllm_available()

    # ---- models, shrunk once per distinct model.path
    models = _shrink_models(items, folder, stand_in, tag, log)

    # ---- data, read once per distinct source and row format; checks before anything runs
    sources = SourceReader(folder, str(ctx.spec_path), stand_in_data)
    tokenizers: dict[str, Any] = {}
    scorers = Scorers()
    runnable: list[tuple[RunItem, TrainConfig]] = []
    try:
        for it in items:
            model = models[(it.config.model.path, it.config.model.trust_remote_code)]
            small = check_run(it, outcomes[it.name], model, sources, tokenizers, scorers, ctx, world, have_vllm, folder)
            if small is not None:
                runnable.append((it, small))
    finally:
        scorers.close()
    n_checked_fail = sum(o.status in ("fail", "blocked") for o in outcomes.values())
    log(
        f"{tag} checks: {len(items) - n_checked_fail} of {len(items)} runs ready to rehearse"
        + (f"; {n_checked_fail} failed before running" if n_checked_fail else "")
    )

    # ---- the runs: MLflow bookkeeping as a submission does, one local job
    if runnable:
        _run_all(runnable, outcomes, ctx, folder, log)
    timing = {"wall_s": time.time() - t_start, "cpu_s": _cpu_seconds() - cpu_start, "load_average": os.getloadavg()[0]}
    report = write_report(list(outcomes.values()), ctx, folder, timing, models, sources.checked)
    log(report)
    return list(outcomes.values())


def _check_media(ctx: Context) -> None:
    """Refuses a vLLM rehearsal where media packages built for another torch would fail every run the same way."""
    from sdpg._media import MEDIA_PACKAGES, mismatch

    stray = [why for n in MEDIA_PACKAGES if (why := mismatch(n))]
    if stray:  # vLLM's model check in its child process would fail every run the same way
        raise ConfigError(
            f"{ctx.spec_path}: rollout.backend is vllm and {stray[0]}, which stops vLLM's model check; "
            "python -m sdpg.environment --fix uninstalls the media packages built for another torch"
        )


def _shrink_models(items: list[RunItem], folder: Path, stand_in: str | None, tag: str, log) -> dict[tuple, Any]:
    """Each distinct (model.path, trust_remote_code) shrunk once: the shrunk model, or the error that blocks it."""
    from sdpg.training.shrink import ModelSourceError, shrink_model

    models: dict[tuple, Any] = {}
    if stand_in == standins.BUILTIN:
        stand_in = str(standins.write_model(folder / "models" / "builtin-qwen3"))
        log(f"{tag} --rehearse-model builtin: a Qwen3 config, character tokenizer and chat template written here")
    for it in items:
        key = (it.config.model.path, it.config.model.trust_remote_code)
        if key in models:
            continue
        try:
            models[key] = shrink_model(key[0], folder / "models" / f"model{len(models)}", stand_in, key[1])
            log(f"{tag} model {key[0]}: {models[key].describe()}")
        except ModelSourceError as e:
            models[key] = e
            log(f"{tag} {e}")
    return models


def _run_all(runnable: list[tuple[RunItem, TrainConfig]], outcomes: dict[str, Outcome], ctx: Context, folder: Path, log) -> None:
    from sdpg.orchestration import tracking
    from sdpg.orchestration.core import Experiment
    from sdpg.orchestration.launch import make_executor

    tag = f"[{ctx.tool}]"
    uri = tracking.default_uri(folder)
    exp = Experiment(uri, ctx.spec_name, folder, ctx.kind, ctx.spec_name, ctx.spec_path).open()
    jobs = []
    for it, small in runnable:
        rid = exp.child(it.hash, it.name, small, {"method": small.algo.method, "run_hash": it.hash, "rehearsal": "true"})
        jobs.append(
            {
                "name": it.name,
                "config": small.resolved(),
                "tracking_uri": uri,
                "run_id": rid,
                "parent_run_id": exp.parent_id,
                "objective": _scaled_objective(ctx.objective, small),
            }
        )
    results_dir = folder / "results"
    fsio.ensure_dir(results_dir, root=folder)
    ex = make_executor("local", folder / "submitit", None, f"{ctx.spec_name}-rehearsal", 1)
    pending = list(jobs)
    for _attempt in range(3):  # a worker that dies (a crash in native code) is replaced for the runs left
        job = ex.submit(RehearsalWorker(pending, str(results_dir)))
        log(f"{tag} local job {job.job_id}: {len(pending)} runs, one after another; logs in {folder / 'submitit'}")
        seen: set[str] = set()
        while True:
            done = job.done()
            for j in pending:
                res = results_dir / f"{j['name']}.json"
                if j["name"] not in seen and res.is_file():
                    seen.add(str(j["name"]))
                    r = json.loads(res.read_text())
                    n_done = sum(1 for x in jobs if (results_dir / f"{x['name']}.json").is_file())
                    sps = f", {r['steps_per_s']:.2f} steps/s" if r.get("steps_per_s") else ""
                    log(
                        f"{tag} {n_done}/{len(jobs)} {j['name']}: {r['status']}{sps}"
                        + (f": {r['error']}" if r.get("error") else "")
                    )
            if done:
                break
            time.sleep(0.5)
        crash = None
        try:
            job.result()
        except Exception as e:  # the worker process died
            crash = one_sentence(e)
        pending = [j for j in pending if not (results_dir / f"{j['name']}.json").is_file()]
        if not pending:
            break
        victim = pending[0]
        fsio.write_text(
            results_dir / f"{victim['name']}.json",
            json.dumps(
                {
                    "status": "fail",
                    "error": f"the worker process died during this run: {crash or 'no result'} (log: {job.paths.stderr})",
                }
            ),
        )
        pending = pending[1:]
        if not pending:
            break
    # results and the tracking store, read back
    for it, small in runnable:
        o = outcomes[it.name]
        res = results_dir / f"{it.name}.json"
        r = json.loads(res.read_text()) if res.is_file() else {"status": "fail", "error": "no result was written"}
        o.status = r["status"]
        o.steps_per_s, o.wall_s = r.get("steps_per_s"), r.get("wall_s")
        o.metrics = r.get("metrics", {})
        if r.get("error"):
            o.errors.append(r["error"])
        rid = str(next(j["run_id"] for j in jobs if j["name"] == it.name))
        diff = o.metrics.get("train/rollout_logprob_diff")
        limit = 1e-3 if small.model.dtype == "float32" else 2e-2
        if diff is not None and diff > limit:
            o.warnings.append(
                f"{it.name}: the rollout engine's log-probabilities differ from the trainer's by {diff:.3g} "
                f"per token (more than {limit:g} in {small.model.dtype}): weight sync or dtype mismatch"
            )
        if o.status == "pass":
            err = _tracking_check(exp.client, rid)
            if err:
                o.status = "fail"
                o.errors.append(err)
        elif tracking.retry(exp.client.get_run, rid).info.status not in tracking.TERMINAL:  # never started
            tracking.finish_run(exp.client, rid, "FAILED")
    exp.end_if_done()


def _tracking_check(c, run_id: str) -> str | None:
    from sdpg.orchestration import tracking

    run = tracking.retry(c.get_run, run_id)
    hist = tracking.retry(c.get_metric_history, run_id, "train/reward")
    steps = sorted(m.step for m in hist)
    if steps != list(range(1, STEPS + 1)):
        return f"tracking: the MLflow run holds train/reward at steps {steps}, not 1..{STEPS} once each"
    if run.info.status != "FINISHED":
        return f"tracking: the MLflow run ended {run.info.status}, not FINISHED"
    return None


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the rehearsal's local job)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def rehearse_plan(plan, stand_in: str | None = None, folder: str | None = None, log=None, stand_in_data=None) -> int:
    """``sdpg-ablate SPEC --rehearse``: every run of the plan."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    items = [RunItem(r.name, r.hash, r.config) for r in plan.distinct]
    if plan.duplicates:
        log(
            f"[sdpg-ablate] {len(plan.duplicates)} duplicate runs are trained once: "
            + ", ".join(f"{r.name} = {r.same_as}" for r in plan.duplicates)
        )
    ctx = Context(
        "sdpg-ablate",
        "ablation",
        Path(plan.path),
        plan.spec.name,
        plan.executor,
        plan.profile,
        plan.spec.profile if plan.executor == "slurm" else None,
        plan.tracking_uri,
    )
    return exit_code(rehearse(items, ctx, folder, stand_in, log, stand_in_data))


def sweep_items(sweep) -> list[RunItem]:
    """The trials a sweep starts with (its enqueued parameter sets) and the two corners of its space,
    each for every seed, resolved as a worker resolves a trial."""
    spec = sweep.spec
    sets = [(f"enqueue{i}", dict(e)) for i, e in enumerate(spec.enqueue)]
    sets.append(("low", {k: (p.choices[0] if p.type == "categorical" else p.low) for k, p in spec.space.items()}))
    sets.append(("high", {k: (p.choices[-1] if p.type == "categorical" else p.high) for k, p in spec.space.items()}))
    items, seen = [], set()
    for name, params in sets:
        for seed in spec.seeds:
            cfg = sweep.trial_config(sweep.typed(params), seed, 0, f"{sweep.path}: {name}")
            h = cfg.effective().config_hash()
            if h in seen:
                continue
            seen.add(h)
            items.append(RunItem(f"{name}-s{seed}", h, cfg))
    return items


def rehearse_sweep(sweep, stand_in: str | None = None, folder: str | None = None, log=None, stand_in_data=None) -> int:
    """``sdpg-sweep SPEC --rehearse``: the enqueued trials and the corners of the space; the sampler and
    pruner are built, and every trial must log the objective."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        sweep.build_sampler_and_pruner()
    except Exception as e:
        log(f"[sdpg-sweep] the sampler or pruner cannot be built here: {one_sentence(e)}")
        return 1
    ctx = Context(
        "sdpg-sweep",
        "sweep",
        Path(sweep.path),
        sweep.spec.name,
        sweep.executor,
        sweep.profile,
        sweep.spec.profile,
        sweep.tracking_uri,
        objective=sweep.spec.objective.metric,
    )
    return exit_code(rehearse(sweep_items(sweep), ctx, folder, stand_in, log, stand_in_data))
