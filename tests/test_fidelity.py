"""Paper fidelity: the shipped paper setup trains as the SDPG authors did (../shared/notes/reference-settings.md).

Each test here is named in docs/fidelity.md next to the setting it checks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import BENCH, QWEN3_CHAT_TEMPLATE

from sdpg.objective import (
    clamp_kl,
    full_vocab_kl,
    kl_penalised_rewards,
    policy_loss,
    reward_kl_penalty,
    sdpg_loss,
    token_entropy,
)
from sdpg.objective.loss import FusedKLInputs
from sdpg.training.config import METHOD_PRESETS, ConfigError, DataConfig, load_config
from sdpg.training.data import build_prompts, read_source, tokenize_prompts
from sdpg.training.rewards import Verifier, boxed_judge, boxed_reward, minerva_normalise

ROOT = Path(__file__).resolve().parents[1]
PAPER_BASE = ROOT / "ablations" / "base" / "paper_qwen3_4b.yaml"


@pytest.fixture(scope="module")
def qwen3_like_tokenizer():
    from sdpg.training.embedded import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    return tok


# ------------------------------------------------------------------ prompts (paper Fig. 4)
# Expected strings written from the note (reference-settings, "Prompts"): paragraphs are "\n\n"; a plain row is
# laid out as the authors' rows, "<student>\n[TEACHER_CONTEXT_TOKEN]\n\n[Hint] ...:\n<solution>\n\n[Instruction] ...",
# the student seeing the text before the sentinel, the teacher that text joined directly to the text after it.

FIG4_STUDENT_TEXT = (
    "Solve the following math problem step by step. Present your final answer inside \\boxed{}, for example \\boxed{42}.\n"
    "\n"
    "What is $1+1$?\n"
    "\n"
    "Remember to put your final answer inside \\boxed{}.\n"  # the line break before the sentinel
)
FIG4_INSTRUCTION_TEXT = (
    "[Instruction] If possible, derive the answer 2 using an alternative, equally rigorous mathematical approach "
    "(e.g., algebraic vs geometric, or different substitution). If no alternative exists, articulate the standard "
    "approach with exceptional clarity. Do NOT state that you were given the answer or reference."
)
FIG4_CONTEXT_TEXT = (
    "\n"  # after the sentinel: [Hint] opens a new paragraph
    "\n"
    "[Hint] The correct answer is 2. A common way to solve this is:\n"
    "Add one and one: $1+1=2$.\n"
    "\n" + FIG4_INSTRUCTION_TEXT
)
BENCH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DAPO_QUESTION = "Let $x$ be the number with $x+3=10$. Find $x$."
DAPO_ROW_TEXT = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
    + DAPO_QUESTION
    + '\n\nRemember to put your answer on its own line after "Answer:".'
)
DAPO_ROW_REWRITTEN = (
    "Solve the following math problem step by step. Present your final answer inside \\boxed{}, for example "
    "\\boxed{42}.\n\n" + DAPO_QUESTION + '\n\nRemember to put your answer on its own line after "Answer:".'
)
BOXED_ROW_TEXT = (
    "Solve the following math problem step by step. Present your final answer inside \\boxed{}, for example "
    "\\boxed{42}.\n\n" + DAPO_QUESTION + "\n\nRemember to put your final answer inside \\boxed{}."
)
VERL_CONTEXT = "\n\n[Hint] The correct answer is 7. A common way to solve this is:\nSubtract 3.\n\n[Instruction] Derive 7."


def _chatml(user: str, system: str | None = None) -> str:
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system is not None else ""
    return f"{head}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def _verl_file(tmp_path, contents: list[str], system: str | None = None) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for c in contents:
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": c}]
        rows.append({"prompt": messages, "reward_model": {"ground_truth": "7"}})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "verl.parquet")
    return str(tmp_path / "verl.parquet")


def test_fig4_prompts_through_a_qwen3_chat_template_character_by_character(qwen3_like_tokenizer):
    cfg = load_config(PAPER_BASE).data
    assert cfg.prompt_template == "sdpg_fig4" and cfg.chat_template_kwargs == {"enable_thinking": True}
    row = {"problem": "What is $1+1$?", "answer": "2", "solution": "Add one and one: $1+1=2$."}
    student, teacher = build_prompts(row, cfg, qwen3_like_tokenizer)
    assert student == _chatml(FIG4_STUDENT_TEXT)
    assert teacher == _chatml(FIG4_STUDENT_TEXT + FIG4_CONTEXT_TEXT)
    # the same row written as the authors' verl row gives the same two prompts
    s2, t2 = build_prompts(
        {"student_prompt": FIG4_STUDENT_TEXT, "teacher_prompt": FIG4_STUDENT_TEXT + FIG4_CONTEXT_TEXT}, cfg, qwen3_like_tokenizer
    )
    assert (s2, t2) == (student, teacher)
    # the keyword arguments reach the template: thinking off adds the empty think block
    off = cfg.model_copy(update={"chat_template_kwargs": {"enable_thinking": False}})
    assert build_prompts(row, off, qwen3_like_tokenizer)[0].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # without a worked solution the hint keeps the answer, the instruction still its own paragraph
    _, t_answer = build_prompts({"problem": "What is $1+1$?", "answer": "2"}, cfg, qwen3_like_tokenizer)
    assert t_answer == _chatml(FIG4_STUDENT_TEXT + "\n\n[Hint] The correct answer is 2.\n\n" + FIG4_INSTRUCTION_TEXT)


def test_benchmark_instruction_is_not_repeated(qwen3_like_tokenizer):
    """A benchmark question ending with its own instruction gets the template's only (``problem_instruction``)."""
    cfg = load_config(PAPER_BASE).data
    row = {"problem": "What is $1+1$?\n" + BENCH_INSTRUCTION, "answer": "2", "solution": "Add one and one: $1+1=2$."}
    student, teacher = build_prompts(row, cfg, qwen3_like_tokenizer)
    assert student == _chatml(FIG4_STUDENT_TEXT)
    assert teacher == _chatml(FIG4_STUDENT_TEXT + FIG4_CONTEXT_TEXT)
    kept = build_prompts(row, cfg.model_copy(update={"problem_instruction": "keep"}), qwen3_like_tokenizer)[0]
    assert kept == _chatml(FIG4_STUDENT_TEXT.replace("$1+1$?\n", "$1+1$?\n" + BENCH_INSTRUCTION + "\n"))
    # the default custom template carries the instruction itself: auto strips the row's; a template without one keeps it
    custom = DataConfig(chat_template="off", context="none")
    assert build_prompts(row, custom, None)[0] == "What is $1+1$?\n\n" + BENCH_INSTRUCTION
    bare = DataConfig(chat_template="off", context="none", student_template="Q: {problem}")
    assert build_prompts(row, bare, None)[0] == "Q: What is $1+1$?\n" + BENCH_INSTRUCTION
    # a question that merely mentions the instruction elsewhere is left alone
    mid = {"problem": BENCH_INSTRUCTION + " What is $1+1$?", "answer": "2"}
    assert build_prompts(mid, custom, None)[0] == mid["problem"] + "\n\n" + BENCH_INSTRUCTION
    # every benchmark question in shared/ ends with it, and loses it
    for f in sorted(BENCH.glob("*.jsonl")):
        for line in open(f):
            s = build_prompts({"problem": json.loads(line)["problem"], "answer": "0"}, cfg, qwen3_like_tokenizer)[0]
            assert s.count("step by step") == 1 and "Please reason" not in s, f.name


