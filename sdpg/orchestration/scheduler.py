"""The one place that asks the scheduler about jobs: their states, whether they still run, cancelling them.

Submission goes through submitit (``sdpg.orchestration.launch``); every later question about a submitted
job comes here. A local job's id is its worker's pid, asked of this machine's process table; a SLURM job is
asked of ``squeue`` / ``scancel``. When SLURM cannot be asked (the command is missing, times out, or the
controller does not answer) these functions raise ``SchedulerUnavailable`` with one sentence: a status
shown from nothing, or a run resubmitted because its job looked gone, is how runs got trained twice.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path

ACTIVE_SLURM_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "CONFIGURING",
        "COMPLETING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESIZING",
        "SUSPENDED",
        "STOPPED",
        "SIGNALING",
        "STAGE_OUT",
    }
)
"""SLURM job states of a job that is still queued or running (it may yet write to its run folder)."""

# squeue exits non-zero when none of the ids it is asked about is known any more (finished long ago):
# that is an answer (no job is active), not a failure to ask
_UNKNOWN_JOBS = "Invalid job id"


class SchedulerUnavailable(RuntimeError):
    """The scheduler could not be asked; the message is one sentence naming the command and the jobs."""


def _ids_text(job_ids: list[str]) -> str:
    return ", ".join(job_ids[:5]) + (f" (and {len(job_ids) - 5} more)" if len(job_ids) > 5 else "")


def _run(cmd: list[str], job_ids: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        reason = f"no {cmd[0]} command here ({e.strerror})" if isinstance(e, OSError) else f"no answer in {timeout_s:g}s"
        raise SchedulerUnavailable(f"cannot ask SLURM ({cmd[0]}) about jobs {_ids_text(job_ids)}: {reason}") from None


def slurm_states(job_ids: Iterable[str], timeout_s: float = 60.0) -> dict[str, str]:
    """SLURM state of each job the scheduler still knows (one entry per array task, ``squeue -r``); a job
    it no longer lists is absent. Raises SchedulerUnavailable when squeue cannot answer."""
    ids = sorted({str(j) for j in job_ids})
    if not ids:
        return {}
    out = _run(["squeue", "-h", "-r", "-o", "%i %T", "--jobs", ",".join(ids)], ids, timeout_s)
    if out.returncode != 0 and _UNKNOWN_JOBS not in out.stderr:
        why = " ".join(out.stderr.split())[:200] or f"exit code {out.returncode}"
        raise SchedulerUnavailable(f"cannot ask SLURM (squeue) about jobs {_ids_text(ids)}: {why}")
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def slurm_active(job_ids: Iterable[str], timeout_s: float = 60.0) -> set[str]:
    """The ids among ``job_ids`` that SLURM still holds (queued, running, requeued...)."""
    return {j for j, s in slurm_states(job_ids, timeout_s).items() if s in ACTIVE_SLURM_STATES}


def local_alive(job_id: str, host: str | None) -> bool:
    """A local job (its id is the worker's pid) still running on this machine; one of another host is not
    visible from here and counts as gone."""
    if host and host != socket.gethostname():
        return False
    try:
        pid = int(str(job_id))
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (ValueError, OSError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
    return state not in ("Z", "X") and "submitit" in cmd


def is_running(executor: str, job_id: str, host: str | None = None) -> bool:
    """Whether one recorded job (``executor`` local or slurm) is still queued or running."""
    if executor == "slurm":
        return str(job_id) in slurm_active([str(job_id)])
    return local_alive(str(job_id), host)


def cancel_slurm(job_ids: Iterable[str], timeout_s: float = 60.0) -> None:
    """``scancel`` the jobs; ids SLURM no longer knows are not an error. Raises SchedulerUnavailable when
    scancel cannot be run or the controller refuses."""
    ids = sorted({str(j) for j in job_ids})
    if not ids:
        return
    out = _run(["scancel", *ids], ids, timeout_s)
    if out.returncode != 0 and _UNKNOWN_JOBS not in out.stderr:
        why = " ".join(out.stderr.split())[:200] or f"exit code {out.returncode}"
        raise SchedulerUnavailable(f"cannot cancel SLURM jobs {_ids_text(ids)} (scancel): {why}")
