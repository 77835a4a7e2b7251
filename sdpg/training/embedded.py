"""The built-in verifiable tasks and tiny models: what runs with no downloads.

Two tasks (``model.embedded.task``), each with its own training source, held-out evaluation sets and
base model; docs/tasks.md compares them.

``sum`` (source ``embedded``): add three numbers with a worked solution, one running sum per step:
    problem   ``47+18+36``
    solution  ``47+18=65;65+36=101;#101``
Any order of the additions is a valid path (``18+36=54;54+47=101;#101`` is also correct), and the
verifier reads only the final ``#answer``. The privileged teacher sees the reference solution (one
path, left to right) and/or the answer, so its distribution differs from the student's at every
intermediate sum and at the choice of path, not only at the final answer. Much of what the
teacher adds here is *style* (which order), which the verifier does not reward.

``chain`` (source ``embedded_chain``): add four two-digit numbers strictly left to right:
    problem   ``47+18+36+25``
    solution  ``47+18=65;65+36=101;101+25=126;#126``
There is one canonical path: the student is pre-trained only on it, so what the teacher's reference
solution adds is the correct intermediate sums -- the steps where the student errs -- not style.

Models: a Qwen3 architecture from a config (about 0.8 M parameters), a character tokenizer built
locally, pre-trained deterministically on worked solutions (student prompts in random orders of
addition for ``sum``, the canonical one for ``chain``; teacher prompts with each kind of privileged
context). The default recipe's model of each task ships with the package (``assets/embedded``,
``assets/embedded_chain``, 3 MB each) and is copied into ``$SDPG_CACHE`` (default
``~/.cache/sdpg``) on first use; any other recipe is built there once, named by a hash of its recipe.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sdpg import fsio
from sdpg.paths import PACKAGE_ROOT, cache_root
from sdpg.training.errors import ConfigError
from sdpg.training.locks import file_lock
from sdpg.training.recipe import TASK_TARGET_ACCURACY, TASKS, EmbeddedModelConfig, Task

__all__ = ["TASKS", "TASK_TARGET_ACCURACY", "Task"]  # the task facts live in sdpg.training.recipe

RECIPE_VERSION = 4
"""4: the build's stop rule reads a split of its own (:func:`stop_rows`), not the evaluation problems."""
BUILD_THREADS = 1
"""Intra-op threads of every build. The thread count changes the order of floating-point sums
(a 40-step build gives different weights on 1, 2 and 3 threads), so it is fixed, not taken from the
machine: with it the same recipe on the same torch version and CPU kind gives the same bytes."""

ALPHABET = list("0123456789+=;#:QASH\n")
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]

# Prompt templates of the embedded task (the same strings as configs/embedded.yaml).
STUDENT_TEMPLATE = "Q:{problem}\nA:"
TEACHER_TEMPLATE = "Q:{problem}\n{context}\nA:"
CONTEXT_TEMPLATES = {"answer": "H:{answer}", "solution": "S:{solution}", "answer_solution": "S:{solution}\nH:{answer}"}

TASK_SOURCE = {"sum": "embedded", "chain": "embedded_chain"}
"""Training source (``data.train``) of each task; its evaluation sets are ``<source>:<set>``."""
SOURCE_TASK = {v: k for k, v in TASK_SOURCE.items()}
TASK_TERMS = {"sum": 3, "chain": 4}
"""Two-digit terms per training problem."""
TASK_CHECK_TOKENS = {"sum": 32, "chain": 48}
"""Response cap of the build's accuracy checks (the reference solutions need 26 and 38 tokens)."""
TASK_CHECK_EVERY = {"sum": 50, "chain": 25}
"""Steps between the build's accuracy checks: ``chain`` checks more often to stop closer to its target."""
TASK_TEACHER_TARGET = {"sum": None, "chain": 0.9}
"""``chain`` also waits, at each check, for the teacher prompt with the reference solution to reach
this sampled pass@1: its premise is a teacher that knows the steps the student gets wrong."""
_SPLIT_SEEDS = {
    "sum": {"train": 11, "test": 22, "pretrain": 33, "stop": 66},
    "chain": {"train": 111, "test": 122, "pretrain": 133, "stop": 166},
}


def task_of_source(source: str) -> str | None:
    """The task of a built-in source (``embedded``, ``embedded_chain`` or either's ``:<set>``), else None."""
    return SOURCE_TASK.get(source.split(":", 1)[0])


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


