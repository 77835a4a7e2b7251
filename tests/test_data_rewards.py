"""Data formats, prompts, verifiers and config errors."""

from __future__ import annotations

import json
import time

import pytest
from conftest import BENCH

from sdpg.training.config import ConfigError, DataConfig, load_config
from sdpg.training.data import PromptSampler, build_prompts, read_source
from sdpg.training.rewards import MathVerifier, Verifier, exact_reward, last_boxed


class CharTok:
    chat_template = None


def test_verl_parquet_sentinel_gives_student_and_teacher_prompts(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    content = "Solve 2+2. Put the answer in \\boxed{}.[TEACHER_CONTEXT_TOKEN]Reference solution: 2+2=4."
    rows = [
        {
            "data_source": "toy",
            "prompt": [{"role": "user", "content": content}],
            "reward_model": {"style": "rule", "ground_truth": "4"},
            "extra_info": {"index": 0},
        }
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    cfg = DataConfig(chat_template="off")
    (row,) = read_source(str(tmp_path / "train.parquet"), cfg)
    assert row["answer"] == "4"
    student, teacher = build_prompts(row, cfg, CharTok())
    assert student == "Solve 2+2. Put the answer in \\boxed{}."
    # the authors' split: the text before the sentinel, joined directly to what follows it
    assert teacher == "Solve 2+2. Put the answer in \\boxed{}.Reference solution: 2+2=4."
    student, teacher = build_prompts(row, DataConfig(chat_template="off", context="none"), CharTok())
    assert teacher == student


def test_plain_jsonl_rows_and_context_types(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"q": "1+1?", "a": "2", "sol": "one and one"}) + "\n")
    for ctx, expect in [
        ("answer", "The reference answer to this problem is 2."),
        ("solution", "Here is a reference solution to this problem:\none and one"),
        ("none", None),
    ]:
        cfg = DataConfig(
            problem_key="q",
            answer_key="a",
            solution_key="sol",
            context=ctx,
            chat_template="off",
            student_template="Q: {problem}",
            teacher_template="Q: {problem}\n{context}",
        )
        (row,) = read_source(str(p), cfg)
        s, t = build_prompts(row, cfg, CharTok())
        assert s == "Q: 1+1?"
        assert t == (s if expect is None else f"Q: 1+1?\n{expect}")
    cfg = DataConfig(
        context="custom",
        context_templates={"custom": "psst {answer}"},
        chat_template="off",
        student_template="{problem}",
        teacher_template="{problem}|{context}",
    )
    (row,) = read_source(str(p), cfg.model_copy(update={"problem_key": "q", "answer_key": "a"}))
    assert build_prompts(row, cfg, CharTok())[1] == "1+1?|psst 2"


def test_missing_fields_name_the_file_and_key(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl: row 0 has no 'problem'"):
        read_source(str(p), DataConfig())


def test_chat_template_is_applied_when_present():
    from sdpg.training.embedded import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"
    s, t = build_prompts({"problem": "P", "answer": "A"}, DataConfig(student_template="{problem}", context="answer"), tok)
    assert s == "<<P>>" and t.startswith("<<P") and "A" in t


def test_prompt_sampler_is_resumable():
    a = PromptSampler(7, seed=3)
    first = a.next(10)
    state = a.state_dict()
    rest = a.next(9)
    b = PromptSampler(7, seed=3)
    b.load_state_dict(state)
    assert b.next(9) == rest
    assert sorted(first[:7]) == list(range(7))


def test_last_boxed_and_exact():
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}} end") == "\\frac{1}{2}"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{unbalanced") is None
    assert exact_reward("1+2=3;#3", "3") == 1.0
    assert exact_reward("1+2=3;#4", "3") == 0.0
    assert exact_reward("no answer", "3") == 0.0


@pytest.mark.parametrize("bench", ["aime24", "aime25", "amc23", "math500"])
def test_math_verifier_on_every_benchmark_row(math_verifier, bench):
    rows = [json.loads(x) for x in open(BENCH / f"{bench}.jsonl")]
    for r in rows:
        gold = r["answer"]
        right = f"Some reasoning.\nThe answer is $\\boxed{{{gold}}}$."
        assert math_verifier.score(right, gold) == 1.0, (bench, gold)
        wrong_val = str(int(gold) + 1) if gold.isdigit() else "-987654321"
        wrong = f"Reasoning. So the answer is \\boxed{{{wrong_val}}}."
        assert math_verifier.score(wrong, gold) == 0.0, (bench, gold)
        assert math_verifier.score("I could not solve it; the answer might be " + gold, gold) == 0.0


