"""The checks before anything runs, each failure one sentence: the batch fits the ranks, every data file is there
and every row parses, the prompts render and fit, the scorer rewards the gold answers written as it expects;
``check_run`` runs them all for one run and returns its scaled config."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdpg import fsio
from sdpg.orchestration import standins
from sdpg.orchestration.rehearse.plan import (
    EVAL_ROWS,
    GOLD_CHECKS,
    TRAIN_ROWS,
    WRONG_ANSWER,
    Context,
    Outcome,
    RunItem,
    _clip,
    _missing_file,
    _prompt_minibatch_keys,
    not_rehearsed,
    one_sentence,
    scaled_layer,
)
from sdpg.training.config import ConfigError, TrainConfig, apply_layer, build_config
from sdpg.training.embedded import SOURCE_TASK, task_of_source


def structure_checks(cfg: TrainConfig, world: int, max_positions: int | None) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the real run's sizes against its ranks and its model."""
    errors, warnings = [], []
    P, G = cfg.rollout.prompts_per_step, cfg.rollout.group_size
    N = P * G
    if P % world:
        errors.append(
            f"rollout.prompts_per_step={P} is not divisible by the {world} ranks of the profile: the trainer stops at start-up"
        )
    mb = cfg.optim.minibatch_size
    if mb is not None:
        if mb > N:
            warnings.append(f"optim.minibatch_size={mb} exceeds the {N} sequences of an RL step: one optimizer step per RL step")
        elif N % mb:
            warnings.append(
                f"optim.minibatch_size={mb} does not divide the {N} sequences of an RL step: "
                f"{math.ceil(N / mb)} uneven minibatches"
            )
    for key in _prompt_minibatch_keys(cfg):
        v = getattr(cfg.optim, key.split(".", 1)[1])
        if v > P:
            warnings.append(f"{key}={v} exceeds rollout.prompts_per_step={P}: one optimizer step per RL step")
        elif P % v:
            warnings.append(f"{key}={v} does not divide rollout.prompts_per_step={P}: uneven minibatches")
    if G < 2 and cfg.algo.pg_coef > 0:
        warnings.append(f"rollout.group_size={G}: every group-relative advantage is 0, the policy-gradient term learns nothing")
    need = cfg.data.max_prompt_tokens + max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens or 0)
    if max_positions and need > max_positions:
        warnings.append(
            f"data.max_prompt_tokens + max_new_tokens = {need} exceeds the model's max_position_embeddings={max_positions}"
        )
    if cfg.eval.every and cfg.eval.every > cfg.run.total_steps:
        warnings.append(
            f"eval.every={cfg.eval.every} exceeds run.total_steps={cfg.run.total_steps}: "
            f"evaluation only before training and at the end"
        )
    return errors, warnings


@dataclass
class SourceCheck:
    rows: list[dict] | None
    rehearsal_source: str | None
    error: str | None
    warnings: list[str]
    n_rows: int = 0


