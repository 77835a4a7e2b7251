"""Metric names are declared once (sdpg.training.metrics): the sweep refuses an undeclared objective, and
every name the trainer logs in a short run of each kind is declared."""

from __future__ import annotations

import json

import pytest
import yaml

from sdpg.orchestration.sweep import Sweep
from sdpg.reporting.build import TRAIN_PANELS
from sdpg.training import metrics
from sdpg.training.config import ConfigError
from sdpg.training.sinks import ConsoleSink
from sdpg.training.trainer import train

SPEC = {
    "name": "sw",
    "base": "embedded",
    "overrides": {"run.total_steps": 4, "eval.pass_k": [1, 2], "eval.n_samples": 4},
    "space": {"algo.beta": {"type": "float", "low": 0.001, "high": 1.0, "log": True}},
    "objective": {"metric": "eval/embedded/mean@4"},
    "n_trials": 2,
}


def _sweep(tmp_path, metric: str) -> Sweep:
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump({**SPEC, "objective": {"metric": metric}}))
    return Sweep(p)


@pytest.mark.parametrize(
    "metric",
    [
        "train/opd_kl",
        "train/gate_fraction",
        "train/rlsd_lambda",
        "timing/step",
        "eval/embedded/mean@4",
        "eval/embedded/pass@2",
        "eval/embedded/response_length",
    ],
)
def test_declared_metric_is_accepted_as_objective(tmp_path, monkeypatch, metric):
    monkeypatch.chdir(tmp_path)
    assert _sweep(tmp_path, metric).spec.objective.metric == metric


@pytest.mark.parametrize(
    "metric,needle",
    [
        # names the old source scan took for metrics: a tensor argument, a KL mode, a dataclass field
        ("train/student_hidden", "the trainer never logs it"),
        ("train/k3", "the trainer never logs it"),
        ("train/lm_head_weight", "the trainer never logs it"),
        ("train/bogus", "the trainer never logs it"),
        ("timing/train", "the trainer never logs it"),
        ("eval/embedded/mean@32", "this config evaluates eval/embedded/mean@4"),
        ("eval/embedded/greedy", "this config evaluates"),  # eval.greedy is off: never logged
        ("eval/embedded/pass@3", "this config evaluates"),
    ],
)
def test_undeclared_metric_is_refused_as_objective(tmp_path, monkeypatch, metric, needle):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"key 'objective.metric' has bad value '{metric}': {needle}"):
        _sweep(tmp_path, metric)


def test_eval_names_are_built_and_parsed_in_one_place():
    assert metrics.mean_at("aime24", 32) == "eval/aime24/mean@32"
    assert metrics.mean_at("aime24", 32, "math_verify") == "eval/aime24/math_verify/mean@32"
    p = metrics.parse_eval("eval/aime24/math_verify/mean@32")
    assert p == metrics.EvalMetric("aime24", "mean", 32, "math_verify") and p.name == "eval/aime24/math_verify/mean@32"
    assert metrics.parse_eval("eval/aime24/pass@8") == metrics.EvalMetric("aime24", "pass", 8)
    assert metrics.parse_eval("eval/aime24/greedy") == metrics.EvalMetric("aime24", "greedy")
    for bad in ("eval/aime24/mean@0", "eval/aime24/mean@", "eval/mean@4", "eval/a/b/c/mean@4", "train/mean@4", "eval/a/x/greedy"):
        assert metrics.parse_eval(bad) is None, bad
    assert metrics.with_samples("eval/aime24/mean@32", 2) == "eval/aime24/mean@2"
    assert metrics.with_samples("eval/aime24/boxed/mean@32", 2) == "eval/aime24/boxed/mean@2"
    assert metrics.with_samples("eval/aime24/pass@32", 2) == "eval/aime24/pass@32"
    assert metrics.is_mean_at("eval/a/mean@4") and not metrics.is_mean_at("eval/a/pass@4")
    with pytest.raises(ValueError, match="expected train/<name> or timing/<name>"):
        metrics.declare("eval/x", "no")


def test_console_and_report_read_declared_names():
    for _, name, _, _ in ConsoleSink.FIELDS:
        assert metrics.is_declared(name), name
    for name in TRAIN_PANELS:
        assert metrics.is_declared(name), name


KINDS = [
    # GRPO as Table 1: the KL in the reward (train/score, train/reward_kl); every eval metric on
    ("grpo", ["algo.method=grpo", "eval.pass_k=[1,2]", "eval.greedy=true", "eval.extra_scorers=[boxed]"]),
    ("rlsd", ["algo.method=rlsd"]),  # a teacher, train/rlsd_lambda
    ("dapo", ["algo.method=dapo", "optim.minibatch_size=8"]),  # dynamic sampling, minibatches (off-policy pi_old)
    ("sdpg", ["algo.method=sdpg_urkl", "algo.beta_warmup_steps=0"]),  # distillation on
]


@pytest.mark.parametrize("kind,overrides", KINDS, ids=[k for k, _ in KINDS])
def test_every_logged_metric_is_declared(tiny_config, kind, overrides):
    cfg = tiny_config(*overrides, "run.total_steps=1", "eval.every=1", out=kind)
    assert train(cfg)["status"] == "finished"
    logged = {k for line in open(f"{cfg.run.output_dir}/metrics.jsonl") for k in json.loads(line)} - {"step"}
    undeclared = sorted(k for k in logged if not metrics.is_declared(k))
    assert not undeclared, undeclared
    assert "train/opd_kl" in logged and "timing/step" in logged
    if kind == "grpo":
        assert {"train/score", "train/reward_kl", "eval/embedded/greedy", "eval/embedded/boxed/mean@2"} <= logged
