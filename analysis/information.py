"""The information figure of the built-in tasks (issue 15), measured on each task's base model before any RL.

    python analysis/information.py [--problems 128] [--samples 8] [--threshold 0.5] [--out docs/figures]

For ``sum`` (sdpg/training/configs/embedded.yaml) and ``chain`` (embedded_chain.yaml), on each of the task's
three held-out sets: the sampled pass@1 of the student prompt and of the teacher prompt (the configured
context, ``answer_solution``), and on the student's correct samples the per-position KL(p || q) and, at the
positions where the student's entropy exceeds the threshold, how often and by how much the teacher puts
more mass on the sampled token (sdpg.training.information). Writes ``information.png`` / ``.pdf`` and
``information.json`` / ``information.md`` (the table docs/tasks.md quotes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from sdpg.paths import BUILTIN_CONFIGS  # noqa: E402
from sdpg.training.config import load_config  # noqa: E402
from sdpg.training.information import measure_information  # noqa: E402

TASKS = {"sum": "embedded", "chain": "embedded_chain"}
SETS = ("in_distribution", "more_terms", "larger_numbers")
COLORS = {"sum": "#4c72b0", "chain": "#dd8452"}


def measure(problems: int, samples: int, threshold: float, threads: int) -> tuple[dict, dict]:
    results, per_token = {}, {}
    for task, base in TASKS.items():
        prefix = base
        overrides = [
            f"run.threads={threads}",
            "eval.max_new_tokens=48",  # room for every set's longest solution (chain more_terms: 48)
            "data.max_prompt_tokens=96",  # no teacher prompt of the harder sets is cut
            "data.eval={" + ", ".join(f"{s}: '{prefix}:{s}'" for s in SETS) + "}",
        ]
        cfg = load_config(BUILTIN_CONFIGS[base], overrides)
        results[task] = {}
        for s in SETS:
            t0 = time.time()
            stats, acc, per = measure_information(
                cfg, n_problems=problems, n_samples=samples, threshold=threshold, source=f"{prefix}:{s}", log=lambda *_: None
            )
            results[task][s] = {"student_pass@1": acc["student"], "teacher_pass@1": acc["teacher"], **stats.to_dict()}
            if s == "in_distribution":
                per_token[task] = per
            print(
                f"{task:5s} {s:15s} student {acc['student']:.3f} teacher {acc['teacher']:.3f} "
                f"KL/token {stats.kl_mean:.3f} uncertain {stats.uncertain_fraction:.3f} "
                f"q>p {stats.teacher_higher_fraction:.3f} (reference working {stats.reference_fraction:.2f}: "
                f"{stats.teacher_higher_fraction_reference:.3f}, other {stats.teacher_higher_fraction_other:.3f}) "
                f"({time.time() - t0:.0f}s)",
                flush=True,
            )
    return results, per_token


def _f(x: float, fmt: str) -> str:
    return "—" if x != x else format(x, fmt)  # NaN: no correct sample (or no uncertain token) to measure


def table(results: dict, threshold: float) -> str:
    head = (
        "| task | eval set | student pass@1 | teacher pass@1 | correct samples | KL(p‖q) / token | KL / sample | "
        f"uncertain tokens (H > {threshold:g}) | KL share at uncertain | q(y)>p(y) at uncertain | "
        "mean q(y)−p(y) | mean log q(y)/p(y) | correct samples = reference | q>p, reference working | q>p, other working |"
    )
    lines = [head, "|" + "---|" * 15]
    for task, sets in results.items():
        for s, r in sets.items():
            lines.append(
                f"| {task} | {s} | {r['student_pass@1']:.3f} | {r['teacher_pass@1']:.3f} | {r['correct']}/{r['samples']} | "
                f"{_f(r['kl_mean'], '.3f')} | {_f(r['kl_sum_per_sample'], '.2f')} | {_f(r['uncertain_fraction'], '.3f')} | "
                f"{_f(r['kl_share_uncertain'], '.2f')} | {_f(r['teacher_higher_fraction'], '.3f')} | "
                f"{_f(r['prob_gain_mean'], '+.3f')} | {_f(r['logratio_mean'], '+.2f')} | {_f(r['reference_fraction'], '.2f')} | "
                f"{_f(r['teacher_higher_fraction_reference'], '.3f')} | {_f(r['teacher_higher_fraction_other'], '.3f')} |"
            )
    return "\n".join(lines) + "\n"


def figure(results: dict, per_token: dict, threshold: float, out: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    ax = axes[0]
    for task, sets in results.items():
        r = sets["in_distribution"]
        ax.plot(range(len(r["kl_by_position"])), r["kl_by_position"], marker=".", color=COLORS[task], label=task)
    ax.set_xlabel("response position t (one character per token)")
    ax.set_ylabel("mean KL(p ‖ q), nats")
    ax.set_title("KL per position on the student's correct samples", fontsize=10)
    ax.legend()

    ax = axes[1]
    bins = torch.linspace(-6, 3, 37).tolist()
    for task, per in per_token.items():
        u = per["uncertain"].bool()
        ratio = (per["logq"][u] - per["logp"][u]).clamp(-6, 3).tolist()
        share = results[task]["in_distribution"]["teacher_higher_fraction"]
        ax.hist(ratio, bins=bins, alpha=0.55, color=COLORS[task], label=f"{task}: q>p at {share:.0%} of {len(ratio)} tokens")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("log q(y_t) − log p(y_t) at the sampled token, nats (clipped to [−6, 3])")
    ax.set_ylabel("uncertain tokens")
    ax.set_title(f"where the student is uncertain (H(p) > {threshold:g} nats)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)

    ax = axes[2]
    groups = [
        ("all correct samples", "teacher_higher_fraction", None),
        ("reference working", "teacher_higher_fraction_reference", "reference_fraction"),
        ("other working", "teacher_higher_fraction_other", "reference_fraction"),
    ]
    width = 0.38
    for i, task in enumerate(results):
        r = results[task]["in_distribution"]
        xs = [j + (i - 0.5) * width for j in range(len(groups))]
        vals = [r[key] if r[key] == r[key] else 0.0 for _, key, _ in groups]
        label = f"{task} (pass@1 {r['student_pass@1']:.2f} → {r['teacher_pass@1']:.2f})"
        ax.bar(xs, vals, width, color=COLORS[task], label=label)
        shares = [1.0, r["reference_fraction"], 1 - r["reference_fraction"]]
        for x, v, sh in zip(xs, vals, shares):
            ax.text(x, v + 0.02, f"{v:.2f}\n({sh:.0%})", ha="center", fontsize=7)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    ax.set_ylim(0, 1.3)
    ax.set_ylabel("share of uncertain tokens with q(y) > p(y)")
    ax.set_title("teacher raises the sampled token? (in parentheses: share of correct samples)", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    fig.suptitle("What the privileged teacher adds before RL (in-distribution, student's correct samples): sum vs chain")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    png = out / "information.png"
    fig.savefig(png, dpi=130)
    fig.savefig(out / "information.pdf")
    plt.close(fig)
    return png


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", type=int, default=128, help="problems per eval set")
    p.add_argument("--samples", type=int, default=8, help="student samples per problem")
    p.add_argument("--threshold", type=float, default=0.5, help="entropy (nats) above which a position is uncertain")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="docs/figures")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    results, per_token = measure(a.problems, a.samples, a.threshold, a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"problems": a.problems, "samples": a.samples, "threshold_nats": a.threshold, "seconds": round(time.time() - t0)}
    (out / "information.json").write_text(json.dumps({"settings": meta, "results": results}, indent=1) + "\n")
    (out / "information.md").write_text(table(results, a.threshold))
    png = figure(results, per_token, a.threshold, out)
    print(f"wrote {png}, {out / 'information.json'}, {out / 'information.md'} ({meta['seconds']}s)")


if __name__ == "__main__":
    main()
