"""The ``boxed`` scorer against the SDPG authors' verdicts, case by case (a copy-free differential).

Every case is generated together with the verdict the authors' ``compute_score_boxed`` gives it, known from
how the case is built and from the scorer's description (reference-settings, "Reward"): the last 500
characters only; the last ``\\boxed{}`` there, and whenever it is absent or wrong the last ``Answer:`` line
there (value on the same line, ``*`` stripped, case-insensitive); Minerva's normalisation with the fork's unit
list (``ft`` not removed). No copy of their code computes an expected verdict. Gold answers are the benchmark
answers in ``shared/data/benchmarks`` and random strings.

Construction rules that keep each verdict certain:
* filler text has no ``b``, ``w``, ``*``, ``\\``, braces or ``=``: it can hold neither ``\\boxed{`` nor ``answer``;
* a wrong answer is a 12-digit number starting with 9; normalisation only deletes characters, so no gold with
  fewer than 12 digits can normalise to it;
* a correct answer is the gold string itself (same normalisation on both sides).
"""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter

import pytest
from conftest import BENCH

from sdpg.training.rewards import Verifier, boxed_judge

FILLER_CHARS = "".join(c for c in string.ascii_lowercase if c not in "bw") + "0123456789" + " .,;:()+-$^\n"
RANDOM_GOLD_CHARS = "".join(c for c in string.ascii_letters if c.lower() not in "bw") + "012345678+-^_()[],./\\"
NOISE_CHARS = FILLER_CHARS + "{}\\*\t\"'#%&!?<>|~`@"
# removed by the fork's Minerva list, and not removed (a unit word the list lacks stays and the answer is wrong)
REMOVED_UNITS = ["cm", "inches", "degrees", "km", "mph", "minutes", "hours", "meters", "pounds", "cents", "dollars"]
REMOVED_UNITS += ["points", "units", "feet", "\\text{ cm}", "\\text{ feet}", "\\text{ units}", "^\\circ", "^{\\circ}"]
KEPT_UNITS = ["ft", "\\text{ ft}", "yards", "seconds", "miles", "kg", "days", "years", "\\text{ yd}", "mi"]
ANSWER_LABELS = ["Answer:", "answer:", "ANSWER:", "Answer :", "Answer\t:", "Final Answer:", "The Answer:"]
BOLD_FORMS = ["**Answer:** {g}", "**Answer: {g}**", "Answer: **{g}**", "**Final Answer:** {g}", "**ANSWER:**{g}"]


def _golds() -> list[str]:
    golds = [json.loads(line)["answer"] for f in sorted(BENCH.glob("*.jsonl")) for line in open(f) if line.strip()]
    assert len(golds) >= 600, "the benchmark answers (AIME24, AIME25, AMC23, MATH-500) are missing"
    return golds


def _usable(g: str) -> bool:
    """Benchmark answers the constructions hold for: no newline, ``*`` or surrounding whitespace (an
    ``Answer:`` value is stripped), balanced braces (a box closes where it should), fewer than 12 digits."""
    return (
        "\n" not in g
        and "*" not in g
        and g == g.strip()
        and g.count("{") == g.count("}")
        and "\\boxed{" not in g
        and sum(c.isdigit() for c in g) < 12
    )


def _filler(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choices(FILLER_CHARS, k=rng.randint(lo, hi)))


def _wrong(rng: random.Random) -> str:
    return "9" + "".join(rng.choice("0123456789") for _ in range(11))


def _random_gold(rng: random.Random) -> str:
    s = "".join(rng.choice(RANDOM_GOLD_CHARS) for _ in range(rng.randint(1, 12))).strip()
    s = re.sub(r"\d{7,}", "7", s) or "q"  # fewer than 12 digits in all
    return s if sum(c.isdigit() for c in s) < 12 else "q"


