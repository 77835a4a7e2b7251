"""Paper fidelity of the training loop on the tiny built-in model: mixed precision with fp32 master weights,
the authors' minibatch structure and lr schedule, KL in the reward, RLSD's lambda, OPSD's normaliser, and
evaluation with two scorers. The trainer's own phases (set_up, rollout, score, plan_update, logprobs, advantages,
update) are called directly where two runs must see the same rollouts."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json

import pytest
import torch

from sdpg.objective import group_advantages, kl_penalised_rewards
from sdpg.training import trainer as tr

# the paper config's shape at tiny size: 4 prompts x 4 responses, minibatches of 1 prompt (4 optimizer steps)
PAPER_SHAPE = [
    "optim.minibatch_prompts=1",
    "optim.lr_schedule_unit=rl_step",
    "rollout.seed_per_prompt=true",
    "eval.every=0",
    "run.total_steps=1",
]


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in model.named_parameters()}


@contextlib.contextmanager
def _phases(cfg):
    with contextlib.ExitStack() as resources:
        yield tr.set_up(cfg, [], resources)


def _rollout_batch(run, step=1):
    metrics: dict = {}
    batch = tr.rollout(run, step, metrics)
    return batch


def _informative_batch(run, first_step=1, tries=10):
    """(step, batch): the rollout of the first step from ``first_step`` on with a group whose rewards differ. At the
    built-in model's pass@1 many groups of 4 score alike, and a batch of them has no gradient to compare; the
    tests must not depend on which rows the sampler draws first."""
    for step in range(first_step, first_step + tries):
        batch = _rollout_batch(run, step)
        scored = tr.score(run, copy.deepcopy(batch), {})
        if (scored.advantages.view(-1, run.cfg.rollout.group_size).abs().sum(-1) > 0).any():
            return step, batch
    raise AssertionError(f"no group with a learning signal in {tries} rollouts")


def _informative_first(run, scored):
    """Reorder the kept rows so that the first minibatch holds a group with a learning signal (rewards not all
    equal): the tests compare gradients, which a group of equal rewards would leave at zero."""
    G = run.cfg.rollout.group_size
    groups = scored.keep.view(-1, G)  # [P, G]
    spread = scored.advantages.view(-1, G).abs().sum(-1)  # [P]
    first = int(torch.argmax((spread > 0).float()))
    assert spread[first] > 0, "no group with a learning signal in this batch"
    order = [first] + [i for i in range(len(groups)) if i != first]
    return dataclasses.replace(scored, keep=groups[order].reshape(-1))


def _train_on(run, batch, step=1, informative_first=False):
    metrics: dict = {}
    scored = tr.score(run, batch, metrics)
    if informative_first:
        scored = _informative_first(run, scored)
    plan = tr.plan_update(run, scored)
    logp = tr.logprobs(run, batch, scored, plan, metrics)
    adv = tr.advantages(run, step, batch, scored, logp, metrics)
    updated = tr.update(run, step, batch, scored, plan, logp, adv, metrics)
    tr.reduce_metrics(run, batch, plan, adv, updated, metrics)
    return metrics


class _StepRecorder:
    """Every optimizer step's gradients (after clipping) and learning rate, via torch's global hook."""

    def __init__(self):
        self.grads: list[list[torch.Tensor]] = []
        self.lrs: list[float] = []

    def __enter__(self):
        def hook(optimizer, args, kwargs):
            group = optimizer.param_groups[0]
            self.lrs.append(group["lr"])
            self.grads.append([p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in group["params"]])

        from torch.optim.optimizer import register_optimizer_step_pre_hook

        self.handle = register_optimizer_step_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.slow
def test_bf16_compute_keeps_fp32_master_weights(tiny_config):
    """One RL step of the paper's shape at lr 1e-6 with bf16 compute: parameters stay fp32 and >= 99% of them
    move; the update equals the fp32 run's on the same rollouts within bf16 tolerance."""
    over = [*PAPER_SHAPE, "optim.lr=1e-6", "optim.warmup_steps=0", "algo.beta=1e-3", "algo.beta_warmup_steps=0"]
    updates, grads = {}, {}
    batch, step = None, 1
    for dtype in ("bfloat16", "float32"):
        cfg = tiny_config(*over, f"model.dtype={dtype}", out=dtype)
        with _phases(cfg) as run, _StepRecorder() as rec:
            assert all(p.dtype == torch.float32 for p in run.policy.parameters())
            before = _params(run.policy)
            if batch is None:
                step, batch = _informative_batch(run)
            _train_on(run, copy.deepcopy(batch), step, informative_first=True)
            after = _params(run.policy)
            state = run.optimizer.state_dict()["state"]
        assert all(s["exp_avg"].dtype == torch.float32 for s in state.values())  # AdamW state in fp32
        updates[dtype] = torch.cat([(after[k] - before[k]).flatten() for k in before])
        grads[dtype] = torch.cat([g.flatten() for g in rec.grads[0]])
        assert len(rec.grads) == 4  # 4 minibatches of one prompt: 4 optimizer steps
    moved = (updates["bfloat16"] != 0).float().mean().item()
    assert moved >= 0.99, moved
    # the contrast: bf16 parameters without a master copy (model.param_dtype=bfloat16, on purpose only)
    cfg = tiny_config(*over, "model.dtype=bfloat16", "model.param_dtype=bfloat16", out="bf16_params")
    with _phases(cfg) as run:
        assert all(p.dtype == torch.bfloat16 for p in run.policy.parameters())
        before = _params(run.policy)
        _train_on(run, copy.deepcopy(batch), step, informative_first=True)
        after = _params(run.policy)
    moved_bf16_params = torch.cat([(after[k] != before[k]).float().flatten() for k in before]).mean().item()
    print(f"bf16 parameters without a master copy: {moved_bf16_params:.4f} of the weights moved")
    assert moved_bf16_params < 0.5
    # bf16 weights without a master copy would round ~98% of these 1e-6 updates away; here they are kept
    g16, g32 = grads["bfloat16"], grads["float32"]
    rel = ((g16 - g32).norm() / g32.norm()).item()  # the first minibatch's gradient, bf16 compute vs fp32
    cos = torch.nn.functional.cosine_similarity(g16, g32, dim=0).item()
    u16, u32 = updates["bfloat16"], updates["float32"]
    # Adam's early steps move each weight by about lr: the same direction almost everywhere, and the same size
    agree = ((u16 > 0) == (u32 > 0)).float().mean().item()
    size = u16.abs().mean().item() / u32.abs().mean().item()
    print(
        f"bf16 vs fp32: moved {moved:.4f}, gradient rel. error {rel:.4f}, cosine {cos:.5f}, "
        f"update sign agreement {agree:.4f}, mean |update| ratio {size:.4f}"
    )
    assert rel < 0.1 and cos > 0.995, (rel, cos)
    assert agree > 0.9, agree
    assert abs(size - 1) < 5e-2, size


