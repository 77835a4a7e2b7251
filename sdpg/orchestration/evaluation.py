"""``sdpg-eval``: a model evaluated on benchmarks outside a training run, logged as an MLflow run of its own.

What can be evaluated (``MODEL``):

* ``embedded``: the built-in model of the config's task (the base model of the built-in runs);
* a run folder (``run.output_dir``: ``config.yaml`` + ``checkpoints/``): its newest complete checkpoint or
  ``--step k``, with the run's own config (evaluation settings, prompts, seed);
* a folder written by ``sdpg-train export`` (``sdpg_export.json``): with the run's config it carries, at its step;
* any other Hugging Face model folder or hub id, with ``CONFIG.yaml`` (default: the built-in config) and
  overrides; logged at ``--step`` (default 0: the "step 0" point of the curves).

Evaluation is the trainer's (``sdpg.training.evaluate.evaluate``: mean@k, pass@k, greedy, the extra scorers
beside the main one), at the same derived seeds: with ``rollout.seed_per_prompt`` the numbers equal those a
training run with the same config logged at that step. Benchmarks are ``data.eval`` (default: the config's).

Logging: one MLflow run per (model, step, evaluation settings), found again by that hash
(``sdpg.eval_hash``), tagged ``sdpg.kind=eval`` with ``variant`` (the row name, ``--name``), ``seed``,
``sdpg.eval.model`` and ``sdpg.eval.step``; ``sdpg-report --include-evals`` shows such runs as rows.
Each benchmark's metrics are logged when it finishes and marked done (``sdpg.eval.done.<name>``), so an
interrupted evaluation resumes with the benchmarks not yet done. Every input is checked before anything is
written: a bad one is one line and exit code 2.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdpg.orchestration import tracking
from sdpg.training.config import ConfigError, TrainConfig, load_config

DEFAULT_FOLDER = "evals"
DEFAULT_EXPERIMENT = "sdpg-eval"


@dataclass
class Target:
    """What is evaluated: the config that says how, the step it is logged at, and, for a run folder, the
    checkpoint's model state loaded over the base model."""

    kind: str  # "builtin" | "run" | "export" | "model"
    cfg: TrainConfig
    step: int
    label: str  # default row name (``variant``)
    identity: str  # the model's identity in the run hash
    state: dict | None = None


def _model_config_ok(folder: Path) -> None:
    """A folder transformers can load a causal LM config from; ``ConfigError`` naming it otherwise."""
    conf = folder / "config.json"
    if not conf.is_file():
        raise ConfigError(f"model path {folder} is not a model: it has no config.json (nor is it a run folder)")
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(str(folder))
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"model path {folder} is not a model: its config.json does not load ({reason[:200]})") from None
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ConfigError(f"model path {folder} is not a model: it has no weights (*.safetensors, *.bin)")


def resolve_target(model: str, config: str | None, overrides: list[str], step: int | None) -> Target:
    from sdpg.training.export import CONFIG_FILE, META_FILE, ExportError, pick_checkpoint, run_config

    p = Path(model)
    if p.is_dir() and (p / "config.yaml").is_file() and not (p / "config.json").is_file():  # a run folder
        if config is not None:
            raise ConfigError(f"{p} is a run folder: it brings its own config.yaml, so CONFIG {config} cannot be given")
        cfg = run_config(p)
        if overrides:
            cfg = load_config(str(p / "config.yaml"), [f"run.output_dir={p}", *overrides])
        k, state = pick_checkpoint(p, step, cfg, log=_log)
        return Target("run", cfg, k, f"{p.resolve().name}@{k}", f"run {cfg.config_hash()} step {k}", state["model"])
    if p.is_dir() and (p / META_FILE).is_file():  # an exported folder
        _model_config_ok(p)
        try:
            meta = json.loads((p / META_FILE).read_text())
            k = int(meta["step"])
        except Exception as e:
            raise ConfigError(f"model path {p}: {META_FILE} does not read ({type(e).__name__})") from None
        if step is not None and step != k:
            raise ConfigError(f"model path {p} holds step {k} (its {META_FILE}), not --step {step}")
        base = str(p / CONFIG_FILE) if config is None and (p / CONFIG_FILE).is_file() else config
        cfg = load_config(base, [*overrides, f"model.path={p.resolve()}"])
        return Target("export", cfg, k, f"{p.resolve().name}@{k}", f"export {meta.get('config_hash')} step {k}")
    if model == "embedded":
        cfg = load_config(config, [*overrides, "model.path=embedded"])
        return Target(
            "builtin", cfg, step or 0, "base", f"embedded {json.dumps(cfg.model.embedded.model_dump(), sort_keys=True)}"
        )
    if p.is_dir():
        _model_config_ok(p)
        cfg = load_config(config, [*overrides, f"model.path={p.resolve()}"])
        return Target("model", cfg, step or 0, p.resolve().name, f"folder {p.resolve()}")
    if p.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ExportError(f"model path {model} is not a model: not a folder, a run folder or a hub id (owner/name)")
    cfg = load_config(config, [*overrides, f"model.path={model}"])
    try:  # a hub id: its config must resolve (download, or the local cache) before anything is written
        from transformers import AutoConfig

        AutoConfig.from_pretrained(model, trust_remote_code=cfg.model.trust_remote_code)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"model {model} is not a model: no such folder, and as a hub id it does not resolve ({reason[:200]})"
        ) from None
    return Target("model", cfg, step or 0, model, f"hub {model}")


