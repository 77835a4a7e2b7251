"""Rehearsals: every run of a spec, resolved as it would be submitted, executed for two RL steps
here, before a cluster spends a week on it (``sdpg-ablate SPEC --rehearse``, ``sdpg-sweep SPEC --rehearse``).

What changes for the rehearsal, and nothing else:

* the model is shrunk in place (``sdpg.training.shrink``): the architecture family, config and tokenizer
  of ``model.path`` (or of ``--rehearse-model PATH`` standing in for a hub id), two layers, random weights;
* data: every row of every file is read and checked as the trainer reads it, then the run trains on a
  copy of the first rows (same format) and evaluates on the first problems of each benchmark;
* sizes: prompts per step, group size, minibatches, micro-batches, generation batches and response
  lengths scaled down with their structure kept (two minibatches per RL step where the run has several,
  two micro-batches where it accumulates gradients, a token budget where it packs by tokens);
  ``eval.n_samples`` at most 2 (``mean@2`` stands for ``mean@32``);
* two RL steps, run the way a preempted job runs them: the submitted job stops after step 1 and
  checkpoints, the job it requeues resumes from that checkpoint and finishes step 2;
* the jobs go to the local executor (one process for all runs: a vLLM engine cannot be built twice in
  a process, so runs with the same engine settings share one, as sweep trials do; each run puts its own
  initial weights back into it), and MLflow writes to a store of its own in the rehearsal folder.

Checks before anything runs, each failure one sentence: data files exist and every row parses; the
student and teacher prompts render through the templates and the tokenizer's chat template; the
configured scorer gives full reward to the first gold answers written as it expects (and as the prompt
asks) and none to a wrong one; the run's batch fits its ranks. After the runs: the checkpoint was
written and resumed, every step was logged once to MLflow, the run ended FINISHED, the sweep objective
was logged. The report (console, ``report.md``, ``report.json``) also says what was not rehearsed here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdpg import fsio
from sdpg.orchestration import standins
from sdpg.training.config import ConfigError, TrainConfig, apply_layer, build_config
from sdpg.training.embedded import SOURCE_TASK, task_of_source

STEPS = 2
"""RL steps per rehearsed run (the first ends in a checkpoint and a requeue)."""
TRAIN_ROWS = 8
"""Rows of each training file trained on."""
EVAL_ROWS = 2
"""Problems of each benchmark evaluated."""
MAX_NEW_TOKENS = 8
"""Response length cap."""
EVAL_SAMPLES = 2
"""Most samples per evaluated problem."""
GOLD_CHECKS = 3
"""Gold answers of each file put to the scorer."""
CPU_ENGINE_GB = 1.5
"""Memory of the vLLM CPU engine for the shrunk model."""
MARKER = ".sdpg-rehearsal"
WRONG_ANSWER = "sdpg rehearsal: not the answer"


@dataclass
class RunItem:
    """One run as it would be submitted."""

    name: str
    hash: str
    config: TrainConfig


@dataclass
class Context:
    """Where the runs would go: what the rehearsal cannot reproduce here."""

    tool: str  # sdpg-ablate | sdpg-sweep
    kind: str  # ablation | sweep
    spec_path: Path
    spec_name: str
    executor: str
    profile: Any  # SlurmProfile | None
    profile_name: str | None
    tracking_uri: str
    objective: str | None = None  # sweeps: the metric a trial returns


@dataclass
class Outcome:
    name: str
    hash: str
    status: str = "pending"  # pass | fail | blocked
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    not_rehearsed: list[str] = field(default_factory=list)
    student_prompt: str | None = None
    teacher_prompt: str | None = None
    scorer: list[dict] = field(default_factory=list)
    shrunk: dict[str, Any] = field(default_factory=dict)
    steps_per_s: float | None = None
    wall_s: float | None = None
    output_dir: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def first_error(self) -> str:
        return self.errors[0] if self.errors else ""


def one_sentence(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(e, (ConfigError, RehearsalError)):
        return first
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


class RehearsalError(RuntimeError):
    """A rehearsal check failed; the message is one sentence."""


# --------------------------------------------------------------------------------------------
# Scaled settings: small, with the structure of the real run
# --------------------------------------------------------------------------------------------


def world_size(profile) -> int:
    return profile.nodes * profile.tasks_per_node if profile is not None else 1


def scaled_layer(cfg: TrainConfig, world: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Dotted overrides that shrink a run's batches and lengths, and a ``key: real -> rehearsal``
    description. Structure kept: several minibatches per RL step stay several (2), gradient
    accumulation stays (2 micro-batches), token-budget packing stays on, several generate calls stay."""
    ro, op = cfg.rollout, cfg.optim
    P, G = ro.prompts_per_step, ro.group_size
    N = P * G
    n_mb = _minibatches(cfg, P, G)
    G_s, P_s = min(G, 2), min(P, 2)
    N_s = P_s * G_s
    n_mb_s = min(n_mb, 2, P_s)
    rows_mb_s = N_s // n_mb_s
    mb_rows = N / n_mb / world  # rows of a minibatch on one rank
    n_micro = 2 if op.micro_batch_tokens else math.ceil(mb_rows / op.micro_batch_size)
    n_micro_s = min(n_micro, 2, rows_mb_s)
    layer: dict[str, Any] = {
        "rollout.prompts_per_step": P_s,
        "rollout.group_size": G_s,
        "rollout.max_new_tokens": min(ro.max_new_tokens, MAX_NEW_TOKENS),
        "rollout.batch_size": N_s if ro.batch_size >= N else max(1, N_s // 2),
        "rollout.vllm_cpu_memory_gb": CPU_ENGINE_GB,
        "optim.micro_batch_size": math.ceil(rows_mb_s / n_micro_s),
        "eval.n_samples": min(cfg.eval.n_samples, EVAL_SAMPLES),
        "eval.pass_k": [k for k in cfg.eval.pass_k if k <= min(cfg.eval.n_samples, EVAL_SAMPLES)],
        "run.total_steps": STEPS,
        "run.threads": 1,
        "run.resume": True,
        "run.log_samples": 0,
        "model.device": "cpu",
    }
    if op.minibatch_size is not None:
        layer["optim.minibatch_size"] = rows_mb_s
    for key in _prompt_minibatch_keys(cfg):  # minibatches counted in prompts
        layer[key] = P_s // n_mb_s
    if op.micro_batch_tokens:
        layer["optim.micro_batch_tokens"] = 1  # one row per micro-batch: the packing path, several micro-batches
    if cfg.eval.max_new_tokens is not None:
        layer["eval.max_new_tokens"] = min(cfg.eval.max_new_tokens, MAX_NEW_TOKENS)
    if cfg.reward.overlong_buffer:
        layer["reward.overlong_buffer"] = max(1, min(cfg.reward.overlong_buffer, layer["rollout.max_new_tokens"] // 2))
    if cfg.model.attn_implementation and "flash" in cfg.model.attn_implementation:
        layer["model.attn_implementation"] = "sdpa"
    flat = _flat(cfg.resolved())
    changes = {
        k: f"{_fmt(flat.get(k))} -> {_fmt(v)}"
        for k, v in layer.items()
        if k in flat and flat.get(k) != v and not k.startswith("run.") and k != "rollout.vllm_cpu_memory_gb"
    }
    changes["minibatches per RL step"] = f"{n_mb} -> {n_mb_s}"
    changes["micro-batches per minibatch (per rank)"] = f"{n_micro} -> {n_micro_s}"
    return layer, changes


def _prompt_minibatch_keys(cfg: TrainConfig) -> list[str]:
    """Settings that give the minibatch in prompts, where the config has them."""
    return [f"optim.{k}" for k in ("minibatch_prompts", "prompts_per_minibatch") if getattr(cfg.optim, k, None) is not None]


def _minibatches(cfg: TrainConfig, P: int, G: int) -> int:
    for key in _prompt_minibatch_keys(cfg):
        return max(1, math.ceil(P / getattr(cfg.optim, key.split(".", 1)[1])))
    mb = cfg.optim.minibatch_size
    return max(1, math.ceil(P * G / mb)) if mb else 1


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fmt(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


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


# --------------------------------------------------------------------------------------------
# Data: every row read as the trainer reads it; the first rows copied for the rehearsal
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Prompts and scorer
# --------------------------------------------------------------------------------------------


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


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


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
    verdicts, errors = [], []
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


# --------------------------------------------------------------------------------------------
# The worker: all runs in one local job
# --------------------------------------------------------------------------------------------


class RehearsalWorker:
    """A local job that rehearses runs one after another: the submitted job stops after step 1 as a
    preempted one does, ``checkpoint()`` gives the requeued job, which resumes and finishes step 2."""

    def __init__(self, jobs: list[dict], results_dir: str):
        self.jobs, self.results_dir = jobs, results_dir

    def __call__(self) -> int:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        for job in self.jobs:
            res = Path(self.results_dir) / f"{job['name']}.json"
            if res.is_file():
                continue  # done by a worker before this one
            fsio.write_json(res, rehearse_run(job))
        return len(self.jobs)


class PreemptAfter:
    """A ``TrialHook`` that preempts its job after a step the way SLURM does before a time limit: SIGUSR2
    to this process. The job's own handler sees it, the trainer checkpoints, the job reports itself
    preempted (its MLflow run SCHEDULED) and is requeued."""

    def __init__(self, step: int):
        self.step = step

    def log(self, metrics: dict[str, float], step: int) -> None:
        if step == self.step and "train/reward" in metrics:
            os.kill(os.getpid(), signal.SIGUSR2)

    def close(self) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def end_status(self, result: dict) -> tuple[str, dict[str, str]]:
        return "FINISHED", {}


def rehearse_run(job: dict) -> dict:
    """Two steps of one run through the submitted job type; a dict with pass/fail, the first error in
    one sentence and the measurements."""
    from sdpg.orchestration.launch import TrainJob
    from sdpg.training.trainer import latest_checkpoint

    out = Path(job["config"]["run"]["output_dir"])
    t0 = time.perf_counter()
    phase = "the submitted job (step 1)"
    try:
        submitted = TrainJob(job["config"], job["tracking_uri"], job["run_id"], job["parent_run_id"])
        first = submitted.run(trial=PreemptAfter(1), requeue=False)
        if not first.get("preempted") or first["step"] != 1:
            raise RehearsalError(
                f"the submitted job did not stop for its requeue when preempted after step 1 "
                f"(status {first['status']} at step {first['step']})"
            )
        ck = latest_checkpoint(out)
        if ck is None or not ck.stem.endswith("0000001"):
            raise RehearsalError(f"no checkpoint of step 1 in {out / 'checkpoints'} after the preemption")
        phase = "the requeued job (resume, step 2)"
        requeued = submitted.checkpoint()  # what submitit calls on preemption
        second = requeued.function(*requeued.args, **requeued.kwargs)
        if second["status"] != "finished" or second["step"] != STEPS:
            raise RehearsalError(f"the requeued job ended {second['status']} at step {second['step']}, not finished at {STEPS}")
        phase = "after the run"
        rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        steps = [r["step"] for r in rows if "train/reward" in r]
        if steps != list(range(1, STEPS + 1)):
            raise RehearsalError(f"metrics.jsonl holds training steps {steps} after the resume, not 1..{STEPS} once each")
        step_s = [r["timing/step"] for r in rows if "timing/step" in r]
        merged: dict[str, float] = {}
        for r in rows:
            merged.update({k: v for k, v in r.items() if k != "step"})
        objective = job.get("objective")
        if objective and not any(objective in r for r in rows):
            raise RehearsalError(
                f"the objective metric {objective!r} was never logged (logged: "
                f"{', '.join(sorted(k for k in merged if k.startswith('eval/'))) or 'no eval metric'})"
            )
        return {
            "status": "pass",
            "steps_per_s": len(step_s) / sum(step_s) if step_s else None,
            "wall_s": time.perf_counter() - t0,
            "metrics": merged,
        }
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        fsio.ensure_dir(out)
        fsio.write_text(out / "traceback.txt", traceback.format_exc())
        return {
            "status": "fail",
            "error": f"{phase}: {one_sentence(e)}",
            "wall_s": time.perf_counter() - t0,
            "traceback": str(out / "traceback.txt"),
        }


# --------------------------------------------------------------------------------------------
# The rehearsal
# --------------------------------------------------------------------------------------------


def _missing_file(src: str) -> bool:
    """A data file (not a built-in set, not a hub dataset) that is not found from here."""
    if src in SOURCE_TASK or task_of_source(src) or src.startswith("hf:"):
        return False
    return not Path(src).expanduser().is_file()


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def default_folder(spec_name: str) -> Path:
    return Path.cwd() / "rehearsals" / spec_name


def prepare_folder(folder: Path) -> Path:
    """An empty rehearsal folder; an existing folder is emptied only if a rehearsal made it."""
    fsio.check_writable_target(folder)
    folder = folder.resolve()
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).is_file():
            raise ConfigError(f"--rehearse-dir {folder}: exists, is not empty and is not a rehearsal folder; choose another")
        shutil.rmtree(folder)
    fsio.ensure_dir(folder)
    fsio.write_text(folder / MARKER, "made by an sdpg rehearsal; emptied by the next one\n", root=folder)
    return folder


def rehearse(
    items: list[RunItem],
    ctx: Context,
    folder: str | Path | None = None,
    stand_in: str | None = None,
    log: Callable[[str], None] = print,
    stand_in_data: str | None = None,
) -> list[Outcome]:
    """Rehearse ``items``; returns one outcome per run (and writes the report files). ``stand_in``: a model
    folder standing in for ``model.path``, or ``builtin``; ``stand_in_data``: ``builtin`` replaces the data
    files that are not here by stand-in rows (``sdpg.orchestration.standins``)."""
    t_start, cpu_start = time.time(), _cpu_seconds()
    if vllm_available() and any(it.config.rollout.backend == "vllm" for it in items):
        from sdpg._media import MEDIA_PACKAGES, mismatch

        stray = [why for n in MEDIA_PACKAGES if (why := mismatch(n))]
        if stray:  # vLLM's model check in its child process would fail every run the same way
            raise ConfigError(
                f"{ctx.spec_path}: rollout.backend is vllm and {stray[0]}, which stops vLLM's model check; "
                "python -m sdpg.environment --fix uninstalls the media packages built for another torch"
            )
    folder = prepare_folder(Path(folder) if folder else default_folder(ctx.spec_name))
    tag = f"[{ctx.tool}]"
    log(f"{tag} rehearsing {len(items)} runs of {ctx.spec_name} in {folder}")
    outcomes = {it.name: Outcome(it.name, it.hash) for it in items}
    world = world_size(ctx.profile) if ctx.executor == "slurm" else 1
    have_vllm = vllm_available()

    # ---- models, shrunk once per distinct model.path
    from sdpg.training.shrink import ModelSourceError, shrink_model

    models: dict[tuple, Any] = {}
    if stand_in == standins.BUILTIN:
        stand_in = str(standins.write_model(folder / "models" / "builtin-qwen3"))
        log(f"{tag} --rehearse-model builtin: a Qwen3 config, character tokenizer and chat template written here")
    for it in items:
        key = (it.config.model.path, it.config.model.trust_remote_code)
        if key in models:
            continue
        try:
            models[key] = shrink_model(key[0], folder / "models" / f"model{len(models)}", stand_in, key[1])
            log(f"{tag} model {key[0]}: {models[key].describe()}")
        except ModelSourceError as e:
            models[key] = e
            log(f"{tag} {e}")

    # ---- data, read once per distinct source and row format
    sources: dict[tuple, SourceCheck] = {}
    stand_in_notes: dict[tuple, str] = {}

    def source(key: str, src: str, cfg: TrainConfig) -> SourceCheck:
        k = (src, cfg.data.problem_key, cfg.data.answer_key, cfg.data.solution_key, key == "data.train")
        if k not in sources:
            read = src
            if stand_in_data == standins.BUILTIN and _missing_file(src):
                read, stand_in_notes[k] = standins.write_data(key, src, cfg, folder / "data", len(sources))
            sources[k] = check_source(
                key,
                read,
                cfg,
                folder / "data",
                TRAIN_ROWS if key == "data.train" else EVAL_ROWS,
                len(sources),
                spec=str(ctx.spec_path),
            )
        return sources[k]

    # ---- checks before anything runs
    from transformers import AutoTokenizer

    tokenizers: dict[str, Any] = {}
    scorers = Scorers()
    runnable: list[tuple[RunItem, TrainConfig]] = []
    try:
        for it in items:
            o, cfg = outcomes[it.name], it.config
            data_srcs = {"data.train": cfg.data.train, **{f"data.eval.{b}": s for b, s in cfg.data.eval.items()}}
            checked = {k: source(k, s, cfg) for k, s in data_srcs.items()}
            o.errors += [c.error for c in checked.values() if c.error]
            o.warnings += [w for c in checked.values() for w in c.warnings]
            model = models[(cfg.model.path, cfg.model.trust_remote_code)]
            errs, warns = structure_checks(cfg, world, getattr(model, "max_positions", None))
            o.errors += errs
            o.warnings += warns
            o.not_rehearsed = [n for kk, n in stand_in_notes.items() if kk[0] in data_srcs.values()]
            o.not_rehearsed += not_rehearsed(cfg, ctx, world, have_vllm)
            if isinstance(model, Exception):
                o.status = "blocked"
                o.errors.insert(0, str(model))
                continue
            tok = tokenizers.get(str(model.path))
            if tok is None:
                tok = tokenizers[str(model.path)] = AutoTokenizer.from_pretrained(
                    model.path, trust_remote_code=cfg.model.trust_remote_code
                )
            rows = {k: c.rows for k, c in checked.items() if c.rows}
            err = next(
                (
                    e
                    for k, rs in rows.items()
                    for i, row in enumerate(rs[: GOLD_CHECKS if k == "data.train" else 1])
                    if (e := template_error(row, cfg, tok, f"{k} row {i}"))
                ),
                None,
            )
            if err:  # the first row that does not render: one template fault, one sentence
                o.errors.append(err)
            if "data.train" in rows and not any("rendering data.train" in e for e in o.errors):
                from sdpg.training.data import build_prompts

                o.student_prompt, o.teacher_prompt = build_prompts(rows["data.train"][0], cfg.data, tok)
                lens = [
                    (len(tok.encode(s, add_special_tokens=False)), len(tok.encode(t, add_special_tokens=False)))
                    for s, t in (build_prompts(r, cfg.data, tok) for r in rows["data.train"])
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
            if rows and not o.errors:
                verdicts, errs = scorer_checks(cfg, rows, o.student_prompt or "", scorers)
                o.scorer, o.errors = verdicts, o.errors + errs
            if o.errors:
                o.status = "fail"
                continue
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
                small = build_config(apply_layer(cfg.resolved(), layer), f"rehearsal of {it.name}")
            except ConfigError as e:
                o.status, o.errors = "fail", [f"the rehearsal's scaled config does not validate: {e}"]
                continue
            runnable.append((it, small))
    finally:
        scorers.close()
    n_checked_fail = sum(o.status in ("fail", "blocked") for o in outcomes.values())
    log(
        f"{tag} checks: {len(items) - n_checked_fail} of {len(items)} runs ready to rehearse"
        + (f"; {n_checked_fail} failed before running" if n_checked_fail else "")
    )

    # ---- the runs: MLflow bookkeeping as a submission does, one local job
    if runnable:
        _run_all(runnable, outcomes, ctx, folder, log)
    timing = {"wall_s": time.time() - t_start, "cpu_s": _cpu_seconds() - cpu_start, "load_average": os.getloadavg()[0]}
    report = write_report(list(outcomes.values()), ctx, folder, timing, models, sources)
    log(report)
    return list(outcomes.values())


def _run_all(runnable: list[tuple[RunItem, TrainConfig]], outcomes: dict[str, Outcome], ctx: Context, folder: Path, log) -> None:
    from sdpg.orchestration import tracking
    from sdpg.orchestration.core import Experiment
    from sdpg.orchestration.launch import make_executor

    tag = f"[{ctx.tool}]"
    uri = tracking.default_uri(folder)
    exp = Experiment(uri, ctx.spec_name, folder, ctx.kind, ctx.spec_name, ctx.spec_path).open()
    jobs = []
    for it, small in runnable:
        rid = exp.child(it.hash, it.name, small, {"method": small.algo.method, "run_hash": it.hash, "rehearsal": "true"})
        jobs.append(
            {
                "name": it.name,
                "config": small.resolved(),
                "tracking_uri": uri,
                "run_id": rid,
                "parent_run_id": exp.parent_id,
                "objective": _scaled_objective(ctx.objective, small),
            }
        )
    results_dir = folder / "results"
    fsio.ensure_dir(results_dir, root=folder)
    ex = make_executor("local", folder / "submitit", None, f"{ctx.spec_name}-rehearsal", 1)
    pending = list(jobs)
    for _attempt in range(3):  # a worker that dies (a crash in native code) is replaced for the runs left
        job = ex.submit(RehearsalWorker(pending, str(results_dir)))
        log(f"{tag} local job {job.job_id}: {len(pending)} runs, one after another; logs in {folder / 'submitit'}")
        seen: set[str] = set()
        while True:
            done = job.done()
            for j in pending:
                res = results_dir / f"{j['name']}.json"
                if j["name"] not in seen and res.is_file():
                    seen.add(j["name"])
                    r = json.loads(res.read_text())
                    n_done = sum(1 for x in jobs if (results_dir / f"{x['name']}.json").is_file())
                    sps = f", {r['steps_per_s']:.2f} steps/s" if r.get("steps_per_s") else ""
                    log(
                        f"{tag} {n_done}/{len(jobs)} {j['name']}: {r['status']}{sps}"
                        + (f": {r['error']}" if r.get("error") else "")
                    )
            if done:
                break
            time.sleep(0.5)
        crash = None
        try:
            job.result()
        except Exception as e:  # the worker process died
            crash = one_sentence(e)
        pending = [j for j in pending if not (results_dir / f"{j['name']}.json").is_file()]
        if not pending:
            break
        victim = pending[0]
        fsio.write_text(
            results_dir / f"{victim['name']}.json",
            json.dumps(
                {
                    "status": "fail",
                    "error": f"the worker process died during this run: {crash or 'no result'} (log: {job.paths.stderr})",
                }
            ),
        )
        pending = pending[1:]
        if not pending:
            break
    # results and the tracking store, read back
    for it, small in runnable:
        o = outcomes[it.name]
        res = results_dir / f"{it.name}.json"
        r = json.loads(res.read_text()) if res.is_file() else {"status": "fail", "error": "no result was written"}
        o.status = r["status"]
        o.steps_per_s, o.wall_s = r.get("steps_per_s"), r.get("wall_s")
        o.metrics = r.get("metrics", {})
        if r.get("error"):
            o.errors.append(r["error"])
        rid = next(j["run_id"] for j in jobs if j["name"] == it.name)
        diff = o.metrics.get("train/rollout_logprob_diff")
        limit = 1e-3 if small.model.dtype == "float32" else 2e-2
        if diff is not None and diff > limit:
            o.warnings.append(
                f"{it.name}: the rollout engine's log-probabilities differ from the trainer's by {diff:.3g} "
                f"per token (more than {limit:g} in {small.model.dtype}): weight sync or dtype mismatch"
            )
        if o.status == "pass":
            err = _tracking_check(exp.client, rid)
            if err:
                o.status = "fail"
                o.errors.append(err)
        elif tracking.retry(exp.client.get_run, rid).info.status not in tracking.TERMINAL:  # never started
            tracking.finish_run(exp.client, rid, "FAILED")
    exp.end_if_done()


def _scaled_objective(objective: str | None, small: TrainConfig) -> str | None:
    """The sweep objective under the rehearsal's eval sample count (``mean@32`` is logged as ``mean@2``)."""
    if not objective or "/mean@" not in objective:
        return objective
    return objective.rsplit("@", 1)[0] + f"@{small.eval.n_samples}"


def _tracking_check(c, run_id: str) -> str | None:
    from sdpg.orchestration import tracking

    run = tracking.retry(c.get_run, run_id)
    hist = tracking.retry(c.get_metric_history, run_id, "train/reward")
    steps = sorted(m.step for m in hist)
    if steps != list(range(1, STEPS + 1)):
        return f"tracking: the MLflow run holds train/reward at steps {steps}, not 1..{STEPS} once each"
    if run.info.status != "FINISHED":
        return f"tracking: the MLflow run ended {run.info.status}, not FINISHED"
    return None


# --------------------------------------------------------------------------------------------
# What this machine cannot rehearse
# --------------------------------------------------------------------------------------------


def not_rehearsed(cfg: TrainConfig, ctx: Context, world: int, have_vllm: bool) -> list[str]:
    p = ctx.profile
    out = []
    if ctx.executor == "slurm":
        name = ctx.profile_name or "dev"
        out.append(
            f"SLURM submission with profile {name!r} (partition {getattr(p, 'partition', None) or 'default'}, "
            f"{getattr(p, 'timeout_min', '?')} min per job, requeue on timeout): the local executor ran the job "
            f"here, and the preemption path (stop, checkpoint, requeue, resume) was taken in-process"
        )
    if world > 1:
        fsdp = cfg.model.fsdp is True or (cfg.model.fsdp == "auto" and getattr(p, "gpus_per_node", 0))
        out.append(
            f"{world} ranks ({p.nodes} node(s) x {p.tasks_per_node} tasks): torch.distributed collectives"
            f"{', FSDP2 sharding and full-state checkpoint gathering' if fsdp else ''} are not exercised by a one-process run"
        )
    if getattr(p, "gpus_per_node", 0) or cfg.model.device.startswith("cuda"):
        out.append(
            f"GPU execution: CUDA kernels, {cfg.model.dtype} compute on the GPU, memory of the real model"
            + (", vLLM sleep mode and vllm_gpu_memory_utilization" if cfg.rollout.backend == "vllm" else "")
        )
    if cfg.model.attn_implementation and "flash" in cfg.model.attn_implementation:
        out.append(f"model.attn_implementation={cfg.model.attn_implementation} (GPU only): sdpa here")
    if cfg.rollout.backend == "vllm" and have_vllm:
        out.append(
            "a vLLM engine of each job's own: the rehearsal's runs share one engine per process (vLLM cannot "
            "build a second after the first is gone), each run putting its initial weights back into it"
        )
    if cfg.rollout.backend == "vllm" and have_vllm:
        out.append(
            "a vLLM engine of each job's own: the rehearsal's runs share one engine per process (vLLM cannot "
            "build a second after the first is gone), each run putting its initial weights back into it"
        )
    if cfg.rollout.backend == "vllm" and not have_vllm:
        out.append(
            "the vLLM rollout backend: vLLM is not installed here (pip install -e '.[rehearse]' && python -m "
            "sdpg.environment --fix), so rollouts ran on the hf backend "
            "(the engine, its weight sync and rollout log-prob ratios were not rehearsed)"
        )
    out.append(
        "the real weights and lengths: random weights, responses of at most "
        f"{MAX_NEW_TOKENS} tokens; rewards, learning and speed at full size mean nothing here"
    )
    out.append(f"the spec's MLflow store ({_redact(ctx.tracking_uri)}) was not contacted: the rehearsal has its own")
    return out


def _redact(uri: str) -> str:
    from sdpg.orchestration.tracking import redact

    return redact(uri)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the rehearsal's local job)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def write_report(outcomes: list[Outcome], ctx: Context, folder: Path, timing: dict, models: dict, sources: dict) -> str:
    """The console text; also writes ``report.md`` and ``report.json`` in ``folder``."""
    n_pass = sum(o.status == "pass" for o in outcomes)
    head = [("run", "result", "steps/s", "wall", "first error")]
    for o in outcomes:
        head.append(
            (
                o.name,
                o.status.upper(),
                f"{o.steps_per_s:.2f}" if o.steps_per_s else "-",
                f"{o.wall_s:.0f}s" if o.wall_s else "-",
                _clip(o.first_error, 160),
            )
        )
    widths = [max(len(r[i]) for r in head) for i in range(4)]
    table = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in head]
    table.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 11)
    seconds = timing["wall_s"]
    lines = [
        f"Rehearsal of {ctx.spec_path} ({ctx.tool}): {n_pass}/{len(outcomes)} runs pass in {seconds:.0f} s "
        f"({timing['cpu_s']:.0f} s of CPU; load average {timing['load_average']:.1f} on {os.cpu_count()} cores)",
        "",
    ]
    lines += table
    for o in outcomes:
        if o.status != "pass" and o.errors:
            lines.append(f"\n{o.name}: {o.status}")
            lines += [f"  - {e}" for e in o.errors]
    # prompts: each distinct rendering once
    shown: dict[tuple, list[str]] = {}
    for o in outcomes:
        if o.student_prompt is not None:
            shown.setdefault((o.student_prompt, o.teacher_prompt), []).append(o.name)
    for (s, t), names in shown.items():
        who = "all runs" if len(names) == len(outcomes) else ", ".join(names)
        lines += ["", f"First student prompt ({who}):", _indent(s), f"First teacher prompt ({who}):", _indent(t)]
    verdicts: dict[tuple, list[str]] = {}
    for o in outcomes:
        if o.scorer:
            verdicts.setdefault(tuple(json.dumps(v, sort_keys=True) for v in o.scorer), []).append(o.name)
    for vs, names in verdicts.items():
        who = "all runs" if len(names) == len(outcomes) else ", ".join(names)
        lines += ["", f"Scorer on gold answers ({who}):"]
        for v in map(json.loads, vs):
            lines.append(
                f"  {v['source']} row {v['row']}, {v.get('scorer', '')}: gold {_clip(v['gold'], 30)!r} written {v['how']} "
                f"{_clip(v['response'], 50)!r} -> {v['score']:g}"
            )
    warnings = sorted({w for o in outcomes for w in o.warnings})
    if warnings:
        lines += ["", "Warnings:"] + [f"  - {w}" for w in warnings]
    scaled = next((o.shrunk for o in outcomes if o.shrunk), None)
    if scaled:
        lines += ["", "Scaled for the rehearsal (real -> here): " + "; ".join(f"{k} {v}" for k, v in scaled.items())]
    notes = []
    for o in outcomes:
        for n in o.not_rehearsed:
            if n not in notes:
                notes.append(n)
    if notes:
        lines += ["", "Not rehearsed here:"] + [f"  - {n}" for n in notes]
    lines += [
        "",
        f"Report: {folder / 'report.md'} and {folder / 'report.json'}"
        + (
            f"; MLflow: mlflow ui --backend-store-uri sqlite:///{folder / 'mlflow.db'}"
            if (folder / "mlflow.db").is_file()
            else "; nothing ran, no MLflow store"
        ),
    ]
    text = "\n".join(lines)
    fsio.write_text(folder / "report.md", _markdown(outcomes, ctx, seconds, text), root=folder)
    payload = {
        "spec": str(ctx.spec_path),
        "tool": ctx.tool,
        "seconds": seconds,
        **timing,
        "passed": n_pass,
        "runs": [{**asdict(o), "first_error": o.first_error} for o in outcomes],
        "models": {
            k[0]: (str(v) if isinstance(v, Exception) else {**v.__dict__, "path": str(v.path)}) for k, v in models.items()
        },
        "data": {k[0]: {"rows": v.n_rows, "rehearsal_copy": v.rehearsal_source, "error": v.error} for k, v in sources.items()},
    }
    fsio.write_text(folder / "report.json", json.dumps(payload, indent=1, default=str), root=folder)
    return text


def _indent(s: str | None, pad: str = "    | ") -> str:
    return "\n".join(pad + ln for ln in (s or "").splitlines()) or pad


def _markdown(outcomes: list[Outcome], ctx: Context, seconds: float, console: str) -> str:
    md = [
        f"# Rehearsal of `{ctx.spec_path}`",
        "",
        f"{sum(o.status == 'pass' for o in outcomes)}/{len(outcomes)} runs pass ({seconds:.0f} s).",
        "",
        "| run | result | steps/s | wall | first error |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        md.append(
            f"| {o.name} | {o.status} | {o.steps_per_s and f'{o.steps_per_s:.2f}' or '-'} | "
            f"{o.wall_s and f'{o.wall_s:.0f} s' or '-'} | {o.first_error.replace('|', '/')} |"
        )
    md += ["", "## Details", "", "```", console, "```", ""]
    return "\n".join(md)


def exit_code(outcomes: list[Outcome]) -> int:
    return 0 if outcomes and all(o.status == "pass" for o in outcomes) else 1


# --------------------------------------------------------------------------------------------
# Entry points for sdpg-ablate and sdpg-sweep
# --------------------------------------------------------------------------------------------


def rehearse_plan(plan, stand_in: str | None = None, folder: str | None = None, log=None, stand_in_data=None) -> int:
    """``sdpg-ablate SPEC --rehearse``: every run of the plan."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    items = [RunItem(r.name, r.hash, r.config) for r in plan.distinct]
    if plan.duplicates:
        log(
            f"[sdpg-ablate] {len(plan.duplicates)} duplicate runs are trained once: "
            + ", ".join(f"{r.name} = {r.same_as}" for r in plan.duplicates)
        )
    ctx = Context(
        "sdpg-ablate",
        "ablation",
        Path(plan.path),
        plan.spec.name,
        plan.executor,
        plan.profile,
        plan.spec.profile if plan.executor == "slurm" else None,
        plan.tracking_uri,
    )
    return exit_code(rehearse(items, ctx, folder, stand_in, log, stand_in_data))


def sweep_items(sweep) -> list[RunItem]:
    """The trials a sweep starts with (its enqueued parameter sets) and the two corners of its space,
    each for every seed, resolved as a worker resolves a trial."""
    from sdpg.orchestration.sweep import _typed

    spec = sweep.spec
    sets = [(f"enqueue{i}", dict(e)) for i, e in enumerate(spec.enqueue)]
    sets.append(("low", {k: (p.choices[0] if p.type == "categorical" else p.low) for k, p in spec.space.items()}))
    sets.append(("high", {k: (p.choices[-1] if p.type == "categorical" else p.high) for k, p in spec.space.items()}))
    items, seen = [], set()
    for name, params in sets:
        for seed in spec.seeds:
            cfg = sweep.trial_config(_typed(params, spec.space), seed, 0, f"{sweep.path}: {name}")
            h = cfg.effective().config_hash()
            if h in seen:
                continue
            seen.add(h)
            items.append(RunItem(f"{name}-s{seed}", h, cfg))
    return items


def rehearse_sweep(sweep, stand_in: str | None = None, folder: str | None = None, log=None, stand_in_data=None) -> int:
    """``sdpg-sweep SPEC --rehearse``: the enqueued trials and the corners of the space; the sampler and
    pruner are built, and every trial must log the objective."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    from sdpg.orchestration.sweep import make_pruner, make_sampler

    try:
        make_sampler(sweep.spec)
        make_pruner(sweep.spec)
    except Exception as e:
        log(f"[sdpg-sweep] the sampler or pruner cannot be built here: {one_sentence(e)}")
        return 1
    ctx = Context(
        "sdpg-sweep",
        "sweep",
        Path(sweep.path),
        sweep.spec.name,
        sweep.executor,
        sweep.profile,
        sweep.spec.profile,
        sweep.tracking_uri,
        objective=sweep.spec.objective.metric,
    )
    return exit_code(rehearse(sweep_items(sweep), ctx, folder, stand_in, log, stand_in_data))