def test_custom_template_appends_the_context_after_the_student_prompt():
    cfg = DataConfig(chat_template="off", context="answer", student_template="Q {problem} (box it)")
    s, t = build_prompts({"problem": "P", "answer": "7"}, cfg, None)
    assert s == "Q P (box it)"
    assert t == "Q P (box it)\n\nThe reference answer to this problem is 7."


@pytest.mark.parametrize("answer_format", ["boxed", "answer_colon"])
def test_verl_rows_of_both_formats_through_a_qwen3_chat_template(tmp_path, qwen3_like_tokenizer, answer_format):
    """DAPO-format rows get the boxed instruction (``data.answer_format: boxed``, the authors'), once per message,
    before the split; rows already in the boxed format are used as written; the system message too is rewritten."""
    dapo_instruction = DAPO_ROW_TEXT.split("step by step. ")[1].split("\n")[0]
    system = "Be brief. " + dapo_instruction
    source = _verl_file(
        tmp_path,
        [DAPO_ROW_TEXT + "[TEACHER_CONTEXT_TOKEN]" + VERL_CONTEXT, BOXED_ROW_TEXT + "[TEACHER_CONTEXT_TOKEN]" + VERL_CONTEXT],
        system,
    )
    cfg = load_config(PAPER_BASE).data.model_copy(update={"answer_format": answer_format})
    assert load_config(PAPER_BASE).data.answer_format == "boxed"
    dapo_row, boxed_row = read_source(source, cfg)
    rewritten = answer_format == "boxed"
    student_text = DAPO_ROW_REWRITTEN if rewritten else DAPO_ROW_TEXT
    sys_text = "Be brief. Present your final answer inside \\boxed{}, for example \\boxed{42}." if rewritten else system
    assert build_prompts(dapo_row, cfg, qwen3_like_tokenizer) == (
        _chatml(student_text, sys_text),
        _chatml(student_text + VERL_CONTEXT, sys_text),
    )
    assert build_prompts(boxed_row, cfg, qwen3_like_tokenizer) == (
        _chatml(BOXED_ROW_TEXT, sys_text),
        _chatml(BOXED_ROW_TEXT + VERL_CONTEXT, sys_text),
    )
    # once per message: a second copy (here in the context) stays
    (twice,) = read_source(_verl_file(tmp_path, [DAPO_ROW_TEXT + "[TEACHER_CONTEXT_TOKEN]\n" + dapo_instruction]), cfg)
    assert twice["teacher_prompt"] == student_text + "\n" + dapo_instruction