def generate_cases(seed: int = 0) -> list[tuple[str, str, str, bool]]:
    """(class, response, gold, the authors' verdict) for every class of the issue and the note."""
    rng = random.Random(seed)
    golds = [g for g in dict.fromkeys(_golds()) if _usable(g)]  # each distinct answer once
    integers = [g for g in golds if g.isdigit()]
    randoms = [_random_gold(rng) for _ in range(100)]
    cases: list[tuple[str, str, str, bool]] = []

    def add(kind: str, response: str, gold: str, verdict: bool) -> None:
        cases.append((kind, response, gold, verdict))

    def pre() -> str:  # reasoning before the answer: long, so the tail cut matters
        return _filler(rng, 0, 900)

    def post() -> str:  # a short closing after the answer, inside the tail
        return _filler(rng, 0, 120)

    for g in golds + randoms:
        box, wrong = f"\\boxed{{{g}}}", _wrong(rng)
        label, sep = rng.choice(ANSWER_LABELS), rng.choice(["", " ", "  ", "\t", " \t"])
        # the box
        add("box correct", pre() + box + post(), g, True)
        add("box wrong, no Answer line", pre() + f"\\boxed{{{wrong}}}" + post(), g, False)
        add("last box counts", pre() + box + _filler(rng, 1, 40) + f"\\boxed{{{wrong}}}" + post(), g, False)
        add("last box counts", pre() + f"\\boxed{{{wrong}}}" + _filler(rng, 1, 40) + box + post(), g, True)
        add("box unclosed", pre() + "\\boxed{" + g.replace("}", "") + post(), g, False)
        add("not a box", pre() + rng.choice(["\\fbox{", "\\boxed ", "boxed{", "\\Boxed{"]) + g + "}" + post(), g, False)
        add("nothing to extract", pre() + g + post(), g, False)
        # the Answer: line, same line only (class a)
        add("Answer: same line", pre() + "\n" + label + sep + g + "\n" + post(), g, True)
        add("Answer: at the very end", pre() + "\n" + label + sep + g, g, True)
        add("Answer: next line (a)", pre() + "\n" + label + "\n" + g + "\n" + post(), g, False)
        add("Answer: next line (a)", pre() + "\n" + label + sep + "\n\n" + g + post(), g, False)
        add("Answer: last line counts", pre() + f"\nAnswer: {wrong}\n" + post() + f"\nAnswer: {g}\n", g, True)
        add("Answer: last line counts", pre() + f"\nAnswer: {g}\n" + post() + f"\nAnswer: {wrong}\n", g, False)
        # the fallback whenever the box is not correct (class b)
        add("wrong box, correct Answer (b)", pre() + f"\\boxed{{{wrong}}}\n" + post() + f"\nAnswer: {g}", g, True)
        add("correct Answer, then wrong box (b)", pre() + f"\nAnswer: {g}\n" + post() + f"\\boxed{{{wrong}}}", g, True)
        add("correct box, wrong Answer", pre() + box + "\n" + post() + f"\nAnswer: {wrong}\n", g, True)
        add("wrong box, wrong Answer", pre() + f"\\boxed{{{wrong}}}\n" + f"Answer: {_wrong(rng)}\n" + post(), g, False)
        add("wrong box, Answer next line (a, b)", pre() + f"\\boxed{{{wrong}}}\nAnswer:\n{g}\n", g, False)
        # markdown bold (class c)
        add("bold Answer (c)", pre() + "\n" + rng.choice(BOLD_FORMS).format(g=g) + "\n" + post(), g, True)
        add("bold Answer after a wrong box (b, c)", pre() + f"\\boxed{{{wrong}}}\n**Answer:** {g}", g, True)
        # the last 500 characters
        tail = _filler(rng, 0, 60)
        cut = "\n" + _filler(rng, 499 - len(box) - len(tail), 499 - len(box) - len(tail))
        at_500 = box + tail + cut  # exactly 500 characters from the box's backslash to the end
        add("box starts 500 from the end", pre() + at_500, g, True)
        add("box starts 501 from the end", pre() + "\\boxed{" + g + "}" + tail + cut + " ", g, False)
        line = f"Answer: {g}\n"
        n = 500 - len(line)
        add("Answer starts 500 from the end", pre() + "\n" + line + _filler(rng, n, n), g, True)
        add("Answer starts 501 from the end", pre() + "\n" + line + _filler(rng, n + 1, n + 1), g, False)
        add("box outside the tail, Answer inside", box + "\n" + _filler(rng, 520, 700) + f"\nAnswer: {g}", g, True)
        # random strings: noise around the answer cannot move the verdict
        noise = "".join(rng.choices(NOISE_CHARS, k=rng.randint(0, 400)))
        add("random noise, correct box", noise + box + _filler(rng, 0, 60), g, True)
        add("random noise only", noise, g, False)

    for g in integers:
        for unit in REMOVED_UNITS:
            add("unit removed (d)", pre() + f"\\boxed{{{g} {unit}}}" + post(), g, True)
        for unit in KEPT_UNITS:
            add("unit kept (d)", pre() + f"\\boxed{{{g} {unit}}}" + post(), g, False)
            add("unit kept in an Answer line (d)", pre() + f"\nAnswer: {g} {unit}\n", g, False)
        # the note's normalisations, on integer answers
        big = f"{int(g) * 1000 + 7:,}"
        add("normalised: after the last =", pre() + f"\\boxed{{x = {g}}}" + post(), g, True)
        add("normalised: dollars and text", pre() + f"\\boxed{{\\${g}}}" + post(), g, True)
        add("normalised: dollars and text", pre() + f"\\boxed{{\\text{{{g}}}}}" + post(), g, True)
        add("normalised: math mode", pre() + f"\\boxed{{${g}$}}" + post(), g, True)
        add("normalised: thousands commas", pre() + f"\\boxed{{{big}}}" + post(), big.replace(",", ""), True)
        add("not normalised: decimal", pre() + f"\\boxed{{{g}.0}}" + post(), g, False)
    for a in range(1, 10):
        for b in range(1, 10):
            add("normalised: fracab", pre() + f"\\boxed{{\\frac{a}{b}}}" + post(), f"\\frac{{{a}}}{{{b}}}", True)
            add("not normalised: dfrac", pre() + f"\\boxed{{\\dfrac{{{a}}}{{{b}}}}}" + post(), f"\\frac{{{a}}}{{{b}}}", False)
        add("normalised: sqrtX", pre() + f"\\boxed{{2\\sqrt{a}}}" + post(), f"2\\sqrt{{{a}}}", True)
    return cases


