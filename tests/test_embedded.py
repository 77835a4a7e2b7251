"""The built-in base model: shipped with the package, copied into an empty cache, built only for
another recipe (one builder, the others say that they wait), and reproducible from its recipe."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from sdpg.training import embedded
from sdpg.training.config import EmbeddedModelConfig

REPO = Path(__file__).resolve().parents[1]


def test_the_default_recipe_is_the_shipped_one():
    meta = embedded.shipped_recipe()
    assert meta is not None, f"no model in {embedded.SHIPPED_DIR}"
    recipe = EmbeddedModelConfig()
    assert meta["recipe_hash"] == embedded.recipe_hash(recipe), (
        "the default recipe changed without shipping its model: python -m sdpg.training.embedded ship"
    )
    assert {k: meta[k] for k in recipe.model_dump()} == recipe.model_dump()
    assert meta["student_accuracy"] >= recipe.target_accuracy * 0.5  # what the build measured at its end
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (embedded.SHIPPED_DIR / name).is_file(), name


def test_an_empty_cache_gets_the_shipped_model_without_a_build(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("SDPG_CACHE", str(tmp_path / "cache"))
    lines: list[str] = []
    path = embedded.ensure_embedded_model(EmbeddedModelConfig(), log=lines.append)
    assert lines == []  # no build, no waiting
    assert path == tmp_path / "cache" / f"embedded-{embedded.recipe_hash(EmbeddedModelConfig())}"
    assert (path / "model.safetensors").read_bytes() == (embedded.SHIPPED_DIR / "model.safetensors").read_bytes()
    assert not list((tmp_path / "cache").glob(".tmp-*"))
    assert embedded.ensure_embedded_model(EmbeddedModelConfig(), log=lines.append) == path and lines == []

    # The copy is a working model of the task: it solves held-out problems as often as its build measured.
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    acc = embedded.student_accuracy(model, tok)
    recorded = json.loads((path / "sdpg_recipe.json").read_text())["student_accuracy"]
    assert abs(acc - recorded) <= 0.1, (acc, recorded)


@pytest.mark.slow
def test_another_recipe_is_built_once_while_other_processes_wait(tmp_path, monkeypatch):
    """A second process that needs the model while it is being built says that it waits, then builds
    nothing: here the test holds the build lock, as a first builder would."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SDPG_CACHE", str(cache))
    recipe = EmbeddedModelConfig(hidden_size=16, num_layers=1, num_heads=2, pretrain_steps=3, pretrain_batch=8)
    h = embedded.recipe_hash(recipe)
    assert h != embedded.shipped_recipe()["recipe_hash"]
    code = (
        "import sys; from sdpg.training.config import EmbeddedModelConfig as C; "
        "from sdpg.training.embedded import ensure_embedded_model as e; "
        f"print(e(C(**{recipe.model_dump()!r})))"
    )
    env = {**os.environ, "SDPG_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    cache.mkdir()
    with open(cache / f".embedded-{h}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = proc.stderr.readline()  # blocks until the child has imported everything and met the lock
        while first and not first.startswith("[embedded]"):  # library warnings, if any
            first = proc.stderr.readline()
        assert first.strip() == f"[embedded] waiting for another process's base-model build (recipe {h})"
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting
        fcntl.flock(held, fcntl.LOCK_UN)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("[embedded]")]
    assert lines[0] == f"[embedded] building the base model for recipe {h} (once; other runs wait for it)"
    assert lines[1] == "[embedded] pre-training until student pass@1 >= 0.30 (checked every 50 steps; at most 3 steps)"
    assert lines[-1].startswith("[embedded] base model ready (")
    target = Path(out.strip())
    assert target == cache / f"embedded-{h}"
    meta = json.loads((target / "sdpg_recipe.json").read_text())
    assert meta["recipe_hash"] == h and meta["pretrain_steps_done"] == 3 and meta["build"]["threads"] == 1
    said: list[str] = []
    assert embedded.ensure_embedded_model(recipe, log=said.append) == target and said == []


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("SDPG_TEST_REBUILD") != "1",
    reason="the full base-model rebuild (about 15-45 min on one thread) runs only with SDPG_TEST_REBUILD=1, not in CI",
)
@pytest.mark.timeout(3 * 3600)  # the build itself, on one thread: minutes on a quiet machine
def test_rebuilding_the_default_recipe_reproduces_the_shipped_weights(tmp_path):
    """Bitwise where the build environment is the shipped one's (torch version, CPU kind, thread
    count); elsewhere float sums round differently and training amplifies that, so the rebuild must
    only reach the target accuracy within 100 steps of the shipped build."""
    shipped = embedded.shipped_recipe()
    meta = embedded.build_embedded_model(EmbeddedModelConfig(), tmp_path / "rebuilt", log=lambda _: None)
    if meta["build"] == shipped["build"]:
        a, b = _tensors(embedded.SHIPPED_DIR), _tensors(tmp_path / "rebuilt")
        assert sorted(a) == sorted(b)
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert different == []
        assert meta["pretrain_steps_done"] == shipped["pretrain_steps_done"]
        assert meta["student_accuracy"] == shipped["student_accuracy"]
    else:
        assert abs(meta["pretrain_steps_done"] - shipped["pretrain_steps_done"]) <= 100, (meta, shipped)
        assert meta["student_accuracy"] >= EmbeddedModelConfig().target_accuracy * 0.5


