"""``sdpg-report SOURCE --out DIR``: its options; the report is ``sdpg.reporting.build``."""

from __future__ import annotations

import argparse
import sys

from sdpg.reporting.build import __doc__ as DESCRIPTION
from sdpg.reporting.build import build_report, render_folder
from sdpg.reporting.report import COMPARE


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdpg-report", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="ablation spec, sweep spec, output folder with mlflow.db, or URI#EXPERIMENT")
    p.add_argument("--out", help="folder for index.md, index.html, figures/ and tables/ (required unless --page-only)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="only runs with this MLflow tag")
    p.add_argument("--reference", help="variant the ablation deltas are taken against (default: the first)")
    p.add_argument(
        "--baseline",
        help="RLVR baseline for IQM / probability of improvement (default: the first variant named after an RLVR preset)",
    )
    p.add_argument(
        "--compare",
        choices=COMPARE,
        help="IQM difference and P(improve) of each variant against the baseline, or against the previous variant "
        "in order (a chain of one-piece ablation steps); default: the spec's report.compare, else baseline",
    )
    p.add_argument("--ema", type=float, default=0.0, help="EMA smoothing factor in [0, 1) for curves")
    p.add_argument("--order", nargs="+", help="variant order (legend, table rows)")
    p.add_argument("--threshold", type=float, help="accuracy threshold for steps-to-threshold")
    p.add_argument(
        "--include-evals",
        action="store_true",
        help="also show sdpg-eval runs in the experiment (base models, checkpoints) as rows, one point at their step",
    )
    p.add_argument(
        "--screenshot",
        action="store_true",
        help="also save screenshot.png of index.html as headless Chromium renders it (needs chromium)",
    )
    p.add_argument(
        "--page-only",
        action="store_true",
        help="SOURCE is a report folder: render its index.html again from its index.md (e.g. after editing it)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """The options parsed once, checked before anything is written (``sdpg.reporting.preflight``), then the report."""
    from sdpg.reporting.preflight import check

    p = parser()
    a = p.parse_args(argv)
    if a.out is None and not a.page_only:
        p.error("the following arguments are required: --out")
    check(a)
    try:
        if a.page_only:
            index = render_folder(a.source)
            if a.screenshot:
                from sdpg.reporting import browser

                print(f"[sdpg-report] wrote {browser.screenshot(index, index.parent / 'screenshot.png')}", file=sys.stderr)
            return 0
        tags = dict(t.split("=", 1) for t in a.tag)
        index = build_report(
            a.source,
            a.out,
            tags,
            a.reference,
            a.baseline,
            a.ema,
            a.order,
            a.threshold,
            log=lambda m: print(m, file=sys.stderr, flush=True),
            compare=a.compare,
            include_evals=a.include_evals,
        )
        if a.screenshot:
            from sdpg.reporting import browser

            shot = browser.screenshot(index.with_suffix(".html"), index.parent / "screenshot.png")
            print(f"[sdpg-report] wrote {shot}", file=sys.stderr, flush=True)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
