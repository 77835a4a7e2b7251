"""Planted secrets: no byte of a secret anywhere sdpg writes or prints.

Tokens of every shape sdpg knows (GitHub, GitLab, Hugging Face, OpenAI-style, AWS, Slack, JWT, a ``Bearer``
header, a URI password holding ``#``, a ``password=`` parameter, a token right after ``_``, and the values of
secret-named environment variables that appear nowhere else by name) are planted in templates of a spec's
base, in a variant's override (a grid value, so it reaches folder names), in a sweep's base and in the
environment. Then the real commands run as a user runs them: a local submission, its status, a rehearsal, a
report, a sweep with a local worker, its status and export (the two that train as real processes; the others as
their main functions in this process, with the console captured as tests/test_hostile_input.py's in-process runner
does: a fresh interpreter each adds only its start-up). Every byte under the outputs (run folders,
checkpoints, the MLflow store and its artifacts, the Optuna journal, submitit's pickles and logs, the
rehearsal and the report) and every captured console line is searched: zero hits. The specs themselves, the
user's own files, are kept outside the searched folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from test_hostile_input import TINY, run_cli, run_in_process

ENV_SECRETS = {
    "HF_TOKEN": "zq8VtT3wLr7Kp2Xn5Ma9",  # no known shape: found only because the variable's name says secret
    "MY_DB_PASSWORD": "Corr3ct-Horse-Battery",
}
SHAPED = [
    "ghp_Ab3dEf6hIj9lMn2pQr5tUv8xYz1B",
    "github_pat_11ABCDEFG0abcdefghijklmnopqrstuvwxyz",
    "glpat-Zx9Yw8Vu7Ts6Rq5Po4Nm",
    "hf_QwErTyUiOpAsDfGhJkLzXcVbNm",
    "sk-proj-Aa1Bb2Cc3Dd4Ee5Ff6Gg7",
    "AKIAIOSFODNN7EXAMPLE",
    "xoxb-123456789012-abcdefABCDEF",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzZWNyZXQifQ.c2lnbmF0dXJlMTIzNDU2",
]
# secrets and how they are planted (the part after the context it needs)
PLANTED = {
    **{s: s for s in SHAPED},
    "pa#ss:w0rd-uri": "postgresql://alice:pa#ss:w0rd-uri@db.example.org/x",
    "hunter2hunter2": "password=hunter2hunter2",
    "Bearer-body-Qw3rTy9uIo": "Authorization: Bearer Bearer-body-Qw3rTy9uIo",
    "hf_UnderScoreAfterKey12345": "key_hf_UnderScoreAfterKey12345",
    **{v: v for v in ENV_SECRETS.values()},
}


def _template(tag: str) -> str:
    return "{problem} " + tag + " " + " ".join(PLANTED.values()) + " {answer} {solution}"


def _search(root: Path, console: str) -> list[str]:
    hits = []
    for secret in PLANTED:
        needle = secret.encode()
        if secret in console:
            hits.append(f"console: {secret}")
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                if secret in name:
                    hits.append(f"{Path(dirpath, name)} (name): {secret}")
            for f in filenames:
                p = Path(dirpath, f)
                if p.is_symlink() or not p.is_file():
                    continue
                if needle in p.read_bytes():
                    hits.append(f"{p}: {secret}")
    return hits


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_no_planted_secret_is_written_or_printed(tmp_path, tiny_model_built, capfd):
    specs, work = tmp_path / "specs", tmp_path / "work"
    specs.mkdir()
    work.mkdir()
    # one step makes a checkpoint and an evaluation; 16 rows carry the templates as all 20,000 do (each of those
    # rows' teacher prompts, long with the secrets, was tokenized and cut: over a minute of every run's start-up)
    overrides = {**TINY, "run.total_steps": 1, "run.checkpoint_every": 1, "data.train_limit": 16}
    abl = {
        "name": "sec",
        "base": "embedded",
        "overrides": {**overrides, "data.context_templates": {"answer_solution": _template("base")}},
        "variants": {"plain": {}, "templated": {"data.context_templates.answer_solution": _template("variant")}},
        "seeds": [0],
        "executor": "local",
        "max_parallel": 2,
        "output_dir": str(work / "outputs" / "sec"),
    }
    (specs / "sec.yaml").write_text(yaml.safe_dump(abl, sort_keys=False))
    sweep = {
        "name": "secsweep",
        "base": "embedded",
        "overrides": {**overrides, "data.context_templates": {"answer_solution": _template("sweep")}},
        "space": {"algo.beta": {"type": "float", "low": 0.01, "high": 1.0, "log": True}},
        "objective": {"metric": "eval/embedded/mean@2"},
        "n_trials": 1,
        "workers": 1,
        "executor": "local",
        "output_dir": str(work / "outputs" / "secsweep"),
    }
    (specs / "secsweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    env = dict(ENV_SECRETS)
    console = []

    def run(tool, *args, code=0, process=False):
        if process:
            r = run_cli(tool, list(args), work, env=env, timeout=600)
        else:
            r = run_in_process(capfd, tool, list(args), work, env=env)
        console.append(r.stdout + r.stderr)
        assert r.returncode == code, (tool, args, r.stderr[-4000:])
        return r

    run("sdpg-ablate", specs / "sec.yaml", "--dry-run")
    run("sdpg-ablate", specs / "sec.yaml", process=True)
    run("sdpg-ablate", "status", specs / "sec.yaml")
    run("sdpg-ablate", specs / "sec.yaml", "--rehearse", "--rehearse-dir", work / "rehearsal")
    run("sdpg-report", specs / "sec.yaml", "--out", work / "report")
    run("sdpg-sweep", specs / "secsweep.yaml", process=True)
    run("sdpg-sweep", "status", specs / "secsweep.yaml")
    run("sdpg-sweep", "export", specs / "secsweep.yaml", "--out", work / "best.yaml")
    run("sdpg-train", f"run.output_dir={work / 'direct'}", f"data.context_templates.answer={_template('x')}", "--print-config")

    # everything ran and wrote what it writes, so the search below searched something
    out = work / "outputs"
    assert len(list((out / "sec" / "runs").glob("*/config.yaml"))) == 2
    assert list((out / "sec" / "runs").glob("*/checkpoints/step_*.pt"))
    assert (out / "sec" / "mlflow.db").is_file() and (out / "secsweep" / "optuna.journal").is_file()
    assert list((out / "sec" / "submitit").glob("*_submitted.pkl")) and list((out / "sec" / "submitit").glob("*.err"))
    assert (work / "rehearsal" / "report.md").is_file() and (work / "report" / "index.md").is_file()
    assert (work / "best.yaml").is_file()
    # and the runs did see the secrets (the masking is on the way out, not on the way in)
    assert "***" in (next((out / "sec" / "runs").glob("*/config.yaml"))).read_text()

    hits = _search(work, "\n".join(console))
    assert hits == [], "\n".join(hits[:40])


def test_secret_looking_names_are_refused(tmp_path, capfd):
    from test_hostile_input import run_in_process

    for spec in (
        {"name": "hf_QwErTyUiOpAsDfGhJkLzXcVbNm", "base": "embedded", "variants": {"a": {}}},
        {"name": "ok", "base": "embedded", "variants": {"ghp_Ab3dEf6hIj9lMn2pQr5tUv8xYz1B": {}}},
        {"name": "ok", "base": "embedded", "variants": {"a": {}}, "tracking": {"experiment": "xoxb-123456789012-abcdefABCDEF"}},
    ):
        p = tmp_path / "s.yaml"
        p.write_text(yaml.safe_dump(spec))
        before = sorted(os.listdir(tmp_path))
        r = run_in_process(capfd, "sdpg-ablate", [p, "--dry-run"], tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "looks like a secret" in r.stderr
        assert not any(s in r.stderr + r.stdout for s in SHAPED)
        assert sorted(os.listdir(tmp_path)) == before


def test_secret_looking_sweep_choice_and_study_name_are_refused(tmp_path, capfd):
    from test_hostile_input import run_in_process

    named = {
        "name": "hf_QwErTyUiOpAsDfGhJkLzXcVbNm",
        "base": "embedded",
        "space": {"algo.beta": {"type": "float", "low": 0.01, "high": 1.0}},
        "objective": {"metric": "eval/embedded/mean@4"},
        "n_trials": 1,
    }
    p = tmp_path / "sw.yaml"
    p.write_text(yaml.safe_dump(named))
    r = run_in_process(capfd, "sdpg-sweep", [p], tmp_path)
    assert r.returncode == 2 and "looks like a secret" in r.stderr and "hf_QwEr" not in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["sw.yaml"]

    spec = {
        "name": "sw",
        "base": "embedded",
        "space": {"data.chat_template": {"type": "categorical", "choices": ["none", "hf_QwErTyUiOpAsDfGhJkLzXcVbNm"]}},
        "objective": {"metric": "eval/embedded/mean@4"},
        "n_trials": 2,
    }
    p = tmp_path / "sw.yaml"
    p.write_text(yaml.safe_dump(spec))
    r = run_in_process(capfd, "sdpg-sweep", [p], tmp_path)
    assert r.returncode == 2 and "looks like a secret" in r.stderr and "hf_QwEr" not in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["sw.yaml"]


def test_job_pickle_holds_references_and_the_job_gets_the_secret(tmp_path, monkeypatch):
    import pickle

    from sdpg.orchestration.launch import SecretFreeJob

    token = "hf_QwErTyUiOpAsDfGhJkLzXcVbNm"
    job = SecretFreeJob(_Echo({"template": f"a {token} b", "uri": "postgresql://u:pa#ss@h/d", "n": 3}))
    blob = pickle.dumps(job)
    assert token.encode() not in blob and b"pa#ss" not in blob
    assert any(k.startswith("SDPG_SECRET_") and v == token for k, v in os.environ.items())
    assert pickle.loads(blob)() == {"template": f"a {token} b", "uri": "postgresql://u:pa#ss@h/d", "n": 3}
    for k in [k for k in os.environ if k.startswith("SDPG_SECRET_")]:
        monkeypatch.delenv(k)
    with pytest.raises(KeyError, match="SDPG_SECRET_"):
        pickle.loads(blob)


class _Echo:
    def __init__(self, payload):
        self.payload = payload

    def __call__(self):
        return self.payload


def test_patterns_missed_before(monkeypatch):
    from sdpg.training.redact import redact

    for k, v in ENV_SECRETS.items():
        monkeypatch.setenv(k, v)
    for planted, secret in [(v, k) for k, v in PLANTED.items()]:
        assert secret not in redact(f"x {planted} y"), planted
    assert redact("sqlite:///runs/mlflow.db") == "sqlite:///runs/mlflow.db"
    assert redact("max_prompt_tokens: 512, task_hf_x") == "max_prompt_tokens: 512, task_hf_x"