def solve(operands: list[int]) -> str:
    """Worked solution adding ``operands`` in the given order."""
    steps, acc = [], operands[0]
    for x in operands[1:]:
        steps.append(f"{acc}+{x}={acc + x}")
        acc += x
    return ";".join(steps) + f";#{acc}"


def corrupt_solution(operands: list[int], rng: random.Random) -> str:
    """The worked solution with exactly one intermediate running sum wrong by 1-9 (the wrong value carried
    into the next step as its left operand, as a real slip would be), the final answer kept: the working no
    longer supports the answer it states."""
    sums = [operands[0]]
    for x in operands[1:]:
        sums.append(sums[-1] + x)  # sums[k]: the running sum after k additions; sums[-1] is the answer
    wrong = list(sums)
    i = rng.randrange(1, len(sums) - 1)  # an intermediate sum, never the first operand or the answer
    wrong[i] += rng.choice([d for d in range(-9, 10) if d])
    steps = [f"{wrong[k - 1]}+{x}={wrong[k]}" for k, x in enumerate(operands[1:], start=1)]
    return ";".join(steps) + f";#{sums[-1]}"


def add_control_contexts(rows: list[dict], seed: int) -> list[dict]:
    """Every row gains the negative-control contexts of the context-type study, deterministic in ``seed``:
    ``solution_corrupted`` (:func:`corrupt_solution`) and ``solution_shuffled`` (another row's reference
    solution: the distinct problems along a seeded cycle, so no row gets its own problem's). Select one as the teacher's
    solution with ``data.solution_key``."""
    rng = random.Random(seed)
    for r in rows:
        r["solution_corrupted"] = corrupt_solution([int(x) for x in r["problem"].split("+")], rng)
    problems = sorted({r["problem"] for r in rows})  # distinct problems (the training split repeats some)
    rng.shuffle(problems)
    solution_of = {r["problem"]: r["solution"] for r in rows}
    after = dict(zip(problems, problems[1:] + problems[:1]))
    for r in rows:
        r["solution_shuffled"] = solution_of[after[r["problem"]]]
    return rows


CONTROL_SOLUTION_KEYS = ("solution_corrupted", "solution_shuffled")
"""The negative-control fields of every built-in training and test row (:func:`add_control_contexts`)."""


def make_row(rng: random.Random, terms: int = 3) -> dict:
    ops = [rng.randint(10, 99) for _ in range(terms)]
    return {"problem": "+".join(map(str, ops)), "answer": str(sum(ops)), "solution": solve(ops)}


def make_rows(n: int, split: str, task: str = "sum") -> list[dict]:
    """``n`` problems of a split of ``task``; the train (and pretrain) splits share no problem with the
    first 500 of the test split. Each call gets rows of its own (made once per process: a run reads its
    training rows twice, for the data and for the length check)."""
    return [dict(r) for r in _made_rows(n, split, task)]


@functools.cache
def _made_rows(n: int, split: str, task: str) -> tuple[dict, ...]:
    seeds, terms = _SPLIT_SEEDS[task], TASK_TERMS[task]
    rng = random.Random(seeds[split])
    test = set()
    if split != "test":
        r2 = random.Random(seeds["test"])
        test = {make_row(r2, terms)["problem"] for _ in range(500)}
    rows: list[dict] = []
    seen: set[str] = set()
    while len(rows) < n:
        row = make_row(rng, terms)
        if row["problem"] in test or (split == "test" and row["problem"] in seen):
            continue
        seen.add(row["problem"])
        rows.append(row)
    return tuple(add_control_contexts(rows, seeds[split] * 7919 + n) if n > 1 else rows)


def train_rows(n: int = 20000, task: str = "sum") -> list[dict]:
    return make_rows(n, "train", task)


def test_rows(n: int = 200, task: str = "sum") -> list[dict]:
    return make_rows(n, "test", task)


STOP_PROBLEMS = 64
"""Problems of the build's stop rule (each sampled 4 times)."""


def stop_rows(n: int = STOP_PROBLEMS, task: str = "sum") -> list[dict]:
    """The problems the base-model build's stop rule checks: a split of their own, shaped as the
    in-distribution set but sharing no problem with any evaluation set, so that the start accuracy of RL is
    not chosen on the problems RL's evaluation reports (a build that stops when a noisy check first reaches
    its target sits on a favourable draw of exactly those problems; later evaluations then regress)."""
    return make_rows(n, "stop", task)


# --------------------------------------------------------------------------------------------
# Held-out evaluation sets of graded difficulty
# --------------------------------------------------------------------------------------------