def test_verl_sentinel_split_keeps_every_character(tmp_path, qwen3_like_tokenizer):
    student = "  Solve: 3*3?\nPut it in \\boxed{}.\n"
    ctx = "\n[Hint] The correct answer is 9.  "
    source = _verl_file(tmp_path, [student + "[TEACHER_CONTEXT_TOKEN]" + ctx], "Be brief.")
    cfg = DataConfig(chat_template="on", chat_template_kwargs={"enable_thinking": True})
    (row,) = read_source(source, cfg)
    s, t = build_prompts(row, cfg, qwen3_like_tokenizer)
    assert s == _chatml(student, "Be brief.")
    assert t == _chatml(student + ctx, "Be brief.")


def _long_rows():
    return [{"problem": "a b", "answer": "z"}, {"problem": "a b c d e f g h i j k l", "answer": "z"}]


def test_student_prompts_are_never_cut_by_default(qwen3_like_tokenizer):
    cfg = DataConfig(chat_template="off", context="answer", student_template="{problem}", max_prompt_tokens=8)
    assert DataConfig().overlong_prompts == "error" and load_config(PAPER_BASE).data.overlong_prompts == "error"
    with pytest.raises(ConfigError) as e:
        tokenize_prompts(_long_rows(), cfg, qwen3_like_tokenizer, "data.train=rows.jsonl")
    msg = str(e.value)
    assert msg.startswith("data.train=rows.jsonl: 1 of 2 rows") and "data.max_prompt_tokens=8" in msg and "row 1:" in msg
    assert "\n" not in msg and "data.overlong_prompts" in msg


def test_over_long_student_prompt_stops_training_in_one_sentence(tmp_path, capsys):
    from sdpg.commands import train_main

    out = tmp_path / "run"
    args = [f"run.output_dir={out}", "data.max_prompt_tokens=4", "run.total_steps=1", "run.threads=1", "eval.every=0"]
    assert train_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "data.train=embedded:" in err and "data.max_prompt_tokens=4" in err and "data.overlong_prompts" in err
    assert {p.name for p in out.iterdir()} <= {".sdpg-run.lock"}  # nothing written but the run's lock


def test_overlong_student_prompts_dropped_and_counted(qwen3_like_tokenizer):
    cfg = DataConfig(
        chat_template="off", context="answer", student_template="{problem}", max_prompt_tokens=8, overlong_prompts="drop"
    )
    rows = _long_rows()
    ids = tokenize_prompts(rows, cfg, qwen3_like_tokenizer)
    assert ids.rows == rows[:1] and ids.dropped == 1 and ids.student_cut == 0 and len(ids.student) == len(ids.teacher) == 1
    s_full = qwen3_like_tokenizer.encode(build_prompts(rows[0], cfg, qwen3_like_tokenizer)[0], add_special_tokens=False)
    assert ids.student == [s_full]


