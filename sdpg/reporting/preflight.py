"""sdpg-report's checks before anything is written: the source resolves to an MLflow store that exists (a
report never creates one: opening a missing sqlite file would), the experiment is there and holds runs
(matching ``--tag``), named variants exist, options are in range, and the output folder can be made.
Each failure is one ``ConfigError`` sentence naming the source, the option and the value."""

from __future__ import annotations

import argparse
import math

from sdpg import fsio
from sdpg.training.config import ConfigError


def check(a: argparse.Namespace) -> None:
    """Raise ConfigError for a report that cannot be made, from sdpg-report's parsed options (their types and
    choices already checked by its parser); nothing is created either way."""
    from sdpg.orchestration.core import check_writable_folder
    from sdpg.orchestration.names import short_repr
    from sdpg.orchestration.tracking import redact

    if a.page_only:
        return  # a report folder rendered again: nothing to check against a store
    bad = [t for t in a.tag if "=" not in t]
    if bad:
        raise ConfigError(f"--tag {short_repr(bad[0])}: expected KEY=VALUE")
    quoted = [t for t in a.tag if any(q in t for q in "'\"`")]
    if quoted:  # MLflow's filter language has no escape for them: the search would fail, not match
        raise ConfigError(f"--tag {short_repr(quoted[0])}: a tag filter cannot hold quotes or backticks")
    if a.compare == "previous" and a.baseline is not None:
        raise ConfigError(
            f"--baseline {short_repr(a.baseline)}: each variant is compared with the previous one (--compare previous)"
        )
    for opt, x, lo, hi in (("--ema", a.ema, 0.0, 1.0), ("--threshold", a.threshold, -math.inf, math.inf)):
        if x is not None and not (math.isfinite(x) and lo <= x and (x < hi or hi == math.inf)):
            raise ConfigError(f"{opt} {x:g}: expected a value in [{lo}, {hi})")
    out = fsio.expand_path(a.out, "--out")
    check_writable_folder(out, "--out")
    # every file the report writes, before the first: a link there is one line, nothing written
    fsio.check_no_links(out, ("index.md", "index.html"), ("tables", "figures"))
    from sdpg.reporting.report import resolve_source, store_exists

    uri, exp = resolve_source(a.source)  # the report's own resolver: reads only, creates nothing

    if not store_exists(uri):
        raise ConfigError(f"{a.source}: nothing to report yet: no MLflow store at {redact(uri)} (run the experiment first)")
    from sdpg.orchestration import tracking

    tracking.check_server(uri, "tracking.uri", str(a.source))
    try:
        c = tracking.client(uri)
        e = c.get_experiment_by_name(exp)
    except Exception as err:  # noqa: BLE001 - any failure to read the store is the source's
        raise ConfigError(
            f"{a.source}: cannot read the MLflow store at {redact(uri)} "
            f"({type(err).__name__}: {' '.join(redact(str(err)).split())[:160]})"
        ) from None
    if e is None:
        raise ConfigError(f"{a.source}: no MLflow experiment {exp!r} at {redact(uri)}")
    tags = dict(t.split("=", 1) for t in a.tag)
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = [r for r in c.search_runs([e.experiment_id], filter_string=flt, max_results=50000) if "sdpg.run_hash" in r.data.tags]
    if not runs:
        which = f" with {' '.join('--tag ' + t for t in a.tag)}" if a.tag else ""
        raise ConfigError(f"{a.source}: experiment {exp!r} has no runs{which}")
    if any("sdpg.trial" in r.data.tags for r in runs):
        return  # a sweep: its report names trials itself
    variants = {r.data.tags.get("variant", r.info.run_name) for r in runs}
    for opt, names in (("--reference", [a.reference]), ("--baseline", [a.baseline]), ("--order", a.order or [])):
        for n in names:
            if n is not None and n not in variants:
                raise ConfigError(f"{opt} {short_repr(n)}: not a variant of {exp!r} (variants: {', '.join(sorted(variants))})")
