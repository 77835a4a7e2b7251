"""Extending the objective through its registries alone: a reference-KL mode, an advantage estimator
and a method preset defined here (not in the package) are accepted by the config and train a step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from sdpg.objective import ref_kl
from sdpg.objective.registry import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    REF_KL_MODES,
    AdvantageEstimator,
    AdvantageInputs,
    Deferred,
    lookup,
    register_advantage,
    register_ref_kl,
    unregister,
)
from sdpg.training.config import AlgoConfig, ConfigError, build_config
from sdpg.training.methods import METHOD_PRESETS, register_method, unregister_method
from sdpg.training.trainer import train


@pytest.fixture
def abs_log_ratio_mode():
    """|log w|: a made-up surrogate, registered for one test."""

    @register_ref_kl("test_abs")
    def _abs(log_w: torch.Tensor) -> torch.Tensor:
        return log_w.abs()  # [B, T]

    yield "test_abs"
    unregister(REF_KL_MODES, "test_abs")


@pytest.fixture
def half_grpo_method():
    """A method preset that combines existing pieces: sequence advantages scaled by one half, REINFORCE."""

    def halved(x: AdvantageInputs) -> tuple[torch.Tensor, dict[str, float]]:
        scale = float(x.settings["rlsd_lambda"])  # any existing scalar setting reaches the estimator
        return x.advantages[:, None].expand_as(x.behaviour_logp) * scale, {}

    register_advantage(AdvantageEstimator("test_halved", token_advantages=halved))
    register_method(
        "test_half_reinforce",
        dict(METHOD_PRESETS["grpo"], policy_loss="reinforce", advantage="test_halved", rlsd_lambda=0.5),
        optim={"lr": 2e-6},
    )
    yield "test_half_reinforce"
    unregister_method("test_half_reinforce")
    unregister(ADVANTAGE_ESTIMATORS, "test_halved")


def test_builtin_choices_come_from_the_registries():
    assert list(REF_KL_MODES) == ["urkl", "ufkl", "rkl", "fkl", "k1", "k2", "k3"]
    assert list(POLICY_LOSSES) == ["dapo", "reinforce"]
    assert list(ADVANTAGE_ESTIMATORS) == ["group", "rlsd", "opsd"]
    assert [k for k, e in ADVANTAGE_ESTIMATORS.items() if e.needs_teacher] == ["rlsd", "opsd"]
    with pytest.raises(ValueError, match="already registered"):
        register_ref_kl("urkl")(lambda w: w)


def test_every_builtin_is_a_function_of_terms():
    from sdpg.objective import terms

    for kind, table in (("ref_kl mode", REF_KL_MODES), ("policy loss", POLICY_LOSSES)):
        for name in table:
            fn = lookup(table, kind, name)
            assert not isinstance(fn, Deferred) and fn.__module__ == terms.__name__, (name, fn)
    for e in ADVANTAGE_ESTIMATORS.values():
        if e.token_advantages is not None:
            assert isinstance(e.token_advantages, Deferred) and e.token_advantages.resolve().__module__ == terms.__name__


def test_validating_a_config_imports_no_torch():
    """Every console script validates its input before anything else: the choice lists come from the registries
    without importing torch (a refusal takes a fraction of a second, not the 1.5 s of torch's import)."""
    code = (
        "import sys; from sdpg.training.config import load_config; "
        "c = load_config(None, ['algo.method=rlsd', 'algo.kl_mode=ufkl']); "
        "from sdpg.orchestration.ablate import load_plan; from sdpg.commands import report, sweep; "
        "print(c.algo.needs_teacher_logprobs, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "False"]


def test_unregistered_names_are_refused_with_the_registered_list():
    with pytest.raises(ConfigError, match=r"key 'algo.kl_mode' has bad value 'test_abs': expected one of urkl, ufkl"):
        build_config({"algo": {"kl_mode": "test_abs"}}, "cfg.yaml")
    with pytest.raises(ConfigError, match=r"key 'algo.method' has bad value 'test_half_reinforce'"):
        build_config({"algo": {"method": "test_half_reinforce"}}, "cfg.yaml")
    with pytest.raises(ValueError, match="unknown ref_kl mode 'nope'"):
        ref_kl(torch.zeros(1, 2), torch.zeros(1, 2), "nope")


def test_a_registered_kl_mode_is_a_config_choice_and_trains(tiny_config, abs_log_ratio_mode):
    logp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    assert torch.allclose(ref_kl(logp, ref, abs_log_ratio_mode), torch.tensor([[0.5, 1.0]]))
    cfg = tiny_config(f"algo.kl_mode={abs_log_ratio_mode}", "algo.alpha=0.01", "run.total_steps=1", "eval.every=0")
    assert cfg.algo.kl_mode == abs_log_ratio_mode
    result = train(cfg)
    assert result["status"] == "finished" and result["step"] == 1
    last = [json.loads(x) for x in open(f"{cfg.run.output_dir}/metrics.jsonl")][-1]
    # pi_theta is pi_ref before the first update: the surrogate |log w| is 0 on every token
    assert last["train/ref_kl_surrogate"] == pytest.approx(0.0, abs=1e-6)


def test_a_registered_method_is_a_preset_and_trains(tiny_config, half_grpo_method):
    algo = AlgoConfig(method=half_grpo_method)
    assert (algo.policy_loss, algo.advantage, algo.rlsd_lambda, algo.reward_kl_coef) == ("reinforce", "test_halved", 0.5, 1e-3)
    cfg = tiny_config(f"algo.method={half_grpo_method}", "run.total_steps=1", "eval.every=0")
    assert cfg.optim.lr == 2e-6  # the method's optimizer settings come along
    assert not cfg.algo.needs_teacher_logprobs
    result = train(cfg)
    assert result["status"] == "finished" and result["step"] == 1
    last = [json.loads(x) for x in open(f"{cfg.run.output_dir}/metrics.jsonl")][-1]
    assert last["train/pg_clipfrac"] == 0.0  # REINFORCE clips nothing
    assert last["train/opd_kl"] == 0.0  # beta 0: no distillation


def test_a_privileged_context_type_is_one_entry(tmp_path, monkeypatch):
    """A new context type added to PRIVILEGED_CONTEXTS alone is a config choice and renders under both the
    custom prompts and the paper's Fig. 4 prompts (a missing Fig. 4 template was a KeyError before)."""
    from sdpg.training.contexts import PRIVILEGED_CONTEXTS, PrivilegedContext
    from sdpg.training.data import render_context

    monkeypatch.setitem(PRIVILEGED_CONTEXTS, "test_hint", PrivilegedContext(default="A={answer}", fig4="[Hint] {answer}"))
    row = {"problem": "1+1", "answer": "2", "solution": "1+1=2"}
    custom = build_config({"data": {"context": "test_hint"}}, "cfg.yaml")
    fig4 = build_config({"data": {"context": "test_hint", "prompt_template": "sdpg_fig4"}}, "cfg.yaml")
    assert render_context(row, custom.data) == "A=2" and render_context(row, fig4.data) == "[Hint] 2"
    over = build_config({"data": {"context": "test_hint", "context_templates": {"test_hint": "B={answer}"}}}, "cfg.yaml")
    assert render_context(row, over.data) == "B=2"
    monkeypatch.delitem(PRIVILEGED_CONTEXTS, "test_hint")
    with pytest.raises(ConfigError, match=r"key 'data.context' has bad value 'test_hint': expected one of none, answer"):
        build_config({"data": {"context": "test_hint"}}, "cfg.yaml")
