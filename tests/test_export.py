"""Export: a run's policy as a Hugging Face folder (end of run, and ``sdpg-train export``) that transformers
loads and that generates the trainer's greedy tokens."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file

from sdpg.commands import train_main
from sdpg.training.checkpoint import checkpoints, load_checkpoint
from sdpg.training.config import load_config
from sdpg.training.export import META_FILE
from sdpg.training.model import compute, load_full_state, load_policy
from sdpg.training.rollout import HFRollout, left_pad
from sdpg.training.trainer import train

RUN = ["run.total_steps=2", "run.checkpoint_every=1", "run.keep_checkpoints=2", "eval.every=0"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_built):
    out = tmp_path_factory.mktemp("export") / "run"
    cfg = load_config(None, TINY + RUN + [f"run.output_dir={out}"])
    assert train(cfg)["status"] == "finished"
    return out, cfg


def trainer_policy_at(cfg, out, step):
    """The trainer's policy at ``step``: the base model with the checkpoint's state, as ``resume`` loads it."""
    tok, policy = load_policy(cfg, torch.device("cpu"))
    state = load_checkpoint(next(p for p in checkpoints(out) if p.name == f"step_{step:07d}.pt"))
    optimizer = torch.optim.AdamW(policy.parameters())
    load_full_state(policy, optimizer, state["model"], state["optimizer"])
    return tok, policy.eval()


def greedy_tokens_transformers(folder, prompts, max_new):
    """Plain transformers on the exported folder: no sdpg code in between."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids, attn = left_pad(prompts, tok.pad_token_id)  # [N, P]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=attn, do_sample=False, max_new_tokens=max_new, pad_token_id=tok.pad_token_id
        )  # [N, P + T]
    rows = []
    for r in out[:, ids.shape[1] :].tolist():
        rows.append(r[: r.index(tok.eos_token_id) + 1] if tok.eos_token_id in r else r)
    return rows, model


def prompts_of(cfg, tok, n=8):
    from sdpg.training.data import read_source, tokenize_prompts

    rows = read_source("embedded:in_distribution", cfg.data, "test")[:n]
    return tokenize_prompts(rows, cfg.data, tok).student


def test_end_of_run_export_is_the_final_policy_and_generates_its_greedy_tokens(finished_run):
    out, cfg = finished_run
    hf = out / "hf"
    meta = json.loads((hf / META_FILE).read_text())
    assert meta["step"] == 2 and meta["config_hash"] == cfg.config_hash() and meta["dtype"] == "float32"
    conf = json.loads((hf / "config.json").read_text())
    assert conf["dtype"] == "float32" and conf["sdpg"]["step"] == 2
    assert (hf / "model.safetensors").is_file() and (hf / "tokenizer_config.json").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".hf.tmp")]

    tok, policy = trainer_policy_at(cfg, out, 2)
    saved = load_file(str(hf / "model.safetensors"))
    for name, value in policy.state_dict().items():
        if name in saved:
            assert torch.equal(saved[name], value), name
    base = load_policy(cfg, torch.device("cpu"))[1].state_dict()
    assert any(not torch.equal(saved[n], base[n]) for n in saved), "the export is the trained policy, not the base model"

    prompts = prompts_of(cfg, tok)
    with compute(cfg, torch.device("cpu")):
        ro = HFRollout(policy, tok).generate(prompts, 1, greedy=True, max_new_tokens=24)
    trainer_rows = [r[: int(m.sum())] for r, m in zip(ro.responses.tolist(), ro.mask)]
    exported_rows, _ = greedy_tokens_transformers(hf, prompts, 24)
    assert exported_rows == trainer_rows
    assert any(len(r) > 3 for r in trainer_rows)


def test_export_command_writes_an_earlier_step(finished_run, tmp_path):
    out, cfg = finished_run
    dest = tmp_path / "step1"
    assert train_main(["export", str(out), "--step", "1", "--out", str(dest)]) == 0
    assert json.loads((dest / META_FILE).read_text())["step"] == 1
    tok, policy = trainer_policy_at(cfg, out, 1)
    prompts = prompts_of(cfg, tok)
    ro = HFRollout(policy, tok).generate(prompts, 1, greedy=True, max_new_tokens=24)
    trainer_rows = [r[: int(m.sum())] for r, m in zip(ro.responses.tolist(), ro.mask)]
    assert greedy_tokens_transformers(dest, prompts, 24)[0] == trainer_rows
    # the newest complete checkpoint by default
    assert train_main(["export", str(out), "--out", str(tmp_path / "latest")]) == 0
    assert json.loads((tmp_path / "latest" / META_FILE).read_text())["step"] == 2


