"""Ablation specs: resolution, hashing, dry runs, and bad specs refused before anything exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdpg.commands.ablate import main
from sdpg.orchestration.ablate import load_plan
from sdpg.training.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]

GOOD = """
name: t
base: embedded
overrides: {run.total_steps: 3}
variants:
  full: {}
  no_std_norm: {algo.std_norm: false}
grid:
  algo.kl_mode: [urkl, ufkl]
seeds: [0, 1]
"""


def write(tmp_path, text, name="spec.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_plan_resolves_every_run_with_distinct_hashes(tmp_path):
    plan = load_plan(write(tmp_path, GOOD))
    assert len(plan.runs) == 2 * 2 * 2
    assert len({r.hash for r in plan.runs}) == 8
    r = next(r for r in plan.runs if r.variant == "no_std_norm" and r.grid["algo.kl_mode"] == "ufkl" and r.seed == 1)
    assert r.config.algo.std_norm is False and r.config.algo.kl_mode == "ufkl" and r.config.run.seed == 1
    assert r.config.run.total_steps == 3
    assert r.config.run.output_dir.endswith(f"{r.name}-{r.hash[:8]}")
    # the hash is of the resolved content: the same run resolves to the same hash again
    assert [x.hash for x in load_plan(write(tmp_path, GOOD)).runs] == [x.hash for x in plan.runs]


def test_only_filter_and_dry_run_table(tmp_path, capsys):
    p = write(tmp_path, GOOD)
    assert len(load_plan(p, only=["variant=full", "seed=0"]).runs) == 2
    assert len(load_plan(p, only=["algo.kl_mode=ufkl"]).runs) == 4
    assert main([str(p), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "no_std_norm-kl_mode=ufkl-s1" in out and "algo.std_norm=false" in out and "new" in out
    assert not (Path.cwd() / "outputs" / "t").exists()


GROUPS = """
name: t
base: embedded
overrides: {run.total_steps: 3}
variants:
  grpo: {algo.method: grpo}
  sdpg: {}
grid:
  task:
    short: {}
    long: {rollout.max_new_tokens: 40, eval.max_new_tokens: 40}
  algo.alpha: [0.001, 0.01]