@pytest.mark.parametrize(
    "gold,given",
    [
        ("\\frac{14}{3}", "14/3"),
        ("\\frac{1}{2}", "0.5"),
        ("90^\\circ", "90"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("p - q", "-q+p"),
    ],
)
def test_math_verifier_accepts_equivalent_forms(math_verifier, gold, given):
    assert math_verifier.score(f"so \\boxed{{{given}}}", gold) == 1.0
    assert math_verifier.score("so \\boxed{7/5}", gold) == 0.0


def test_pathological_response_is_scored_within_five_seconds(math_verifier):
    evil = "\\boxed{" + "{" * 50_000 + "}" * 49_999  # 100,000 characters of nested braces, unbalanced
    t0 = time.time()
    assert math_verifier.score(evil, "1") == 0.0
    evil2 = "\\boxed{" + "{" * 49_990 + "1" + "}" * 49_990 + "}"
    assert math_verifier.score(evil2, "1") == 0.0  # a boxed answer over MAX_BOXED_CHARS is not parsed: 0
    assert time.time() - t0 < 5.0


def test_verifier_timeout_kills_and_recovers():
    v = MathVerifier(timeout_s=0.5)
    try:
        assert v.score("\\boxed{2}", "2") == 1.0  # starts the worker
        # a boxed expression sympy takes long over: the worker is killed at the deadline
        slow = "\\boxed{" + "+".join(f"x_{{{i}}}^{{{i}}}" for i in range(600)) + "}"
        t0 = time.time()
        v.score(slow, "+".join(f"x_{{{i}}}^{{{i + 1}}}" for i in range(600)))
        assert time.time() - t0 < 3.0
        assert v.score("\\boxed{3}", "3") == 1.0  # a fresh worker answers again
    finally:
        v.close()


def test_restarted_verifier_scores_within_a_small_deadline():
    """Issue 12 item 7: after a timeout at reward.timeout_s=0.5 the new worker must not spend the next
    answer's deadline importing its parser; equivalent forms that need the parser still score 1."""
    v = MathVerifier(timeout_s=0.5)
    try:
        assert v.score("\\boxed{\\frac{1}{2}}", "0.5") == 1.0
        assert v.score("\\boxed{9^{9^{9^{9}}}}", "1") == 0.0  # sympy would evaluate the power for ever
        assert v.timeouts == 1
        assert v.score("so \\boxed{\\frac{1}{2}}", "0.5") == 1.0
        assert v.score("so \\boxed{2+2}", "4") == 1.0
        assert v.score("so \\boxed{2+3}", "4") == 0.0
        assert v.timeouts == 1
    finally:
        v.close()


def test_overlong_penalty():
    v = Verifier("exact", overlong_buffer=4, overlong_penalty=1.0, max_new_tokens=10)
    assert v.overlong([5, 6, 8, 10]) == [0.0, 0.0, -0.5, -1.0]


# ------------------------------------------------------------------ config errors


@pytest.mark.parametrize(
    "override,needle",
    [
        ("algo.betta=0.1", "unknown key 'algo.betta'"),
        ("algo.beta=-1", "key 'algo.beta' has bad value -1"),
        ("algo.method=ppo", "key 'algo.method' has bad value 'ppo'"),
        ("algo.kl_mode=kl", "key 'algo.kl_mode' has bad value 'kl'"),
        ("rollout.group_size=zero", "key 'rollout.group_size' has bad value 'zero'"),
        ("eval.pass_k=[64]", "eval.pass_k [64]"),
        ("data.context=custom", "context_templates.custom is empty"),
    ],
)
def test_config_errors_name_key_and_value(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)
    assert "embedded.yaml" in str(e.value)


def test_method_switch_starts_algo_afresh_but_toggles_stay():
    assert load_config(None, ["algo.method=grpo"]).algo.beta == 0.0
    c = load_config(None, ["algo.method=grpo", "algo.std_norm=false"])
    assert c.algo.std_norm is False and c.algo.kl_mode == "k3"
    c = load_config(None, ["algo.kl_mode=ufkl"])
    assert c.algo.method == "sdpg_urkl" and c.algo.kl_mode == "ufkl" and c.algo.beta == 0.1


def test_cli_bad_config_exits_nonzero(tmp_path, capsys):
    from sdpg.commands import train_main

    p = tmp_path / "c.yaml"
    p.write_text("algo:\n  bta: 1\n")
    assert train_main([str(p)]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "algo.bta" in err
    assert not (tmp_path / "runs").exists()
