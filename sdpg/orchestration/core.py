"""The orchestration core shared by ``sdpg-ablate`` and ``sdpg-sweep``.

Both commands read a spec, resolve a base trainer config, choose an executor (and a SLURM profile),
make an output folder, and track their runs in MLflow as one experiment with a parent run per spec
and a child run per training run. Everything they have in common lives here:

* ``NAME_PATTERN``: what a spec, variant or study name may look like (one pattern);
* ``TrackingSpec``: the ``tracking:`` section of a spec;
* ``resolve_base``, ``resolve_executor``, ``output_folder``: from spec keys to a config dict, an
  executor kind with its profile, and an absolute folder;
* ``Experiment``: the MLflow life cycle (experiment with artifacts beside its store, parent run
  re-opened while work runs and ended when its runs end, child runs keyed by a hash).

The job that trains a run is ``sdpg.orchestration.launch.TrainJob``; a sweep trial is that job
with an Optuna trial attached.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from sdpg import fsio
from sdpg.orchestration.specs import SlurmProfile, load_profile
from sdpg.paths import BUILTIN_CONFIGS
from sdpg.training.config import ConfigError, Strict, TrainConfig, load_yaml

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
"""Spec, variant and study names: they become folder names, MLflow experiment names and job names."""

EXECUTORS = ("local", "debug", "slurm")


class TrackingSpec(Strict):
    uri: str | None = None
    """MLflow tracking URI; None: ``sqlite:///<output_dir>/mlflow.db``. Use an ``mlflow server``
    (``http://host:5000``) when many jobs write at once."""
    experiment: str | None = None
    """MLflow experiment; None: the spec's name."""


def resolve_base(base: str | dict[str, Any], spec_path: Path) -> dict:
    """The base trainer config of a spec: an inline mapping, ``embedded`` (the built-in default),
    ``embedded_chain`` (the built-in chain task) or a YAML path relative to the spec file."""
    if isinstance(base, dict):
        return base
    if base in BUILTIN_CONFIGS:
        return load_yaml(BUILTIN_CONFIGS[base])
    bp = Path(base) if Path(base).is_absolute() else spec_path.parent / base
    if not bp.is_file():
        raise ConfigError(f"{spec_path}: key 'base' has bad value {base!r}: no such file {bp}")
    return load_yaml(bp)


def resolve_executor(
    kind: str,
    profile: str | None,
    src: str,
    *,
    kind_from: str | None = None,
    profile_from: str | None = None,
    profile_file: str | None = None,
) -> tuple[str, SlurmProfile | None]:
    """(executor kind, SLURM profile). ``kind`` may be a profile name (then the executor is slurm);
    slurm without a profile uses ``slurm/dev.yaml``. Profiles are loaded by name from the profile
    folders only; ``profile_file`` (``--profile-file``) is the one way to name a file. ``kind_from`` /
    ``profile_from`` say where the values came from, for the error message."""
    from sdpg.orchestration.specs import load_profile_file

    kind_from = kind_from or f"{src}: key 'executor'"
    profile_from = profile_from or f"{src}: key 'profile'"
    if profile_file:
        return (kind if kind in EXECUTORS and kind != "debug" else "slurm"), load_profile_file(profile_file)
    if kind not in EXECUTORS:
        profile, kind, profile_from = kind, "slurm", kind_from
    prof = load_profile(profile, profile_from) if profile else None
    if kind == "slurm" and prof is None:
        prof = load_profile("dev", profile_from)
    return kind, prof


def check_name(value: Any, where: str) -> str:
    """``value`` if it is a safe name (``[A-Za-z0-9._-]``, 1-100 characters, no leading dot), else a
    ConfigError naming ``where`` and the value."""
    from sdpg.orchestration.names import name_problem, short_repr

    why = name_problem(value)
    if why is not None:
        raise ConfigError(f"{where} has bad value {short_repr(value)}: a name {why}")
    return value


def check_writable_folder(folder: Path, where: str) -> None:
    """Refuse, before anything is created, a folder that cannot be made: a file on its path, or a
    first existing parent that is not writable."""
    try:
        fsio.check_writable_target(folder, allow_link=True)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{where}: cannot create {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: cannot create {folder}: {probe} is not writable")


TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "file", "databricks")


def check_tracking_uri(uri: str | None, where: str) -> None:
    """A tracking URI MLflow can open, checked without opening it (opening a sqlite URI creates the store)."""
    from sdpg.orchestration.names import short_repr
    from sdpg.training.redact import redact

    if uri is None:
        return
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", uri)
    scheme = m.group(1).split("+")[0].lower() if m else ""
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(
            f"{where}: key 'tracking.uri' has bad value {short_repr(redact(uri))}: unknown scheme "
            f"{scheme or '(none)'!r} (expected one of {', '.join(TRACKING_SCHEMES)})"
        )
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///"):
            raise ConfigError(
                f"{where}: key 'tracking.uri' has bad value {short_repr(redact(uri))}: "
                f"expected sqlite:///PATH (three slashes, then the path)"
            )
        db = Path(uri[len("sqlite:///") :])
        if db.is_dir():
            raise ConfigError(f"{where}: key 'tracking.uri' has bad value {short_repr(uri)}: {db} is a folder")
        if not db.parent.is_dir():
            raise ConfigError(f"{where}: key 'tracking.uri' has bad value {short_repr(uri)}: no folder {db.parent} for the store")


def check_journal(url: str) -> None:
    """An Optuna journal file (``journal:PATH``) whose lines are JSON but for a last one cut by a kill (which
    Optuna drops itself): a garbled line elsewhere is one line naming the file and what to do."""
    if not url.startswith("journal:"):
        return
    path = Path(url[len("journal:") :])
    if not path.is_file():
        return
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        raise ConfigError(f"{path}: the Optuna study cannot be read ({e.strerror or e})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    for n, line in enumerate(lines[:-1], start=1):
        try:
            json.loads(line)
        except ValueError:
            raise ConfigError(
                f"{path}: the Optuna study cannot be read (line {n} is not JSON); move it away to start a new study "
                f"(what the trials trained stays in their folders)"
            ) from None


def check_sqlite_store(uri: str, what: str) -> None:
    """An existing SQLite file behind ``uri`` (``sqlite:///PATH``; other URIs pass) opens as a database, checked
    read-only before anything is written: a store cut short or overwritten is one line naming the file and
    what to do, never a migration traceback after jobs were planned. ``what``: "MLflow store", "Optuna study"."""
    import sqlite3

    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///") :])
    if not db.is_file() or db.stat().st_size == 0:  # none yet (or empty: SQLite makes a new one)
        return
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            bad = con.execute("PRAGMA quick_check").fetchone()
        finally:
            con.close()
    except sqlite3.Error as e:
        bad = (str(e),)
    if bad and bad[0] != "ok":
        raise ConfigError(
            f"{db}: the {what} cannot be read ({' '.join(str(bad[0]).split())[:120]}); move it away to start a new one "
            f"(what the runs trained stays in their folders)"
        )


KIND_MARK = ".sdpg-kind"
"""A file in a spec's output folder naming what made it: ``ablation`` or ``sweep``."""


def folder_kind(out: Path) -> str | None:
    """What made the output folder ``out``: its mark, or for a folder made before marks, its contents (a
    sweep's study and trials, an ablation's runs); None for a new or empty folder."""
    mark = out / KIND_MARK
    if mark.is_file():
        try:
            text = mark.read_text(errors="replace").strip()
        except OSError:
            text = ""
        if text in ("ablation", "sweep"):
            return text
    if any((out / n).exists() for n in ("optuna.journal", "optuna.db", "trials")):
        return "sweep"
    if (out / "runs").is_dir():
        return "ablation"
    return None


def check_folder_kind(out: Path, kind: str, name: str, where: str) -> None:
    """An ablation and a sweep never share an output folder: one named like the other would read the other's
    jobs.json as its own (a sweep once attached to an ablation's job as if it were its worker)."""
    other = folder_kind(out)
    if other is not None and other != kind:
        raise ConfigError(f"{where}: {out} holds the {other} {name!r}, not a {kind}; give this {kind} another name or output_dir")


def mark_folder_kind(out: Path, kind: str) -> None:
    mark = out / KIND_MARK
    if not mark.exists():
        fsio.write_text(mark, kind + "\n")


def check_experiment_name(name: str | None, where: str) -> None:
    from sdpg.orchestration.names import short_repr

    if name is None:
        return
    if not name.strip() or len(name) > 200 or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ConfigError(
            f"{where}: key 'tracking.experiment' has bad value {short_repr(name)}: an experiment name "
            f"is one line of at most 200 printable characters"
        )
    from sdpg.training.redact import contains_secret

    if contains_secret(name):
        raise ConfigError(
            f"{where}: key 'tracking.experiment' has bad value {short_repr(name)}: an experiment name looks like a "
            f"secret (a token or key): it is shown in MLflow and every console line"
        )


def output_folder(output_dir: str | None, name: str) -> Path:
    """``output_dir`` (``~`` and ``$VAR`` expanded; an unset variable refused) or ``outputs/<name>``,
    absolute (relative to the current directory)."""
    out = fsio.expand_path(output_dir, "output_dir") if output_dir else Path("outputs") / name
    return out if out.is_absolute() else Path.cwd() / out


def tracking_target(spec: TrackingSpec, output_dir: Path, name: str) -> tuple[str, str]:
    """(tracking URI, experiment name) of a spec."""
    from sdpg.orchestration.tracking import default_uri

    return spec.uri or default_uri(output_dir), spec.experiment or name


class Experiment:
    """The MLflow side of one spec: its experiment, its parent run and its child runs.

    ``open`` creates the experiment (artifacts beside the store, never in the current directory)
    and the parent run, or finds them again and marks the parent RUNNING; ``child`` finds or creates
    the run of one hash; ``end_if_done`` ends the parent once no child is RUNNING or SCHEDULED.
    """

    def __init__(self, uri: str, name: str, output_dir: Path, kind: str, spec_name: str, spec_path: Path):
        self.uri, self.name, self.output_dir, self.kind = uri, name, output_dir, kind
        self.spec_name, self.spec_path = spec_name, spec_path
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self._c = None

    @property
    def client(self):
        from sdpg.orchestration import tracking

        if self._c is None:
            self._c = tracking.client(self.uri)
        return self._c

    def open(self, log_spec: bool = True) -> Experiment:
        from sdpg.orchestration import tracking
        from sdpg.training.locks import file_lock

        tracking.check_server(self.uri, "tracking.uri")
        fsio.ensure_dir(self.output_dir)
        mark_folder_kind(self.output_dir, self.kind)
        # One creator at a time: two commands started together on a new store both ran MLflow's schema
        # migration (one died in alembic, leaving _alembic_tmp_runs) and could both create the parent run.
        with file_lock(self.output_dir / ".sdpg-store.lock", timeout=600):
            c = self.client
            self.experiment_id = tracking.get_or_create_experiment(
                c, self.name, tracking.artifact_location(self.uri, self.output_dir)
            )
            # a store shared by several specs: an ablation and a sweep never share an experiment
            exp_kind = tracking.retry(c.get_experiment, self.experiment_id).tags.get("sdpg.kind")
            if exp_kind is None:
                tracking.retry(c.set_experiment_tag, self.experiment_id, "sdpg.kind", self.kind)
            elif exp_kind != self.kind:
                raise ConfigError(
                    f"{self.spec_path}: MLflow experiment {self.name!r} at {tracking.redact(self.uri)} holds a {exp_kind}, "
                    f"not a {self.kind}; set tracking.experiment to another name"
                )
            self.parent_id = tracking.ensure_parent_run(
                c, self.experiment_id, self.spec_name, self.kind, {"sdpg.spec_file": str(self.spec_path)}
            )
        if log_spec:
            tracking.retry(c.log_text, self.parent_id, tracking.redact(self.spec_path.read_text()), f"{self.kind}_spec.yaml")
        return self

    def child(self, key: str, name: str, config: TrainConfig, tags: dict[str, Any]) -> str:
        """The run of ``key`` (an effective-config hash, or a trial's key), created once with the
        config's parameters and ``config.yaml``."""
        import yaml

        from sdpg.orchestration import tracking

        resolved = config.resolved()
        rid, _ = tracking.ensure_child_run(
            self.client,
            self.experiment_id,
            self.parent_id,
            key,
            name,
            tags={"git_commit": tracking.git_commit(), "spec": self.spec_name, **tags},
            params=tracking.flatten(resolved),
            config_yaml=yaml.safe_dump(resolved, sort_keys=False),
        )
        return rid

    def end_if_done(self) -> str | None:
        from sdpg.orchestration import tracking

        return tracking.end_parent_if_done(self.client, self.parent_id)

    def end(self, status: str = "FINISHED") -> None:
        from sdpg.orchestration import tracking

        tracking.finish_run(self.client, self.parent_id, status)


def job_error(e: BaseException) -> str:
    """The one line that says why a submitit job failed: the exception line of its trace (submitit's
    message ends with the log paths, which are not the reason)."""
    lines = [ln.rstrip() for ln in str(e).splitlines() if ln.strip()]
    cut = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("You can check full logs")), len(lines))
    body = [ln for ln in lines[:cut] if set(ln.strip()) - {"-"}]
    return body[-1].strip() if body else repr(e)


