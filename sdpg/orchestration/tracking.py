"""MLflow tracking for orchestrated runs: one experiment per spec (artifacts stored beside its
``mlflow.db``), a parent run per spec, a child run per effective config (found again by its hash,
never created twice), metrics in batches. Every run ends with a status: FINISHED, KILLED (pruned or
cancelled) or FAILED with the error as the ``sdpg.error`` tag and its traceback as ``error.txt``;
a parent ends when its last child does.

The trainer knows none of this: ``MlflowSink`` is a ``MetricSink`` handed to ``sdpg.training.trainer.train``.
Credentials never leave the URI: what is logged goes through ``redact``.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def redact(text: Any) -> str:
    """Secrets out of a string (``sdpg.training.redact.redact``): URI credentials, secret query / key=value
    parameters, known token shapes, and every value of a secret-named environment variable, read from a
    snapshot of the environment (iterating the live ``os.environ`` raced with MLflow's telemetry thread)."""
    from sdpg.training.redact import redact as _redact

    return _redact(text)


SERVER_TIMEOUT_S = 10.0
"""How long a tracking or storage server may take to answer a first connection before the command stops."""

_DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433}


def check_server(uri: str | None, key: str, where: str = "", timeout: float = SERVER_TIMEOUT_S) -> None:
    """For a server URI (``http(s)://``, ``postgresql://``, ``mysql://``...), one connection with a time limit:
    a server that does not answer is a ``ConfigError`` naming ``key`` and the URI (credentials redacted),
    instead of MLflow's or SQLAlchemy's retries waiting for minutes without a word. Files and SQLite are
    not servers: nothing is done."""
    import re
    import socket

    from sdpg.training.config import ConfigError

    if not uri or "://" not in uri:
        return
    # the host is what follows the last '@' (a password may hold '#', '?' or '/', which urlsplit misreads)
    m = re.match(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?:[^\s]*@)?(?P<host>\[[^\]]+\]|[^:/?#@\s]+)(?::(?P<port>\d+))?", uri)
    if m is None:
        return
    scheme = m.group("scheme").split("+")[0].lower()
    if scheme not in _DEFAULT_PORTS:
        return
    host = m.group("host").strip("[]")
    port = int(m.group("port")) if m.group("port") else _DEFAULT_PORTS[scheme]
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        took = time.monotonic() - t0
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__).lower()
        raise ConfigError(
            f"{where + ': ' if where else ''}key '{key}' has bad value {redact(uri)}: the server does not answer "
            f"({why} after {took:.1f} s, limit {timeout:.0f} s); "
            f"start it or point {key} elsewhere"
        ) from None


def to_mlflow_key(name: str) -> str:
    """MLflow forbids '@' in metric names: ``eval/aime24/mean@32`` is stored as
    ``eval/aime24/mean_at_32``; ``from_mlflow_key`` maps it back."""
    return name.replace("@", "_at_")


def from_mlflow_key(name: str) -> str:
    return name.replace("_at_", "@")


def default_uri(output_dir: str | Path) -> str:
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def git_commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
            ).stdout.strip()
            or "unknown"
        )
    except Exception:
        return "unknown"


def retry(fn: Callable, *args, attempts: int = 12, **kwargs):
    """Call ``fn``, retrying with jittered back-off: SQLite answers 'database is locked' to
    concurrent writers, a tracking server may blink."""
    delay = 0.05
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception:
            if i == attempts - 1:
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def artifact_location(uri: str, output_dir: str | Path) -> str | None:
    """Where a new experiment keeps its artifacts: beside the SQLite file for ``sqlite:`` stores, under
    ``output_dir`` for other databases; None (the server decides) for a tracking server."""
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts").as_uri()
    return (Path(output_dir).resolve() / "mlartifacts").as_uri()