@pytest.mark.slow
def test_first_minibatch_gradient_is_the_on_policy_gradient(tiny_config):
    """With 4 minibatches, the first optimizer step is clipped against the pre-update log-probs of the same
    weights, so its gradient is the on-policy gradient of that minibatch (computed here as a one-minibatch
    update of the first prompt's group alone)."""
    cfg = tiny_config(*PAPER_SHAPE, "optim.grad_clip=0", out="mb4")
    with _phases(cfg) as run, _StepRecorder() as rec:
        step, batch = _informative_batch(run)
        _train_on(run, copy.deepcopy(batch), step, informative_first=True)
    first = rec.grads[0]
    assert len(rec.grads) == 4
    cfg1 = tiny_config(*PAPER_SHAPE, "optim.grad_clip=0", "optim.minibatch_prompts=4", out="onpolicy")
    with _phases(cfg1) as run, _StepRecorder() as rec1:
        b = copy.deepcopy(batch)
        metrics: dict = {}
        scored = _informative_first(run, tr.score(run, b, metrics))
        scored = dataclasses.replace(scored, keep=scored.keep[: cfg.rollout.group_size])  # what the first minibatch held
        plan = tr.plan_update(run, scored)
        logp = tr.logprobs(run, b, scored, plan, metrics)
        assert plan.on_policy  # one minibatch, one epoch: pi_old is the update's own forward
        adv = tr.advantages(run, step, b, scored, logp, metrics)
        tr.update(run, step, b, scored, plan, logp, adv, metrics)
    (on_policy,) = rec1.grads
    num = sum(((a - c) ** 2).sum() for a, c in zip(first, on_policy)) ** 0.5
    den = sum((c**2).sum() for c in on_policy) ** 0.5
    assert den > 0 and (num / den).item() < 1e-4


