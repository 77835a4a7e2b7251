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

from sdpg import fsio
from sdpg.training.records import WriteFailed


class MetricSink(Protocol):
    """Receives a step's metrics. A sink may also define ``rewind(step)``: the trainer calls it once it knows
    the step a run resumes from, so that what the sink holds after that step can be dropped or ignored."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...


class JsonlSink:
    """One JSON object per step in ``path``; every (key, step) at most once.

    A resumed run rewinds the file to its resume step (rows after it are dropped, ``resume_step`` or
    ``rewind``), and a metric already in the file for a step is not written again: a run that died after
    logging its step-0 evaluation but before its first checkpoint evaluates step 0 again without a second
    row. A last line cut short by a kill is dropped."""

    def __init__(self, path: str | Path, resume_step: int | None = 0):
        self.path = Path(path)
        fsio.ensure_dir(self.path.parent)
        self._f = None
        self._rows = self._read()
        if resume_step is not None:
            self.rewind(resume_step)
        else:
            self._open()

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut short by a kill
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
        return rows

    def _open(self) -> None:
        if self._f is not None:
            self._f.close()
        self._f = fsio.open_append(self.path)

    def _rewrite(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        try:
            fsio.write_text(self.path, "".join(json.dumps(row) + "\n" for row in self._rows))
            self._open()
        except (OSError, fsio.WriteRefused) as e:
            cause = e if isinstance(e, OSError) else e.__cause__
            if not isinstance(cause, OSError):
                raise
            raise WriteFailed(self.path, self._rows[-1]["step"] if self._rows else None, cause) from e

    def rewind(self, step: int) -> None:
        """Drop the rows after ``step`` (the run continues from there)."""
        self._rows = [row for row in self._rows if row["step"] <= step]
        self._rewrite()

    def log(self, metrics: dict[str, float], step: int) -> None:
        same_step = [row for row in self._rows if row["step"] == step]
        known = {key for row in same_step for key in row}
        new = {k: v for k, v in metrics.items() if k not in known}
        if not new:
            return
        if same_step:  # rare: more metrics for a step already written; merged into its row
            same_step[-1].update(new)
            self._rewrite()
            return
        row = {"step": step, **new}
        self._rows.append(row)
        try:
            self._f.write(json.dumps(row) + "\n")
            self._f.flush()
        except OSError as e:  # a full disk, a file made unwritable: the run stops, saying which file
            raise WriteFailed(self.path, step, e) from e

    def close(self) -> None:
        if self._f is not None:
            f, self._f = self._f, None
            try:
                f.close()
            except OSError:  # what a failed write left in the buffer; the failure itself was raised by log
                pass


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