def test_student_cut_from_the_left_only_on_request_teacher_from_the_right(qwen3_like_tokenizer):
    cfg = DataConfig(
        chat_template="off", context="answer", student_template="{problem}", max_prompt_tokens=8, overlong_prompts="cut_left"
    )
    rows = _long_rows()[1:]
    ids = tokenize_prompts(rows, cfg, qwen3_like_tokenizer)
    s_full, t_full = (
        qwen3_like_tokenizer.encode(x, add_special_tokens=False) for x in build_prompts(rows[0], cfg, qwen3_like_tokenizer)
    )
    assert len(s_full) > 8 and len(t_full) > 8 and ids.student_cut == 1 and ids.teacher_cut == 1
    assert ids.student == [s_full[-8:]] and ids.teacher == [t_full[:8]]
    # the teacher prompt is cut from the right whatever the student's setting
    short = [{"problem": "a", "answer": "z " * 20}]
    ids = tokenize_prompts(short, cfg.model_copy(update={"overlong_prompts": "error"}), qwen3_like_tokenizer)
    t_full = qwen3_like_tokenizer.encode(build_prompts(short[0], cfg, qwen3_like_tokenizer)[1], add_special_tokens=False)
    assert len(t_full) > 8 and ids.teacher == [t_full[:8]] and ids.teacher_cut == 1


# ------------------------------------------------------------------ the authors' boxed scorer


@pytest.mark.parametrize("bench", ["aime24", "aime25", "amc23", "math500"])
def test_every_gold_answer_boxed_scores_plus_one_with_both_scorers(math_verifier, bench):
    rows = [json.loads(x) for x in open(BENCH / f"{bench}.jsonl")]
    boxed = Verifier("boxed")
    for r in rows:
        gold = r["answer"]
        right = f"Some reasoning.\nThe answer is $\\boxed{{{gold}}}$."
        assert boxed.correctness([right], [gold]) == [1.0], (bench, gold)
        assert math_verifier.score(right, gold) == 1.0, (bench, gold)
        assert boxed_reward("Reasoning. So \\boxed{-987654321}.", gold) == 0.0, (bench, gold)


PAD = " filler"  # 7 characters


BOXED_CASES = [
    # (response, gold, expected)
    ("The answer is \\boxed{42}.", "42", 1.0),
    ("The answer is \\boxed{42}.", "43", 0.0),
    ("I think it is 42.", "42", 0.0),  # nothing to extract
    ("", "42", 0.0),
    ("\\boxed{5 \\text{ cm}}", "5", 1.0),  # units removed
    ("\\boxed{10 \\text{ degrees}}", "10", 1.0),
    ("\\boxed{90^\\circ}", "90^\\circ", 1.0),
    ("\\boxed{90^\\circ}", "90", 1.0),
    ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", 1.0),  # \text{} unwrapped
    ("\\boxed{Evelyn}", "\\text{Evelyn}", 1.0),
    ("\\boxed{\\textbf{(C)}}", "\\text{(C)}", 1.0),
    ("\\boxed{\\text{(A)}}", "A", 0.0),
    ("\\boxed{\\overline{AB}}", "AB", 1.0),
    ("\\boxed{\\frac{14}{3}}", "\\frac{14}{3}", 1.0),  # fractions
    ("\\boxed{\\frac 43}", "\\frac{4}{3}", 1.0),  # shorthand \frac43
    ("\\boxed{\\dfrac{14}{3}}", "\\frac{14}{3}", 0.0),  # a string match: dfrac is not frac
    ("\\boxed{14/3}", "\\frac{14}{3}", 0.0),
    ("\\boxed{2\\sqrt3}", "2\\sqrt{3}", 1.0),  # shorthand \sqrt3
    ("\\boxed{1,000}", "1000", 1.0),  # thousands commas
    ("\\boxed{12,345,678}", "12345678", 1.0),
    ("\\boxed{1, -2}", "1,-2", 1.0),  # a list keeps its commas
    ("\\boxed{\\$18.90}", "18.90", 1.0),
    ("\\boxed{18.9}", "18.90", 0.0),
    ("\\boxed{x = 5}", "5", 1.0),  # the part after the last =
    ("\\boxed{x=5}", "x=5", 1.0),
    ("\\boxed{3 \\text{ and } 5}", "3,5", 1.0),
    ("\\boxed{-2 + 7i}", "-2+7i", 1.0),
    ("\\boxed{52_8}", "52_8", 1.0),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", 1.0),  # nested braces
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
    ("first \\boxed{1}, finally \\boxed{2}", "2", 1.0),  # the last box
    ("first \\boxed{1}, finally \\boxed{2}", "1", 0.0),
    ("\\boxed{42", "42", 0.0),  # unclosed
    ("\\fbox{42}", "42", 0.0),  # only \boxed{ counts
    ("\\boxed 42", "42", 0.0),
    ("\\boxed{42}" + "x" * 489, "42", 1.0),  # 499 characters: inside the last 500
    ("\\boxed{42}" + "x" * 495, "42", 0.0),  # the box starts outside the last 500
    ("\\boxed{42}" + PAD * 100, "42", 0.0),
    ("Work.\nAnswer: 42\n", "42", 1.0),  # the Answer: line fallback
    ("Work.\nanswer: $42$", "42", 1.0),
    ("Answer: 1\nlater: Answer: 42", "42", 1.0),  # the last one
    ("\\boxed{41}\nAnswer: 42", "42", 1.0),  # a wrong box: the Answer: line is tried (the authors' fallback)
    ("\\boxed{42}\nAnswer: 41", "42", 1.0),  # a correct box wins
    ("Work.\nAnswer:\n42", "42", 0.0),  # the answer on the next line does not count
    ("**Answer:** 42", "42", 1.0),  # asterisks stripped
    ("\\boxed{42 ft}", "42", 0.0),  # ft is not in the fork's unit list
    ("\\boxed{42 feet}", "42", 1.0),
    ("\\boxed{7}" + PAD * 100 + "\nAnswer: 42", "42", 1.0),  # box outside the tail: the line inside it counts
]