def benchmarks_of(cfg: TrainConfig, names: list[str] | None) -> dict[str, str]:
    """``name -> source`` of the benchmarks to run: ``--benchmarks`` entries ``NAME=SOURCE`` or ``SOURCE``
    (named by the config's ``data.eval`` key of that source, else the part after ``:``, else the file stem),
    default the config's ``data.eval``. Every one is read here, so an unknown one stops before anything runs."""
    from sdpg.training.data import read_source

    if not names:
        chosen = dict(cfg.data.eval)
    else:
        by_source = {v: k for k, v in cfg.data.eval.items()}
        chosen = {}
        for entry in names:
            if "=" in entry:
                name, source = entry.split("=", 1)
            else:
                source = entry
                name = by_source.get(source) or (source.split(":", 1)[1] if ":" in source else Path(source).stem)
            if not name or "/" in name or name in chosen:
                raise ConfigError(f"--benchmarks entry {entry!r}: the name {name!r} is empty, has a '/', or is given twice")
            chosen[name] = source
    if not chosen:
        raise ConfigError("no benchmarks: give --benchmarks or a config with data.eval")
    for name, source in chosen.items():
        rows = read_source(source, cfg.data, "test")
        if not rows:
            raise ConfigError(f"benchmark {name}={source} has no rows")
    return chosen


