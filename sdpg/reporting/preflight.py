"""sdpg-report's checks before anything is written: the source resolves to an MLflow store that exists (a
report never creates one: opening a missing sqlite file would), the experiment is there and holds runs
(matching ``--tag``), named variants exist, options are in range, and the output folder can be made.
Each failure is one ``ConfigError`` sentence naming the source, the option and the value."""

from __future__ import annotations

import argparse
import math

from sdpg import fsio
from sdpg.training.config import ConfigError


def _args(argv: list[str]) -> argparse.Namespace | None:
    """The options this check needs, read leniently (the report's own parser reports malformed ones)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("source", nargs="?")
    p.add_argument("--out")
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--reference")
    p.add_argument("--baseline")
    p.add_argument("--compare")
    p.add_argument("--ema")
    p.add_argument("--order", nargs="+")
    p.add_argument("--threshold")
    p.add_argument("--page-only", action="store_true")
    try:
        a, _ = p.parse_known_args(argv)
    except SystemExit:
        return None
    return a


def check(argv: list[str]) -> None:
    """Raise ConfigError for a report that cannot be made; nothing is created either way."""
    from sdpg.orchestration.core import check_writable_folder
    from sdpg.orchestration.names import short_repr
    from sdpg.orchestration.tracking import redact

    a = _args(argv)
    if a is None or a.page_only or a.source is None:
        return
    bad = [t for t in a.tag if "=" not in t]
    if bad:
        raise ConfigError(f"--tag {short_repr(bad[0])}: expected KEY=VALUE")
    quoted = [t for t in a.tag if any(q in t for q in "'\"`")]
    if quoted:  # MLflow's filter language has no escape for them: the search would fail, not match
        raise ConfigError(f"--tag {short_repr(quoted[0])}: a tag filter cannot hold quotes or backticks")
    from sdpg.orchestration.specs import COMPARE

    if a.compare is not None and a.compare not in COMPARE:
        raise ConfigError(f"--compare {short_repr(a.compare)}: expected one of {', '.join(COMPARE)}")
    if a.compare == "previous" and a.baseline is not None:
        raise ConfigError(
            f"--baseline {short_repr(a.baseline)}: each variant is compared with the previous one (--compare previous)"
        )
    for opt, val, lo, hi in (("--ema", a.ema, 0.0, 1.0), ("--threshold", a.threshold, -math.inf, math.inf)):
        if val is None:
            continue
        try:
            x = float(val)
        except ValueError:
            raise ConfigError(f"{opt} {short_repr(val)}: expected a number") from None
        if not (math.isfinite(x) and lo <= x and (x < hi or hi == math.inf)):
            raise ConfigError(f"{opt} {val}: expected a value in [{lo}, {hi})")
    if a.out is None:
        return  # the report's parser says --out is required
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