def test_bf16_export_stores_the_compute_dtype(tmp_path, tiny_model_built):
    out = tmp_path / "run"
    cfg = load_config(None, TINY + RUN + ["run.total_steps=1", "model.dtype=bfloat16", f"run.output_dir={out}"])
    train(cfg)
    saved = load_file(str(out / "hf" / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    assert json.loads((out / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    master = load_checkpoint(checkpoints(out)[-1])["model"]
    for name, value in saved.items():
        assert torch.equal(value, master[name].to(torch.bfloat16)), name


@pytest.mark.parametrize(
    "case",
    ["missing_run", "not_a_run", "no_checkpoints", "half_written", "unknown_step", "out_not_empty", "garbled_only"],
)
def test_hostile_export_one_line_exit_2_nothing_created(finished_run, tmp_path, capsys, case):
    out, _ = finished_run
    run, dest, args = out, tmp_path / "dest", []
    if case == "missing_run":
        run = tmp_path / "nope"
    elif case == "not_a_run":
        run = tmp_path / "plain"
        run.mkdir()
        (run / "notes.txt").write_text("hello")
    elif case in ("no_checkpoints", "half_written", "garbled_only"):
        run = tmp_path / "copy"
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.yaml").write_text((out / "config.yaml").read_text())
        if case == "half_written":  # an interrupted save leaves only its temporary file
            (run / "checkpoints" / "step_0000002.tmp").write_bytes((out / "checkpoints" / "step_0000002.pt").read_bytes()[:5000])
        if case == "garbled_only":
            (run / "checkpoints" / "step_0000002.pt").write_bytes(os.urandom(3000))
    elif case == "unknown_step":
        args = ["--step", "7"]
    elif case == "out_not_empty":
        dest.mkdir()
        (dest / "keep.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert train_main(["export", str(run), *args, "--out", str(dest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([x for x in err if x.startswith("error:")]) == 1, err
    assert str(run) in err[-1] or str(dest) in err[-1]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


VLLM_GREEDY = """
import json, os, sys
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
folder, prompts, max_new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
# on the CPU backend this fraction is of the machine's memory (default 0.92: refused beside other work); 1 GiB
total_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
llm = LLM(model=folder, dtype="float32", max_model_len=128, enforce_eager=True, seed=0,
          gpu_memory_utilization=min(0.9, 1.0 / total_gb))
outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], SamplingParams(temperature=0.0, max_tokens=max_new))
print("TOKENS" + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
"""


@pytest.mark.slow
def test_vllm_loads_the_export_and_generates_the_trainers_greedy_tokens(finished_run, tmp_path):
    """vLLM in a process of its own (one engine per process), on the folder alone: no sdpg code loads it."""
    import subprocess
    import sys

    try:
        import vllm  # noqa: F401
    except Exception as e:
        if os.environ.get("SDPG_REQUIRE_VLLM") == "1":
            raise
        pytest.skip(f"vLLM does not import: {e!r}")
    out, cfg = finished_run
    tok, policy = trainer_policy_at(cfg, out, 2)
    prompts = prompts_of(cfg, tok)
    ro = HFRollout(policy, tok).generate(prompts, 1, greedy=True, max_new_tokens=24)
    trainer_rows = [r[: int(m.sum())] for r, m in zip(ro.responses.tolist(), ro.mask)]
    env = {
        **os.environ,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "OMP_NUM_THREADS": "1",
        **{v: str(tmp_path / v.lower()) for v in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "VLLM_RPC_BASE_PATH")},
    }
    r = subprocess.run(
        [sys.executable, "-c", VLLM_GREEDY, str(out / "hf"), json.dumps(prompts), "24"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    vllm_rows = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("TOKENS"))[len("TOKENS") :])
    assert vllm_rows == trainer_rows
