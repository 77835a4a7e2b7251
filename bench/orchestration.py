"""Orchestration overheads.

1. Resolving, validating and dry-running a 100-run ablation spec (5 variants x 2 grid values x 10
   seeds): wall time of ``sdpg-ablate SPEC --dry-run`` in-process (target < 5 s).
2. Tracking overhead per training step: the embedded default trains with an MLflow sink (SQLite);
   the time spent inside the sink's ``log`` over the step's time (target < 2%).
3. A refused input: the CPU seconds of a fresh ``sdpg-ablate`` that refuses a spec with a bad override value
   (the whole spec and its configs validated first), against those of a fresh interpreter that only imports
   torch, medians of 5 each in the same run (target: below half of torch's import; every console script
   validates its input before it imports torch).

    python bench/orchestration.py
"""

from __future__ import annotations

import contextlib
import io
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """
name: bench100
base: embedded
variants:
  full: {}
  no_std_norm: {algo.std_norm: false}
  beta0: {algo.beta: 0.0}
  alpha0: {algo.alpha: 0.0}
  no_gate: {algo.gate: false}
grid:
  algo.kl_mode: [urkl, ufkl]
seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
"""


class TimedSink:
    def __init__(self, inner):
        self.inner, self.times = inner, []

    def log(self, metrics, step):
        t0 = time.perf_counter()
        self.inner.log(metrics, step)
        self.times.append(time.perf_counter() - t0)

    def close(self):
        self.inner.close()


class Steps:
    def __init__(self):
        self.t = []

    def log(self, metrics, step):
        if "timing/step" in metrics:
            self.t.append(metrics["timing/step"])

    def close(self):
        pass


def bench_dry_run() -> float:
    from sdpg.commands.ablate import main

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "bench100.yaml"
        p.write_text(SPEC)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()) as out:
            rc = main([str(p), "--dry-run"])
        dt = time.perf_counter() - t0
        rows = [ln.split()[0] for ln in out.getvalue().splitlines() if ln and not ln.startswith(" ")]
        assert rc == 0 and sum(r.endswith("-s9") for r in rows) == 10, out.getvalue()[:500]  # a row per run
    return dt


def bench_tracking(steps: int = 8) -> tuple[float, float, int]:
    from sdpg.orchestration import tracking
    from sdpg.training.config import load_config
    from sdpg.training.trainer import train

    with tempfile.TemporaryDirectory() as d:
        uri = tracking.default_uri(d)
        c = tracking.client(uri)
        exp = tracking.get_or_create_experiment(c, "bench")
        parent = tracking.ensure_parent_run(c, exp, "bench", "ablation", {})
        cfg = load_config(None, [f"run.total_steps={steps}", "eval.every=0", f"run.output_dir={d}/run", "run.checkpoint_every=0"])
        rid = tracking.ensure_child_run(c, exp, parent, cfg.config_hash(), "r", {}, tracking.flatten(cfg.resolved()), "")[0]
        sink, st = TimedSink(tracking.MlflowSink(uri, rid)), Steps()
        train(cfg, sinks=[sink, st])
        n_keys = len(c.get_run(rid).data.metrics)
    return statistics.mean(sink.times), statistics.mean(st.t), n_keys


def _child_cpu(cmd: list[str], cwd: str) -> tuple[float, subprocess.CompletedProcess]:
    """CPU seconds (user + system) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), r


def bench_refusal(n: int = 5) -> tuple[float, float]:
    """Median CPU seconds of a refused spec and of ``import torch``, each in a fresh process."""
    bad = SPEC.replace("alpha0: {algo.alpha: 0.0}", "alpha0: {algo.alpha: -1}")
    refusal, torch_import = [], []
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "bad.yaml"
        p.write_text(bad)
        for _ in range(n):
            cpu, r = _child_cpu([sys.executable, "-m", "sdpg", "ablate", str(p), "--dry-run"], d)
            assert r.returncode == 2 and "algo.alpha" in r.stderr and r.stderr.count("\n") == 1, r.stderr[-500:]
            refusal.append(cpu)
            cpu, r = _child_cpu([sys.executable, "-c", "import torch"], d)
            assert r.returncode == 0, r.stderr[-500:]
            torch_import.append(cpu)
    return statistics.median(refusal), statistics.median(torch_import)


def main() -> None:
    dry = bench_dry_run()
    log_s, step_s, n_keys = bench_tracking()
    print("| measurement | value | target |\n|---|---|---|")
    print(f"| resolve + validate + dry-run, 100-run spec | {dry:.2f} s | < 5 s |")
    print(f"| MLflow sink per step ({n_keys} metrics, SQLite) | {log_s * 1000:.1f} ms | |")
    print(f"| training step (embedded default) | {step_s * 1000:.0f} ms | |")
    print(f"| tracking overhead per step | {100 * log_s / step_s:.2f}% | < 2% |")
    refused, torch_s = bench_refusal()
    print(f"| a refused spec, fresh `sdpg-ablate` (CPU) | {refused:.2f} s | |")
    print(f"| `import torch` alone, fresh interpreter (CPU) | {torch_s:.2f} s | |")
    print(f"| refusal / torch's import | {refused / torch_s:.2f} | < 0.5 |")


if __name__ == "__main__":
    main()
