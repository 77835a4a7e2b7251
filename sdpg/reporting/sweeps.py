"""The sweep part of a report: trials named by number and parameters, their states (pruned trials marked
with the step they were stopped at), Optuna's optimisation-history and parameter-importance figures.

Trials come from the Optuna study when its storage is there (states, objective values, intermediate
values); otherwise from the tags the sweep workers put on each MLflow run (``sdpg.trial``,
``sdpg.trial_state``, ``sdpg.trial_params``), without objective values. Nothing here writes to the study.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

from sdpg import fsio

STATE_ORDER = ["complete", "pruned", "fail", "running", "waiting"]


def _storage(url: str):
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url[len("journal:") :]))
    import optuna

    return optuna.storages.RDBStorage(url)


def storage_exists(url: str | None) -> bool:
    if not url:
        return False
    if url.startswith("journal:"):
        return Path(url[len("journal:") :]).is_file()
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :]).is_file()
    return True


def load_study(storage_url: str | None, study_name: str | None):
    """The Optuna study, or None when its storage is not there (or holds no such study)."""
    if not storage_exists(storage_url):
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(storage_url)
    names = [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)]
    if study_name not in names:
        if len(names) != 1:
            return None
        study_name = names[0]
    return optuna.load_study(study_name=study_name, storage=storage)


def trials_frame(study=None, runs=None):
    """One row per trial: number, state, value, params (dict), pruned_step / last_value (the last
    intermediate value reported before the trial stopped), retry_of. From ``study`` if given, else from the
    run tags in ``runs`` (``report.run_table``)."""
    import pandas as pd

    rows = []
    if study is not None:
        for t in study.get_trials(deepcopy=False):
            inter = t.intermediate_values
            last_step = max(inter) if inter else None
            # Optuna gives a pruned trial its last intermediate value as value: not an objective, left out
            done = t.state.name == "COMPLETE" and t.value is not None
            at = t.user_attrs.get("sdpg.pruned_at_step")
            rows.append(
                {
                    "number": t.number,
                    "state": t.state.name.lower(),
                    "value": t.value if done else math.nan,
                    "params": dict(t.params),
                    "last_step": int(at) if at is not None else last_step,
                    "last_value": inter[last_step] if last_step is not None else math.nan,
                    "retry_of": t.user_attrs.get("sdpg.retry_of"),
                    "duplicate_of": t.user_attrs.get("sdpg.duplicate_of"),
                    "error": t.user_attrs.get("sdpg.error"),
                }
            )
    elif runs is not None and len(runs) and runs.trial.notna().any():
        for number, g in runs[runs.trial.notna()].groupby("trial", sort=True):
            states = set(g.trial_state.dropna())
            state = (
                "pruned"
                if "pruned" in states
                else "fail"
                if states & {"fail", "failed"}
                else "complete"
                if states == {"complete"}
                else "running"
            )
            params = json.loads(g.trial_params.dropna().iloc[0]) if g.trial_params.notna().any() else {}
            at = g.pruned_at_step.dropna() if "pruned_at_step" in g else []
            rows.append(
                {
                    "number": int(number),
                    "state": state,
                    "value": math.nan,
                    "params": params,
                    "last_step": int(at.iloc[0]) if len(at) else None,
                    "last_value": math.nan,
                    "retry_of": None,
                    "duplicate_of": None,
                    "error": None,
                }
            )
    cols = ["number", "state", "value", "params", "last_step", "last_value", "retry_of", "duplicate_of", "error"]
    df = pd.DataFrame(rows, columns=cols)
    # a proposal dropped because another trial holds its point trained nothing: not a trial of the report
    out = df[df.duplicate_of.isna()].reset_index(drop=True)
    out.attrs["duplicates"] = int(df.duplicate_of.notna().sum())
    return out


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _short_keys(keys: list[str]) -> dict[str, str]:
    """``algo.beta`` -> ``beta`` unless two keys share their last part."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def fmt_value(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.3g}"


def trial_names(trials, keys: list[str] | None = None) -> dict[int, str]:
    """Trial number -> ``t3 beta=0.12 alpha=0.0034 ...`` (every searched parameter, short names)."""
    keys = keys or list(dict.fromkeys(k for p in trials.params for k in p))
    short = _short_keys(keys)
    return {
        int(r.number): f"t{int(r.number)} " + " ".join(f"{short[k]}={fmt_value(r.params[k])}" for k in keys if k in r.params)
        for r in trials.itertuples()
    }