EVAL_SETS: dict[str, dict] = {
    "in_distribution": {"terms": 3, "low": 10, "high": 99, "seed": 22},
    "more_terms": {"terms": 4, "low": 10, "high": 99, "seed": 44},
    "larger_numbers": {"terms": 3, "low": 10, "high": 199, "seed": 55},
}
"""The built-in task family's benchmarks, named ``embedded:<name>`` in ``data.eval`` (three panels, as the
paper has AIME24 / AIME25 / AMC23). ``in_distribution``: the held-out test split (three two-digit terms,
as in training; the same rows as ``embedded``). ``more_terms``: four two-digit terms, one more running sum
than training ever shows. ``larger_numbers``: three terms up to 199, at least one of them three-digit
(training never shows a three-digit operand). The last two share no problem with training by
construction; every set has :data:`EVAL_SET_SIZE` distinct problems, the same on every machine."""

CHAIN_EVAL_SETS: dict[str, dict] = {
    "in_distribution": {"terms": 4, "low": 10, "high": 99, "seed": 122},
    "more_terms": {"terms": 5, "low": 10, "high": 99, "seed": 144},
    "larger_numbers": {"terms": 4, "low": 10, "high": 199, "seed": 155},
}
"""The ``chain`` task's benchmarks, named ``embedded_chain:<name>``, graded as :data:`EVAL_SETS`:
``in_distribution`` is its held-out test split (four two-digit terms), ``more_terms`` five two-digit
terms, ``larger_numbers`` four terms up to 199 with at least one three-digit."""

TASK_EVAL_SETS = {"sum": EVAL_SETS, "chain": CHAIN_EVAL_SETS}

EVAL_SET_SIZE = 200


def eval_rows(name: str, n: int = EVAL_SET_SIZE, task: str = "sum") -> list[dict]:
    """The first ``n`` problems of ``task``'s built-in evaluation set ``name`` (a key of its
    :data:`TASK_EVAL_SETS`)."""
    if name == "in_distribution":
        return test_rows(n, task)
    spec = TASK_EVAL_SETS[task][name]
    rng = random.Random(spec["seed"])
    rows: list[dict] = []
    seen: set[str] = set()
    while len(rows) < n:
        ops = [rng.randint(spec["low"], spec["high"]) for _ in range(spec["terms"])]
        problem = "+".join(map(str, ops))
        if problem in seen or (spec["high"] >= 100 and max(ops) < 100):
            continue
        seen.add(problem)
        rows.append({"problem": problem, "answer": str(sum(ops)), "solution": solve(ops)})
    return rows


@functools.cache
def eval_set_response_tokens(name: str, task: str = "sum") -> int:
    """Tokens of the longest reference solution of ``task``'s set ``name`` with its stop token: the
    least ``eval.max_new_tokens`` that lets every problem be answered (one character per token)."""
    return max(len(r["solution"]) for r in eval_rows(name, task=task)) + 1


@functools.cache
def train_response_tokens(task: str = "sum") -> tuple[int, ...]:
    """Tokens of the reference solution of each of ``task``'s training rows with its stop token,
    ascending: the last is the least ``rollout.max_new_tokens`` that lets every training problem be
    answered."""
    return tuple(sorted(len(r["solution"]) + 1 for r in train_rows(task=task)))


def builtin_sets(task: str) -> list[str]:
    """The ``data.eval`` sources of ``task``'s evaluation sets."""
    return [f"{TASK_SOURCE[task]}:{k}" for k in TASK_EVAL_SETS[task]]


def rows_of(source: str, split: str) -> list[dict]:
    """Rows of a built-in source: ``embedded`` / ``embedded_chain`` (its train or test split) or
    ``<source>:<set>`` (an evaluation set; held out, so never a training source)."""
    task = task_of_source(source)
    if source in SOURCE_TASK:
        known = SOURCE_TASK[source]
        return train_rows(task=known) if split == "train" else test_rows(task=known)
    name = source.split(":", 1)[1]
    sets = TASK_EVAL_SETS.get(task, {}) if task is not None else {}
    if task is None or split == "train" or name not in sets:
        base = TASK_SOURCE.get(task, "embedded") if task is not None else "embedded"
        why = f"is held out for evaluation; train on {base!r}" if name in sets else "is not a built-in set"
        raise ConfigError(f"data source {source!r} {why} (sets: {', '.join(builtin_sets(task or 'sum'))})")
    return eval_rows(name, task=task)


