"""Submitting a plan's unfinished runs (SLURM array, local processes or this process), attaching to runs another
submission left running, and watching them with one progress line."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sdpg import fsio
from sdpg.orchestration.ablate.plan import Plan, Run
from sdpg.orchestration.ablate.states import run_state, status
from sdpg.orchestration.core import Experiment, active_jobs, check_writable_folder, job_error, job_history, read_jobs, write_jobs
from sdpg.orchestration.launch import TrainJob, make_executor


def _experiment(plan: Plan) -> Experiment:
    return Experiment(plan.tracking_uri, plan.experiment, plan.output_dir, "ablation", plan.spec.name, plan.path)


def _child_runs(plan: Plan, exp: Experiment) -> dict[str, str]:
    """Effective hash -> MLflow run id, for every distinct run of the plan (created once)."""
    run_ids = {}
    for r in plan.distinct:
        aliases = plan.aliases(r)
        tags = {
            "variant": r.variant,
            "seed": r.seed,
            "method": r.config.algo.method,
            "run_hash": r.hash,
            "grid": json.dumps(r.grid),
            **{f"grid.{axis}": str(r.grid[axis]) for axis in plan.spec.group_axes() if axis in r.grid},
        }
        if aliases:  # the same run under other names: a report lists it under each
            tags["sdpg.aliases"] = json.dumps(
                [{"name": a.name, "variant": a.variant, "seed": a.seed, "grid": a.grid} for a in aliases]
            )
        run_ids[r.hash] = exp.child(r.hash, r.name, r.config, tags)
    return run_ids


def submit(plan: Plan, max_parallel: int | None = None, wait: bool | None = None, log=print) -> dict:
    """Create the MLflow experiment, parent and child runs, submit the unfinished runs as one job
    array, record job ids in ``<output_dir>/jobs.json``; wait for local runs. Each duplicate name is
    trained once, as the run it repeats. The parent run ends when its last child does.

    One submitter per spec: a lock on ``<output_dir>/.sdpg-submit.lock`` is held while runs are created and
    jobs submitted (for local runs: until the last one has started). A run with a job still queued or
    running (asked of the scheduler; every job id ever submitted is kept in jobs.json) is attached to,
    not submitted again."""
    import contextlib
    import socket

    from mlflow.entities import RunStatus

    from sdpg.orchestration import tracking
    from sdpg.training.locks import LockBusy, file_lock

    distinct = plan.distinct
    check_writable_folder(plan.output_dir, str(plan.path))
    tracking.check_server(plan.tracking_uri, "tracking.uri", str(plan.path))
    # every path this submission writes, checked before the first write: a link there is refused, nothing changed
    fsio.check_no_links_below(
        plan.output_dir,
        [plan.output_dir / n for n in (".sdpg-submit.lock", ".sdpg-store.lock", "jobs.json", "submitit", "mlflow.db")]
        + [Path(r.config.run.output_dir) / n for r in distinct for n in (".sdpg-run.lock", "config.yaml", "result.json")],
    )
    fsio.ensure_dir(plan.output_dir)
    lock_path = plan.output_dir / ".sdpg-submit.lock"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(lock_path, wait=False))
        except LockBusy as e:
            log(
                f"[sdpg-ablate] {plan.spec.name} is being submitted by another sdpg-ablate "
                f"({', '.join(f'{k} {v}' for k, v in e.holder.items())}); waiting for it"
            )
            stack.enter_context(file_lock(lock_path, wait=True))
        state_file = plan.output_dir / "jobs.json"
        jobs_state = read_jobs(state_file, log, set_aside=True)
        unfinished = [r for r in distinct if run_state(r)[0] != "finished"]
        attached = active_jobs(jobs_state, [r.hash for r in unfinished])
        todo = [r for r in unfinished if r.hash not in attached]
        progress = Progress(todo, log)
        exp = _experiment(plan).open()
        c = exp.client
        run_ids = _child_runs(plan, exp)
        for r in distinct:  # a finished run's MLflow run is FINISHED (its job may have died after the result)
            st = tracking.retry(c.get_run, run_ids[r.hash]).info.status
            if r in todo:
                tracking.retry(c.update_run, run_ids[r.hash], status=RunStatus.to_string(RunStatus.SCHEDULED))
            elif r not in unfinished and st != "FINISHED":
                tracking.finish_run(c, run_ids[r.hash], "FINISHED")
        if attached:
            names = [r.name for r in unfinished if r.hash in attached]
            log(
                f"[sdpg-ablate] {len(attached)} runs already have a job queued or running; attached, not resubmitted: "
                + ", ".join(f"{n} (job {attached[r.hash]})" for n, r in zip(names, [r for r in unfinished if r.hash in attached]))
            )
        if not todo:
            if not attached:
                exp.end_if_done()
                log(f"[sdpg-ablate] all {len(distinct)} runs of {plan.spec.name} are finished; nothing submitted")
                return {"submitted": [], "attached": {}, "experiment_id": exp.experiment_id, "parent_run_id": exp.parent_id}
            jobs = []
        else:
            for r in todo:  # run folders and submitit's folder made here, so a link planted at one is refused now
                fsio.ensure_dir(r.config.run.output_dir, root=_root_of(Path(r.config.run.output_dir), plan.output_dir))
            fsio.ensure_dir(plan.output_dir / "submitit", root=plan.output_dir)
            ex = make_executor(
                plan.executor, plan.output_dir / "submitit", plan.profile, plan.spec.name, max_parallel or plan.spec.max_parallel
            )
            fns = [TrainJob(r.config.resolved(), plan.tracking_uri, run_ids[r.hash], exp.parent_id) for r in todo]
            if plan.executor == "local":
                jobs = _submit_local(ex, fns, max_parallel or plan.spec.max_parallel, progress.update)
            else:
                with ex.batch():
                    jobs = [ex.submit(f) for f in fns]
            now, host = time.time(), socket.gethostname()
            for r, j in zip(todo, jobs):
                prev = job_history(jobs_state.get(r.hash, {}))
                rec = {"job_id": str(j.job_id), "executor": plan.executor, "host": host, "submitted_at": now}
                jobs_state[r.hash] = {
                    "name": r.name,
                    "job_id": str(j.job_id),
                    "executor": plan.executor,
                    "host": host,
                    "mlflow_run_id": run_ids[r.hash],
                    "submitted_at": now,
                    "jobs": [*prev, rec],
                }
            write_jobs(state_file, jobs_state)
    if todo:
        log(
            f"[sdpg-ablate] submitted {len(todo)} of {len(distinct)} runs ({len(distinct) - len(unfinished)} finished"
            f"{f', {len(attached)} attached' if attached else ''}) with the {plan.executor} executor: "
            f"job ids {', '.join(str(j.job_id) for j in jobs)}"
        )
        log(f"[sdpg-ablate] logs: {plan.output_dir / 'submitit'}")
    log(
        f"[sdpg-ablate] MLflow: experiment {plan.experiment!r} (id {exp.experiment_id}) at {tracking.redact(plan.tracking_uri)}; "
        f"view with: mlflow ui --backend-store-uri {tracking.redact(plan.tracking_uri)}"
    )
    if wait if wait is not None else plan.executor in ("local", "debug"):
        try:
            if jobs:
                watch(plan, jobs, todo, log=log, progress=progress)
        finally:
            if jobs:
                _settle(exp, jobs, [run_ids[r.hash] for r in todo])
        _wait_attached(plan, jobs_state, attached, log)
        log(status(plan))
        log(f"[sdpg-ablate] done; open the runs with: mlflow ui --backend-store-uri {tracking.redact(plan.tracking_uri)}")
        log(f"[sdpg-ablate] next, the report (figures, tables, a page): sdpg-report {plan.path} --out reports/{plan.spec.name}")
    return {
        "submitted": [r.hash for r in todo],
        "attached": attached,
        "jobs": jobs,
        "experiment_id": exp.experiment_id,
        "parent_run_id": exp.parent_id,
    }


def _wait_attached(plan: Plan, jobs_state: dict, attached: dict[str, str], log, every_s: float = 10.0) -> None:
    """Wait for jobs another sdpg-ablate submitted (attached to, not ours to collect): until the scheduler
    (or, for local jobs, the process table) no longer holds them; then say how their runs ended."""
    if not attached:
        return
    runs = [r for r in plan.distinct if r.hash in attached]
    last = 0.0
    while True:
        live = active_jobs(jobs_state, list(attached))
        if not live:
            break
        if time.time() - last >= every_s:
            steps = ", ".join(f"{r.name}: step {run_state(r)[1]}/{r.config.run.total_steps}" for r in runs if r.hash in live)
            log(f"[sdpg-ablate] waiting for {len(live)} attached jobs: {steps}")
            last = time.time()
        time.sleep(2.0)
    failed = [r.name for r in runs if run_state(r)[0] != "finished"]
    if failed:
        raise RuntimeError(f"attached runs did not finish: {', '.join(failed)} (see {plan.output_dir / 'submitit'})")


def _settle(exp: Experiment, jobs: list, run_ids: list[str]) -> None:
    """After waiting: a job that died before its run could record it (killed, out of memory, a
    pickling error) leaves its MLflow run FAILED with the job's error; then the parent is ended."""
    from sdpg.orchestration import tracking

    c = exp.client
    for j, rid in zip(jobs, run_ids):
        if not j.done() or tracking.retry(c.get_run, rid).info.status in tracking.TERMINAL:
            continue
        try:
            j.results()
        except Exception as e:  # noqa: BLE001 - any job error is recorded on its run
            tracking.fail_run(c, rid, f"job {j.job_id}: {job_error(e)}", str(e))
        else:
            tracking.finish_run(c, rid, "FINISHED")
    exp.end_if_done()
    _release(jobs)


