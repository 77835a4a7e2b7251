"""Text normalisation, stable row ids, n-grams and answer formats: the one definition of "the same problem".

Normalisation (ids, exact duplicates, exact contamination): Unicode NFKC, instruction wrappers of known
datasets removed (DAPO's ``Answer:`` instruction, the SDPG Fig. 4 student prompt, MATH-500's "Please reason
step by step" line), TeX spacing and ``\\left`` / ``\\right`` / ``$`` dropped, lower case, runs of white space
made one space. Word n-grams are taken over the normalised text's runs of letters and digits (``47+18`` is two words,
``\\frac{1}{2}`` three), as in the usual 13-word contamination check.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# Instruction wrappers around the question in widely used datasets: (name, prefix regex, suffix regex).
WRAPPERS: tuple[tuple[str, str, str], ...] = (
    (
        "dapo_answer_line",
        r"^\s*Solve the following math problem step by step\. The last line of your response should be of the form "
        r"Answer: \$Answer \(without quotes\) where \$Answer is the answer to the problem\.\s*",
        r"\s*Remember to put your answer on its own line after \"Answer:\"\.?\s*$",
    ),
    (
        "sdpg_fig4",
        r"^\s*Solve the following math problem step by step\. Present your final answer inside \\boxed\{\}, "
        r"for example \\boxed\{42\}\.\s*",
        r"\s*Remember to put your final answer inside \\boxed\{\}\.?\s*$",
    ),
    ("reason_step_by_step", r"", r"\s*Please reason step by step, and put your final answer within \\boxed\{\}\.?\s*$"),
)


def unwrap(problem: str) -> tuple[str, str | None]:
    """The question without known instruction wrappers (nested ones too), and the outermost one's name (None when
    there was none)."""
    inner, name = _unwrap_once(problem)
    while name is not None:
        inner, more = _unwrap_once(inner)
        if more is None:
            break
    return inner, name


def _unwrap_once(problem: str) -> tuple[str, str | None]:
    for name, prefix, suffix in WRAPPERS:
        # case and white space inside the wrapper do not matter
        m_pre = re.search(prefix.replace(" ", r"\s+"), problem, re.I) if prefix else None
        m_suf = re.search(suffix.replace(" ", r"\s+"), problem, re.I)
        if (prefix and m_pre is None) or m_suf is None:
            continue
        start = m_pre.end() if m_pre else 0
        inner = problem[start : m_suf.start()]
        if inner.strip():
            return inner.strip(), name
    return problem, None


_TEX_NOISE = re.compile(r"\\left|\\right|\\[,;:! ]|\\quad|\\qquad|\$|\\displaystyle|\\dfrac|\\tfrac")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """The comparison form of a problem (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text)
    text = unwrap(text)[0]
    text = _TEX_NOISE.sub(lambda m: "\\frac" if m.group(0) in ("\\dfrac", "\\tfrac") else " ", text)
    text = _SPACE.sub(" ", text.lower()).strip()
    return text.rstrip(" .")


def row_id(problem: str) -> str:
    """Stable id of a row: the first 16 hex digits of SHA-256 of the normalised problem."""
    return hashlib.sha256(normalise(problem).encode("utf-8")).hexdigest()[:16]


_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


def words(normalised: str) -> list[str]:
    """Comparison words of a normalised text: its runs of letters and digits (TeX commands count by name)."""
    return _TOKEN.findall(normalised)


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    """The set of word n-grams; a text shorter than n gives one gram, the whole text."""
    if not tokens:
        return set()
    if len(tokens) < n:
        return {tuple(tokens)}
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


# --------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------

ANSWER_KINDS = (
    "integer",
    "decimal",
    "fraction",
    "multiple_choice",
    "tuple_or_interval",
    "list",
    "tex_expression",
    "expression",
    "text",
    "other",
)
"""Answer-format classes of the data card, most specific first."""


def answer_kind(answer: str) -> str:
    a = answer.strip().strip("$").strip()
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+|[-+]?\d+", a):
        return "integer"
    if re.fullmatch(r"[-+]?\d*\.\d+", a):
        return "decimal"
    if re.fullmatch(r"[-+]?\d+\s*/\s*\d+|[-+]?\\[dt]?frac\{?\d+\}?\{?\d+\}?", a):
        return "fraction"
    if re.fullmatch(r"\(?[A-E]\)?", a):
        return "multiple_choice"
    if re.fullmatch(r"[\(\[].*,.*[\)\]]", a):
        return "tuple_or_interval"
    if "\\" in a or "^" in a or "_" in a:
        return "tex_expression"
    if re.fullmatch(r"[^,]+(,[^,]+)+", a):
        return "list"
    if re.fullmatch(r"[A-Za-z]+( [A-Za-z]+)*", a):
        return "text"
    if re.fullmatch(r"[\w\s+\-*/=().<>]+", a):
        return "expression"
    return "other"


def answer_text(value) -> tuple[str | None, str | None]:
    """A source's answer value as text, and how it was converted (``number``, ``list``) or why it is unusable.

    Returns (text, None) for a string, (text, "number") / (text, "list") after a conversion, and
    (None, reason) for a value that cannot be an answer (missing, empty, a nested structure, a boolean)."""
    if value is None:
        return None, "no answer"
    if isinstance(value, bool):
        return None, f"answer is a boolean ({value})"
    if isinstance(value, int):
        return str(value), "number"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None, f"answer is not finite ({value})"
        return (str(int(value)) if value.is_integer() else repr(value)), "number"
    if isinstance(value, (list, tuple)):
        parts = [None if isinstance(v, (list, tuple, dict)) else answer_text(v)[0] for v in value]
        if not parts or any(p is None or p == "" for p in parts):
            return None, "answer is an empty or nested list"
        return (parts[0], "list") if len(parts) == 1 else (", ".join(parts), "list")
    if isinstance(value, str):
        return (value.strip(), None) if value.strip() else (None, "empty answer")
    return None, f"answer is a {type(value).__name__}"
