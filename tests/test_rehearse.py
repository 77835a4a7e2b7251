"""Rehearsals (``sdpg-ablate SPEC --rehearse``): the paper's Table 1 spec, all 12 runs for 2 steps on a
shrunk stand-in of its model; a broken spec caught before anything runs; a hub id with no hub.

Table 1 is rehearsed as the README tells a laptop user to: ``--rehearse-model builtin --rehearse-data builtin``,
no hub, no data files. The other tests use the same built-in Qwen3 stand-in as a model folder, a verl-format
parquet (rows with the ``[TEACHER_CONTEXT_TOKEN]`` sentinel, the paper's prompts) written here, and the
shared AIME24 / AIME25 / AMC23 files."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from conftest import BENCH

from sdpg.commands import ablate_main
from sdpg.orchestration import standins

REPO = Path(__file__).resolve().parents[1]
PAPER_BASE = REPO / "ablations" / "base" / "paper_qwen3_4b.yaml"

STUDENT = (
    "Solve the following math problem step by step. Present your final answer inside \\boxed{{}}, for example "
    "\\boxed{{42}}.\n{question}\nRemember to put your final answer inside \\boxed{{}}."
)
CONTEXT = (
    "[Hint] The correct answer is {answer}. A common way to solve this is:\n{solution}\n[Instruction] If possible, "
    "derive the answer {answer} using an alternative, equally rigorous mathematical approach. Do NOT state that "
    "you were given the answer or reference."
)


def write_verl_parquet(path: Path, n: int = 12) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i in range(n):
        q, a, s = standins.PROBLEMS[i % len(standins.PROBLEMS)]
        content = STUDENT.format(question=q) + "[TEACHER_CONTEXT_TOKEN]" + CONTEXT.format(answer=a, solution=s)
        rows.append(
            {
                "data_source": "math_dapo",
                "prompt": [{"role": "user", "content": content}],
                "ability": "MATH",
                "reward_model": {"style": "rule", "ground_truth": a},
                "extra_info": {"index": i, "solution": s},
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A job's working folder as paper_table1.yaml expects it: data/dapo_math_17k.parquet, data/benchmarks/."""
    monkeypatch.chdir(tmp_path)
    write_verl_parquet(tmp_path / "data" / "dapo_math_17k.parquet")
    (tmp_path / "data" / "benchmarks").mkdir(parents=True)
    for b in ("aime24", "aime25", "amc23"):
        shutil.copy(BENCH / f"{b}.jsonl", tmp_path / "data" / "benchmarks" / f"{b}.jsonl")
    return tmp_path


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    return standins.write_model(tmp_path_factory.mktemp("qwen3-stand-in"))


@pytest.mark.slow
def test_paper_table1_rehearses_all_12_runs(tmp_path, monkeypatch, capsys):
    """The README's laptop rehearsal: no hub (offline, nothing cached), none of the authors' data, only the
    documented installs; the project's own stand-ins for the model and the data files."""
    workdir = tmp_path
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(workdir / "empty-hf-home"))
    t0 = time.time()
    rc = ablate_main(
        [
            str(REPO / "ablations" / "paper_table1.yaml"),
            "--rehearse",
            "--rehearse-model",
            "builtin",
            "--rehearse-data",
            "builtin",
            "--rehearse-dir",
            str(workdir / "rh"),
        ]
    )
    seconds = time.time() - t0
    err = capsys.readouterr().err
    report = json.loads((workdir / "rh" / "report.json").read_text())
    print(f"paper_table1 rehearsal: {len(report['runs'])} runs in {seconds:.0f} s")
    assert rc == 0, err[-3000:]
    runs = report["runs"]
    assert len(runs) == 12 and all(r["status"] == "pass" for r in runs), [r["first_error"] for r in runs]
    for r in runs:
        out = Path(r["output_dir"])
        assert out.is_relative_to(workdir / "rh")
        assert max(p.name for p in (out / "checkpoints").glob("step_*.pt")) == "step_0000002.pt"
        steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
        assert steps == [0, 1, 2], steps  # eval before training, then each step once across the requeue
        assert r["steps_per_s"] > 0
        # the paper's prompts, rendered through the chat template: the student sees no hint, the teacher does
        assert r["student_prompt"].startswith("<|im_start|>user\nSolve the following math problem")
        assert r["student_prompt"].endswith("<|im_start|>assistant\n") and "[Hint]" not in r["student_prompt"]
        assert "[Hint] The correct answer is 18." in r["teacher_prompt"]
        golds = [v for v in r["scorer"] if v["how"] == "as the scorer expects"]
        assert golds and all(v["score"] == 1.0 for v in golds)
        assert all(v["score"] == 0.0 for v in r["scorer"] if v["how"] == "a wrong answer")
        # the structure of 8 minibatches per RL step is kept as 2
        assert r["shrunk"]["minibatches per RL step"] == "8 -> 2"
        assert "train/rollout_logprob_diff" in r["metrics"]  # rollouts through the vLLM engine the spec names
    # a store of its own; nothing of the real spec created
    assert (workdir / "rh" / "mlflow.db").is_file()
    assert not (workdir / "outputs").exists() and not (workdir / "runs").exists()
    assert "12/12 runs pass" in err and "Not rehearsed here" in err and "8 ranks" in err
    # the stand-ins are said to be stand-ins, once per file, and the spec's folders hold nothing of them
    notes = [ln for ln in err.splitlines() if "(--rehearse-data builtin)" in ln]
    assert len(notes) == 4 and "'data/dapo_math_17k.parquet'" in notes[0] and "verl format" in notes[0], notes
    assert sorted(p.name for p in workdir.iterdir()) == ["rh"]