@pytest.mark.slow
def test_later_minibatches_are_clipped(tiny_config):
    """At a large lr the policy moves between minibatches, so later minibatches' ratios leave the clip range;
    the first minibatch's ratio is 1 (as the one-minibatch run shows: no clipping at all). Groups of 8, not 4: a
    group whose samples all score alike has no advantage, hence nothing to clip (at pass@1 0.3, 25% of groups of
    4 and 6% of groups of 8), responses of up to 48 tokens (most end, so more groups have a correct sample), every
    sample distilled (the policy moves after the first minibatch whichever groups hold the signal) and three RL
    steps, so that the check does not hang on the base model's draw."""
    shape = [*PAPER_SHAPE, "optim.lr=3e-3", "optim.warmup_steps=0", "rollout.group_size=8", "run.total_steps=3"]
    shape += ["rollout.max_new_tokens=48", "algo.gate=false", "algo.beta=1.0", "algo.beta_warmup_steps=0"]
    many = tiny_config(*shape, out="clip4")
    one = tiny_config(*shape, "optim.minibatch_prompts=4", out="clip1")
    clip = {}
    for name, cfg in (("many", many), ("one", one)):
        tr.train(cfg)
        rows = [json.loads(x) for x in open(f"{cfg.run.output_dir}/metrics.jsonl")]
        clip[name] = [r["train/pg_clipfrac"] for r in rows if "train/pg_clipfrac" in r]
    assert len(clip["one"]) == len(clip["many"]) == 3
    assert clip["one"] == [0.0, 0.0, 0.0]
    assert max(clip["many"]) > 0.0, clip["many"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "unit,expected",
    [
        ("rl_step", [0.0] * 4 + [0.5] * 4 + [1.0] * 4),  # multiplier (k - 1) / 2 at RL step k
        ("optimizer_step", [0.0, 0.5] + [1.0] * 10),
    ],
)
def test_lr_warmup_counts_rl_steps(tiny_config, unit, expected):
    cfg = tiny_config(
        *PAPER_SHAPE, "run.total_steps=3", "optim.warmup_steps=2", f"optim.lr_schedule_unit={unit}", "optim.lr=1e-4", out=unit
    )
    with _StepRecorder() as rec:
        tr.train(cfg)
    assert rec.lrs == pytest.approx([1e-4 * e for e in expected])
    rows = [json.loads(x) for x in open(f"{cfg.run.output_dir}/metrics.jsonl")]
    if unit == "rl_step":  # train/lr is the lr the step trained with
        assert [r["train/lr"] for r in rows if "train/lr" in r] == pytest.approx([0.0, 5e-5, 1e-4])


def test_kl_in_reward_enters_the_group_advantage(tiny_config):
    """GRPO as Table 1: the sequence reward in the group advantage is score - 1e-3 * sum_t (log pi_old - log pi_ref).
    The policy is moved first (one update), so the KL is not zero."""
    cfg = tiny_config(
        "algo.method=grpo",
        "rollout.seed_per_prompt=true",
        "eval.every=0",
        "run.total_steps=2",
        "optim.warmup_steps=0",
        "algo.reward_kl_coef=0.05",
        out="klr",
    )
    with _phases(cfg) as run:
        step, first = _informative_batch(run)  # an update with a gradient, so that the policy moves
        _train_on(run, first, step)
        batch = _rollout_batch(run, step + 1)
        metrics: dict = {}
        scored = tr.score(run, batch, metrics)
        plan = tr.plan_update(run, scored)
        logp = tr.logprobs(run, batch, scored, plan, metrics)
        adv = tr.advantages(run, step + 1, batch, scored, logp, metrics)
    scores = scored.scores  # [N] the verifier's +1 / 0 (reward.incorrect_reward 0 here)
    old_logp, ref_logp = logp.old_logp, logp.ref_logp  # [N, T] each
    assert old_logp is not None and ref_logp is not None  # off-policy (the KL in the reward), with a reference
    k1 = ((old_logp - ref_logp) * batch.mask).sum(-1)  # [N] by hand
    assert k1.abs().max() > 1e-3  # the policy has moved from the reference
    expected = group_advantages(scores - 0.05 * k1, cfg.rollout.group_size, std_norm=True)
    torch.testing.assert_close(adv.sequence, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kl_penalised_rewards(scores, old_logp, ref_logp, batch.mask, 0.05), scores - 0.05 * k1)
    assert metrics["train/reward_kl"] == pytest.approx(float(k1.mean()), rel=1e-5)
    assert metrics["train/reward"] == pytest.approx(float((scores - 0.05 * k1).mean()), rel=1e-5, abs=1e-7)


