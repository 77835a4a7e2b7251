"""Metric sinks: what the console prints, what the JSONL file keeps."""

from __future__ import annotations

import io

from sdpg.training.sinks import ConsoleSink

GRPO_STEP = {
    "train/reward": 0.5,
    "train/accuracy": 0.5,
    "train/entropy": 1.25,
    "train/response_length": 12.0,
    "train/opd_kl": 0.0,
    "train/gate_fraction": 0.5,
    "train/beta": 0.0,
    "timing/step": 1.5,
}


def _lines(steps):
    out = io.StringIO()
    sink = ConsoleSink(3, stream=out)
    for i, m in enumerate(steps, start=1):
        sink.log(m, i)
    return out.getvalue().splitlines()


def test_console_line_of_a_run_without_distillation_has_no_distillation_fields():
    (line,) = _lines([GRPO_STEP])
    assert line.startswith("[sdpg] step 1/3 reward 0.500 acc 0.500 entropy 1.250 len 12.0 1.5s (elapsed")
    for absent in ("opd_kl", "gate", "beta", "lambda", " - "):
        assert absent not in line, absent


def test_console_line_of_a_distilling_run_keeps_its_fields_when_beta_decays_to_zero():
    distilling = {**GRPO_STEP, "train/opd_kl": 0.0123, "train/beta": 1e-3}
    first, last = _lines([distilling, {**distilling, "train/beta": 0.0}])
    assert "opd_kl 0.0123 gate 0.50 beta 0.001" in first
    assert "opd_kl 0.0123 gate 0.50 beta 0 " in last


def test_console_line_leaves_out_missing_fields():
    (line,) = _lines([{"train/reward": 1.0}])
    assert line.startswith("[sdpg] step 1/3 reward 1.000 (elapsed")
