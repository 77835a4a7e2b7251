"""``sdpg-eval MODEL [CONFIG.yaml] [key.path=value ...]``: its options; the evaluation is
``sdpg.orchestration.evaluation``."""

from __future__ import annotations

import argparse

from sdpg.orchestration.evaluation import evaluate_model


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sdpg-eval",
        description="Evaluate a model (the built-in one, a folder, a hub id, a run folder or an exported run) on "
        "benchmarks with the trainer's evaluation, logged as an MLflow run of its own.",
    )
    p.add_argument("model", help="embedded | MODEL_FOLDER | HUB_ID | RUN_FOLDER | EXPORTED_FOLDER")
    p.add_argument("args", nargs="*", help="CONFIG.yaml first (optional; not with a run folder), then key.path=value overrides")
    p.add_argument("--step", type=int, default=None, help="a run folder's checkpoint (default: newest); else the step logged (0)")
    p.add_argument("--benchmarks", nargs="+", metavar="[NAME=]SOURCE", help="data sources (default: the config's data.eval)")
    p.add_argument("--into", help="URI#EXPERIMENT or a folder with mlflow.db (an ablation's output); default: evals/")
    p.add_argument("--experiment", help="the experiment in --into (default: its only one, or sdpg-eval)")
    p.add_argument("--name", help="the row name (MLflow tag variant; default from the model)")
    p.add_argument(
        "--backend",
        choices=["config", "hf", "vllm", "auto"],
        default="config",
        help="sampling engine: the config's rollout.backend (default), hf, vllm, or auto (vllm where installed)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    return evaluate_model(a.model, a.args, a.step, a.benchmarks, a.into, a.experiment, a.name, a.backend)