@pytest.mark.parametrize("response,gold,expected", BOXED_CASES, ids=[f"case{i}" for i in range(len(BOXED_CASES))])
def test_boxed_scorer_hand_cases(response, gold, expected):
    assert boxed_reward(response, gold) == expected


def test_minerva_normalisation_hand_values():
    assert minerva_normalise("\\text{(C)}") == "(C)"
    assert minerva_normalise("1,000") == "1000"
    assert minerva_normalise("5 \\text{ cm}") == "5"
    assert minerva_normalise("\\dfrac14") == "\\dfrac{1}{4}"
    assert minerva_normalise("x = \\$5") == "5"
    assert boxed_judge("\\boxed{\\frac{1}{\\sqrt{2}}} end", "\\frac{1}{\\sqrt{2}}") == (True, "\\frac{1}{\\sqrt{2}}")
    assert boxed_judge("no answer here", "2") == (False, None)


def test_boxed_reward_is_plus_minus_one_in_the_paper_config():
    cfg = load_config(PAPER_BASE)
    assert cfg.reward.verifier == "boxed" and cfg.reward.incorrect_reward == -1.0 and cfg.reward.boxed_tail_chars == 500
    assert cfg.eval.extra_scorers == ["math"]


# ------------------------------------------------------------------ objective options (pure functions, by hand)


