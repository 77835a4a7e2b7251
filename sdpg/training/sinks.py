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
    """A progress line per step with the fields that apply to the run; eval results when there are any.

    Distillation fields (``opd_kl``, ``gate``, ``beta``) appear once the run has distilled (beta(k) > 0 at
    some step), so a GRPO or DAPO line carries none of them; any field missing from a step is left out."""

    FIELDS = (  # (label, metric, format, only for a distilling run)
        ("reward", "train/reward", "{:.3f}", False),
        ("acc", "train/accuracy", "{:.3f}", False),
        ("entropy", "train/entropy", "{:.3f}", False),
        ("len", "train/response_length", "{:.1f}", False),
        ("opd_kl", "train/opd_kl", "{:.4f}", True),
        ("gate", "train/gate_fraction", "{:.2f}", True),
        ("beta", "train/beta", "{:.2g}", True),
        ("lambda", "train/rlsd_lambda", "{:.2g}", False),
        ("skipped", "train/nonfinite_skipped", "{:.0f}", False),
    )

    def __init__(self, total_steps: int, stream=sys.stderr):
        self.total, self.stream, self.t0 = total_steps, stream, time.time()
        self.distilling = False

    def log(self, metrics: dict[str, float], step: int) -> None:
        if "train/reward" in metrics:
            self.distilling = self.distilling or metrics.get("train/beta", 0.0) > 0
            fields = [
                f"{label} {fmt.format(metrics[key])}"
                for label, key, fmt, distil in self.FIELDS
                if key in metrics and (self.distilling or not distil)
            ]
            timing = f"{metrics['timing/step']:.1f}s " if "timing/step" in metrics else ""
            print(
                f"[sdpg] step {step}/{self.total} " + " ".join(fields) + f" {timing}(elapsed {time.time() - self.t0:.0f}s)",
                file=self.stream,
                flush=True,
            )
        evals = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        if evals:
            print(
                f"[sdpg] eval @ {step}: " + " ".join(f"{k}={v:.3f}" for k, v in sorted(evals.items())),
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        pass


def default_sinks(out: Path, resume_step: int, total_steps: int) -> list[MetricSink]:
    """``metrics.jsonl`` in the run folder and a console line per step."""
    return [JsonlSink(Path(out) / "metrics.jsonl", resume_step), ConsoleSink(total_steps)]
