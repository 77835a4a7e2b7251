"""Ablation specs: resolution, hashing, dry runs, and bad specs refused before anything exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdpg.orchestration.ablate import load_plan, main
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


def test_shipped_specs_resolve():
    for spec in sorted((ROOT / "ablations").glob("*.yaml")):
        plan = load_plan(spec, executor="local")
        assert plan.runs, spec


BAD = [
    ("unknown top-level key", GOOD + "colour: red\n", "unknown key 'colour'"),
    ("typo of a trainer key in a variant", GOOD.replace("algo.std_norm: false", "algo.std_nrom: false"),
     ["variants.no_std_norm", "unknown key 'algo.std_nrom'"]),
    ("wrong type in a variant", GOOD.replace("algo.std_norm: false", "algo.std_norm: maybe"),
     "key 'algo.std_norm' has bad value 'maybe'"),
    ("negative coefficient", GOOD.replace("algo.std_norm: false", "algo.beta: -0.5"), "key 'algo.beta' has bad value -0.5"),
    ("empty grid axis", GOOD.replace("[urkl, ufkl]", "[]"), "grid axis 'algo.kl_mode' has no values"),
    ("bad grid value", GOOD.replace("[urkl, ufkl]", "[urkl, klx]"), "key 'algo.kl_mode' has bad value 'klx'"),
    ("grid on an unknown key", GOOD.replace("algo.kl_mode:", "algo.kl_mod:"), "unknown key 'algo.kl_mod'"),
    ("duplicate variant names", GOOD.replace("  no_std_norm: {algo.std_norm: false}", "  full: {algo.std_norm: false}"),
     "duplicate key 'full'"),
    ("missing base file", GOOD.replace("base: embedded", "base: nowhere.yaml"), "key 'base' has bad value 'nowhere.yaml'"),
    ("unknown profile", GOOD + "executor: slurm\nprofile: moon\n", "unknown SLURM profile 'moon'"),
    ("unknown method", GOOD.replace("algo.std_norm: false", "algo.method: ppo"), "key 'algo.method' has bad value 'ppo'"),
    ("no variants", GOOD.split("variants:")[0] + "variants: {}\nseeds: [0]\n", "key 'variants'"),
    ("repeated seeds", GOOD.replace("seeds: [0, 1]", "seeds: [1, 1]"), "seeds repeat"),
    ("bad name", GOOD.replace("name: t", "name: 'my spec!'"), "key 'name' has bad value 'my spec!'"),
    ("variants that are the same run", GOOD.replace("algo.std_norm: false", "algo.std_norm: true"),
     "resolve to the same config"),
    ("max_parallel zero", GOOD + "max_parallel: 0\n", "key 'max_parallel' has bad value 0"),
    ("unknown tracking key", GOOD + "tracking: {url: x}\n", "unknown key 'tracking.url'"),
    ("bad override value", GOOD.replace("run.total_steps: 3", "run.total_steps: -3"), "key 'run.total_steps' has bad value -3"),
    ("not YAML", "name: [unclosed\n", "not valid YAML"),
    ("override through a value", GOOD.replace("algo.std_norm: false", "algo.beta.x: 1"), "key 'algo.beta' has bad value {'x': 1}"),
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
