"""Verifiers: correct (1) or not (0) per response; the trainer maps 0 to ``reward.incorrect_reward``.

``exact`` reads the text after the last ``#`` (the embedded task). ``math`` takes the last
``\\boxed{...}`` of the response and checks it against the gold answer with HF math-verify (gold
parsed first). math-verify runs in a child process with a hard per-response deadline, so a
pathological response cannot hang a training step, whichever process or thread calls it (its own
timeouts rely on SIGALRM, which works only in a main thread). ``boxed`` is the SDPG authors' string
match, their scripts' reward (+1 / -1 there), equal to their ``compute_score_boxed`` on every input: in the
response's last 500 characters, the last ``\\boxed{}``, and when that is absent or wrong the last
``Answer: X`` line, each normalised as Minerva does (Lewkowycz et al. 2022, app. D) and compared with the
normalised gold answer as strings.
"""

from __future__ import annotations

import multiprocessing as mp
import re
from collections.abc import Sequence

from sdpg.training.embedded import exact_answer

# A boxed answer longer than this is not an answer: scored 0 without parsing.
MAX_BOXED_CHARS = 2000


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched; None if absent
    or unbalanced. Linear in the text's length."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


# --------------------------------------------------------------------------------------------
# The authors' boxed scorer: Minerva's answer normalisation and string equality
# --------------------------------------------------------------------------------------------