def test_rlsd_lambda_reaches_zero_at_step_50():
    from sdpg.objective import rlsd_lambda_at

    assert rlsd_lambda_at(1, 0.5, 50) == pytest.approx(0.5 * (1 - 1 / 50))
    assert rlsd_lambda_at(25, 0.5, 50) == pytest.approx(0.25)
    assert rlsd_lambda_at(50, 0.5, 50) == 0.0
    assert rlsd_lambda_at(60, 0.5, 50) == 0.0
    assert rlsd_lambda_at(7, 0.5, 0) == 0.5  # no decay


def test_opsd_normalises_over_gated_tokens():
    from sdpg.training.config import AlgoConfig
    from sdpg.training.trainer import minibatch_weights

    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([1.0, -1.0, 0.5])
    tokens = torch.tensor([[5, 6, 2], [5, 2, 0], [2, 0, 0]])
    pg, _ = minibatch_weights(mask, adv, tokens, 2, AlgoConfig(method="opsd"))
    gated = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(pg, gated / 4)  # 4 tokens in sequences with A > 0
    pg, opd = minibatch_weights(mask, adv, tokens, 2, AlgoConfig(method="grpo"))
    torch.testing.assert_close(pg, mask / 6)  # every response token
    pg, opd = minibatch_weights(mask, adv, tokens, 2, AlgoConfig(method="sdpg_urkl"))
    torch.testing.assert_close(opd, gated / 6)  # distilled: the gated tokens, end-of-sequence (id 2) included
    pg, opd = minibatch_weights(mask, adv, tokens, 2, AlgoConfig(method="sdpg_urkl", opd_exclude_stop=True))
    torch.testing.assert_close(opd, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]) / 6)


def test_eval_reports_both_scorers(tiny_config):
    cfg = tiny_config("run.total_steps=1", "eval.every=1", "eval.extra_scorers=[exact, boxed]", out="scorers")
    tr.train(cfg)
    rows = [json.loads(x) for x in open(f"{cfg.run.output_dir}/metrics.jsonl")]
    for r in rows:
        assert "eval/embedded/exact/mean@2" in r and "eval/embedded/boxed/mean@2" in r
        assert r["eval/embedded/exact/mean@2"] == r["eval/embedded/mean@2"]  # the same scorer as reward.verifier
        assert r["eval/embedded/boxed/mean@2"] == 0.0  # the embedded task writes no \boxed{}


@pytest.mark.slow
def test_fsdp2_mixed_precision_keeps_fp32_shards(tmp_path, tiny_model_built):
    """Two gloo ranks with FSDP2 and bf16 compute (MixedPrecisionPolicy, float32 reduction): the run trains, and
    the checkpoint holds float32 weights and AdamW state."""
    import os
    import subprocess
    import sys

    from conftest import TINY

    out = tmp_path / "fsdp_bf16"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "sdpg",
        "train",
        *TINY,
        "rollout.seed_per_prompt=true",
        "run.total_steps=1",
        "eval.every=0",
        "model.fsdp=true",
        "model.dtype=bfloat16",
        "optim.minibatch_prompts=2",
        "optim.warmup_steps=0",
        f"run.output_dir={out}",
    ]
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    import torch.distributed.checkpoint as dcp

    from sdpg.training.checkpoint import checkpoints

    # a sharded checkpoint (FSDP2): the dtypes every rank wrote, from its metadata
    meta = dcp.FileSystemReader(str(checkpoints(out)[-1])).read_metadata().state_dict_metadata
    assert {m.properties.dtype for k, m in meta.items() if k.startswith("model.")} == {torch.float32}
    adam = {m.properties.dtype for k, m in meta.items() if k.startswith("optimizer.state.") and k.endswith(".exp_avg")}
    assert adam == {torch.float32}
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["train/grad_norm"] == row["train/grad_norm"] and row["train/grad_norm"] > 0