@pytest.mark.slow
def test_broken_spec_fails_before_anything_runs(workdir, stand_in, capsys):
    """A missing eval file and a scorer that cannot match the data's answers: one sentence each, per run,
    and nothing runs; a broken template placeholder is refused when the spec is read, before any rehearsal."""
    spec = workdir / "broken.yaml"
    body = f"""
name: broken
base: {PAPER_BASE}
variants:
  no_eval_file: {{data.eval: {{aime26: data/benchmarks/aime26.jsonl}}}}
  wrong_scorer: {{reward.verifier: exact}}
seeds: [0]
executor: local
"""
    spec.write_text(body)
    rc = ablate_main([str(spec), "--rehearse", "--rehearse-model", str(stand_in), "--rehearse-dir", str(workdir / "rh")])
    err = capsys.readouterr().err
    assert rc == 1, err[-2000:]
    runs = {r["name"]: r for r in json.loads((workdir / "rh" / "report.json").read_text())["runs"]}
    assert {r["status"] for r in runs.values()} == {"fail"}
    missing, scorer = runs["no_eval_file-s0"]["errors"], runs["wrong_scorer-s0"]["errors"]
    assert len(missing) == 1 and "'data.eval.aime26'" in missing[0] and "no such file" in missing[0], missing
    assert len(scorer) == 1 and "reward.verifier 'exact'" in scorer[0] and "\\boxed{}" in scorer[0], scorer
    for e in missing + scorer:
        assert "\n" not in e and e in err
    # nothing ran, nothing submitted, no store anywhere
    assert not (workdir / "rh" / "runs").exists() and not (workdir / "rh" / "submitit").exists()
    assert not (workdir / "rh" / "mlflow.db").exists() and not (workdir / "outputs").exists()

    spec.write_text(body.replace("wrong_scorer: {reward.verifier: exact}", 'typo: {data.student_template: "Solve: {questoin}"}'))
    rc = ablate_main([str(spec), "--rehearse", "--rehearse-model", str(stand_in), "--rehearse-dir", str(workdir / "rh2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "data.student_template" in err[0] and "{questoin}" in err[0] and str(spec) in err[0]
    assert not (workdir / "rh2").exists()


@pytest.mark.slow
def test_hub_id_without_a_hub_says_so_in_one_line(workdir, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(workdir / "empty-hf-home"))  # nothing cached
    rc = ablate_main(
        [
            str(REPO / "ablations" / "paper_table1.yaml"),
            "--rehearse",
            "--only",
            "variant=grpo",
            "--only",
            "seed=0",
            "--rehearse-dir",
            str(workdir / "rh"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    lines = [ln for ln in err.splitlines() if "hub cannot be reached" in ln]
    assert lines and "--rehearse-model PATH" in lines[0] and "--rehearse-model builtin" in lines[0], err[-2000:]
    report = json.loads((workdir / "rh" / "report.json").read_text())
    assert report["runs"][0]["status"] == "blocked"


@pytest.mark.slow
def test_sweep_rehearses_its_first_trials_and_objective(workdir, stand_in, capsys):
    from sdpg.commands import sweep_main

    rc = sweep_main(
        [
            str(REPO / "sweeps" / "paper_coefficients.yaml"),
            "--rehearse",
            "--rehearse-model",
            str(stand_in),
            "--rehearse-dir",
            str(workdir / "rh"),
        ]
    )
    err = capsys.readouterr().err
    report = json.loads((workdir / "rh" / "report.json").read_text())
    assert rc == 0, err[-3000:]
    names = [r["name"] for r in report["runs"]]
    assert names == ["enqueue0-s0", "low-s0", "high-s0"], names  # the paper's coefficients, then the space's corners
    for r in report["runs"]:
        assert r["status"] == "pass" and "eval/aime24/mean@2" in r["metrics"]  # the objective, at 2 samples
    assert not (workdir / "outputs").exists()  # no study, no store of the real sweep


@pytest.mark.slow
def test_scaled_sizes_keep_the_structure():
    """Several minibatches per RL step stay several (2), gradient accumulation stays (2 micro-batches), a
    token budget stays on, several generate calls stay several; a single minibatch stays single."""
    from sdpg.orchestration.rehearse import scaled_layer
    from sdpg.training.config import build_config

    paper = {
        "rollout": {"prompts_per_step": 128, "group_size": 8, "batch_size": 256, "max_new_tokens": 4096},
        "optim": {"minibatch_size": 128, "micro_batch_size": 4},
    }  # 8 minibatches of 128 sequences
    layer, changes = scaled_layer(build_config(paper), world=8)  # 16 rows of a minibatch per rank: 4 micro-batches
    assert (layer["rollout.prompts_per_step"], layer["rollout.group_size"]) == (2, 2)
    assert layer["optim.minibatch_size"] == 2 and layer["optim.micro_batch_size"] == 1  # 4 sequences: 2 x 2 x 1
    assert layer["rollout.batch_size"] == 2  # 1024 > 256: several generate calls, here 2 of 2
    assert changes["minibatches per RL step"] == "8 -> 2" and changes["micro-batches per minibatch (per rank)"] == "4 -> 2"
    one = build_config(
        {"rollout": {"prompts_per_step": 16, "group_size": 4}, "optim": {"micro_batch_size": 64, "micro_batch_tokens": 4096}}
    )
    layer, changes = scaled_layer(one, world=1)
    assert "optim.minibatch_size" not in layer and changes["minibatches per RL step"] == "1 -> 1"
    assert layer["optim.micro_batch_tokens"] == 1 and layer["rollout.max_new_tokens"] == 8