def trials_table(trials, keys: list[str], objective: dict | None, direction: str = "maximize") -> str:
    """Markdown table of every trial: number, state, objective, where it stopped, its parameters; the best
    completed trial in bold. Pruned trials show the last value they reported and its step, not an
    objective: they were stopped early and are not comparable with completed ones."""
    short = _short_keys(keys)
    metric = (objective or {}).get("metric", "objective")
    reduce = (objective or {}).get("reduce")
    head = ["Trial", "State", f"Objective ({metric}, {reduce})" if reduce else "Objective", "Stopped at"] + [
        short[k] for k in keys
    ]
    lines = ["| " + " | ".join(head) + " |", "|:---|:---|---:|:---|" + "---:|" * len(keys)]
    done = trials[(trials.state == "complete") & trials.value.notna()]
    best = None
    if len(done):
        best = int(done.loc[done.value.idxmax() if direction == "maximize" else done.value.idxmin()].number)
    for r in trials.sort_values("number").itertuples():
        value = "–" if math.isnan(r.value) else f"{r.value:.4f}"
        if r.state == "pruned":
            stopped = "pruned" if r.last_step is None or _nan(r.last_step) else f"pruned at step {int(r.last_step)}"
            if not _nan(r.last_value):
                stopped += f" (value {r.last_value:.4f})"
        elif r.state == "fail":
            stopped = "failed" + (f": {r.error[:80]}" if isinstance(r.error, str) and r.error else "")
        elif r.state == "complete":
            stopped = "finished"
        else:
            stopped = r.state
        name = f"t{int(r.number)}" + (
            f" (retry of t{int(r.retry_of)})" if not _nan(r.retry_of) and int(r.retry_of) != int(r.number) else ""
        )
        cells = [name, r.state, value, stopped] + [fmt_value(r.params[k]) if k in r.params else "–" for k in keys]
        if r.number == best:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def trials_csv(trials, keys: list[str], path: Path) -> None:
    import pandas as pd

    flat = pd.DataFrame(
        [
            {
                "trial": int(r.number),
                "state": r.state,
                "objective": r.value,
                "last_step": r.last_step,
                "last_value": r.last_value,
                **{k: r.params.get(k) for k in keys},
            }
            for r in trials.itertuples()
        ]
    )
    fsio.write_text(path, flat.sort_values("trial").to_csv(index=False))


def _save(ax, out: Path) -> Path:
    fig = ax.figure
    fig.set_size_inches(6.4, 3.6)
    fig.tight_layout()
    fsio.save_figure(fig, out)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out.with_suffix(".png")


def plot_history(study, out: Path, target_name: str = "objective") -> tuple[Path | None, str]:
    """Optuna's optimisation history (matplotlib backend): (png, "") or (None, why not)."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.trial import TrialState

    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n < 1:
        return None, "no completed trial yet"
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore")
        ax = optuna.visualization.matplotlib.plot_optimization_history(study, target_name=target_name)
        return _save(ax, out), ""


def plot_importance(study, out: Path) -> tuple[Path | None, str]:
    """Optuna's parameter importances (fANOVA; PED-ANOVA where scikit-learn is missing), matplotlib backend:
    (png, evaluator name) or (None, why not)."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2:
        return None, f"needs at least 2 completed trials; the study has {len(done)}"
    if len({t.value for t in done}) < 2:
        return None, "every completed trial has the same objective value"
    errors = []
    for make, name in (
        (optuna.importance.FanovaImportanceEvaluator, "fANOVA"),
        (optuna.importance.PedAnovaImportanceEvaluator, "PED-ANOVA"),
    ):
        try:
            with warnings.catch_warnings(), matplotlib.rc_context():
                warnings.simplefilter("ignore")
                ax = optuna.visualization.matplotlib.plot_param_importances(
                    study, evaluator=make(seed=0) if name == "fANOVA" else make()
                )
                return _save(ax, out), name
        except Exception as e:  # fANOVA needs scikit-learn; PED-ANOVA needs enough trials
            errors.append(f"{name}: {e}")
    return None, "; ".join(errors)
