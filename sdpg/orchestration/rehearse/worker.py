"""The rehearsal's job: every runnable run trained for its two steps in one local process, stopped after the first
as a preemption stops it and resumed from its checkpoint, each result written as it finishes."""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from pathlib import Path

from sdpg import fsio
from sdpg.orchestration.rehearse.plan import STEPS, RehearsalError, one_sentence


class RehearsalWorker:
    """A local job that rehearses runs one after another: the submitted job stops after step 1 as a
    preempted one does, ``checkpoint()`` gives the requeued job, which resumes and finishes step 2."""

    def __init__(self, jobs: list[dict], results_dir: str):
        self.jobs, self.results_dir = jobs, results_dir

    def __call__(self) -> int:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        for job in self.jobs:
            res = Path(self.results_dir) / f"{job['name']}.json"
            if res.is_file():
                continue  # done by a worker before this one
            fsio.write_json(res, rehearse_run(job))
        return len(self.jobs)


class PreemptAfter:
    """A ``TrialHook`` that preempts its job after a step the way SLURM does before a time limit: SIGUSR2
    to this process. The job's own handler sees it, the trainer checkpoints, the job reports itself
    preempted (its MLflow run SCHEDULED) and is requeued."""

    def __init__(self, step: int):
        self.step = step

    def log(self, metrics: dict[str, float], step: int) -> None:
        if step == self.step and "train/reward" in metrics:
            os.kill(os.getpid(), signal.SIGUSR2)

    def close(self) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def end_status(self, result: dict) -> tuple[str, dict[str, str]]:
        return "FINISHED", {}


def rehearse_run(job: dict) -> dict:
    """Two steps of one run through the submitted job type; a dict with pass/fail, the first error in
    one sentence and the measurements."""
    from sdpg.orchestration.launch import TrainJob
    from sdpg.training.trainer import latest_checkpoint

    out = Path(job["config"]["run"]["output_dir"])
    t0 = time.perf_counter()
    phase = "the submitted job (step 1)"
    try:
        submitted = TrainJob(job["config"], job["tracking_uri"], job["run_id"], job["parent_run_id"])
        first = submitted.run(trial=PreemptAfter(1), requeue=False)
        if not first.get("preempted") or first["step"] != 1:
            raise RehearsalError(
                f"the submitted job did not stop for its requeue when preempted after step 1 "
                f"(status {first['status']} at step {first['step']})"
            )
        ck = latest_checkpoint(out)
        if ck is None or not ck.stem.endswith("0000001"):
            raise RehearsalError(f"no checkpoint of step 1 in {out / 'checkpoints'} after the preemption")
        phase = "the requeued job (resume, step 2)"
        requeued = submitted.checkpoint()  # what submitit calls on preemption
        second = requeued.function(*requeued.args, **requeued.kwargs)
        if second["status"] != "finished" or second["step"] != STEPS:
            raise RehearsalError(f"the requeued job ended {second['status']} at step {second['step']}, not finished at {STEPS}")
        phase = "after the run"
        rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        steps = [r["step"] for r in rows if "train/reward" in r]
        if steps != list(range(1, STEPS + 1)):
            raise RehearsalError(f"metrics.jsonl holds training steps {steps} after the resume, not 1..{STEPS} once each")
        step_s = [r["timing/step"] for r in rows if "timing/step" in r]
        merged: dict[str, float] = {}
        for r in rows:
            merged.update({k: v for k, v in r.items() if k != "step"})
        objective = job.get("objective")
        if objective and not any(objective in r for r in rows):
            raise RehearsalError(
                f"the objective metric {objective!r} was never logged (logged: "
                f"{', '.join(sorted(k for k in merged if k.startswith('eval/'))) or 'no eval metric'})"
            )
        return {
            "status": "pass",
            "steps_per_s": len(step_s) / sum(step_s) if step_s else None,
            "wall_s": time.perf_counter() - t0,
            "metrics": merged,
        }
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        fsio.ensure_dir(out)
        fsio.write_text(out / "traceback.txt", traceback.format_exc())
        return {
            "status": "fail",
            "error": f"{phase}: {one_sentence(e)}",
            "wall_s": time.perf_counter() - t0,
            "traceback": str(out / "traceback.txt"),
        }