def test_kl_in_reward_by_hand():
    scores = torch.tensor([1.0, -1.0])
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -0.2, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -9.0], [-0.3, -0.2, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # k1 = old - ref per token: [0.5, -1.0, (masked)], [0.2, 0.0, 0.0]; sums -0.5 and 0.2
    assert reward_kl_penalty(old, ref, mask, "k1").tolist() == pytest.approx([-0.5, 0.2])
    out = kl_penalised_rewards(scores, old, ref, mask, 1e-3, "k1")
    assert out.tolist() == pytest.approx([1.0 + 0.5e-3, -1.0 - 0.2e-3])
    # k2 and k3 by hand on the first sequence
    assert float(reward_kl_penalty(old, ref, mask, "k2")[0]) == pytest.approx(0.5 * 0.25 + 0.5 * 1.0)
    k3 = (torch.exp(torch.tensor(-0.5)) - 1 + 0.5) + (torch.exp(torch.tensor(1.0)) - 1 - 1.0)
    assert float(reward_kl_penalty(old, ref, mask, "k3")[0]) == pytest.approx(float(k3))
    assert float(reward_kl_penalty(old, ref, mask, "abs")[0]) == pytest.approx(1.5)


def test_kl_clamp_gives_clamped_tokens_no_gradient():
    kl = torch.tensor([[0.5, 25.0, 3.0]], requires_grad=True)
    out = clamp_kl(kl, 20.0)
    assert out.tolist() == [[0.5, 20.0, 3.0]]
    out.sum().backward()
    assert kl.grad.tolist() == [[1.0, 0.0, 1.0]]
    assert clamp_kl(kl, None) is kl


@pytest.mark.parametrize("impl", ["materialised", "fused"])
def test_sdpg_loss_clamps_opd_per_token_kl(impl):
    torch.manual_seed(0)
    B, T, H, V = 2, 5, 8, 11
    hs = torch.randn(B, T, H, dtype=torch.float64, requires_grad=True)
    ht = torch.randn(B, T, H, dtype=torch.float64)
    W = torch.randn(V, H, dtype=torch.float64) * 3  # large logits: some tokens' KL exceed the clamp
    mask = torch.ones(B, T, dtype=torch.float64)
    kl_full = full_vocab_kl(hs @ W.T, ht @ W.T).detach()
    clamp = float(kl_full.median())
    assert (kl_full > clamp).any() and (kl_full <= clamp).any()
    adv = torch.tensor([1.0, 0.5], dtype=torch.float64)
    logp = torch.zeros(B, T, dtype=torch.float64)
    opd = FusedKLInputs(hs, ht, W, chunk_size=3) if impl == "fused" else full_vocab_kl(hs @ W.T, ht @ W.T)
    loss, st = sdpg_loss(logp, logp, adv, mask, opd=opd, beta=1.0, pg_coef=0.0, opd_kl_clamp=clamp)
    loss.backward()
    expected = torch.minimum(kl_full, torch.tensor(clamp, dtype=torch.float64)).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)  # aggregation weights are float32
    # the gradient is that of the unclamped tokens alone
    hs2 = hs.detach().clone().requires_grad_(True)
    keep = (kl_full <= clamp).double()
    (full_vocab_kl(hs2 @ W.T, ht @ W.T) * keep).sum().div(B * T).backward()
    # the fused kernel's softmax arithmetic is float32
    torch.testing.assert_close(hs.grad, hs2.grad, rtol=1e-4, atol=1e-5 * float(hs2.grad.abs().max()))


def test_temperature_divides_only_the_students_logits():
    s = torch.tensor([[[2.0, 0.0, -1.0]]])
    t = torch.tensor([[[0.5, 1.0, 0.0]]])
    p = torch.softmax(s / 2.0, -1)
    q = torch.softmax(t, -1)
    expected = (p * (p.log() - q.log())).sum()
    assert float(full_vocab_kl(s, t, 2.0, teacher_temperature=1.0)) == pytest.approx(float(expected), rel=1e-6)
    assert float(full_vocab_kl(s, t, 2.0)) != pytest.approx(float(expected), rel=1e-3)  # both divided: another value


def test_no_dual_clip_when_clip_c_is_none():
    logp = torch.log(torch.tensor([[5.0]]))  # ratio 5 against old log-prob 0, negative advantage
    old = torch.zeros(1, 1)
    adv = torch.tensor([-1.0])
    mask = torch.ones(1, 1)
    dual, st = policy_loss(logp, old, adv, mask, 0.2, 0.2, 3.0)
    plain, st2 = policy_loss(logp, old, adv, mask, 0.2, 0.2, None)
    assert float(dual) == pytest.approx(3.0) and float(st["pg_clipfrac_lower"]) == 1.0
    assert float(plain) == pytest.approx(5.0) and float(st2["pg_clipfrac_lower"]) == 0.0


def test_entropy_bonus_is_its_own_term():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    logp = torch.zeros(2, 3)
    adv = torch.zeros(2)
    ent = token_entropy(logits)
    loss, st = sdpg_loss(logp, logp, adv, mask, entropy=ent, entropy_coef=0.02)
    expected = -(0.02 * (ent * mask).sum() / mask.sum())
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    assert float(st["entropy_bonus"]) == pytest.approx(float((ent * mask).sum() / mask.sum()), rel=1e-6)
    with pytest.raises(ValueError, match="entropy"):
        sdpg_loss(logp, logp, adv, mask, entropy_coef=0.02)


# ------------------------------------------------------------------ presets against the note's tables

