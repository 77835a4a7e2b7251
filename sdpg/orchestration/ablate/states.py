"""Where each run of a plan stands (its folder's checkpoints and result, the scheduler's word on its jobs), and
cancelling the plan's SLURM jobs; every question to SLURM goes through ``sdpg.orchestration.scheduler``."""

from __future__ import annotations

import sys
from pathlib import Path

from sdpg.orchestration import scheduler
from sdpg.orchestration.ablate.plan import Plan, Run, _short, duplicates_note
from sdpg.orchestration.core import job_history, read_jobs
from sdpg.training.metrics import is_mean_at
from sdpg.training.records import jsonl_rows, read_json_object


def run_state(run: Run) -> tuple[str, int, dict]:
    """(state, last step, last metrics) from the run's folder: new, partial, running?, finished."""
    out = Path(run.config.run.output_dir)
    rows = jsonl_rows(out / "metrics.jsonl")  # a last line cut by a kill is left out
    metrics = rows[-1] if rows else {}
    last = metrics.get("step", 0)
    r, _ = read_json_object(out / "result.json")  # empty or cut short (killed while writing): not finished
    if r is not None and r.get("status") == "finished" and r.get("step") == run.config.run.total_steps:
        return "finished", last, metrics
    from sdpg.training.checkpoint import checkpoints

    if checkpoints(out):  # step_<k>.pt files or complete sharded folders
        return "partial", last, metrics
    return ("started" if last else "new"), last, metrics


def table(plan: Plan, extra: dict[str, str] | None = None) -> str:
    rows = [("run", "variant", "diff", "seed", "hash", "state", "step")]
    for r in plan.runs:
        state, step, _ = run_state(r)
        if extra and r.hash in extra:
            state = extra[r.hash]
        if r.same_as is not None:
            state += f" (= {r.same_as})"
        diff = ", ".join(f"{k}={_short(v)}" for k, v in r.diff.items()) or "(base)"
        rows.append((r.name, r.variant, diff, str(r.seed), r.hash[:8], state, f"{step}/{r.config.run.total_steps}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    note = duplicates_note(plan)
    return "\n".join(lines) + ("\n\n" + note if note else "")


def status(plan: Plan) -> str:
    """Each run's state and last metrics, from its folder, the scheduler and MLflow."""
    state_file = plan.output_dir / "jobs.json"
    jobs = read_jobs(state_file, lambda m: print(m, file=sys.stderr))
    sched = scheduler.slurm_states([str(v.get("job_id")) for v in jobs.values() if v.get("executor") == "slurm"])
    extra = {}
    for h, v in jobs.items():
        s = sched.get(str(v.get("job_id")))
        if s and s not in ("COMPLETED",):
            extra[h] = f"{s.lower()} ({v['job_id']})"
    lines = [table(plan, extra), ""]
    for r in plan.runs:
        _, step, m = run_state(r)
        keys = [k for k in sorted(m) if is_mean_at(k)] + ["train/accuracy", "train/entropy"]
        shown = " ".join(f"{k}={m[k]:.3f}" for k in keys if k in m)
        if shown:
            lines.append(f"{r.name}: {shown}" + (f" (= {r.same_as})" if r.same_as else ""))
    return "\n".join(lines)


def cancel(plan: Plan, log=print) -> int:
    """scancel the recorded SLURM jobs of the plan's runs; their unfinished MLflow runs end KILLED
    (and the parent with them). Raises SchedulerUnavailable, with nothing marked, when SLURM refuses."""
    from sdpg.orchestration import tracking

    state_file = plan.output_dir / "jobs.json"
    jobs = read_jobs(state_file, log)
    mine = {r.hash for r in plan.distinct}
    picked = {h: v for h, v in jobs.items() if h in mine and any(j.get("executor") == "slurm" for j in job_history(v))}
    if not picked:
        log("[sdpg-ablate] no SLURM jobs recorded for this spec")
        return 0
    ids = sorted({str(j["job_id"]) for v in picked.values() for j in job_history(v) if j.get("executor") == "slurm"})
    scheduler.cancel_slurm(ids)
    c = tracking.client(plan.tracking_uri)
    parents = set()
    for v in picked.values():
        rid = v.get("mlflow_run_id")
        if not rid:
            continue
        run = tracking.retry(c.get_run, rid)
        if run.info.status not in tracking.TERMINAL:
            tracking.finish_run(c, rid, "KILLED")
        parents.add(run.data.tags.get("mlflow.parentRunId"))
    for p in parents - {None}:
        tracking.end_parent_if_done(c, p)
    log(f"[sdpg-ablate] cancelled {len(ids)} jobs: {', '.join(ids)}")
    return len(ids)