# --------------------------------------------------------------------------------------------
# Jobs already submitted: asked of the scheduler (SLURM) or the process table (local), so that a
# second submission attaches to them instead of training the same thing twice
# --------------------------------------------------------------------------------------------

ACTIVE_SLURM_STATES = {
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


def job_history(entry: dict) -> list[dict]:
    """Every job ever submitted for one run (older jobs.json files kept only the last one)."""
    hist = list(entry.get("jobs") or [])
    if not hist and entry.get("job_id"):
        hist = [{k: entry.get(k) for k in ("job_id", "executor", "host", "submitted_at")}]
    return hist


def _local_alive(job_id: str, host: str | None) -> bool:
    """A local job (its id is the worker's pid) still running on this machine."""
    import socket

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


def _slurm_active(job_ids: list[str]) -> set[str]:
    """The ids among ``job_ids`` that SLURM still holds (queued, running, requeued...), one line per array
    task (``squeue -r``). Raises RuntimeError when the scheduler cannot be asked: resubmitting blind is
    how a spec came to train twice."""
    import subprocess

    if not job_ids:
        return set()
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i %T", "--jobs", ",".join(job_ids)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"cannot ask SLURM about jobs {', '.join(job_ids[:5])}: {e}") from None
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        raise RuntimeError(f"cannot ask SLURM about jobs {', '.join(job_ids[:5])}: {' '.join(out.stderr.split())[:200]}")
    active = set()
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] in ACTIVE_SLURM_STATES:
            active.add(parts[0])
    return active