def exact_answer(response: str) -> str | None:
    """The text after the last ``#``, or None."""
    if "#" not in response:
        return None
    return response.rsplit("#", 1)[1].strip()


# --------------------------------------------------------------------------------------------
# Tokenizer and model
# --------------------------------------------------------------------------------------------


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + ALPHABET)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def build_model(recipe, tokenizer):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(  # type: ignore[call-arg]  # rope_theta: not in the stubs of newer transformers
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=3 * recipe.hidden_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=max(1, recipe.num_heads // 2),
        head_dim=recipe.hidden_size // recipe.num_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0,
    )
    torch.manual_seed(recipe.seed)
    return Qwen3ForCausalLM(cfg)


def recipe_hash(recipe) -> str:
    """Names the built model: the recipe, the code's version and the build's thread count."""
    blob = json.dumps({"v": RECIPE_VERSION, "threads": BUILD_THREADS, **recipe.model_dump()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def pretrain_examples(rng: random.Random, row: dict, task: str = "sum") -> list[tuple[str, str]]:
    """(prompt, response) pairs for one problem: the student in a random order of addition (``sum``)
    or the canonical left-to-right one (``chain``), and the teacher with each kind of context,
    answering with the reference solution."""
    if task == "sum":
        ops = [int(x) for x in row["problem"].split("+")]
        shuffled = ops[:]
        rng.shuffle(shuffled)
        out = [(STUDENT_TEMPLATE.format(problem=row["problem"]), solve(shuffled))]
    else:
        out = [(STUDENT_TEMPLATE.format(problem=row["problem"]), row["solution"])]
    kind = rng.choice(list(CONTEXT_TEMPLATES))
    ctx = CONTEXT_TEMPLATES[kind].format(**row)
    out.append((TEACHER_TEMPLATE.format(problem=row["problem"], context=ctx), row["solution"]))
    return out


def _pretrain(model, tokenizer, recipe, log=print) -> dict:
    import torch

    g = torch.Generator().manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    task = recipe.task
    rows = make_rows(max(4096, recipe.pretrain_steps * recipe.pretrain_batch // 2), "pretrain", task)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.pretrain_lr, weight_decay=0.01, betas=(0.9, 0.98))
    steps = recipe.pretrain_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps))))
    )
    eos = tokenizer.eos_token_id
    model.train()
    t0, last = time.time(), 0.0
    log(
        f"[embedded] pre-training until student pass@1 >= {recipe.target_accuracy:.2f} "
        f"(checked every {TASK_CHECK_EVERY[task]} steps; at most {steps} steps)"
    )
    step = -1
    for step in range(steps):
        pairs: list[tuple[str, str]] = []
        while len(pairs) < recipe.pretrain_batch:
            pairs += pretrain_examples(rng, rows[int(torch.randint(len(rows), (1,), generator=g))], task)
        ids, labels = [], []
        for prompt, resp in pairs[: recipe.pretrain_batch]:
            p = tokenizer.encode(prompt, add_special_tokens=False)
            r = tokenizer.encode(resp, add_special_tokens=False) + [eos]
            ids.append(p + r)
            labels.append([-100] * len(p) + r)
        L = max(map(len, ids))
        input_ids = torch.tensor([x + [tokenizer.pad_token_id] * (L - len(x)) for x in ids])  # [b, L]
        lab = torch.tensor([y + [-100] * (L - len(y)) for y in labels])  # [b, L]
        attn = (torch.arange(L)[None] < torch.tensor([len(x) for x in ids])[:, None]).long()  # [b, L]
        loss = model(input_ids=input_ids, attention_mask=attn, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        last = float(loss.detach())
        if (step + 1) % TASK_CHECK_EVERY[task] == 0 and step + 1 >= 100:
            acc = student_accuracy(model, tokenizer, task=task)
            extra, teacher_ok = "", True
            teacher_target = TASK_TEACHER_TARGET[task]
            if teacher_target is not None:
                t_acc = sampled_accuracy(model, tokenizer, task, "solution")
                teacher_ok = t_acc >= teacher_target
                extra = f", teacher (solution) pass@1 {t_acc:.3f} of {teacher_target:.2f}"
            model.train()
            log(
                f"[embedded] pre-training step {step + 1}: loss {last:.4f}, pass@1 {acc:.3f} of "
                f"{recipe.target_accuracy:.2f}{extra} ({time.time() - t0:.0f}s)"
            )
            if acc >= recipe.target_accuracy and teacher_ok:
                break
    model.eval()
    acc = student_accuracy(model, tokenizer, task=task)
    out = {"pretrain_loss": last, "pretrain_seconds": time.time() - t0, "pretrain_steps_done": step + 1, "student_accuracy": acc}
    # for the documentation only: the same check on the evaluation set's first problems (never a stop criterion)
    out["eval_accuracy"] = student_accuracy(model, tokenizer, task=task, split="test")
    if task != "sum":  # recorded for the task's documentation; the sum model's record stays as shipped
        out["teacher_accuracy"] = sampled_accuracy(model, tokenizer, task, "solution")
    return out


def student_accuracy(
    model, tokenizer, n_problems: int = STOP_PROBLEMS, samples: int = 4, task: str = "sum", split: str = "stop"
) -> float:
    """Sampled (temperature 1) pass@1 of the student prompt on the stop rule's problems of ``task`` (``split``
    "test": the first problems of the in-distribution evaluation set instead), with its own seeded generator
    state so that checking does not perturb the build."""
    return sampled_accuracy(model, tokenizer, task, None, n_problems, samples, split)


def sampled_accuracy(
    model,
    tokenizer,
    task: str = "sum",
    context: str | None = None,
    n_problems: int = STOP_PROBLEMS,
    samples: int = 4,
    split: str = "stop",
) -> float:
    """Sampled (temperature 1) pass@1 on the first ``n_problems`` problems of ``task``'s ``split`` ("stop":
    :func:`stop_rows`; "test": the in-distribution evaluation set): of the student prompt (``context`` None)
    or of the teacher prompt with a kind of :data:`CONTEXT_TEMPLATES`.
    Seeded (0) and restoring the global generator state, so that checking does not perturb a build."""
    import torch

    from sdpg.training.rollout import HFRollout

    state = torch.get_rng_state()
    torch.manual_seed(0)
    rows = stop_rows(n_problems, task) if split == "stop" else test_rows(n_problems, task)
    if context is None:
        texts_in = [STUDENT_TEMPLATE.format(**r) for r in rows]
    else:
        texts_in = [TEACHER_TEMPLATE.format(problem=r["problem"], context=CONTEXT_TEMPLATES[context].format(**r)) for r in rows]
    prompts = [tokenizer.encode(t, add_special_tokens=False) for t in texts_in]
    ro = HFRollout(model, tokenizer, batch_size=512).generate(
        prompts, samples, temperature=1.0, max_new_tokens=TASK_CHECK_TOKENS[task]
    )
    texts = tokenizer.batch_decode(ro.responses, skip_special_tokens=True)
    ok = [exact_answer(t) == r["answer"] for t, r in zip(texts, [r for r in rows for _ in range(samples)])]
    torch.set_rng_state(state)
    return sum(ok) / len(ok)


# --------------------------------------------------------------------------------------------
# The shipped copy, the build, and the cache
# --------------------------------------------------------------------------------------------

SHIPPED_DIR = PACKAGE_ROOT / "training" / "assets" / "embedded"
"""The ``sum`` task's default recipe's model as built by :func:`build_embedded_model`, shipped inside the package
(package data) so that no machine has to build it; ``sdpg_recipe.json`` beside the weights records
the recipe, its hash and the build environment. Refresh it with ``python -m sdpg.training.embedded ship``."""


def shipped_dir(task: str = "sum") -> Path:
    """Where the package carries ``task``'s default model (``assets/embedded``, ``assets/embedded_chain``)."""
    return SHIPPED_DIR if task == "sum" else SHIPPED_DIR.with_name(f"embedded_{task}")


def build_environment() -> dict:
    """What besides the recipe decides the built bytes: recorded with every build."""
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": BUILD_THREADS,
    }


