"""The trainer end to end at small size: every method, exact resume, micro-batch invariance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdpg.training.config import METHOD_PRESETS
from sdpg.training.trainer import pass_at_k, train


def _metrics(out_dir):
    rows = [json.loads(x) for x in open(f"{out_dir}/metrics.jsonl")]
    return [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHOD_PRESETS))
def test_every_method_runs_two_steps(tiny_config, method):
    # no warm-up: with one, RL step 1 runs at lr 0 ((k - 1) / W, the authors' schedule) and nothing moves before step 2
    cfg = tiny_config(f"algo.method={method}", "run.total_steps=2", "optim.warmup_steps=0", out=method)
    result = train(cfg)
    assert result["status"] == "finished" and result["step"] == 2
    rows = _metrics(cfg.run.output_dir)
    assert [r["step"] for r in rows] == [0, 1, 2]
    last = rows[-1]
    for key in (
        "train/reward",
        "train/accuracy",
        "train/entropy",
        "train/response_length",
        "train/opd_kl",
        "train/gate_fraction",
        "train/beta",
        "train/ref_kl",
        "train/pg_clipfrac",
        "train/grad_norm",
        "eval/embedded/mean@2",
    ):
        assert key in last, key
    assert all(v == v for v in last.values()), "NaN in metrics"  # no NaN
    ac = cfg.algo
    first = rows[1]  # beta(k) decays to 0 at the last step by design; step 1 has it on
    if ac.beta > 0:
        assert first["train/beta"] > 0
        if first["train/gate_fraction"] > 0:
            assert first["train/opd_kl"] > 0
    else:
        assert first["train/opd_kl"] == 0 and last["train/opd_kl"] == 0
    if ac.alpha > 0:  # k3 of KL(pi_theta || pi_ref): 0 before the first update (pi_theta is pi_ref), > 0 after it
        assert first["train/ref_kl"] == pytest.approx(0.0, abs=1e-6)
        assert last["train/ref_kl"] > 1e-9


@pytest.mark.slow
def test_resume_gives_identical_metrics(tiny_config):
    full = tiny_config("run.total_steps=4", "algo.method=sdpg_ufkl", out="full")
    train(full)
    part = tiny_config("run.total_steps=4", "algo.method=sdpg_ufkl", out="part")
    first = train(part, stop_after_step=2)
    assert first["status"] == "interrupted" and first["step"] == 2
    second = train(part)
    assert second["status"] == "finished"
    a, b = _metrics(full.run.output_dir), _metrics(part.run.output_dir)
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]  # every step exactly once
    assert a == b


@pytest.mark.slow
def test_resume_refuses_another_config(tiny_config):
    cfg = tiny_config("run.total_steps=2", out="x")
    train(cfg, stop_after_step=1)
    other = tiny_config("run.total_steps=2", "algo.beta=0.5", out="x")
    from sdpg.training.config import ConfigError

    with pytest.raises(ConfigError, match=r"cannot resume .* algo\.beta=0\.\d+ there, 0\.5 here"):
        train(other)


@pytest.mark.slow
def test_micro_batching_does_not_change_the_update(tiny_config):
    """Same rollouts, one update: micro-batches of 3 or 16 sequences, or packed by a token budget, give the
    same gradient (read
    from Adam's first moment, 0.1 * grad after one step; the weights alone would hide a scale error,
    Adam being scale-invariant)."""
    from pathlib import Path

    moments = []
    for name, over in (
        ("mb3", "optim.micro_batch_size=3"),
        ("mb16", "optim.micro_batch_size=16"),
        ("tok90", "optim.micro_batch_tokens=90"),
    ):  # packed by length, trimmed padding
        cfg = tiny_config(
            "run.total_steps=1",
            "eval.every=0",
            over,
            "optim.loss_impl=materialised",
            "algo.beta=1.0",
            "run.checkpoint_every=1",
            out=name,
        )
        train(cfg)
        ck = torch.load(sorted((Path(cfg.run.output_dir) / "checkpoints").glob("*.pt"))[-1], weights_only=False)
        moments.append([st["exp_avg"] for st in ck["optimizer"]["state"].values()])
    for other in moments[1:]:
        for a, b in zip(moments[0], other):
            scale = max(a.abs().max().item(), 1e-12)
            assert (a - b).abs().max().item() <= 1e-4 * scale


@pytest.mark.slow
def test_fused_and_materialised_training_agree(tiny_config):
    runs = []
    for impl in ("fused", "materialised"):
        cfg = tiny_config("run.total_steps=2", "eval.every=0", f"optim.loss_impl={impl}", "algo.beta=1.0", out=impl)
        train(cfg)
        runs.append(_metrics(cfg.run.output_dir))
    for a, b in zip(*runs):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - (3 * 2) / (4 * 3))  # 0.5
    assert pass_at_k(4, 3, 2) == 1.0


@pytest.mark.slow
def test_stop_token_is_left_out_of_distillation(tiny_config):
    """Same rollouts (same seed): excluding the EOS position changes only the OPD term's tokens. Every sample is
    distilled (no A > 0 gate), so that the check does not depend on the draw holding a positive advantage."""
    runs = {}
    for flag in ("true", "false"):
        cfg = tiny_config(
            "run.total_steps=1",
            "eval.every=0",
            "algo.beta=1.0",
            "algo.gate=false",
            f"algo.opd_exclude_stop={flag}",
            "algo.opd_norm=gated",
            out=f"stop_{flag}",
        )
        train(cfg)
        runs[flag] = _metrics(cfg.run.output_dir)[-1]
    assert runs["true"]["train/accuracy"] == runs["false"]["train/accuracy"]
    assert runs["true"]["train/gate_fraction"] > 0
    assert runs["true"]["train/opd_loss"] != pytest.approx(runs["false"]["train/opd_loss"], rel=1e-4)
    assert runs["true"]["train/opd_kl"] != pytest.approx(runs["false"]["train/opd_kl"], rel=1e-4)


def test_micro_batches_by_token_budget():
    from sdpg.training.trainer import micro_batches

    lengths = torch.tensor([5, 20, 3, 12, 20])
    groups = micro_batches(lengths, 2, None, 10)
    assert [g.tolist() for g in groups] == [[0, 1], [2, 3], [4]]
    groups = micro_batches(lengths, 2, 60, 10)  # (10 + longest) x rows <= 60
    # sorted by length: 1 (30 with the prompt), 4 (30), 3 (22), 0 (15), 2 (13)
    assert [g.tolist() for g in groups] == [[1, 4], [3, 0], [2]]  # 2x30 = 60, 2x22 = 44 (3x22 = 66 > 60), 13
    assert [g.tolist() for g in micro_batches(lengths, 2, 5, 10)] == [[1], [4], [3], [0], [2]]  # one row at least


class _RecordingSink:
    def __init__(self):
        self.steps, self.closed = [], False

    def log(self, metrics, step):
        self.steps.append(step)

    def close(self):
        self.closed = True


def _open_files():
    import os

    return {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}


@pytest.mark.slow
def test_a_run_that_raises_closes_its_resources(tiny_config):
    """An exception inside the loop (here from ``should_stop``, polled after step 1) leaves no sink open, no
    metrics file handle and no verifier process behind."""
    import multiprocessing as mp

    def boom():
        raise KeyboardInterrupt("stop")

    given = tiny_config("run.total_steps=3", "eval.every=0", "reward.verifier=math", out="given")
    sink = _RecordingSink()
    with pytest.raises(KeyboardInterrupt):
        train(given, sinks=[sink], should_stop=boom)
    assert sink.steps == [1] and sink.closed
    assert not mp.active_children()

    default = tiny_config("run.total_steps=3", "eval.every=0", out="default")
    with pytest.raises(KeyboardInterrupt):
        train(default, should_stop=boom)
    metrics_file = Path(default.run.output_dir).resolve() / "metrics.jsonl"
    assert metrics_file.exists() and str(metrics_file) not in _open_files()
    assert not mp.active_children()