def active_jobs(jobs_state: dict, hashes: list[str]) -> dict[str, str]:
    """Run hash -> id of a job of it that is still queued or running (any job ever submitted for it)."""
    slurm_ids = [str(j["job_id"]) for h in hashes for j in job_history(jobs_state.get(h, {})) if j.get("executor") == "slurm"]
    live_slurm = _slurm_active(slurm_ids)
    out = {}
    for h in hashes:
        for j in reversed(job_history(jobs_state.get(h, {}))):
            jid = str(j.get("job_id"))
            if (j.get("executor") == "slurm" and jid in live_slurm) or (
                j.get("executor") == "local" and _local_alive(jid, j.get("host"))
            ):
                out[h] = jid
                break
    return out


def read_jobs(state_file: Path, log=None, set_aside: bool = False) -> dict:
    """jobs.json as {run key: entry}; {} when there is none. One that cannot be read (cut short, garbage, not
    an object of objects) is reported in one line through ``log`` and read as {}; with ``set_aside`` (a
    submission, which writes a new one) it is first renamed to ``jobs.json.corrupt`` so that nothing is lost.
    The run folders' locks still keep one writer per run for jobs it named that are still running."""
    from sdpg.training.records import read_json_object

    if not state_file.exists():
        return {}
    jobs, why = read_json_object(state_file)
    if why is None and jobs is not None and not all(isinstance(v, dict) for v in jobs.values()):
        jobs, why = None, "its entries are not objects"
    if why is None and jobs is not None:
        return jobs
    if set_aside:
        kept = state_file.with_name(state_file.name + ".corrupt")
        os.replace(state_file, kept)
        what = f"set aside as {kept.name}; a new one is written"
    else:
        what = "its job ids are unknown, run folders shown alone"
    if log is not None:
        log(f"warning: {state_file} cannot be read ({why}); {what}")
    return {}


def write_jobs(state_file: Path, jobs_state: dict) -> None:
    """jobs.json replaced atomically (a reader never sees half a file)."""
    fsio.write_json(state_file, jobs_state, indent=1)