def check_source(
    key: str, source: str, cfg: TrainConfig, out_dir: Path, n_keep: int, index: int, spec: str = "<spec>"
) -> SourceCheck:
    """Read every row of ``source`` as the trainer would, then write the first ``n_keep`` raw rows,
    in the same format, to ``out_dir`` (the rehearsal's copy)."""
    from sdpg.training.data import read_source

    if source in SOURCE_TASK:
        rows = read_source(source, cfg.data, "train" if key == "data.train" else "test")
        return SourceCheck(rows[:n_keep], source, None, [], len(rows))
    if source.startswith("hf:"):
        from sdpg.training.shrink import hub_reachable

        if not hub_reachable():
            return SourceCheck(
                None, None, f"{key}: {source!r} is a Hugging Face dataset and the hub cannot be reached from here", []
            )
        try:
            rows = read_source(source, cfg.data, "train" if key == "data.train" else "test")
        except ConfigError as e:
            return SourceCheck(None, None, f"{key}: {one_sentence(e)}", [])
        return SourceCheck(rows[:n_keep], source, None, [], len(rows))
    p = Path(source).expanduser()
    if not p.is_absolute():
        p = Path.cwd() / p
    if not p.is_file():
        return SourceCheck(
            None,
            None,
            f"{spec}: key {key!r} has bad value {source!r}: no such file (relative paths are read from where the job "
            f"starts, here {Path.cwd()}; --rehearse-data builtin rehearses on stand-in rows instead)",
            [],
        )
    try:
        from sdpg.training.preflight import check_data_file

        check_data_file(cfg, key, str(p), spec, "train" if key == "data.train" else "eval")  # what a submission checks
        rows = read_source(str(p), cfg.data, "train" if key == "data.train" else "test")  # what the trainer reads
    except ConfigError as e:
        msg = one_sentence(e)
        return SourceCheck(None, None, msg if key in msg else f"{key}: {msg}", [])
    except Exception as e:
        return SourceCheck(None, None, f"{key}: {source!r} does not read: {one_sentence(e)}", [])
    if not rows:
        return SourceCheck(None, None, f"{key}: {source!r} has no rows", [])
    warnings = []
    empty = [i for i, r in enumerate(rows) if not str(r.get("answer", "")).strip()]
    if empty:
        warnings.append(
            f"{key}: {len(empty)} of {len(rows)} rows of {source!r} have an empty answer (row {empty[0]} first): "
            f"they can never be rewarded"
        )
    fsio.ensure_dir(out_dir)
    dest = out_dir / f"{index:02d}-{p.stem}{p.suffix}"
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        with fsio.atomic_open(dest, "wb") as f:
            pq.write_table(pq.read_table(p).slice(0, n_keep), f)
    elif p.suffix == ".json" and p.read_text().lstrip().startswith("["):  # a copy of the user's rows: not redacted
        fsio.write_text(dest, json.dumps(json.loads(p.read_text())[:n_keep]), redact=False)
    else:
        lines = [ln for ln in p.read_text().splitlines() if ln.strip()][:n_keep]
        fsio.write_text(dest, "".join(ln + "\n" for ln in lines), redact=False)
    return SourceCheck(rows[:n_keep], str(dest), None, warnings, len(rows))


def template_error(row: dict, cfg: TrainConfig, tokenizer, where: str) -> str | None:
    """None when the row's student and teacher prompts render as the trainer renders them; otherwise
    one sentence naming the template at fault and its placeholder."""
    import string as _string

    from sdpg.training.data import build_prompts

    try:
        build_prompts(row, cfg.data, tokenizer)
        return None
    except Exception as e:  # noqa: BLE001 - whatever stops the rendering is the finding
        fault = e
    if type(fault).__module__.startswith("jinja2"):
        return f"rendering {where} through the tokenizer's chat template fails: {one_sentence(fault)}"
    # which configured template is it: the one whose fields the formatting cannot fill
    d = cfg.data
    templates = {
        "data.student_template": d.student_template,
        "data.teacher_template": d.teacher_template,
        **{f"data.context_templates.{k}": v for k, v in d.context_templates.items()},
    }
    for key, tmpl in templates.items():
        try:
            fields = [f for _, f, _, _ in _string.Formatter().parse(tmpl) if f is not None]
        except ValueError as e:  # unbalanced braces
            return f"{key} {_clip(tmpl, 80)!r} does not format ({e}; literal braces are written {{{{ }}}}), rendering {where}"
        if isinstance(fault, KeyError) and fault.args and fault.args[0] in fields:
            return (
                f"{key} {_clip(tmpl, 80)!r}: placeholder {{{fault.args[0]}}} is not one the trainer fills "
                f"(literal braces are written {{{{ }}}}), rendering {where}"
            )
        if isinstance(fault, IndexError) and "" in fields:
            return (
                f"{key} {_clip(tmpl, 80)!r}: an empty placeholder {{}} (literal braces are written {{{{ }}}}), rendering {where}"
            )
    return f"rendering {where} fails: {one_sentence(fault)}"


def verifier_kind(cfg: TrainConfig) -> str:
    """The scorer the trainer uses (``auto``: exact on the embedded task, math otherwise)."""
    v = cfg.reward.verifier
    return v if v != "auto" else ("exact" if task_of_source(cfg.data.train) else "math")


def written_as_expected(kind: str, answer: str) -> str:
    """A response carrying ``answer`` where the scorer looks for it."""
    if kind == "exact":
        return f"Adding up, the result is #{answer}"
    return f"So the final answer is \\boxed{{{answer}}}."


class Scorers:
    """The configured scorers, one per kind and setting, closed at the end."""

    def __init__(self):
        self._v: dict[tuple, Any] = {}

    def get(self, cfg: TrainConfig, kind: str | None = None):
        from sdpg.training.rewards import Verifier

        kind = kind or verifier_kind(cfg)
        extra = {"boxed_tail_chars": cfg.reward.boxed_tail_chars} if hasattr(cfg.reward, "boxed_tail_chars") else {}
        key = (kind, cfg.reward.timeout_s, tuple(sorted(extra.items())))
        if key not in self._v:
            self._v[key] = Verifier(kind, cfg.reward.timeout_s, **extra)
        return self._v[key]

    def close(self):
        for v in self._v.values():
            v.close()


