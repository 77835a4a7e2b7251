"""Time of an SDPG step over a GRPO step on the same config, measured in one run.

Both methods train from the same base model, seed and prompts, one after the other in this process;
the figure is the median ``timing/step`` (evaluation excluded) over steps 2..N, and the same for
each phase (rollout, log-probs, update). The SDPG step adds the teacher forward on (c, x, y) and the
fused full-vocabulary KL; everything else is shared.

    python bench/step_overhead.py                        # embedded task, CPU
    python bench/step_overhead.py model.path=/models/Qwen3-0.6B model.dtype=bfloat16 ...
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time

import torch

from sdpg.training.config import load_config
from sdpg.training.trainer import train


class Collect:
    def __init__(self):
        self.rows = []

    def log(self, metrics, step):
        self.rows.append({"step": step, **metrics})

    def close(self):
        pass


def measure(method: str, overrides: list[str], steps: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        cfg = load_config(
            None,
            overrides
            + [
                f"algo.method={method}",
                f"run.total_steps={steps}",
                "eval.every=0",
                f"run.output_dir={d}",
                "run.checkpoint_every=0",
                "run.resume=false",
            ],
        )
        if method.startswith("sdpg"):  # the embedded config's SDPG coefficients, from the first step
            cfg.algo.beta_warmup_steps = 0
        sink = Collect()
        train(cfg, sinks=[sink])
    rows = [r for r in sink.rows if r["step"] >= 2]
    keys = ["timing/step", "timing/rollout", "timing/logprobs", "timing/update"]
    return {k: statistics.median(r[k] for r in rows) for k in keys} | {"steps": len(rows)}


def main() -> None:
    args = sys.argv[1:]
    steps = 8
    for a in list(args):
        if a.startswith("--steps="):
            steps = int(a.split("=")[1])
            args.remove(a)
    t0 = time.time()
    res = {m: measure(m, args, steps) for m in ("grpo", "sdpg_urkl")}
    g, s = res["grpo"], res["sdpg_urkl"]
    print(json.dumps({"threads": torch.get_num_threads(), "overrides": args, "results": res}, indent=1))
    print("\n| phase | GRPO s | SDPG s | SDPG / GRPO |\n|---|---|---|---|")
    for k in ("timing/step", "timing/rollout", "timing/logprobs", "timing/update"):
        print(f"| {k} | {g[k]:.3f} | {s[k]:.3f} | {s[k] / g[k]:.2f}x |")
    print(f"\n({time.time() - t0:.0f}s in all, median over steps 2..{steps})")


if __name__ == "__main__":
    main()