def _release(jobs: list) -> None:
    """Finished local jobs must not try to cancel themselves when collected at interpreter exit
    (submitit's ``LocalJob.__del__`` then prints 'Exception ignored ... NoneType')."""
    for j in jobs:
        if hasattr(j, "_cancel_at_deletion") and j.done():
            j._cancel_at_deletion = False


def _submit_local(ex, fns, max_parallel: int, progress=None, every_s: float = 10.0):
    """submitit's local executor starts every job at once; start them max_parallel at a time,
    reporting progress meanwhile."""
    jobs, pending = [], list(fns)
    running: list = []
    last = time.time()
    while pending:
        running = [j for j in running if not j.done()]
        while pending and len(running) < max_parallel:
            j = ex.submit(pending.pop(0))
            jobs.append(j)
            running.append(j)
        if pending:
            time.sleep(1.0)
            if progress is not None and time.time() - last >= every_s:
                progress(jobs)
                last = time.time()
    return jobs


def _last_log_line(job) -> str:
    """The last line a job logged (whole: e.g. the base model's build), ``queued`` before it starts."""
    try:
        lines = [ln.strip() for ln in Path(job.paths.stderr).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "queued"
    useful = [ln for ln in lines if ln.startswith("[")]
    return (useful or lines or ["starting"])[-1]


def _base_model_pending(run: Run) -> bool:
    """True while the built-in base model this run starts from is not built yet (never for the
    default recipe: its model ships with the package and is only copied)."""
    if run.config.model.path != "embedded":
        return False
    from sdpg.paths import cache_root
    from sdpg.training.embedded import recipe_hash, shipped_recipe

    h = recipe_hash(run.config.model.embedded)
    if (shipped_recipe(run.config.model.embedded.task) or {}).get("recipe_hash") == h:
        return False
    return not (cache_root() / f"embedded-{h}" / "sdpg_recipe.json").is_file()


class Progress:
    """The console of a local ablation: a line when something changes, never the same line again. Each
    line has the time of day; the counts line when a run starts or ends; per running run its step,
    accuracy and time left at its own pace since its first step seen (or, before its first step, the last
    line its job logged, or that it waits for the base model's build); per finished run its end."""

    def __init__(self, runs: list[Run], log=print, clock=time.time):
        self.runs, self.log, self.clock = runs, log, clock
        self.shown: dict[str, str] = {}  # what was last said about each run (and the counts)
        self.first: dict[str, tuple[float, int]] = {}  # run -> (time, step) when a step was first seen

    def _say(self, key: str, text: str, extra: str = "") -> None:
        """Log ``text`` (with ``extra``, e.g. the time left, which alone is no change) unless it was the last said."""
        if self.shown.get(key) != text:
            self.shown[key] = text
            self.log(f"[sdpg-ablate {time.strftime('%H:%M:%S', time.localtime(self.clock()))}] {text}{extra}")

    def _eta(self, r: Run, step: int) -> str:
        now = self.clock()
        t0, s0 = self.first.setdefault(r.name, (now, step))
        total = r.config.run.total_steps
        if step <= s0 or now <= t0 or step >= total:
            return ""
        left = (total - step) * (now - t0) / (step - s0)
        return f", ~{_duration(left)} left"

    def update(self, jobs: list) -> None:
        done, running, queued = 0, 0, 0
        lines: list[tuple[str, str, str]] = []
        for i, r in enumerate(self.runs):
            if i >= len(jobs):
                queued += 1
                continue
            if jobs[i].done():
                done += 1
                state, step, m = run_state(r)
                if r.name in self.shown:  # seen running: say how it ended, once
                    acc = m.get("train/accuracy")
                    how = "finished" if state == "finished" else "stopped unfinished"
                    end = f"{r.name}: {how} at step {step}" + (f" acc {acc:.2f}" if acc is not None else "")
                    lines.append((r.name, end, ""))
                continue
            running += 1
            _, step, m = run_state(r)
            acc = m.get("train/accuracy")
            eta = ""
            if step == 0:
                line = _last_log_line(jobs[i])
                if not line.startswith("[embedded]") and line != "queued" and _base_model_pending(r):
                    line = "waiting for the base model's build (once per machine; another run is building it)"
            else:
                line = f"step {step}/{r.config.run.total_steps}" + (f" acc {acc:.2f}" if acc is not None else "")
                eta = self._eta(r, step)
            lines.append((r.name, f"{r.name}: {line}", eta))
        self._say("", f"{done}/{len(self.runs)} runs done, {running} running, {queued} queued")
        for key, text, extra in lines:
            self._say(key, text, extra)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def watch(plan: Plan, jobs: list, runs: list[Run] | None = None, log=print, every_s: float = 10.0, progress=None) -> None:
    """Progress until every job is done (``Progress``: a timestamped line per change). Raises if any failed."""
    progress = progress or Progress(runs or plan.distinct, log)
    while True:
        done = [j.done() for j in jobs]
        progress.update(jobs)
        if all(done):
            break
        time.sleep(every_s)
    failed = []
    for j in jobs:
        try:
            j.results()[0]
        except Exception as e:  # noqa: BLE001 - reported below
            failed.append(f"job {j.job_id}: {job_error(e)}")
    if failed:
        raise RuntimeError("some runs failed:\n" + "\n".join(failed))


def _root_of(folder: Path, root: Path) -> Path:
    """``root`` when ``folder`` lies inside it (no link allowed in between), else ``folder``'s parent."""
    try:
        folder.resolve().relative_to(root.resolve())
        return root
    except ValueError:
        return folder.parent