def get_or_create_experiment(c, name: str, artifact_location: str | None = None) -> str:
    exp = retry(c.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    try:
        return retry(c.create_experiment, name, artifact_location=artifact_location)
    except Exception:
        return retry(c.get_experiment_by_name, name).experiment_id  # created by a concurrent writer


def find_run(c, experiment_id: str, **tags: str):
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = retry(c.search_runs, [experiment_id], filter_string=flt, max_results=2)
    return runs[0] if runs else None


def ensure_parent_run(c, experiment_id: str, spec_name: str, kind: str, tags: dict[str, str]) -> str:
    """The spec's parent run, created once; RUNNING again when new work starts under it."""
    run = find_run(c, experiment_id, **{"sdpg.parent": kind, "sdpg.spec": spec_name})
    if run is not None:
        if run.info.status != "RUNNING":
            from mlflow.entities import RunStatus

            retry(c.update_run, run.info.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return run.info.run_id
    run = retry(c.create_run, experiment_id, run_name=spec_name, tags={"sdpg.parent": kind, "sdpg.spec": spec_name, **tags})
    return run.info.run_id


def ensure_child_run(
    c,
    experiment_id: str,
    parent_id: str,
    run_hash: str,
    name: str,
    tags: dict[str, str],
    params: dict[str, Any],
    config_yaml: str,
) -> tuple[str, bool]:
    """(run id, created). The run of ``run_hash`` is reused whenever it exists."""
    run = find_run(c, experiment_id, **{"sdpg.run_hash": run_hash})
    if run is not None:
        return run.info.run_id, False
    from mlflow.entities import Param, RunStatus

    run = retry(
        c.create_run,
        experiment_id,
        run_name=name,
        tags={"mlflow.parentRunId": parent_id, "sdpg.run_hash": run_hash, **{k: redact(str(v)) for k, v in tags.items()}},
    )
    rid = run.info.run_id
    ps = [Param(k[:250], redact(str(v))[:6000]) for k, v in params.items()]
    for i in range(0, len(ps), 100):
        retry(c.log_batch, rid, params=ps[i : i + 100])
    retry(c.log_text, rid, redact(config_yaml), "config.yaml")
    retry(c.update_run, rid, status=RunStatus.to_string(RunStatus.SCHEDULED))
    return rid, True


TERMINAL = ("FINISHED", "FAILED", "KILLED")


def finish_run(c, run_id: str, status: str) -> None:
    retry(c.set_terminated, run_id, status=status)


def fail_run(c, run_id: str, error: BaseException | str, traceback_text: str = "") -> None:
    """End a run FAILED with its error as the ``sdpg.error`` tag and the traceback as ``error.txt``."""
    msg = redact(error if isinstance(error, str) else f"{type(error).__name__}: {error}")
    try:
        retry(c.set_tag, run_id, "sdpg.error", msg[:5000])
        retry(c.log_text, run_id, redact(traceback_text or msg), "error.txt")
    finally:
        finish_run(c, run_id, "FAILED")


def child_runs(c, parent_id: str) -> list:
    parent = retry(c.get_run, parent_id)
    return retry(
        c.search_runs, [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=50000
    )


def end_parent_if_done(c, parent_id: str) -> str | None:
    """End the parent run once none of its children is RUNNING or SCHEDULED: FAILED when one failed,
    KILLED when one was cancelled, else FINISHED. Returns the status set, or None."""
    states = [r.info.status for r in child_runs(c, parent_id)]
    if not states or any(s not in TERMINAL for s in states):
        return None
    status = "FAILED" if "FAILED" in states else "KILLED" if "KILLED" in states else "FINISHED"
    finish_run(c, parent_id, status)
    return status


class MlflowSink:
    """A trainer ``MetricSink`` writing to an existing run. Every (key, step) is logged at most once: a
    metric already in the run for a step (a requeued job replaying the steps after its last checkpoint, a
    step-0 evaluation repeated after a crash before the first checkpoint) is not logged again."""

    def __init__(self, uri: str, run_id: str):
        from mlflow.entities import RunStatus

        self.c, self.run_id = client(uri), run_id
        keys = retry(self.c.get_run, run_id).data.metrics
        self.logged = {(key, m.step) for key in keys for m in retry(self.c.get_metric_history, run_id, key)}
        retry(self.c.update_run, run_id, status=RunStatus.to_string(RunStatus.RUNNING))

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        new = {to_mlflow_key(k): float(v) for k, v in metrics.items() if (to_mlflow_key(k), step) not in self.logged}
        ms = [Metric(k, v, ts, step) for k, v in new.items()]
        for i in range(0, len(ms), 500):
            retry(self.c.log_batch, self.run_id, metrics=ms[i : i + 500])
        self.logged.update((k, step) for k in new)

    def finish(self, status: str) -> None:
        retry(self.c.set_terminated, self.run_id, status=status)

    def close(self) -> None:
        pass