# (method, expected resolved values), from ../shared/notes/reference-settings.md "Per method"
NOTE_TABLE = {
    "grpo": dict(
        clip_low=0.2,
        clip_high=0.2,
        clip_c=None,
        loss_agg_mode="token-mean",
        std_norm=True,
        alpha=0.0,
        beta=0.0,
        reward_kl_coef=1e-3,
        reward_kl_estimator="k1",
        entropy_coef=0.0,
        filter_groups=False,
        advantage="group",
    ),
    "sdpg_urkl": dict(
        clip_low=0.2,
        clip_high=0.28,
        clip_c=10.0,
        alpha=1e-3,
        kl_mode="urkl",
        beta=1e-3,
        beta_warmup_steps=50,
        beta_decay_steps=350,
        gate=True,
        reward_kl_coef=0.0,
        entropy_coef=0.0,
        loss_agg_mode="token-mean",
        opd_norm="all",
        filter_groups=False,
    ),
    "sdpg_ufkl": dict(
        clip_low=0.2,
        clip_high=0.28,
        clip_c=10.0,
        alpha=1e-3,
        kl_mode="ufkl",
        beta=1e-3,
        beta_warmup_steps=50,
        beta_decay_steps=350,
        gate=True,
        reward_kl_coef=0.0,
        entropy_coef=0.0,
    ),
    "rlsd": dict(
        clip_low=0.2,
        clip_high=0.2,
        clip_c=3.0,
        alpha=0.0,
        beta=0.0,
        reward_kl_coef=0.0,
        advantage="rlsd",
        rlsd_lambda=0.5,
        rlsd_lambda_decay_steps=50,
        rlsd_eps_w=0.2,
        entropy_coef=0.0,
        teacher="current",
    ),
    "opsd": dict(
        clip_low=0.2,
        clip_high=0.2,
        alpha=0.0,
        beta=0.0,
        reward_kl_coef=0.0,
        advantage="opsd",
        teacher="frozen",
        pg_norm="gated",
        entropy_coef=0.02,
    ),
}
# "Distillation details" of the note: the defaults every preset inherits
DISTILL_DEFAULTS = dict(opd_kl_clamp=20.0, distill_temperature_on="student", opd_exclude_stop=False)
# "Common to every method"
COMMON = {
    "optim.lr": 1e-6,
    "optim.weight_decay": 0.1,
    "optim.betas": (0.9, 0.999),
    "optim.grad_clip": 1.0,
    "optim.warmup_steps": 10,
    "optim.lr_schedule_unit": "rl_step",
    "optim.minibatch_prompts": 16,
    "optim.ppo_epochs": 1,
    "rollout.prompts_per_step": 128,
    "rollout.group_size": 8,
    "rollout.temperature": 1.0,
    "rollout.top_p": 1.0,
    "rollout.top_k": 0,
    "rollout.backend": "vllm",
    "rollout.max_new_tokens": 4096,
    "data.max_prompt_tokens": 2048,
    "data.overlong_prompts": "error",
    "data.answer_format": "boxed",
    "data.problem_instruction": "auto",
    "data.prompt_template": "sdpg_fig4",
    "reward.verifier": "boxed",
    "reward.incorrect_reward": -1.0,
    "reward.boxed_tail_chars": 500,
    "model.dtype": "bfloat16",
    "model.param_dtype": "float32",
    "eval.n_samples": 32,
    "eval.temperature": 1.0,
    "eval.every": 10,
    "run.total_steps": 400,
    "reward.overlong_buffer": 0,
    "data.chat_template_kwargs": {"enable_thinking": True},
}


def _get(cfg, dotted):
    cur = cfg
    for part in dotted.split("."):
        cur = getattr(cur, part)
    return cur


@pytest.mark.parametrize("method", sorted(NOTE_TABLE))
def test_preset_matches_the_note(method):
    cfg = load_config(PAPER_BASE, [f"algo.method={method}"])
    for k, v in {**NOTE_TABLE[method], **DISTILL_DEFAULTS}.items():
        assert getattr(cfg.algo, k) == v, (method, k)
    for k, v in COMMON.items():
        if method == "opsd" and k == "optim.lr":
            continue
        assert _get(cfg, k) == v, (method, k)


def test_opsd_brings_its_learning_rate():
    assert load_config(None, ["algo.method=opsd"]).optim.lr == 5e-7
    assert load_config(None, ["algo.method=opsd", "optim.lr=1e-5"]).optim.lr == 1e-5  # written: it wins
    from sdpg.training.config import apply_layer, build_config, load_yaml

    base = load_yaml(PAPER_BASE)
    assert build_config(apply_layer(base, {"algo.method": "opsd"})).optim.lr == 5e-7  # a variant of the paper base


