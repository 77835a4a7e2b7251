"""The context-type study's pieces: negative-control contexts that are what they claim, the built-in rows'
fields reaching the teacher prompt, and the report's statistics equal to rliable's on a fixed score matrix."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sdpg.training import embedded

STEP = re.compile(r"(\d+)\+(\d+)=(\d+)")


def _parse(solution: str) -> tuple[list[tuple[int, int, int]], str]:
    """(additions (left, term, result), the stated #answer)."""
    body, _, answer = solution.rpartition(";#")
    steps = [tuple(map(int, STEP.fullmatch(s).groups())) for s in body.split(";")]
    return steps, answer


@pytest.mark.parametrize("task", embedded.TASKS)
def test_corrupted_solution_differs_in_exactly_one_running_sum_and_keeps_the_answer(task):
    rows = embedded.train_rows(task=task)[:3000] + embedded.test_rows(task=task)
    changed_at = set()
    for r in rows:
        ref, ref_answer = _parse(r["solution"])
        bad, bad_answer = _parse(r["solution_corrupted"])
        assert bad_answer == ref_answer == r["answer"]
        assert [t for _, t, _ in bad] == [t for _, t, _ in ref]  # the same terms, in the same order
        ref_sums = [ref[0][0]] + [s for _, _, s in ref]  # first operand, then each running sum
        bad_sums = [bad[0][0]] + [s for _, _, s in bad]
        # the carried value: each step's left operand is the previous step's (possibly wrong) result
        assert all(bad[k][0] == bad[k - 1][2] for k in range(1, len(bad)))
        diff = [k for k, (a, b) in enumerate(zip(ref_sums, bad_sums)) if a != b]
        assert len(diff) == 1 and 0 < diff[0] < len(ref_sums) - 1, (r, diff)  # one intermediate sum
        assert 1 <= abs(bad_sums[diff[0]] - ref_sums[diff[0]]) <= 9
        changed_at.add(diff[0])
    # on chain (two intermediate sums) both positions occur; on sum there is only one
    assert changed_at == set(range(1, embedded.TASK_TERMS[task] - 1))


@pytest.mark.parametrize("task", embedded.TASKS)
def test_shuffled_solution_belongs_to_another_problem(task):
    rows = embedded.train_rows(task=task)
    own = {r["solution"]: r["problem"] for r in rows}
    for r in rows:
        assert r["solution_shuffled"] != r["solution"]
        other = own[r["solution_shuffled"]]  # it is some training row's reference solution...
        assert other != r["problem"]  # ...of another problem
    # a permutation of the distinct problems' solutions: each is some problem's context exactly once
    assert {r["solution_shuffled"] for r in rows} == set(own)
    assert len({r["problem"]: r["solution_shuffled"] for r in rows}) == len(own)


def test_control_contexts_are_deterministic():
    a, b = embedded.train_rows(task="chain"), embedded.train_rows(task="chain")
    assert a == b and a is not b
    assert embedded.test_rows(task="sum") == embedded.test_rows(task="sum")


def test_solution_key_selects_the_control_for_the_teacher_only(tiny_config):
    from sdpg.training.data import build_prompts, read_source
    from sdpg.training.embedded import build_tokenizer

    tok = build_tokenizer()
    for key in ("solution", *embedded.CONTROL_SOLUTION_KEYS):
        cfg = tiny_config(
            "data.train=embedded_chain", "model.embedded.task=chain", "data.context=solution", f"data.solution_key={key}"
        )
        rows = read_source(cfg.data.train, cfg.data, "train")
        raw = embedded.train_rows(task="chain")[0]
        student, teacher = build_prompts(rows[0], cfg.data, tok)
        assert f"S:{raw[key]}" in teacher and raw["solution"] not in student
        if key != "solution":
            assert raw["solution"] not in teacher


def test_unknown_solution_key_on_a_builtin_source_is_one_line(tiny_config):
    from sdpg.training.config import ConfigError
    from sdpg.training.data import read_source

    cfg = tiny_config("data.solution_key=solution_wrong")
    with pytest.raises(ConfigError) as e:
        read_source(cfg.data.train, cfg.data, "train")
    assert str(e.value) == (
        "data.solution_key: 'solution_wrong' is not a field of 'embedded' "
        "(fields: solution, solution_corrupted, solution_shuffled)"
    )


# ------------------------------------------------------------------------------------------- statistics vs rliable
def _scores() -> dict[str, np.ndarray]:
    """A fixed matrix per variant: [seeds, benchmarks], accuracies with ties, as the reports see them."""
    rng = np.random.default_rng(2026)
    base = np.array([0.16, 0.004, 0.0])
    out = {}
    for v, shift, n in (("grpo", 0.0, 20), ("distill", 0.04, 20), ("short", 0.02, 5)):
        m = np.clip(base + shift + rng.normal(0, 0.025, size=(n, 3)), 0, 1)
        out[v] = np.round(m * 200) / 200  # 200 problems: scores on a 1/200 grid, so ties happen
    return out


@pytest.fixture
def forget_new_modules():
    """rliable imports arch, and arch numba and llvmlite, whose objects break vLLM's scan of ``sys.modules``
    (tests/test_vllm.py runs later in the same process): every module these tests import is forgotten after."""
    import sys

    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_iqm_and_probability_of_improvement_equal_rliable(forget_new_modules):
    metrics = pytest.importorskip("rliable.metrics")
    from sdpg.reporting.report import _prob_improvement
    from sdpg.reporting.report import iqm as _iqm

    s = _scores()
    for v, m in s.items():
        assert _iqm(m) == pytest.approx(float(metrics.aggregate_iqm(m)), abs=1e-12), v
    for x, y in (("distill", "grpo"), ("short", "grpo"), ("grpo", "distill")):
        assert _prob_improvement(s[x], s[y]) == pytest.approx(float(metrics.probability_of_improvement(s[x], s[y])), abs=1e-12)


@pytest.fixture
def rliable_library(monkeypatch, forget_new_modules):
    """rliable.library. rliable 1.2 passes ``random_state=`` to arch's bootstrap, which arch 8 (the one that
    imports beside pandas 3) names ``seed``: the keyword is renamed on its way in, nothing else changes."""
    rly = pytest.importorskip("rliable.library")
    import arch
    import arch.bootstrap as ab

    if int(arch.__version__.split(".")[0]) >= 8:
        for cls in (ab.IIDBootstrap, ab.IndependentSamplesBootstrap):
            init = cls.__init__

            def renamed(self, *args, _init=init, random_state=None, **kwargs):
                if random_state is not None:
                    kwargs["seed"] = random_state
                _init(self, *args, **kwargs)

            monkeypatch.setattr(cls, "__init__", renamed)
    return rly


@pytest.mark.slow
def test_stratified_bootstrap_intervals_equal_rliable_to_bootstrap_noise(rliable_library):
    rly = rliable_library
    metrics = pytest.importorskip("rliable.metrics")
    from sdpg.reporting.report import improvement

    s = _scores()
    ours = improvement(s, baseline="grpo", n_boot=4000, seed=1).set_index("variant")
    _, iqm_ci = rly.get_interval_estimates(
        s, lambda m: np.array([metrics.aggregate_iqm(m)]), reps=4000, random_state=np.random.RandomState(7)
    )
    pairs = {v: (s[v], s["grpo"]) for v in ("distill", "short")}
    _, p_ci = rly.get_interval_estimates(
        pairs, metrics.probability_of_improvement, reps=4000, random_state=np.random.RandomState(7)
    )
    _, d_ci = rly.get_interval_estimates(
        pairs,
        lambda a, b: np.array([metrics.aggregate_iqm(a) - metrics.aggregate_iqm(b)]),
        reps=4000,
        random_state=np.random.RandomState(7),
    )
    # 4000 draws: each percentile bound's Monte-Carlo SD is below 0.003 here; allow 0.01 on a 0-1 scale
    for v in s:
        lo, hi = iqm_ci[v][:, 0] if iqm_ci[v].ndim == 2 else iqm_ci[v]
        assert ours.loc[v, "iqm_lo"] == pytest.approx(lo, abs=0.01) and ours.loc[v, "iqm_hi"] == pytest.approx(hi, abs=0.01)
    for v in pairs:
        (plo, phi), (dlo, dhi) = (np.ravel(p_ci[v]), np.ravel(d_ci[v]))
        assert ours.loc[v, "p_lo"] == pytest.approx(plo, abs=0.02) and ours.loc[v, "p_hi"] == pytest.approx(phi, abs=0.02)
        assert ours.loc[v, "d_lo"] == pytest.approx(dlo, abs=0.01) and ours.loc[v, "d_hi"] == pytest.approx(dhi, abs=0.01)
    # the intervals are not degenerate: the check compares real spreads
    assert ours.loc["distill", "d_hi"] - ours.loc["distill", "d_lo"] > 0.005


# ------------------------------------------------------------------------------- the study's corrected family
def test_holm_adjusted_p_values_by_hand():
    from sdpg.reporting.stats import holm

    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> kept non-decreasing: 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    sm = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(3).uniform(0, 0.1, size=11)
    assert holm(p) == pytest.approx(sm.multipletests(p, method="holm")[1])


def test_family_p_values_intervals_and_holm_levels():
    """Separated arms get the smallest p a Monte Carlo test can give and the first Holm step's level; identical
    arms get p near 1; the 95% interval equals the report's (``improvement``) to the bootstrap's noise."""
    from sdpg.reporting.stats import family, improvement

    s = _scores()
    s["same"] = s["grpo"].copy()
    s["far"] = np.clip(s["grpo"] + 0.5, 0, 1)
    out = family(s, [("distill", "grpo"), ("same", "grpo"), ("far", "grpo")], n_boot=4000, seed=0).set_index("variant")
    assert out.loc["far", "p"] == pytest.approx(2 / 4001)  # no draw on the other side of 0
    assert sorted(out.holm_level) == pytest.approx([0.95, 1 - 0.05 / 2, 1 - 0.05 / 3])  # one step each
    assert out.loc["far", "p_holm"] == pytest.approx(3 * 2 / 4001) and bool(out.loc["far", "separated"])
    assert out.loc["same", "p"] > 0.5 and out.loc["same", "d_iqm"] == 0 and not out.loc["same", "separated"]
    assert out.loc["same", "holm_level"] == pytest.approx(0.95)  # the largest p is tested last, at alpha itself
    ref = improvement({"grpo": s["grpo"], "distill": s["distill"]}, baseline="grpo", n_boot=4000, seed=5)
    ref = ref.set_index("variant").loc["distill"]
    assert out.loc["distill", "d_lo"] == pytest.approx(ref.d_lo, abs=0.01)
    assert out.loc["distill", "d_hi"] == pytest.approx(ref.d_hi, abs=0.01)
    # the corrected interval is wider than the 95% one and contains it
    d = out.loc["distill"]
    assert d.h_lo <= d.d_lo and d.h_hi >= d.d_hi and (d.h_hi - d.h_lo) > (d.d_hi - d.d_lo)
    with pytest.raises(ValueError, match="fewer than 2 seeds"):
        family({"a": s["grpo"][:1], "b": s["grpo"]}, [("a", "b")])


def test_the_study_recipe_uses_complete_seed_blocks_and_the_planned_family(tmp_path, capsys):
    """analysis/context_types.py on a scores file as sdpg-report writes it: a seed missing one variant is left out
    (the amendment's complete blocks), the family is the plan's 11 comparisons, a large gain is separated."""
    import runpy
    from pathlib import Path

    import pandas as pd

    rng = np.random.default_rng(0)
    variants = ["beta0", "none", "answer", "solution", "answer_solution", "corrupted", "shuffled"]
    rows = []
    for seed in range(200, 206):
        for v in variants:
            if seed == 205 and v == "shuffled":
                continue  # an incomplete block
            value = 0.25 + (0.3 if v == "solution" else 0.0) + rng.normal(0, 0.01)
            rows.append({"run_id": f"{v}-{seed}", "variant": v, "seed": seed, "eval/in_distribution/mean@4 Last": value})
    scores = tmp_path / "scores_runs.csv"
    pd.DataFrame(rows).to_csv(scores, index=False)
    script = str(Path(__file__).resolve().parents[1] / "analysis" / "context_types.py")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", ["context_types.py", str(scores), "--n-boot", "2000", "--csv", str(tmp_path / "f.csv")])
        with pytest.raises(SystemExit) as done:
            runpy.run_path(script, run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "5 complete seed blocks (200-204) of 6" in out
    table = pd.read_csv(tmp_path / "f.csv")
    fam = table[table.family]
    assert len(fam) == 11 and len(table) == 15
    assert set(zip(fam.variant, fam.against)) >= {("none", "beta0"), ("shuffled", "beta0"), ("solution", "none")}
    sol = fam[(fam.variant == "solution") & (fam.against == "beta0")].iloc[0]
    assert sol.separated and sol.d_iqm == pytest.approx(0.3, abs=0.03)
    assert not fam[(fam.variant == "none") & (fam.against == "beta0")].iloc[0].separated
