"""Starting a sweep's workers (local processes or a SLURM array, attached to when already running), and what a
user reads afterwards: the trials' status and the best trial exported as an ablation spec."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import yaml

from sdpg import fsio
from sdpg.orchestration.core import Experiment, active_jobs, check_writable_folder, job_error, job_history, read_jobs, write_jobs
from sdpg.orchestration.launch import make_executor
from sdpg.orchestration.sweep.resolve import Sweep
from sdpg.orchestration.sweep.spec import _typed
from sdpg.orchestration.sweep.study import (
    finished_count,
    is_duplicate,
    load_study,
    load_study_read_only,
    progress_line,
    reap_stale_trials,
)
from sdpg.orchestration.sweep.worker import SweepWorker
from sdpg.training.config import ConfigError, apply_layer, build_config


def launch(sweep: Sweep, workers: int | None = None, wait: bool | None = None, log=print) -> dict:
    """Start the workers (enqueueing the spec's points into a new study); with ``wait``, follow
    the trials by state, then end every run left open and print the table."""
    check_writable_folder(sweep.output_dir, str(sweep.path))
    from sdpg.orchestration.tracking import check_server

    check_server(sweep.tracking_uri, "tracking.uri", str(sweep.path))
    check_server(sweep.storage_url, "storage", str(sweep.path))
    fsio.check_no_links_below(  # every file the launch writes, before the first write
        sweep.output_dir,
        [
            sweep.output_dir / n
            for n in (
                ".sdpg-submit.lock",
                ".sdpg-store.lock",
                ".ask.lock",
                "jobs.json",
                "optuna.journal",
                "optuna.db",
                "mlflow.db",
            )
        ]
        + [sweep.output_dir / "submitit", sweep.output_dir / "trials"],
    )
    # Optuna's first study import stores an ImportError whose traceback keeps the calling frames
    # alive for the life of the process; made here, it pins this frame, which holds no jobs
    # (jobs pinned until exit print 'Exception ignored in LocalJob.__del__' at shutdown).
    load_study(sweep)
    return _launch(sweep, workers, wait, log)


def _launch(sweep: Sweep, workers: int | None, wait: bool | None, log) -> dict:
    from sdpg.orchestration import tracking
    from sdpg.training.locks import LockBusy, file_lock

    fsio.ensure_dir(sweep.output_dir)
    # One launcher at a time per spec: two launches at once both saw an empty study and enqueued the
    # spec's points twice, and both opened a new store.
    lock = file_lock(sweep.output_dir / ".sdpg-submit.lock", wait=False)
    try:
        lock.__enter__()
    except LockBusy as e:
        log(
            f"[sdpg-sweep] {sweep.spec.name} is being launched by another sdpg-sweep "
            f"({', '.join(f'{k} {v}' for k, v in e.holder.items())}); waiting for it"
        )
        lock = file_lock(sweep.output_dir / ".sdpg-submit.lock", wait=True)
        lock.__enter__()
    try:
        state_file = sweep.output_dir / "jobs.json"
        jobs_state = read_jobs(state_file, log, set_aside=True)
        live = active_jobs(jobs_state, list(jobs_state))
        attach = live
        if not live:
            study = load_study(sweep)
            if not study.get_trials(deepcopy=False):
                for point in sweep.spec.enqueue:
                    study.enqueue_trial(_typed(point, sweep.spec.space))
            if sweep.storage_url.startswith("journal:"):
                reap_stale_trials(study, sweep.spec.heartbeat_s, log=log)
            n = workers or sweep.spec.workers
            exp = sweep.experiment_tracker()
            if finished_count(study) >= sweep.spec.n_trials:
                log(f"[sdpg-sweep] {sweep.spec.name}: {progress_line(study, sweep.spec.n_trials)}; nothing to do")
                return {"jobs": []}
            exp.open()  # the store, experiment and parent run, once, here
            ex = make_executor(sweep.executor, sweep.output_dir / "submitit", sweep.profile, sweep.spec.name, n)
            workers_ = [SweepWorker(sweep, i) for i in range(n)]
            if sweep.executor == "local":
                jobs = [ex.submit(w) for w in workers_]
            else:
                with ex.batch():
                    jobs = [ex.submit(w) for w in workers_]
            now, host = time.time(), socket.gethostname()
            for i, j in enumerate(jobs):
                rec = {"job_id": str(j.job_id), "executor": sweep.executor, "host": host, "submitted_at": now}
                jobs_state[f"worker-{i}"] = {"jobs": [*job_history(jobs_state.get(f"worker-{i}", {})), rec]}
            write_jobs(state_file, jobs_state)
    finally:
        lock.__exit__(None, None, None)
    if attach:
        return _attach(sweep, attach, jobs_state, wait, log)
    log(
        f"[sdpg-sweep] {sweep.spec.name}: {n} workers ({sweep.executor}): jobs {', '.join(str(j.job_id) for j in jobs)}; "
        f"storage {tracking.redact(sweep.storage_url)}; MLflow {tracking.redact(sweep.tracking_uri)}"
    )
    log(
        f"[sdpg-sweep] watch: optuna-dashboard {_dashboard_arg(sweep.storage_url)}   |   "
        f"mlflow ui --backend-store-uri {tracking.redact(sweep.tracking_uri)}"
    )
    if wait if wait is not None else sweep.executor == "local":
        last = ""
        try:
            while not all(j.done() for j in jobs):
                line = progress_line(load_study(sweep), sweep.spec.n_trials)
                if line != last:
                    log(f"[sdpg-sweep] {line}")
                    last = line
                time.sleep(2)
            errors = []
            for j in jobs:
                try:
                    j.results()
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(f"worker job {j.job_id}: {job_error(e)}")
        finally:
            _settle(sweep, exp, jobs)
        log(status(sweep))
        if errors:
            raise RuntimeError("some workers failed:\n" + "\n".join(errors))
    return {"jobs": jobs}


def _attach(sweep: Sweep, live: dict[str, str], jobs_state: dict, wait: bool | None, log) -> dict:
    """Workers of an earlier launch are still queued or running: follow them instead of starting more
    (a second launch used to add its own workers beside them). With ``wait``, progress by trial state
    until they end, then the table; their launcher ends the runs they leave open."""
    log(
        f"[sdpg-sweep] {sweep.spec.name}: {len(live)} workers of an earlier launch are still queued or running "
        f"(jobs {', '.join(sorted(set(live.values())))}); attached, no new workers started"
    )
    if wait if wait is not None else sweep.executor == "local":
        last = ""
        while active_jobs(jobs_state, list(live)):
            line = progress_line(load_study(sweep), sweep.spec.n_trials)
            if line != last:
                log(f"[sdpg-sweep] {line}")
                last = line
            time.sleep(2)
        log(status(sweep))
    return {"jobs": [], "attached": live}


def _settle(sweep: Sweep, exp: Experiment, jobs: list) -> None:
    """After waiting for every worker: trial runs left open by a worker that died are FAILED, the
    parent run ends (FINISHED when the budget is spent, else KILLED), local jobs are released."""
    from sdpg.orchestration import tracking

    c = exp.client
    for r in tracking.child_runs(c, exp.ids()[1]):
        if r.info.status not in tracking.TERMINAL:
            tracking.fail_run(c, r.info.run_id, "its worker ended without finishing it")
    done = finished_count(load_study(sweep)) >= sweep.spec.n_trials
    exp.end("FINISHED" if done else "KILLED")
    for j in jobs:
        if hasattr(j, "_cancel_at_deletion"):
            j._cancel_at_deletion = False


def _dashboard_arg(url: str) -> str:
    return url[len("journal:") :] if url.startswith("journal:") else url


def _storage_exists(url: str) -> bool:
    if url.startswith("journal:"):
        return Path(url[len("journal:") :]).is_file()
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :]).is_file()
    return True  # a database server: ask it


def status(sweep: Sweep) -> str:
    """The trials (duplicates left out) with state, value, parameters; pruned ones marked with the
    step they were stopped at; counts by state; the best complete trial."""
    from optuna.trial import TrialState

    if not _storage_exists(sweep.storage_url):
        where = _dashboard_arg(sweep.storage_url)
        return f"{sweep.spec.name}: no study yet (nothing at {where}); start it with sdpg-sweep {sweep.path}"
    study = load_study_read_only(sweep)
    trials = [t for t in study.get_trials(deepcopy=False) if not is_duplicate(t)]
    keys = list(sweep.spec.space)
    rows = [["trial", "state", "value", *keys, "note"]]
    for t in trials:
        note = ""
        state = {"FAIL": "failed"}.get(t.state.name, t.state.name.lower())
        value = f"{t.value:.4f}" if t.value is not None and t.state == TrialState.COMPLETE else "-"
        if t.state == TrialState.PRUNED:
            at = t.user_attrs.get("sdpg.pruned_at_step", t.last_step)
            state = f"pruned@{at}"
            if t.intermediate_values:
                value = f"({t.intermediate_values[max(t.intermediate_values)]:.4f})"
            note = f"pruned at step {at}; value in () is its last evaluation, not a result"
        elif t.state == TrialState.FAIL:
            note = t.user_attrs.get("sdpg.error", "") or ("worker lost; retried" if t.user_attrs.get("sdpg.heartbeat") else "")
        if "sdpg.retry_of" in t.user_attrs:
            note = (note + "; " if note else "") + f"retry of trial {t.user_attrs['sdpg.retry_of']}"
        rows.append([str(t.number), state, value, *(_fmt(t.params.get(k, "-")) for k in keys), note[:120]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append("")
    lines.append(progress_line(study, sweep.spec.n_trials))
    if any(t.state == TrialState.COMPLETE for t in trials):
        b = study.best_trial
        lines.append(f"best: trial {b.number} value {b.value:.4f} params {b.params} (complete trials only)")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def export(sweep: Sweep, out: str | Path | None = None, seeds: list[int] | None = None) -> Path:
    """An ablation spec with the best trial's coefficients as a variant beside the base."""
    if out:
        fsio.check_writable_target(fsio.expand_path(out, "--out"))
    if not _storage_exists(sweep.storage_url):
        raise ConfigError(f"{sweep.path}: no study yet (nothing at {_dashboard_arg(sweep.storage_url)}); nothing to export")
    study = load_study_read_only(sweep)
    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"{sweep.path}: no complete trial yet; nothing to export") from None
    out = fsio.expand_path(out, "--out") if out else Path("ablations") / f"{sweep.spec.name}_best.yaml"
    base = sweep.base
    same = (
        build_config(apply_layer(base, dict(best.params))).effective().config_hash()
        == build_config(base).effective().config_hash()
    )
    variants = {"best": dict(best.params)} if same else {"base": {}, "best": dict(best.params)}
    spec = {
        "name": f"{sweep.spec.name}_best",
        "base": base,
        "variants": variants,
        "seeds": seeds or [0, 1, 2],
        "executor": sweep.spec.executor,
        **({"profile": sweep.spec.profile} if sweep.spec.profile else {}),
    }
    header = (
        f"# Exported by sdpg-sweep from {sweep.path}: best trial {best.number}, "
        f"{sweep.spec.objective.metric} ({sweep.spec.objective.reduce}) = {best.value:.4f}\n"
    )
    fsio.write_text(out, header + yaml.safe_dump(spec, sort_keys=False))
    return out