def test_grpo_k3_keeps_the_deepseekmath_form():
    a = METHOD_PRESETS["grpo_k3"]
    assert (a["kl_mode"], a["alpha"], a["loss_agg_mode"], a["reward_kl_coef"]) == ("k3", 1e-3, "seq-mean-token-mean", 0.0)


def test_missing_vllm_is_refused_by_the_world_check_not_the_schema(monkeypatch, tmp_path, capsys):
    """A laptop without vLLM plans (dry run, printed config, a warning naming what the jobs need); training or
    submitting there is refused in one line, exit 2, before anything exists."""
    from sdpg.commands import ablate_main, train_main
    from sdpg.training.preflight import check_world

    monkeypatch.setitem(sys.modules, "vllm", None)  # as on a machine without the package
    monkeypatch.chdir(tmp_path)
    cfg = load_config(PAPER_BASE)  # the config is valid anywhere
    with pytest.raises(ConfigError, match=r"key 'rollout.backend' has bad value 'vllm'.*not installed"):
        check_world(cfg, str(PAPER_BASE))
    spec = str(ROOT / "ablations" / "paper_table1.yaml")
    for argv, main, rc in [
        ([spec, "--dry-run"], ablate_main, 0),
        ([str(PAPER_BASE), "--print-config"], train_main, 0),
        ([spec], ablate_main, 2),
        ([str(PAPER_BASE)], train_main, 2),
    ]:
        assert main(argv) == rc, argv
        out, err = capsys.readouterr()
        vllm_lines = [ln for ln in err.splitlines() if "'rollout.backend' has bad value 'vllm'" in ln]
        if rc == 0:
            assert "rollout:" in out or "settings per variant" in out
            assert len(vllm_lines) == 1 and vllm_lines[0].startswith("warning: ") and ".[rehearse]" in vllm_lines[0]
        else:
            assert err.count("\n") == 1 and err.startswith("error: ") and len(vllm_lines) == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing created by any of them


def test_bf16_parameters_only_on_request():
    cfg = load_config(None, ["model.dtype=bfloat16"])
    assert cfg.model.param_dtype == "float32"


def test_ablate_dry_run_shows_the_faithful_settings_per_variant(tmp_path):
    import shutil
    import subprocess

    import pyarrow as pa
    import pyarrow.parquet as pq

    # the job's folder as the spec expects it (the dry run checks that the data is there)
    (tmp_path / "data" / "benchmarks").mkdir(parents=True)
    row = {"prompt": [{"role": "user", "content": "1+1?[TEACHER_CONTEXT_TOKEN]It is 2."}], "reward_model": {"ground_truth": "2"}}
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "data" / "dapo_math_17k.parquet")
    for b in ("aime24", "aime25", "amc23"):
        shutil.copy(BENCH / f"{b}.jsonl", tmp_path / "data" / "benchmarks" / f"{b}.jsonl")

    out = subprocess.run(
        ["sdpg-ablate", str(ROOT / "ablations" / "paper_table1.yaml"), "--dry-run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout
    table = out.split("settings per variant:")[1].splitlines()
    rows = {line.split("  ")[0]: line.split() for line in table if line.strip() and not line.startswith("-")}
    assert rows["setting"][1:] == ["grpo", "rlsd", "sdpg_urkl", "sdpg_ufkl"]
    assert "clip low/high/c" in out
    clip = [line for line in table if line.startswith("clip low/high/c")][0].split()[2:]
    assert clip == ["0.2/0.2/off", "0.2/0.2/3", "0.2/0.28/10", "0.2/0.28/10"]
    kl = [line for line in table if line.startswith("KL to reference")][0]
    assert "reward k1 0.001" in kl and "loss urkl 0.001" in kl and "loss ufkl 0.001" in kl
    for name, expected in [
        ("minibatch x epochs", "16 prompts x 1"),
        ("params/compute dtype", "float32/bfloat16"),
        ("reward", "boxed 1/-1"),
        ("lr (warm-up unit)", "1e-06 (10 rl_step)"),
        ("rollouts", "vllm 128x8"),
    ]:
        line = [x for x in table if x.startswith(name)][0]
        assert line.count(expected) == 4, (name, line)
    assert "rlsd lam 0.5->0@50" in out and "A>0, 20" in out and "student, distilled" in out
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "runs").exists()  # nothing created