@pytest.fixture(scope="module")
def cases():
    return generate_cases()


def test_the_cases_cover_every_class(cases):
    kinds = Counter(kind for kind, *_ in cases)
    assert len(cases) >= 2000
    for needed in ("(a)", "(b)", "(c)", "(d)", "500 from the end", "501 from the end", "random noise"):
        assert sum(n for k, n in kinds.items() if needed in k) >= 100, needed
    verdicts = Counter(v for *_, v in cases)
    assert verdicts[True] >= 1000 and verdicts[False] >= 1000


def test_boxed_scorer_agrees_with_the_authors_verdict_on_every_case(cases):
    disagree = [(kind, response[-120:], gold) for kind, response, gold, want in cases if boxed_judge(response, gold)[0] != want]
    agreement = 1 - len(disagree) / len(cases)
    assert not disagree, f"agreement {agreement:.2%} on {len(cases)} cases; first: {disagree[:5]}"


def test_the_verifier_scores_one_or_zero_on_the_same_cases(cases):
    """What the trainer calls: 1 correct, 0 otherwise (mapped to ``reward.incorrect_reward``, -1 in the paper)."""
    kept = cases[::7]
    got = Verifier("boxed").correctness([r for _, r, _, _ in kept], [g for _, _, g, _ in kept])
    assert got == [1.0 if want else 0.0 for *_, want in kept]


@pytest.mark.parametrize(
    "response,gold,verdict",
    [
        ("Answer:\n204", "204", False),  # (a) the answer on the next line
        ("\\boxed{203}\nAnswer: 204", "204", True),  # (b) a wrong box, then a correct Answer line
        ("**Answer:** 204", "204", True),  # (c) bold
        ("\\boxed{204 ft}", "204", False),  # (d) ft is not removed
        ("\\boxed{204 feet}", "204", True),
    ],
)
def test_the_four_classes_of_the_issue(response, gold, verdict):
    assert boxed_judge(response, gold)[0] is verdict