def scorer_checks(
    cfg: TrainConfig, sources: dict[str, list[dict]], student_prompt: str, scorers: Scorers
) -> tuple[list[dict], list[str]]:
    """(verdicts, errors): the first gold answers of each file written as the scorer expects must score
    1 (on benchmarks, also under ``eval.extra_scorers``); written as the prompt asks (``\\boxed{}``) too;
    a wrong answer must score 0."""
    kind = verifier_kind(cfg)
    verdicts: list[Any] = []
    errors: list[str] = []
    asks_boxed = "\\boxed" in (student_prompt or "")

    def judge(k: str, key: str, i: int, gold: str, how: str, text: str) -> float:
        score = float(scorers.get(cfg, k).correctness([text], [gold])[0])
        verdicts.append({"source": key, "row": i, "scorer": k, "gold": gold, "response": text, "how": how, "score": score})
        return score

    for key, rows in sources.items():
        kinds = [kind] + ([k for k in getattr(cfg.eval, "extra_scorers", []) if k != kind] if key != "data.train" else [])
        for i, row in enumerate(rows[: GOLD_CHECKS if key == "data.train" else 1]):
            gold = str(row["answer"])
            for k in kinds:
                what = "reward.verifier" if k == kind else "eval.extra_scorers"
                text = written_as_expected(k, gold)
                score = judge(k, key, i, gold, "as the scorer expects", text)
                if score < 1 and not errors:
                    errors.append(
                        f"{what} {k!r} gives {score:g} to the gold answer {_clip(gold, 40)!r} of {key} row {i} written as "
                        f"it expects ({_clip(text, 60)!r}): it cannot match these answers"
                    )
                if asks_boxed and k == "exact":
                    score = judge(k, key, i, gold, "as the prompt asks", written_as_expected("math", gold))
                    if score < 1 and not errors:
                        errors.append(
                            f"the student prompt asks for \\boxed{{}} but {what} {k!r} gives {score:g} to the gold "
                            f"answer {_clip(gold, 40)!r} of {key} row {i} written that way: no response can be rewarded"
                        )
        if rows and key == "data.train":
            wrong = written_as_expected(kind, WRONG_ANSWER)
            score = judge(kind, key, 0, str(rows[0]["answer"]), "a wrong answer", wrong)
            if score > 0 and not errors:
                errors.append(
                    f"reward.verifier {kind!r} gives {score:g} to a wrong answer ({wrong!r}) for {key} row 0: "
                    f"every response would be rewarded"
                )
    return verdicts, errors


class SourceReader:
    """Each data source read and checked once per row format (``check_source``); with ``stand_in_data``
    ``builtin``, a file not found here is replaced by stand-in rows in its format first."""

    def __init__(self, folder: Path, spec: str, stand_in_data: str | None):
        self.folder, self.spec, self.stand_in_data = folder, spec, stand_in_data
        self.checked: dict[tuple, SourceCheck] = {}
        self.stand_in_notes: dict[tuple, str] = {}

    def __call__(self, key: str, src: str, cfg: TrainConfig) -> SourceCheck:
        k = (src, cfg.data.problem_key, cfg.data.answer_key, cfg.data.solution_key, key == "data.train")
        if k not in self.checked:
            read = src
            if self.stand_in_data == standins.BUILTIN and _missing_file(src):
                read, self.stand_in_notes[k] = standins.write_data(key, src, cfg, self.folder / "data", len(self.checked))
            self.checked[k] = check_source(
                key,
                read,
                cfg,
                self.folder / "data",
                TRAIN_ROWS if key == "data.train" else EVAL_ROWS,
                len(self.checked),
                spec=self.spec,
            )
        return self.checked[k]


