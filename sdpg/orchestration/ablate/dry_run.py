"""What ``--dry-run`` shows besides the runs: each variant's settings, each variant against the previous one in
effective config, and the machine facts that would refuse a submission from here."""

from __future__ import annotations

from typing import Any

from sdpg.orchestration.ablate.plan import Plan, _differing
from sdpg.training.config import TrainConfig


def settings_table(plan: Plan) -> str:
    """One column per variant, one row per setting that makes a method what it is (clip range, KL
    placement, distillation, entropy bonus, reward, lr schedule, minibatches, precision, rollouts):
    ``--dry-run`` shows what each variant will train with before any GPU hour is spent."""
    from sdpg.training.config import method_settings

    first: dict[str, Any] = {}
    for r in plan.runs:
        first.setdefault(r.variant, r.config)
    cols = {v: method_settings(c) for v, c in first.items()}
    keys = list(next(iter(cols.values())))
    rows = [("setting", *cols)] + [(k, *(cols[v][k] for v in cols)) for k in keys]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def variant_steps(plan: Plan) -> str:
    """Each variant against the one before it in spec order: the settings in which it differs from the
    previous variant and that matter to it (first grid point and seed of each), so a chain of ablation
    steps (``decompose.yaml``) can be checked to add one piece at a time. A setting is left out when
    putting the previous variant's value back would not change what this variant trains (its effective
    config): e.g. the beta schedule of a variant without distillation."""
    first: dict[str, TrainConfig] = {}
    for r in plan.runs:
        first.setdefault(r.variant, r.config)
    names = list(first)
    lines = []
    for prev, cur in zip(names, names[1:]):
        a, b = first[cur], first[prev]
        raw_a, raw_b = a.resolved(), b.resolved()
        eff_a = a.effective().config_hash()
        shown = []
        for item in _differing(raw_a, raw_b):
            key = item.split("=", 1)[0]
            if key == "run.output_dir":
                continue
            back = _with_value(raw_a, key, _get(raw_b, key))
            try:
                matters = TrainConfig.model_validate(back).effective().config_hash() != eff_a
            except ValueError:  # not valid with the other value: it matters
                matters = True
            if matters:
                shown.append(item)
        lines.append(f"  {cur} vs {prev}: {', '.join(shown) if shown else 'nothing that matters (the same run)'}")
    return "\n".join(lines)


def _get(d: dict, dotted: str) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def _with_value(d: dict, dotted: str, value: Any) -> dict:
    import copy

    out = copy.deepcopy(d)
    cur = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value
    return out


def dry_run_warnings(plan: Plan) -> list[str]:
    """What submitting the plan from here would refuse (vLLM not installed, a data file not here...): one
    sentence each, naming the runs it concerns."""
    from sdpg.training.preflight import world_warnings

    found: dict[str, list[str]] = {}
    for r in plan.distinct:
        for w in world_warnings(r.config, str(plan.path), local=plan.executor in ("local", "debug")):
            found.setdefault(w, []).append(r.name)
    n = len(plan.distinct)
    return [
        f"{w} (submitting from here is refused; {'all ' + str(n) + ' runs' if len(names) == n else 'runs ' + ', '.join(names)})"
        for w, names in found.items()
    ]