def shipped_recipe(task: str = "sum") -> dict | None:
    """``task``'s shipped model's ``sdpg_recipe.json`` (recipe, ``recipe_hash``, build statistics), or
    None when the package carries no model."""
    meta = shipped_dir(task) / "sdpg_recipe.json"
    if not (meta.is_file() and (shipped_dir(task) / "model.safetensors").is_file()):
        return None
    return json.loads(meta.read_text())


def build_embedded_model(recipe, out: Path, log=print) -> dict:
    """Build the model of ``recipe`` into the folder ``out`` (created; not atomic) on
    :data:`BUILD_THREADS` threads; returns what ``sdpg_recipe.json`` records."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        tokenizer = build_tokenizer()
        model = build_model(recipe, tokenizer)
        stats = _pretrain(model, tokenizer, recipe, log)
    finally:
        torch.set_num_threads(threads)
    fsio.ensure_dir(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {
        "version": RECIPE_VERSION,
        "recipe_hash": recipe_hash(recipe),
        **recipe.model_dump(),
        **stats,
        "build": build_environment(),
    }
    fsio.write_json(out / "sdpg_recipe.json", meta, indent=1)
    return meta


def _file_lock(path: Path, on_wait: Callable[[], None] | None = None):
    """The cache's build lock (``sdpg.training.locks.file_lock``, never through a link), its folder made first."""
    fsio.ensure_dir(path.parent)
    return file_lock(path, on_wait=on_wait)


