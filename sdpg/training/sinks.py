"""Where a run's metrics go: ``MetricSink`` objects, one ``log(metrics, step)`` call per logged step.

The trainer writes to the JSONL file and the console by default; orchestration adds its own sinks (MLflow)
and the trainer imports none of them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Protocol


class MetricSink(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...


class JsonlSink:
    """One JSON object per step in ``path``. On resume from step k, rows after k are dropped first,
    so a resumed run never holds a step twice."""

    def __init__(self, path: str | Path, resume_step: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        self._f = open(self.path, "a")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._f.write(json.dumps({"step": step, **metrics}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class ConsoleSink:
    """A progress line per step; eval results when there are any."""

    def __init__(self, total_steps: int, stream=sys.stderr):
        self.total, self.stream, self.t0 = total_steps, stream, time.time()

    def log(self, metrics: dict[str, float], step: int) -> None:
        def f(k, fmt="{:.3f}"):
            return fmt.format(metrics[k]) if k in metrics else "-"

        if "train/reward" in metrics:
            print(
                f"[sdpg] step {step}/{self.total} reward {f('train/reward')} acc {f('train/accuracy')} "
                f"entropy {f('train/entropy')} len {f('train/response_length', '{:.1f}')} opd_kl {f('train/opd_kl', '{:.4f}')} "
                f"gate {f('train/gate_fraction', '{:.2f}')} beta {f('train/beta', '{:.2g}')} "
                f"{f('timing/step', '{:.1f}')}s (elapsed {time.time() - self.t0:.0f}s)",
                file=self.stream, flush=True,
            )
        evals = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        if evals:
            print(f"[sdpg] eval @ {step}: " + " ".join(f"{k}={v:.3f}" for k, v in sorted(evals.items())), file=self.stream, flush=True)

    def close(self) -> None:
        pass


def default_sinks(out: Path, resume_step: int, total_steps: int) -> list[MetricSink]:
    """``metrics.jsonl`` in the run folder and a console line per step."""
    return [JsonlSink(Path(out) / "metrics.jsonl", resume_step), ConsoleSink(total_steps)]