seeds: [0, 1]
"""


def test_grid_of_named_groups_names_hashes_and_filters_runs(tmp_path, capsys):
    p = write(tmp_path, GROUPS)
    plan = load_plan(p)
    assert len(plan.runs) == 2 * 2 * 2 * 2
    by_name = {r.name: r for r in plan.runs}
    r = by_name["grpo-task=long-alpha=0.01-s1"]
    assert r.grid == {"task": "long", "algo.alpha": 0.01} and r.variant == "grpo"
    # the group's overrides are applied like any layer; the variant's method preset is kept
    assert r.config.rollout.max_new_tokens == 40 and r.config.algo.alpha == 0.01 and r.config.algo.clip_c is None
    assert by_name["grpo-task=short-alpha=0.01-s1"].config.rollout.max_new_tokens == 32  # the base's
    # identity is the effective config: an empty group is the base itself, whatever the group is called
    plain = load_plan(
        write(
            tmp_path,
            GROUPS.replace("    long: {rollout.max_new_tokens: 40, eval.max_new_tokens: 40}\n", "").replace(
                "  task:\n    short: {}\n", ""
            ),
            "plain.yaml",
        )
    )
    same = {x.name: x.hash for x in plain.runs}
    assert by_name["sdpg-task=short-alpha=0.001-s0"].hash == same["sdpg-alpha=0.001-s0"]
    assert len({x.hash for x in plan.runs}) == 16 and not plan.duplicates
    # --only on the axis name picks the group; on a key inside the group, the resolved value
    assert {x.grid["task"] for x in load_plan(p, only=["task=long"]).runs} == {"long"}
    assert len(load_plan(p, only=["task=long", "variant=sdpg"]).runs) == 4
    assert len(load_plan(p, only=["rollout.max_new_tokens=40"]).runs) == 8
    assert main([str(p), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sdpg-task=long-alpha=0.001-s0" in out and "task=long, algo.alpha=0.001" in out
    assert not (tmp_path / "outputs").exists()


def test_named_groups_that_make_no_difference_are_duplicates(tmp_path):
    # a group whose overrides cannot matter (kl_mode with alpha = 0) repeats the base: trained once
    text = GROUPS.replace("long: {rollout.max_new_tokens: 40, eval.max_new_tokens: 40}", "ufkl: {algo.kl_mode: ufkl}").replace(
        "algo.alpha: [0.001, 0.01]", "algo.alpha: [0.0, 0.01]"
    )
    plan = load_plan(write(tmp_path, text))
    dups = {r.name: r.same_as for r in plan.duplicates}
    assert dups == {f"{v}-task=ufkl-alpha=0.0-s{s}": f"{v}-task=short-alpha=0.0-s{s}" for v in ("grpo", "sdpg") for s in (0, 1)}


def test_group_tags_let_reports_group_runs(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    from sdpg.orchestration.ablate.submission import _child_runs, _experiment

    plan = load_plan(write(tmp_path, GROUPS.replace("seeds: [0, 1]", "seeds: [0]").replace("  algo.alpha: [0.001, 0.01]\n", "")))
    exp = _experiment(plan).open()
    ids = _child_runs(plan, exp)
    c = mlflow.tracking.MlflowClient(plan.tracking_uri)
    got = {}
    for r in plan.distinct:
        t = c.get_run(ids[r.hash]).data.tags
        got[r.name] = (t["variant"], t["grid.task"], t["grid"])
    assert got == {
        "grpo-task=short-s0": ("grpo", "short", '{"task": "short"}'),
        "grpo-task=long-s0": ("grpo", "long", '{"task": "long"}'),
        "sdpg-task=short-s0": ("sdpg", "short", '{"task": "short"}'),
        "sdpg-task=long-s0": ("sdpg", "long", '{"task": "long"}'),
    }


def test_dry_run_shows_each_variant_against_the_previous_one(tmp_path, capsys):
    text = GOOD.replace(
        "  no_std_norm: {algo.std_norm: false}", "  no_std_norm: {algo.std_norm: false}\n  grpo: {algo.method: grpo}"
    )
    assert main([str(write(tmp_path, text)), "--dry-run"]) == 0
    out = capsys.readouterr().out.split("each variant against the previous one")[1]
    lines = [ln.strip() for ln in out.splitlines() if " vs " in ln]
    assert lines[0] == "no_std_norm vs full: algo.std_norm=false"
    # grpo vs no_std_norm: every setting that differs and can matter, nothing inert (beta's schedule at beta 0)
    assert lines[1].startswith("grpo vs no_std_norm: ") and "algo.beta=0.0" in lines[1] and "algo.clip_c=null" in lines[1]
    assert "algo.std_norm=true" in lines[1] and "beta_warmup_steps" not in lines[1] and "output_dir" not in lines[1]


def test_decompose_adds_one_piece_per_step():
    """ablations/decompose.yaml (issue 15): each variant differs from the previous one by exactly its piece."""
    from sdpg.orchestration.ablate import variant_steps

    plan = load_plan(ROOT / "ablations" / "decompose.yaml")
    big = plan.spec.variants["opd_beta_large"]["algo.beta"]
    assert 1e-3 < big <= 1.0 and plan.spec.variants["opd_no_gate"]["algo.beta"] == big
    assert list(plan.spec.variants) == ["grpo", "clip_higher", "urkl_loss", "opd_beta_paper", "opd_beta_large", "opd_no_gate"]
    assert [ln.split(": ", 1)[1] for ln in variant_steps(plan).splitlines()] == [
        "algo.clip_c=10.0, algo.clip_high=0.28",
        "algo.alpha=0.001, algo.kl_mode=urkl, algo.reward_kl_coef=0.0",
        "algo.beta=0.001, algo.beta_decay_steps=21, algo.beta_warmup_steps=3, algo.method=sdpg_urkl",
        f"algo.beta={big}",
        "algo.gate=false",
    ]
    first = {r.variant: r.config for r in plan.runs}
    g = first["grpo"].algo  # Table 1's GRPO, on the faithful toy settings
    assert (g.clip_low, g.clip_high, g.clip_c, g.loss_agg_mode) == (0.2, 0.2, None, "token-mean")
    assert (g.reward_kl_coef, g.reward_kl_estimator, g.alpha, g.beta) == (1e-3, "k1", 0.0, 0.0)
    o = first["grpo"].optim
    assert (o.minibatch_prompts, o.lr_schedule_unit) == (2, "rl_step")
    s = first["opd_beta_paper"].algo  # SDPG-URKL with the paper's beta, schedule scaled 400 -> 24 steps
    assert (s.beta, s.beta_warmup_steps, s.beta_decay_steps, s.gate, s.opd_kl_clamp, s.opd_exclude_stop) == (
        1e-3,
        3,
        21,
        True,
        20.0,
        False,
    )
    assert len(plan.spec.seeds) >= 5 and list(plan.spec.grid["task"]) == ["sum", "chain"]
    assert len(plan.runs) == 60 == len(plan.distinct)
    # both tasks train the same six steps: a variant's chain run differs from its sum run only by the task
    by = {(r.variant, r.grid["task"], r.seed): r.config for r in plan.runs}
    for v in plan.spec.variants:
        chain, summ = by[(v, "chain", 0)], by[(v, "sum", 0)]
        assert chain.data.train == "embedded_chain" and chain.model.embedded.task == "chain"
        assert set(chain.data.eval) == set(summ.data.eval) == {"embedded", "more_terms", "larger_numbers"}
        assert all(x.startswith("embedded_chain:") for x in chain.data.eval.values())
        assert chain.algo == summ.algo and chain.optim == summ.optim


def test_shipped_specs_resolve():
    for spec in sorted((ROOT / "ablations").glob("*.yaml")):
        plan = load_plan(spec, executor="local")
        assert plan.runs, spec


BAD = [
    ("unknown top-level key", GOOD + "colour: red\n", "unknown key 'colour'"),
    (
        "typo of a trainer key in a variant",
        GOOD.replace("algo.std_norm: false", "algo.std_nrom: false"),
        ["variants.no_std_norm", "unknown key 'algo.std_nrom'"],
    ),
    (
        "wrong type in a variant",
        GOOD.replace("algo.std_norm: false", "algo.std_norm: maybe"),
        "key 'algo.std_norm' has bad value 'maybe'",
    ),
    ("negative coefficient", GOOD.replace("algo.std_norm: false", "algo.beta: -0.5"), "key 'algo.beta' has bad value -0.5"),
    ("empty grid axis", GOOD.replace("[urkl, ufkl]", "[]"), "grid axis 'algo.kl_mode' has no values"),
    ("bad grid value", GOOD.replace("[urkl, ufkl]", "[urkl, klx]"), "key 'algo.kl_mode' has bad value 'klx'"),
    ("grid on an unknown key", GOOD.replace("algo.kl_mode:", "algo.kl_mod:"), "unknown key 'algo.kl_mod'"),
    (
        "duplicate variant names",
        GOOD.replace("  no_std_norm: {algo.std_norm: false}", "  full: {algo.std_norm: false}"),
        "duplicate key 'full'",
    ),
    ("missing base file", GOOD.replace("base: embedded", "base: nowhere.yaml"), "key 'base' has bad value 'nowhere.yaml'"),
    ("unknown profile", GOOD + "executor: slurm\nprofile: moon\n", "unknown SLURM profile 'moon'"),
    ("unknown method", GOOD.replace("algo.std_norm: false", "algo.method: ppo"), "key 'algo.method' has bad value 'ppo'"),
    ("no variants", GOOD.split("variants:")[0] + "variants: {}\nseeds: [0]\n", "key 'variants'"),
    ("repeated seeds", GOOD.replace("seeds: [0, 1]", "seeds: [1, 1]"), "seeds repeat"),
    ("bad name", GOOD.replace("name: t", "name: 'my spec!'"), "key 'name' has bad value 'my spec!'"),
    ("variants that are the same run", GOOD.replace("algo.std_norm: false", "algo.std_norm: true"), "resolve to the same config"),
    ("max_parallel zero", GOOD + "max_parallel: 0\n", "key 'max_parallel' has bad value 0"),
    ("unknown tracking key", GOOD + "tracking: {url: x}\n", "unknown key 'tracking.url'"),
    ("bad override value", GOOD.replace("run.total_steps: 3", "run.total_steps: -3"), "key 'run.total_steps' has bad value -3"),
    ("not YAML", "name: [unclosed\n", "not valid YAML"),
    (
        "override through a value",
        GOOD.replace("algo.std_norm: false", "algo.beta.x: 1"),
        "key 'algo.beta' has bad value {'x': 1}",
    ),
]


@pytest.mark.parametrize("what,text,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_spec_is_refused_with_file_key_and_value(tmp_path, capsys, monkeypatch, what, text, needle):
    monkeypatch.chdir(tmp_path)
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_plan(p)
    msg = str(e.value)
    for n in [needle] if isinstance(needle, str) else needle:
        assert n in msg, msg
    assert str(p) in msg, msg
    assert main([str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[0].startswith("error: ") and str(p) in err[0]
    assert not (tmp_path / "outputs").exists()  # nothing submitted, no MLflow store created
    assert not list(tmp_path.rglob("*.db"))


def test_effective_config_drops_only_settings_that_cannot_matter():
    from sdpg.training.config import load_config

    def h(*ov):
        return load_config(None, list(ov)).effective().config_hash()

    # alpha = 0: no L_K, so its surrogate is inert; with alpha > 0 it is not
    assert h("algo.alpha=0", "algo.kl_mode=urkl") == h("algo.alpha=0", "algo.kl_mode=ufkl")
    assert h("algo.kl_mode=urkl") != h("algo.kl_mode=ufkl")
    # beta = 0: no L_OPD+, so neither its schedule, its gate nor the teacher's context matters
    assert h("algo.beta=0", "algo.beta_warmup_steps=3", "algo.gate=true", "data.context=answer") == h(
        "algo.beta=0", "algo.beta_warmup_steps=20", "algo.gate=false", "data.context=solution"
    )
    assert h("algo.beta_warmup_steps=3") != h("algo.beta_warmup_steps=20")
    assert h("data.context=answer") != h("data.context=solution")
    # RLSD's teacher is used even at beta = 0; its knobs matter only under RLSD
    assert h("algo.method=rlsd", "data.context=answer") != h("algo.method=rlsd", "data.context=solution")
    assert h("algo.rlsd_lambda=0.3") == h("algo.rlsd_lambda=0.7")
    assert h("algo.method=rlsd", "algo.rlsd_lambda=0.3") != h("algo.method=rlsd", "algo.rlsd_lambda=0.7")
    # evaluation sampling when nothing is evaluated; the seed always matters
    assert h("eval.every=0", "eval.n_samples=2") == h("eval.every=0", "eval.n_samples=8")
    assert h("eval.n_samples=2") != h("eval.n_samples=8")
    assert h("run.seed=0") != h("run.seed=1")
    # the effective config is a valid config, and what the run trains is untouched
    cfg = load_config(None, ["algo.alpha=0", "algo.kl_mode=ufkl"])
    assert cfg.effective().algo.kl_mode != "ufkl" and cfg.algo.kl_mode == "ufkl"


def test_std_norm_dry_run_names_the_runs_that_repeat_others(capsys, monkeypatch, tmp_path):
    # std_norm crosses alpha0 with kl_mode [urkl, ufkl]: kl_mode is inert when alpha = 0, so for each
    # seed the ufkl run is the urkl run again; it is trained once and listed under both names
    monkeypatch.chdir(tmp_path)
    spec = ROOT / "ablations" / "std_norm.yaml"
    plan = load_plan(spec)
    assert len(plan.runs) == 20
    dups = {r.name: r.same_as for r in plan.duplicates}
    assert dups == {"alpha0-kl_mode=ufkl-s0": "alpha0-kl_mode=urkl-s0", "alpha0-kl_mode=ufkl-s1": "alpha0-kl_mode=urkl-s1"}
    assert len(plan.distinct) == 18 == len({r.hash for r in plan.runs})
    by_name = {r.name: r for r in plan.runs}
    for dup, first in dups.items():  # one folder, one hash: one run
        assert by_name[dup].hash == by_name[first].hash
        assert by_name[dup].config.run.output_dir == by_name[first].config.run.output_dir
    assert main([str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "20 runs (18 distinct)" in out
    assert "18 distinct runs; 2 duplicates (4 of the 20 runs share an effective config" in out
    for dup, first in dups.items():
        assert f"{dup} = {first}  (algo.kl_mode=ufkl: no effect here)" in out
    assert not (tmp_path / "outputs").exists()
