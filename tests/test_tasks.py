"""The two built-in tasks: ``sum`` (three terms, any order) and ``chain`` (four terms, one canonical
path): their rows, solutions, verifier, held-out sets, recipes and base configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdpg.paths import BUILTIN_CONFIGS
from sdpg.training import embedded
from sdpg.training.config import ConfigError, EmbeddedModelConfig, load_config
from sdpg.training.rewards import Verifier

SUM_HASH = "a07fa7d446"  # recipe version 4: the stop rule reads its own split


def _ops(row: dict) -> list[int]:
    return [int(x) for x in row["problem"].split("+")]


def test_chain_rows_have_one_canonical_left_to_right_solution():
    rows = embedded.train_rows(task="chain")
    assert len(rows) == 20000
    for r in rows[:500]:
        ops = _ops(r)
        assert len(ops) == 4 and all(10 <= x <= 99 for x in ops)
        acc, steps = ops[0], []
        for x in ops[1:]:
            steps.append(f"{acc}+{x}={acc + x}")
            acc += x
        assert r["solution"] == ";".join(steps) + f";#{acc}" and r["answer"] == str(sum(ops))
    assert embedded.solve([47, 18, 36, 25]) == "47+18=65;65+36=101;101+25=126;#126"
    # the solution stays in the tokenizer's alphabet: one token per character, no unknowns
    tok = embedded.build_tokenizer()
    ids = tok.encode(rows[0]["solution"], add_special_tokens=False)
    assert len(ids) == len(rows[0]["solution"]) and tok.unk_token_id not in ids


def test_the_exact_verifier_scores_chain_answers():
    v = Verifier("exact")
    sol = "47+18=65;65+36=101;101+25=126;#126"
    assert v.correctness([sol, sol.replace("#126", "#125"), "47+18=65;65+36=101", "#126"], ["126"] * 4) == [1.0, 0.0, 0.0, 1.0]


def test_chain_eval_sets_are_held_out_graded_and_distinct():
    train = {r["problem"] for r in embedded.train_rows(task="chain")}
    pretrain = {r["problem"] for r in embedded.make_rows(48000, "pretrain", "chain")}
    sets = {name: embedded.eval_rows(name, task="chain") for name in embedded.CHAIN_EVAL_SETS}
    assert sets["in_distribution"] == embedded.test_rows(task="chain")
    problems = {name: {r["problem"] for r in rows} for name, rows in sets.items()}
    for name, rows in sets.items():
        spec = embedded.CHAIN_EVAL_SETS[name]
        assert len(rows) == embedded.EVAL_SET_SIZE == len(problems[name]), name
        assert not (train | pretrain) & problems[name], name  # never seen in pre-training or RL
        for r in rows:
            ops = _ops(r)
            assert len(ops) == spec["terms"] and all(spec["low"] <= x <= spec["high"] for x in ops), r
            assert r["solution"] == embedded.solve(ops) and embedded.exact_answer(r["solution"]) == r["answer"]
    assert all(max(_ops(r)) >= 100 for r in sets["larger_numbers"])
    names = list(problems)
    assert all(not problems[a] & problems[b] for i, a in enumerate(names) for b in names[i + 1 :])
    # and none of them is a sum-task set
    sum_sets = {r["problem"] for n in embedded.EVAL_SETS for r in embedded.eval_rows(n)}
    assert not sum_sets & set().union(*problems.values())
    # harder sets need longer answers
    need = {n: embedded.eval_set_response_tokens(n, "chain") for n in sets}
    assert need["in_distribution"] < need["larger_numbers"] < need["more_terms"] == 48, need


def test_builtin_sources_read_their_tasks_rows():
    from sdpg.training.config import DataConfig
    from sdpg.training.data import read_source

    d = DataConfig()
    assert read_source("embedded_chain", d, "train")[:3] == embedded.train_rows(task="chain")[:3]
    assert read_source("embedded_chain:more_terms", d, "test") == embedded.eval_rows("more_terms", task="chain")
    assert read_source("embedded:more_terms", d, "test") == embedded.eval_rows("more_terms")
    with pytest.raises(ConfigError, match="held out for evaluation; train on 'embedded_chain'"):
        read_source("embedded_chain:more_terms", d, "train")


def test_the_sum_recipe_and_its_hash_are_unchanged_and_chain_follows_from_task():
    assert embedded.recipe_hash(EmbeddedModelConfig()) == SUM_HASH
    assert embedded.recipe_hash(EmbeddedModelConfig(task="sum")) == SUM_HASH
    assert "task" not in EmbeddedModelConfig().model_dump()
    chain = EmbeddedModelConfig(task="chain")
    assert chain.target_accuracy == embedded.TASK_TARGET_ACCURACY["chain"] != EmbeddedModelConfig().target_accuracy
    assert embedded.recipe_hash(chain) != SUM_HASH
    assert EmbeddedModelConfig.model_validate(chain.model_dump()) == chain  # the dump round-trips
    assert EmbeddedModelConfig(task="chain", target_accuracy=0.5).target_accuracy == 0.5  # an explicit value wins
    assert json.loads((embedded.SHIPPED_DIR / "sdpg_recipe.json").read_text())["recipe_hash"] == SUM_HASH


def test_each_task_ships_its_default_model_and_the_chain_starts_where_the_issue_asks(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for task in embedded.TASKS:
        meta = embedded.shipped_recipe(task)
        recipe = EmbeddedModelConfig(task=task)
        assert meta is not None, f"no {task} model in {embedded.shipped_dir(task)}"
        assert meta["recipe_hash"] == embedded.recipe_hash(recipe), task
        assert {k: meta[k] for k in recipe.model_dump()} == recipe.model_dump(), task
    chain = embedded.shipped_recipe("chain")
    assert 0.10 <= chain["student_accuracy"] <= 0.25 and chain["teacher_accuracy"] >= 0.9, chain
    # an empty cache gets the shipped copy (no build), and it measures what its build recorded
    monkeypatch.setenv("SDPG_CACHE", str(tmp_path / "cache"))
    lines: list[str] = []
    path = embedded.ensure_embedded_model(EmbeddedModelConfig(task="chain"), log=lines.append)
    assert lines == [] and path.name == f"embedded-{chain['recipe_hash']}"
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert abs(embedded.student_accuracy(model, tok, task="chain") - chain["student_accuracy"]) <= 0.1
    assert abs(embedded.sampled_accuracy(model, tok, "chain", "solution") - chain["teacher_accuracy"]) <= 0.1


def test_the_chain_base_config_is_the_embedded_one_but_for_the_task():
    import yaml

    chain = yaml.safe_load(BUILTIN_CONFIGS["embedded_chain"].read_text())
    base = yaml.safe_load(BUILTIN_CONFIGS["embedded"].read_text())
    differ = {(s, k) for s in base for k in set(base[s]) | set(chain[s]) if base[s].get(k) != chain[s].get(k)}
    assert differ == {
        ("model", "embedded"),
        ("data", "train"),
        ("data", "eval"),
        ("data", "max_prompt_tokens"),
        ("rollout", "max_new_tokens"),
        ("eval", "max_new_tokens"),
        ("run", "output_dir"),
    }
    cfg = load_config(BUILTIN_CONFIGS["embedded_chain"])
    assert cfg.model.embedded == EmbeddedModelConfig(task="chain")
    assert cfg.data.eval == {k: f"embedded_chain:{k}" for k in ("in_distribution", "more_terms", "larger_numbers")}


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (
            ["model.embedded.task=sum"],
            "key 'model.embedded.task' has bad value 'sum': data.train=embedded_chain is the 'chain'",
        ),
        (
            ["eval.max_new_tokens=40"],
            "key 'eval.max_new_tokens' has bad value 40: data.eval.more_terms=",
        ),
        (["data.eval.x=embedded_chain:hardest"], "key 'data.eval.x' has bad value 'embedded_chain:hardest': not a built-in set"),
        (["data.train=embedded_chain:more_terms"], "key 'data.train' has bad value 'embedded_chain:more_terms'"),
        (["model.embedded.task=sums"], "model.embedded.task"),
    ],
)
def test_bad_chain_choices_are_refused_naming_key_and_value(overrides, says):
    with pytest.raises(ConfigError) as e:
        load_config(BUILTIN_CONFIGS["embedded_chain"], overrides)
    assert says in str(e.value)


def test_a_response_cap_that_cuts_most_chain_solutions_is_warned_about():
    from sdpg.training.trainer import warn_short_responses

    lines: list[str] = []
    cfg = load_config(BUILTIN_CONFIGS["embedded_chain"], ["rollout.max_new_tokens=32"])
    assert warn_short_responses(cfg, lines.append) == pytest.approx(0.01, abs=0.005)
    assert lines and "rollout.max_new_tokens=32 fits only 1%" in lines[0] and "all fit in 37" in lines[0]
    lines.clear()
    assert warn_short_responses(load_config(BUILTIN_CONFIGS["embedded_chain"]), lines.append) == 1.0 and lines == []


@pytest.mark.slow
def test_the_chain_base_config_trains_two_steps_from_its_shipped_model(tmp_path, monkeypatch):
    from conftest import TINY

    from sdpg.training.trainer import train

    monkeypatch.setenv("SDPG_CACHE", str(tmp_path / "cache"))  # an empty cache: the shipped copy, no build
    tiny = [x for x in TINY if not x.startswith("rollout.max_new_tokens")]
    cfg = load_config(BUILTIN_CONFIGS["embedded_chain"], tiny + ["run.total_steps=2", f"run.output_dir={tmp_path / 'run'}"])
    train(cfg)
    assert not list((tmp_path / "cache").glob(".tmp-*"))
    rows = [json.loads(x) for x in (Path(cfg.run.output_dir) / "metrics.jsonl").read_text().splitlines()]
    last = next(r for r in rows if r["step"] == 2)
    for key in ("in_distribution", "more_terms", "larger_numbers"):
        assert 0.0 <= last[f"eval/{key}/mean@2"] <= 1.0
    assert any("train/reward" in r for r in rows)


def test_the_build_stop_rule_reads_a_split_of_its_own():
    """The start point is not chosen on the evaluation problems: the stop rule's problems share none with any
    evaluation set of either task, and they are the problems the build's check samples."""
    for task in embedded.TASKS:
        stop = embedded.stop_rows(task=task)
        problems = {r["problem"] for r in stop}
        assert len(stop) == embedded.STOP_PROBLEMS == len(problems)
        for name in embedded.TASK_EVAL_SETS[task]:
            assert problems.isdisjoint(r["problem"] for r in embedded.eval_rows(name, task=task)), (task, name)
        assert stop == embedded.stop_rows(task=task)  # deterministic
        assert stop[0]["problem"].count("+") == embedded.TASK_TERMS[task] - 1  # shaped as the training rows