def check_run(
    it: RunItem,
    o: Outcome,
    model: Any,
    sources: SourceReader,
    tokenizers: dict[str, Any],
    scorers: Scorers,
    ctx: Context,
    world: int,
    have_vllm: bool,
    folder: Path,
) -> TrainConfig | None:
    """Every check of one run before anything runs, recorded in ``o`` (errors, warnings, what is not rehearsed
    here, the rendered prompts, the scorer's verdicts); the run's scaled config when it can be rehearsed, else
    None with ``o.status`` ``blocked`` (no model) or ``fail``. ``model``: the shrunk model or the error that
    blocks it; ``tokenizers`` is filled as a cache."""
    cfg = it.config
    data_srcs = {"data.train": cfg.data.train, **{f"data.eval.{b}": s for b, s in cfg.data.eval.items()}}
    checked = {k: sources(k, s, cfg) for k, s in data_srcs.items()}
    o.errors += [c.error for c in checked.values() if c.error]
    o.warnings += [w for c in checked.values() for w in c.warnings]
    errs, warns = structure_checks(cfg, world, getattr(model, "max_positions", None))
    o.errors += errs
    o.warnings += warns
    o.not_rehearsed = [n for kk, n in sources.stand_in_notes.items() if kk[0] in data_srcs.values()]
    o.not_rehearsed += not_rehearsed(cfg, ctx, world, have_vllm)
    if isinstance(model, Exception):
        o.status = "blocked"
        o.errors.insert(0, str(model))
        return None
    tok = tokenizers.get(str(model.path))
    if tok is None:
        from transformers import AutoTokenizer

        tok = tokenizers[str(model.path)] = AutoTokenizer.from_pretrained(
            model.path, trust_remote_code=cfg.model.trust_remote_code
        )
    rows = {k: c.rows for k, c in checked.items() if c.rows}
    err = next(
        (
            why
            for k, rs in rows.items()
            for i, row in enumerate(rs[: GOLD_CHECKS if k == "data.train" else 1])
            if (why := template_error(row, cfg, tok, f"{k} row {i}"))
        ),
        None,
    )
    if err:  # the first row that does not render: one template fault, one sentence
        o.errors.append(err)
    if "data.train" in rows and not any("rendering data.train" in e for e in o.errors):
        prompt_checks(o, cfg, rows["data.train"], tok)
    if rows and not o.errors:
        verdicts, errs = scorer_checks(cfg, rows, o.student_prompt or "", scorers)
        o.scorer, o.errors = verdicts, o.errors + errs
    if o.errors:
        o.status = "fail"
        return None
    layer, o.shrunk = scaled_layer(cfg, world)
    layer = {
        **layer,
        "model.path": str(model.path),
        "data.train": checked["data.train"].rehearsal_source,
        "data.eval": {b: checked[f"data.eval.{b}"].rehearsal_source for b in cfg.data.eval},
        "run.output_dir": str(folder / "runs" / f"{it.name}-{it.hash[:8]}"),
    }
    if cfg.rollout.backend == "vllm" and not have_vllm:
        layer["rollout.backend"] = "hf"
    o.output_dir = layer["run.output_dir"]
    try:
        return build_config(apply_layer(cfg.resolved(), layer), f"rehearsal of {it.name}")
    except ConfigError as e:
        o.status, o.errors = "fail", [f"the rehearsal's scaled config does not validate: {e}"]
        return None


def prompt_checks(o: Outcome, cfg: TrainConfig, rows: list[dict], tok) -> None:
    """The first training row's student and teacher prompts into ``o``; prompts of the first rows longer than
    ``data.max_prompt_tokens`` as an error (the trainer would stop) or a warning (what it does with them)."""
    from sdpg.training.data import build_prompts

    o.student_prompt, o.teacher_prompt = build_prompts(rows[0], cfg.data, tok)
    lens = [
        (len(tok.encode(s, add_special_tokens=False)), len(tok.encode(t, add_special_tokens=False)))
        for s, t in (build_prompts(r, cfg.data, tok) for r in rows)
    ]
    limit, mode = cfg.data.max_prompt_tokens, cfg.data.overlong_prompts
    longest_student, longest_teacher = max(a for a, _ in lens), max(b for _, b in lens)
    if longest_student > limit:
        finding = (
            f"of the first {len(lens)} training rows, a student prompt has {longest_student} tokens, more "
            f"than data.max_prompt_tokens={limit}"
        )
        if mode == "error":  # the trainer would stop at data preparation
            o.errors.append(f"{finding}; student prompts are never cut unless data.overlong_prompts says so")
        else:
            o.warnings.append(f"{finding}: such rows are {'left out' if mode == 'drop' else 'cut from the left'}")
    if longest_teacher > limit:
        o.warnings.append(
            f"of the first {len(lens)} training rows, a teacher prompt has {longest_teacher} tokens, more "
            f"than data.max_prompt_tokens={limit}: teacher prompts are cut from the right"
        )