def ensure_embedded_model(recipe, log=None) -> Path:
    """The folder of the built-in model for ``recipe`` in the cache (``$SDPG_CACHE/embedded-<hash>``).

    The default recipe's model ships with the package: on first use it is copied into the cache
    (a few MB, well under a second). Any other recipe is built once per machine and cached. One
    writer at a time across processes (a file lock; others say that they wait); the folder appears
    atomically when complete."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    root = cache_root()
    h = recipe_hash(recipe)
    target = root / f"embedded-{h}"
    if (target / "sdpg_recipe.json").is_file():
        return target
    shipped = shipped_recipe(recipe.task)
    from_package = shipped is not None and shipped.get("recipe_hash") == h
    what = "copy of the shipped base model" if from_package else "base-model build"

    def waiting():
        log(f"[embedded] waiting for another process's {what} (recipe {h})")

    with _file_lock(root / f".embedded-{h}.lock", on_wait=waiting):
        if (target / "sdpg_recipe.json").is_file():
            return target
        tmp = root / f".tmp-{target.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        if from_package:
            shutil.copytree(shipped_dir(recipe.task), tmp)
        else:
            log(f"[embedded] building the base model for recipe {h} (once; other runs wait for it)")
            t0 = time.time()
            build_embedded_model(recipe, tmp, log)
            log(f"[embedded] base model ready ({time.time() - t0:.0f}s) in {target}")
        os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m sdpg.training.embedded [ensure|build OUT|ship [--from DIR]] [--task sum|chain]``.

    ``ensure`` (default): put the task's default model into the cache, print its folder (scripts/test.sh
    runs it before the tests). ``build OUT``: build the task's default recipe into OUT (progress on
    stdout). ``ship``: refresh the copy shipped with the package, by building, or ``--from DIR`` by taking
    a finished build of the same recipe (its recorded recipe hash is checked)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m sdpg.training.embedded", description=main.__doc__)
    ap.add_argument("command", nargs="?", default="ensure", choices=["ensure", "build", "ship"])
    ap.add_argument("out", nargs="?", help="output folder of `build`")
    ap.add_argument("--from", dest="src", help="`ship`: a finished build folder of the default recipe")
    ap.add_argument("--task", default="sum", choices=TASKS, help="which built-in task's model (default sum)")
    a = ap.parse_args(argv)
    recipe = EmbeddedModelConfig(task=a.task)
    h = recipe_hash(recipe)
    if a.command == "ensure":
        print(ensure_embedded_model(recipe))
        return 0
    if a.command == "build":
        if not a.out:
            ap.error("build needs an output folder")
        build_embedded_model(recipe, Path(a.out), log=lambda m: print(m, flush=True))
        return 0
    src = Path(a.src) if a.src else None
    if src is None:
        src = Path(tempfile.mkdtemp(prefix="sdpg-ship-"))
        build_embedded_model(recipe, src)
    meta_path = src / "sdpg_recipe.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    have = meta.get("recipe_hash") or (src.name.removeprefix("embedded-") if src.name.startswith("embedded-") else None)
    if have != h or {k: meta.get(k) for k in recipe.model_dump()} != recipe.model_dump():
        print(f"{meta_path}: recipe_hash {have!r} is not the {a.task} task's default recipe's {h!r}", file=sys.stderr)
        return 2
    meta["recipe_hash"] = h
    meta.setdefault("build", build_environment())
    dest = shipped_dir(a.task)
    shutil.rmtree(dest, ignore_errors=True)
    fsio.ensure_dir(dest)
    for name in sorted(os.listdir(src)):
        if name != "sdpg_recipe.json" and (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    fsio.write_text(dest / "sdpg_recipe.json", json.dumps(meta, indent=1) + "\n")
    print(f"shipped recipe {h} from {src} into {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