def eval_hash(target: Target) -> str:
    """What makes two evaluations the same: the model, the step, and every setting that changes a sample or
    a score (the benchmarks are not in it: each one is marked done in the run on its own)."""
    d = target.cfg.resolved()
    eval_settings = {k: v for k, v in d["eval"].items() if k != "every"}
    data = {k: v for k, v in d["data"].items() if k not in ("train", "eval", "train_limit", "shuffle")}
    rollout = {k: d["rollout"].get(k) for k in ("max_new_tokens", "seed_per_prompt", "backend", "batch_size")}
    model = {k: d["model"].get(k) for k in ("dtype", "param_dtype", "attn_implementation")}
    blob = {
        "model": target.identity,
        "step": target.step,
        "eval": eval_settings,
        "data": data,
        "rollout": rollout,
        "reward": d["reward"],
        "model_settings": model,
        "seed": d["run"]["seed"],
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def destination(into: str | None, experiment: str | None) -> tuple[str, str, Path | None]:
    """(tracking URI, experiment, folder to create or None) of ``--into``: ``URI#EXPERIMENT``, a folder
    holding ``mlflow.db`` (an ablation's or sweep's output: its one experiment unless ``--experiment``), or a
    new folder (default ``evals/``) with experiment ``--experiment`` (default ``sdpg-eval``). Reads only."""
    if into and "#" in into:
        uri, exp = into.rsplit("#", 1)
        if experiment and experiment != exp:
            raise ConfigError(f"--into {tracking.redact(into)} names experiment {exp!r}, --experiment {experiment!r}")
        return uri, exp, None
    folder = Path(into or DEFAULT_FOLDER)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--into {folder} is a file, not a folder")
    db = folder / "mlflow.db"
    uri = tracking.default_uri(folder)
    if not db.is_file():
        return uri, experiment or DEFAULT_EXPERIMENT, folder
    if experiment:
        return uri, experiment, None
    c = tracking.client(uri)
    names = [e.name for e in tracking.retry(c.search_experiments) if e.name != "Default"]
    if len(names) != 1:
        raise ConfigError(
            f"--into {folder} holds {len(names)} experiments ({', '.join(names) or 'none'}); name one with --experiment"
        )
    return uri, names[0], None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt_s(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


class Progress:
    """Problems done over all benchmarks, the rate so far and the time left, at most every ``every_s``."""

    def __init__(self, total: int, every_s: float = 2.0):
        self.total, self.every_s = total, every_s
        self.before = 0  # problems of finished benchmarks
        self.started = time.perf_counter()
        self.last = -1e9

    def __call__(self, name: str, done: int, n: int) -> None:
        now = time.perf_counter()
        if done < n and now - self.last < self.every_s:
            return
        self.last = now
        so_far = self.before + done
        rate = so_far / max(now - self.started, 1e-9)
        eta = (self.total - so_far) / rate if rate > 0 else float("nan")
        _log(f"[sdpg-eval] {name}: {done}/{n} problems · all {so_far}/{self.total} · {rate:.1f} problems/s · ETA {_fmt_s(eta)}")
        if done == n:
            self.before += n


def evaluate_target(target: Target, benchmarks: dict[str, str], backend: str, on_benchmark) -> None:
    """Load the model once and evaluate each benchmark, calling ``on_benchmark(name, metrics)`` after each."""
    import contextlib

    import torch

    from sdpg.training.config import SCORER_METRIC_NAMES
    from sdpg.training.data import read_source
    from sdpg.training.embedded import task_of_source
    from sdpg.training.evaluate import evaluate
    from sdpg.training.model import compute, load_policy, resolve_device
    from sdpg.training.randomness import seed_everything
    from sdpg.training.rewards import Verifier
    from sdpg.training.rollout import HFRollout, VLLMRollout
    from sdpg.training.trainer import tokenize_prompts

    cfg = target.cfg
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = resolve_device(cfg.model.device)
    seed_everything(cfg.run.seed)
    tokenizer, policy = load_policy(cfg, device, _log)
    if target.state is not None:
        policy.load_state_dict(target.state)
    policy.eval()
    sets = {}
    for name, source in benchmarks.items():
        rows = read_source(source, cfg.data, "test")[: cfg.data.eval_limit]
        rows, prompts, _ = tokenize_prompts(rows, cfg, tokenizer, f"data.eval.{name}", _log)
        sets[name] = (rows, prompts)
    kind = cfg.reward.verifier if cfg.reward.verifier != "auto" else ("exact" if task_of_source(cfg.data.train) else "math")
    with contextlib.ExitStack() as stack:
        verifier = Verifier(kind, cfg.reward.timeout_s, boxed_tail_chars=cfg.reward.boxed_tail_chars)
        stack.callback(verifier.close)
        scorers = {}
        for other in dict.fromkeys(cfg.eval.extra_scorers):
            scorers[SCORER_METRIC_NAMES[other]] = Verifier(
                other, cfg.reward.timeout_s, boxed_tail_chars=cfg.reward.boxed_tail_chars
            )
            stack.callback(scorers[SCORER_METRIC_NAMES[other]].close)
        if backend == "vllm":
            max_len = cfg.data.max_prompt_tokens + (cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens)
            engine: Any = VLLMRollout(
                policy.sdpg_source_path,
                tokenizer,
                dtype=cfg.model.dtype,
                max_model_len=min(getattr(policy.config, "max_position_embeddings", 1 << 30), max_len),
                gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization,
                seed=cfg.run.seed,
                cpu_memory_gb=cfg.rollout.vllm_cpu_memory_gb,
            )
            stack.callback(engine.close)
            if target.state is not None:
                engine.sync_weights(policy)
        else:
            engine = HFRollout(policy, tokenizer, cfg.rollout.batch_size)
        progress = Progress(sum(len(rows) for rows, _ in sets.values()))
        for name, data in sets.items():
            with compute(cfg, device) if backend == "hf" else contextlib.nullcontext():
                started = time.perf_counter()
                metrics = evaluate(
                    engine,
                    tokenizer,
                    verifier,
                    {name: data},
                    cfg,
                    target.step,
                    device=device,
                    extra_scorers=scorers,
                    progress=progress,
                )
            metrics[f"timing/eval/{name}"] = time.perf_counter() - started
            on_benchmark(name, metrics)


def evaluate_model(
    model: str,
    args: list[str],
    step: int | None = None,
    sources: list[str] | None = None,
    into: str | None = None,
    experiment: str | None = None,
    name: str | None = None,
    backend: str = "config",
) -> int:
    """``sdpg-eval``'s work: ``model`` (see the module's docstring) with ``args`` (CONFIG.yaml first, optional,
    then key.path=value overrides) on ``sources`` ([NAME=]SOURCE; default the config's ``data.eval``), logged
    into ``into`` / ``experiment`` as row ``name``; prints the logged metrics as one JSON line."""
    import importlib.util

    if step is not None and step < 0:
        raise ConfigError(f"--step {step} must be >= 0")
    config = args[0] if args and "=" not in args[0] else None
    overrides = [x for x in args if x is not config]
    target = resolve_target(model, config, overrides, step)
    benchmarks = benchmarks_of(target.cfg, sources)
    backend = target.cfg.rollout.backend if backend == "config" else backend
    if backend == "auto":
        backend = "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    uri, experiment, folder = destination(into, experiment)
    h = eval_hash(target)
    label = name or target.label

    # everything checked: from here on the evaluation writes
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    c = tracking.client(uri)
    exp_id = tracking.get_or_create_experiment(c, experiment, tracking.artifact_location(uri, folder or Path(DEFAULT_FOLDER)))
    run = tracking.find_run(c, exp_id, **{"sdpg.eval_hash": h})
    done: dict[str, str] = {}
    if run is not None:
        done = {k[len("sdpg.eval.done.") :]: v for k, v in run.data.tags.items() if k.startswith("sdpg.eval.done.")}
        clash = [n for n, s in benchmarks.items() if n in done and done[n] != s]
        if clash:
            raise ConfigError(
                f"benchmark {clash[0]} was evaluated on {done[clash[0]]} in MLflow run {run.info.run_id}, "
                f"not {benchmarks[clash[0]]}; give it another name (NAME=SOURCE)"
            )
        run_id = run.info.run_id
    else:
        tags = {
            "sdpg.run_hash": h,
            "sdpg.eval_hash": h,
            "sdpg.kind": "eval",
            "variant": label,
            "method": "eval",
            "seed": str(target.cfg.run.seed),
            "sdpg.eval.model": tracking.redact(model),
            "sdpg.eval.step": str(target.step),
            "sdpg.eval.target": target.kind,
            "sdpg.git_commit": tracking.git_commit(),
        }
        created = tracking.retry(c.create_run, exp_id, run_name=f"eval {label}", tags=tags)
        run_id = created.info.run_id
        params = {k: tracking.redact(str(v))[:500] for k, v in tracking.flatten(target.cfg.resolved()).items()}
        items = list(params.items())
        from mlflow.entities import Param

        for i in range(0, len(items), 100):
            tracking.retry(c.log_batch, run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
    todo = {n: s for n, s in benchmarks.items() if n not in done}
    _log(
        f"[sdpg-eval] {label} (step {target.step}, {backend}) -> MLflow run {run_id} in {experiment!r}: "
        f"{len(todo)} benchmarks to run"
        + (f", {len(benchmarks) - len(todo)} already done" if len(todo) < len(benchmarks) else "")
    )
    sink = tracking.MlflowSink(uri, run_id)
    results: dict[str, float] = {}

    def on_benchmark(name: str, metrics: dict[str, float]) -> None:
        sink.log(metrics, target.step)
        tracking.retry(c.set_tag, run_id, f"sdpg.eval.done.{name}", benchmarks[name])
        results.update(metrics)
        shown = ", ".join(f"{k.split('/', 2)[-1]}={v:.4f}" for k, v in metrics.items() if not k.startswith("timing/"))
        _log(f"[sdpg-eval] {name}: {shown}")

    try:
        if todo:
            evaluate_target(target, todo, backend, on_benchmark)
    except BaseException as e:
        from mlflow.entities import RunStatus

        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        sink.finish(RunStatus.to_string(getattr(RunStatus, status)))
        raise
    sink.finish("FINISHED")
    logged = {
        tracking.from_mlflow_key(k): v for k, v in tracking.retry(c.get_run, run_id).data.metrics.items() if k.startswith("eval/")
    }
    print(json.dumps({"run_id": run_id, "experiment": experiment, "step": target.step, "metrics": dict(sorted(logged.items()))}))
    return 0