# Minerva (arXiv 2206.14858, app. D): plain substitutions, then words and TeX fragments removed, in this order.
# The removed words are the list as the authors' fork has it: ``ft`` is not among them (``204 ft`` is not 204).
MINERVA_SUBSTITUTIONS = (
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    ("\\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
)
MINERVA_REMOVED = (
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "hours",
    "km",
    "units",
    "\\ldots",
    "sue",
    "points",
    "feet",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "gm",
    "pounds",
    "meters",
    "meals",
    "edges",
    "students",
    "childrentickets",
    "multiples",
    "\\text{s}",
    "\\text{.}",
    "\\text{\ns}",
    "\\text{}^2",
    "\\text{}^3",
    "\\text{\n}",
    "\\text{}",
    r"\mathrm{th}",
    r"^\circ",
    r"^{\circ}",
    r"\;",
    r",\!",
    "{,}",
    '"',
    "\\dots",
)
# The ``Answer:`` fallback: case-insensitive, only spaces or tabs around the colon, the value on the same line
# (an answer on the next line does not count).
ANSWER_LINE = re.compile(r"(?i)Answer[ \t]*:[ \t]*([^\n]+)")


def minerva_normalise(answer: str) -> str:
    """Minerva's final-answer normalisation: the part after the last ``=``, fixed substitutions and
    removed unit words, ``\\text{}`` / ``\\textbf{}`` / ``\\overline{}`` / ``\\boxed{}`` unwrapped, ``fracab`` ->
    ``frac{a}{b}``, ``sqrtX`` -> ``sqrt{X}``, ``$`` dropped, thousands commas dropped in numbers."""
    a = answer.split("=")[-1]
    for before, after in MINERVA_SUBSTITUTIONS:
        a = a.replace(before, after)
    for expr in MINERVA_REMOVED:
        a = a.replace(expr, "")
    a = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", a)  # the first $...$ span
    a = re.sub(r"(\\text\{)(.*?)(\})", "\\2", a)
    a = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", a)
    a = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", a)
    a = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", a)
    a = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", a)
    a = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", a)
    a = a.replace("$", "")
    if a.replace(",", "").isdigit():
        a = a.replace(",", "")
    return a.strip()


def last_boxed_strict(text: str) -> str | None:
    """Content of the last literal ``\\boxed{`` ... matching ``}``; None if absent or unclosed (the
    authors' extraction: no ``\\fbox``, no ``\\boxed x``)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    for j in range(start + len("\\boxed"), len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[start + len("\\boxed{") : j]
    return None


def boxed_judge(response: str, gold: str, tail_chars: int = 500) -> tuple[bool, str | None]:
    """The authors' verdict on one response, and the normalised answer it was judged on (None: nothing found).

    Only the last ``tail_chars`` characters are read. The last ``\\boxed{}`` there is tried first; whenever it
    is absent or not correct, the last ``Answer: X`` line there is tried (asterisks around X stripped, so
    ``**Answer:** 204`` counts): a wrong box followed by a correct ``Answer:`` line is correct."""
    tail = response[-tail_chars:]
    want = minerva_normalise(str(gold))
    boxed = last_boxed_strict(tail)
    got = None if boxed is None else minerva_normalise(boxed)
    if got is not None and got == want:
        return True, got
    lines = ANSWER_LINE.findall(tail)
    if lines:
        line = minerva_normalise(lines[-1].strip().strip("*").strip())
        if line == want:
            return True, line
    return False, got


def boxed_reward(response: str, gold: str, tail_chars: int = 500) -> float:
    """1.0 when :func:`boxed_judge` finds the response correct, else 0.0 (the authors' -1:
    ``reward.incorrect_reward``)."""
    return 1.0 if boxed_judge(response, gold, tail_chars)[0] else 0.0


def exact_reward(response: str, answer: str) -> float:
    got = exact_answer(response)
    return 1.0 if got is not None and got == str(answer).strip() else 0.0


def _math_worker(conn) -> None:  # runs in the child process
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns that we time it out ourselves
    from math_verify import parse, verify

    # the parser's and sympy's lazy imports (numbers, sums, symbols) happen now, before any answer is timed
    for given, gold in (("\\frac{1}{2}", "0.5"), ("2+2", "4"), ("x+x", "2x"), ("\\sqrt{2}", "1.41421356")):
        verify(
            parse("\\boxed{" + gold + "}", parsing_timeout=None),
            parse("\\boxed{" + given + "}", parsing_timeout=None),
            timeout_seconds=None,
        )
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        boxed, gold = msg
        try:
            g = parse("\\boxed{" + gold + "}", parsing_timeout=None)
            a = parse("\\boxed{" + boxed + "}", parsing_timeout=None)
            ok = bool(g) and bool(a) and verify(g, a, timeout_seconds=None)
        except Exception:
            ok = False
        conn.send(1.0 if ok else 0.0)


class MathVerifier:
    """math-verify behind a child process; each response gets ``timeout_s`` seconds at most.

    A response that runs past its deadline gets 0 and the child is replaced. A new child imports and warms
    up its parser before any answer is timed (waiting up to ``start_timeout_s``), so a restart after a
    timeout never charges the import to the next answer's deadline."""

    def __init__(self, timeout_s: float = 5.0, start_timeout_s: float = 120.0):
        self.timeout_s, self.start_timeout_s = timeout_s, start_timeout_s
        self._proc = None
        self._conn = None
        self._ready = False
        self.timeouts = 0

    def start(self) -> None:
        """Start the child process if none runs (without waiting for it: it warms up in the background)."""
        if self._proc is not None and self._proc.is_alive():
            return
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_math_worker, args=(child,), daemon=True)
        self._proc.start()
        self._conn, self._ready = parent, False

    def _wait_ready(self) -> None:
        if self._ready:
            return
        try:
            ready = self._conn.poll(self.start_timeout_s) and self._conn.recv() == "ready"
        except (EOFError, OSError):  # the child died while starting
            ready = False
        if not ready:
            self._stop()
            raise RuntimeError(f"the math verifier process did not start within {self.start_timeout_s:.0f} s")
        self._ready = True

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
        self._proc, self._ready = None, False

    def _restart(self) -> None:
        self._stop()
        self.start()
        self._wait_ready()

    def score(self, response: str, gold: str) -> float:
        boxed = last_boxed(response)
        if boxed is None or len(boxed) > MAX_BOXED_CHARS:
            return 0.0
        if "".join(boxed.split()) == "".join(str(gold).split()):
            return 1.0  # the same string: no parser needed
        if self._proc is None or not self._proc.is_alive():
            self.start()
        self._wait_ready()
        self._conn.send((boxed, str(gold)))
        if self._conn.poll(self.timeout_s):
            return float(self._conn.recv())
        self.timeouts += 1
        self._restart()
        return 0.0

    def score_batch(self, responses: Sequence[str], golds: Sequence[str]) -> list[float]:
        return [self.score(r, g) for r, g in zip(responses, golds)]

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(2)
            finally:
                if self._proc.is_alive():
                    self._proc.kill()
                    self._proc.join(5)
        self._proc, self._ready = None, False

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Verifier:
    """The configured verifier, plus DAPO's soft overlong punishment."""

    def __init__(
        self,
        kind: str,
        timeout_s: float = 5.0,
        overlong_buffer: int = 0,
        overlong_penalty: float = 1.0,
        max_new_tokens: int = 0,
        boxed_tail_chars: int = 500,
    ):
        if kind not in ("exact", "math", "boxed"):
            raise ValueError(f"unknown verifier {kind!r}; expected exact, math or boxed")
        self.kind = kind
        self.math = MathVerifier(timeout_s) if kind == "math" else None
        self.boxed_tail_chars = boxed_tail_chars
        if self.math is not None:
            self.math.start()  # warms up while the trainer loads its model
        self.overlong_buffer, self.overlong_penalty, self.max_new_tokens = overlong_buffer, overlong_penalty, max_new_tokens

    def correctness(self, responses: Sequence[str], answers: Sequence[str]) -> list[float]:
        """1.0 or 0.0 per response."""
        if self.kind == "exact":
            return [exact_reward(r, a) for r, a in zip(responses, answers)]
        if self.kind == "boxed":
            return [boxed_reward(r, a, self.boxed_tail_chars) for r, a in zip(responses, answers)]
        return self.math.score_batch(responses, answers)

    def overlong(self, lengths: Sequence[int]) -> list[float]:
        """DAPO (arXiv 2503.14476) eq. 13: 0 up to L_max - buffer, then linear down to -penalty."""
        if self.overlong_buffer <= 0:
            return [0.0] * len(lengths)
        start = self.max_new_tokens - self.overlong_buffer
        return [-self.overlong_penalty * min(1.0, max(0, n - start) / self.overlong_buffer) for n in lengths]

    def close(self) -> None:
        if self.math is not None:
            self.math.close()
