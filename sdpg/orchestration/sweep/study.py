"""The shared Optuna study: storage (RDB or journal file), sampler and pruner, the budget of finished trials, and
the heartbeats that let a live worker fail and re-enqueue a dead worker's trials."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdpg import fsio
from sdpg.orchestration.sweep.spec import SweepSpec
from sdpg.training.config import ConfigError

if TYPE_CHECKING:  # the resolved sweep builds its sampler and pruner here
    from sdpg.orchestration.sweep.resolve import Sweep


def open_storage(url: str, heartbeat_s: float):
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = url[len("journal:") :]
        fsio.ensure_dir(Path(path).parent)
        fsio.check_writable_target(path)
        return JournalStorage(JournalFileBackend(path))
    if url.startswith("sqlite:///"):
        fsio.ensure_dir(Path(url[len("sqlite:///") :]).parent)
        fsio.check_writable_target(url[len("sqlite:///") :])
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=int(max(1, heartbeat_s)),
        grace_period=int(max(3, 3 * heartbeat_s)),
        failed_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
    )


def make_sampler(spec: SweepSpec, seed: int | None = None):
    """The spec's sampler, seeded with ``seed`` (default: the spec's seed)."""
    import optuna

    s = spec.sampler
    seed = s.seed if seed is None else seed
    if s.type == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.type == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if s.type == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    grid = {}
    for k, p in spec.space.items():
        if p.type == "categorical":
            grid[k] = list(p.choices or [])
        else:
            assert p.low is not None and p.high is not None  # a numeric dimension (validated)
            n = int(math.floor((p.high - p.low) / (p.step or 1) + 1e-9)) + 1
            grid[k] = [p.low + i * (p.step or 1) for i in range(n)]
    return optuna.samplers.GridSampler(grid, seed=seed)


def worker_seed(spec_seed: int, worker_index: int, trials_so_far: int) -> int:
    """A sampler seed per worker (and per restart of it: the study has grown meanwhile), so that two
    workers never draw the same sequence; worker 0 of a new study keeps the spec's seed."""
    if worker_index == 0 and trials_so_far == 0:
        return spec_seed
    return (spec_seed * 1_000_003 + worker_index * 7_919 + trials_so_far * 104_729) % (2**31 - 1)


def make_pruner(spec: SweepSpec):
    import optuna

    p = spec.pruner
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if p.type == "threshold":
        return optuna.pruners.ThresholdPruner(lower=p.lower, upper=p.upper, n_warmup_steps=p.n_warmup_steps)
    return optuna.pruners.NopPruner()


def load_study(sweep: Sweep, sampler_seed: int | None = None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(sweep.storage_url, sweep.spec.heartbeat_s)
    return optuna.create_study(
        study_name=sweep.spec.name,
        storage=storage,
        load_if_exists=True,
        direction=sweep.spec.objective.direction,
        sampler=make_sampler(sweep.spec, sampler_seed),
        pruner=make_pruner(sweep.spec),
    )


def load_study_read_only(sweep: Sweep):
    """The study for reading (``status``, ``export``): nothing is appended to the journal, no table or
    migration is made in a database (sqlite is opened in SQLite's read-only mode)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = sweep.storage_url
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        storage: Any = JournalStorage(JournalFileBackend(url[len("journal:") :]))
    elif url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :]).resolve()
        storage = optuna.storages.RDBStorage(
            f"sqlite:///file:{path}?mode=ro&uri=true", skip_table_creation=True, skip_compatibility_check=True
        )
    else:
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True, skip_compatibility_check=True)
    try:
        return optuna.load_study(study_name=sweep.spec.name, storage=storage)
    except KeyError:
        raise ConfigError(f"{sweep.path}: the storage holds no study named {sweep.spec.name!r}") from None


FINISHED = ("COMPLETE", "PRUNED")


def finished_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def is_duplicate(t) -> bool:
    """A proposal dropped because another trial already had its point (never trained)."""
    return "sdpg.duplicate_of" in t.user_attrs


def counts_by_state(study) -> dict[str, int]:
    """Trials per state (complete, pruned, running, waiting, failed) and dropped duplicates."""
    out = {"complete": 0, "pruned": 0, "running": 0, "waiting": 0, "failed": 0, "duplicate": 0}
    for t in study.get_trials(deepcopy=False):
        key = "duplicate" if is_duplicate(t) else {"FAIL": "failed"}.get(t.state.name, t.state.name.lower())
        out[key] = out.get(key, 0) + 1
    return out


def progress_line(study, n_trials: int) -> str:
    c = counts_by_state(study)
    done = c["complete"] + c["pruned"]
    parts = [f"{c['complete']} complete", f"{c['pruned']} pruned", f"{c['running']} running"]
    parts += [f"{c[k]} {k}" for k in ("failed", "waiting") if c[k]]
    if c["duplicate"]:
        parts.append(f"{c['duplicate']} duplicate proposals skipped")
    return f"{min(done, n_trials)}/{n_trials} trials finished ({', '.join(parts)})" + (
        f"; {done - n_trials} more finished past the budget by workers already running them" if done > n_trials else ""
    )


def reap_stale_trials(study, heartbeat_s: float, log=print) -> list[int]:
    """Journal storage: fail RUNNING trials whose heartbeat is older than 3 intervals and enqueue their
    parameters again (tagged with the dead trial's number, whose checkpoint the retry resumes)."""
    from optuna.trial import TrialState

    now, reaped = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("sdpg.heartbeat")
        if beat is None or now - beat <= 3 * heartbeat_s:
            continue
        if _requeue_trial(study, t):
            reaped.append(t.number)
            log(f"[sdpg-sweep] trial {t.number} lost its worker ({now - beat:.0f}s without heartbeat): failed and re-enqueued")
    return reaped


def _requeue_trial(study, t) -> bool:
    """Fail a running trial and enqueue its parameters again, tagged with the trial whose checkpoint
    the retry resumes; False when another worker got there first."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False
    origin = t.user_attrs.get("sdpg.retry_of", t.number)
    study.enqueue_trial(t.params, user_attrs={"sdpg.retry_of": origin}, skip_if_exists=False)
    return True


class _Heartbeat:
    def __init__(self, study, trial_id: int, every_s: float):
        self.study, self.trial_id, self.every = study, trial_id, every_s
        self._stop = threading.Event()
        self.beat()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def beat(self):
        with contextlib.suppress(Exception):  # the trial finished meanwhile
            self.study._storage.set_trial_user_attr(self.trial_id, "sdpg.heartbeat", time.time())

    def _run(self):
        while not self._stop.wait(self.every):
            self.beat()

    def stop(self):
        self._stop.set()
        self._t.join(5)


@contextlib.contextmanager
def _ask_lock(folder: Path):
    """One worker at a time proposes and claims a point (a file lock in the sweep's folder)."""
    from sdpg.training.locks import file_lock

    fsio.ensure_dir(folder)
    with file_lock(folder / ".ask.lock"):
        yield