@pytest.mark.slow
def test_a_wheel_of_the_package_carries_the_shipped_model(tmp_path):
    """A non-editable install gets the model: the wheel built from the project holds every shipped file."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "sdpg", src / "sdpg", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "dist").glob("sdpg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"sdpg/training/assets/embedded/{p.name}" for p in embedded.SHIPPED_DIR.iterdir()}
    assert shipped and shipped <= names, shipped - names
    assert "sdpg/training/configs/embedded.yaml" in names


def test_sdpg_ablate_says_a_run_waits_for_a_build_only_when_one_is_needed(tmp_path, monkeypatch):
    """The default recipe is copied, never built: its runs are not shown as waiting for a build."""
    from sdpg.orchestration.ablate import load_plan
    from sdpg.orchestration.ablate.submission import _base_model_pending

    monkeypatch.setenv("SDPG_CACHE", str(tmp_path / "empty-cache"))
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\nbase: embedded\nvariants:\n  shipped: {}\n  other: {model.embedded.hidden_size: 64}\nseeds: [0]\n")
    runs = {r.variant: r for r in load_plan(spec).runs}
    assert _base_model_pending(runs["shipped"]) is False
    assert _base_model_pending(runs["other"]) is True


# ------------------------------------------------------------------------------- held-out sets of graded difficulty
def _ops(row: dict) -> list[int]:
    return [int(x) for x in row["problem"].split("+")]


def test_builtin_eval_sets_are_held_out_graded_and_the_same_in_every_process():
    train = {r["problem"] for r in embedded.train_rows()}
    sets = {name: embedded.eval_rows(name) for name in embedded.EVAL_SETS}
    assert sets["in_distribution"] == embedded.test_rows()  # `embedded` and `embedded:in_distribution` agree
    for name, rows in sets.items():
        spec = embedded.EVAL_SETS[name]
        assert len(rows) == embedded.EVAL_SET_SIZE == len({r["problem"] for r in rows}), name
        assert not train & {r["problem"] for r in rows}, name
        for r in rows:
            ops = _ops(r)
            assert len(ops) == spec["terms"] and all(spec["low"] <= x <= spec["high"] for x in ops), r
            assert r["answer"] == str(sum(ops)) and embedded.exact_answer(r["solution"]) == r["answer"]
    assert all(max(_ops(r)) >= 100 for r in sets["larger_numbers"])
    # another interpreter with another hash seed draws the same problems
    code = "from sdpg.training import embedded as e; print([r['problem'] for n in e.EVAL_SETS for r in e.eval_rows(n)])"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str([r["problem"] for n in sets for r in sets[n]])


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["data.eval={hard: 'embedded:hardest'}"], "key 'data.eval.hard' has bad value 'embedded:hardest': not a built-in set"),
        (["data.train=embedded:more_terms"], "key 'data.train' has bad value 'embedded:more_terms'"),
        (
            ["data.eval={more_terms: 'embedded:more_terms'}", "eval.max_new_tokens=32"],
            "key 'eval.max_new_tokens' has bad value 32",
        ),
    ],
)
def test_bad_builtin_set_choices_are_refused_naming_key_and_value(overrides, says):
    from sdpg.training.config import ConfigError, load_config

    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert says in str(e.value)


# `embedded` (the default, the in-distribution set) stays: override mappings add keys to data.eval
THREE_PANELS = ("data.eval.more_terms=embedded:more_terms", "data.eval.larger_numbers=embedded:larger_numbers")


@pytest.mark.slow
def test_a_run_evaluates_the_three_builtin_benchmarks_as_three_panels(tiny_config, tmp_path):
    """The shipped model, before any RL (step 0), solves held-out problems like its training ones more
    often than either harder set; the paper-style grid draws the three benchmarks as its top row."""
    import pandas as pd

    from sdpg.reporting import report
    from sdpg.training.trainer import train

    cfg = tiny_config(*THREE_PANELS, "eval.max_new_tokens=40", "run.total_steps=2", "data.eval_limit=16")
    train(cfg)
    rows = [json.loads(x) for x in (Path(cfg.run.output_dir) / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if r["step"] == 0)
    benches = ("embedded", "more_terms", "larger_numbers")
    acc = {b: first[f"eval/{b}/mean@2"] for b in benches}
    assert acc["embedded"] > max(acc["more_terms"], acc["larger_numbers"]), acc
    last = next(r for r in rows if r["step"] == 2)
    assert all(f"eval/{b}/mean@2" in last for b in benches)

    long = [("r", "r", "sdpg", "sdpg_urkl", 0, k, r["step"], v) for r in rows for k, v in r.items() if k != "step"]
    df = pd.DataFrame(long, columns=report.COLUMNS)
    png, fig = report.paper_grid(df, tmp_path / "grid", keep_figure=True)
    assert png.is_file()
    drawn = [ax.get_title() for ax in fig.axes if ax.get_lines()]
    assert drawn == [f"{b} mean@2" for b in benches] + ["reward", "entropy", "response length"]
