"""The SDPG paper's Table 1 (Qwen3-4B, 400 steps; pass@1 mean@32, Last and Best) as Markdown and LaTeX.

    python analysis/paper_table1.py                         # from analysis/paper_table1.csv (the paper's numbers)
    python analysis/paper_table1.py --source ablations/paper_table1.yaml   # the same table from your own runs

Values of the CSV are those published for the paper (arXiv 2606.04036, Table 1, as on the project page).
Best per column in bold, second underlined; ties share a rank.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sdpg.reporting import report

HERE = Path(__file__).parent
ORDER = ["grpo", "rlsd", "sdpg_urkl", "sdpg_ufkl"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--source", help="an ablation spec / output folder / URI#EXPERIMENT with your runs")
    p.add_argument("--csv", default=str(HERE / "paper_table1.csv"))
    p.add_argument("--out", default=str(HERE / "out"))
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.source:
        uri, exp = report.resolve_source(a.source)
        df = report.load_runs(uri, exp)
        benches = [f"eval/{b}/mean@32" for b in ("aime24", "aime25", "amc23")]
        lb = report.last_best(df, benches)
        variants, cols, cells = report.table_matrix(
            lb, benches, [v for v in ORDER if v in set(df.variant)], {b: b.split("/")[1].upper() for b in benches}
        )
    else:
        variants, cols, cells = report.table_from_csv(a.csv)
    for fmt, ext in (("markdown", "md"), ("latex", "tex")):
        text = report.render_table(variants, cols, cells, fmt)
        (out / f"table1.{ext}").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
