"""sdpg-data on real files: the benchmark JSONL through prepare, contamination planted in a built-in training set,
a datasets-library source saved to disk, hostile inputs; contexts end to end with the built-in model as teacher
(killed and resumed), and its outputs trained on in both formats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BENCH

from sdpg.commands import data_main

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}


def run_data(*args: str) -> int:
    return data_main([str(a) for a in args])


def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x]


def write_jsonl(p: Path, rows: list[dict]) -> Path:
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def bench_rows(name: str) -> list[dict]:
    return read_jsonl(BENCH / f"{name}.jsonl")


def card(p: Path) -> dict:
    return json.loads(p.with_name(p.name + ".card.json").read_text())


# --------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------


def test_prepare_benchmarks_counts_stable_ids_and_planted_duplicates(tmp_path):
    rows = bench_rows("aime24") + bench_rows("aime25") + bench_rows("amc23")
    assert len(rows) == 100
    exact = dict(rows[5], problem="  " + rows[5]["problem"].upper().replace(" ", "   ") + "\n")  # case and spacing only
    long = max(rows, key=lambda r: len(r["problem"]))
    near = dict(long, problem=long["problem"].replace("Find", "Determine", 1).rstrip() + " Explain.")
    src = write_jsonl(tmp_path / "src.jsonl", rows + [exact, near])
    out = tmp_path / "rows.jsonl"
    assert run_data("prepare", src, "--out", out, "--tokenizer", "embedded") == 0
    got = read_jsonl(out)
    c = card(out)["steps"][0]
    assert len(got) == 100 and c["counts"] == {"read": 102, "kept": 100, "dropped": {"exact duplicate": 1, "near duplicate": 1}}
    assert c["duplicates"]["exact"] == 1 and c["duplicates"]["near"] == 1
    pairs = c["duplicates"]["pairs"]
    assert [p["kind"] for p in pairs] == ["exact", "near"] and pairs[0]["kept"] == got[5]["id"]
    assert pairs[1]["kept"] == next(r["id"] for r in got if r["problem"] == long["problem"].rsplit("\n", 1)[0].strip())
    assert {e["index"] for e in c["dropped_examples"]} == {100, 101}
    assert len({r["id"] for r in got}) == 100
    assert c["answers"]["kinds"]["integer"] == 100 and c["lengths"]["problem"]["max"] > c["lengths"]["problem"]["p50"] > 0
    assert out.with_name("rows.jsonl.card.md").read_text().startswith("# Data card: `rows.jsonl`")
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # readable as any file the user writes, not 0600
    # ids are stable: a second run (other file, parquet) gives the same ids; rerunning onto the same file is a no-op
    out2 = tmp_path / "again.parquet"
    assert run_data("prepare", src, "--out", out2, "--tokenizer", "embedded") == 0
    import pyarrow.parquet as pq

    assert pq.read_table(out2).column("id").to_pylist() == [r["id"] for r in got]
    before = out.read_bytes()
    assert run_data("prepare", src, "--out", out, "--tokenizer", "embedded") == 0
    assert out.read_bytes() == before


def test_prepare_reads_the_authors_verl_format_back(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sdpg.training.config import DataConfig
    from sdpg.training.data import build_prompts, normalise_row
    from sdpg.training.dataprep.contexts import verl_row

    rows = [dict(r, id=str(i), solution=f"Work {i}." if i % 2 else None) for i, r in enumerate(bench_rows("amc23")[:6])]
    verl = [verl_row(r, i) for i, r in enumerate(rows)]
    path = tmp_path / "verl.parquet"
    pq.write_table(pa.Table.from_pylist(verl), path)
    # both trainer paths see the same two prompts: verl rows, and plain rows with the Fig. 4 template
    cfg = DataConfig(prompt_template="sdpg_fig4", chat_template="off")
    for r, v in zip(rows, verl):
        assert build_prompts(normalise_row(v, cfg, "verl", 0), cfg, None) == build_prompts(r, cfg, None)
    out = tmp_path / "rows.jsonl"
    assert run_data("prepare", path, "--out", out, "--tokenizer", "embedded") == 0
    got = read_jsonl(out)
    assert [g["problem"] for g in got] == [
        r["problem"].replace("\nPlease reason step by step, and put your final answer within \\boxed{}.", "").strip()
        for r in rows
    ]
    assert [g["solution"] for g in got] == [r["solution"] for r in rows]
    assert [g["answer"] for g in got] == [r["answer"] for r in rows]
    assert card(out)["steps"][0]["unwrapped"] == {"sdpg_fig4": 6}


def test_datasets_source_offline_same_code_as_the_hub(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"question": r["problem"], "final": int(r["answer"]), "extra": i} for i, r in enumerate(bench_rows("aime25"))]
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "saved"))
    files = tmp_path / "files"
    files.mkdir()
    ds.to_parquet(str(files / "train-00000.parquet"))
    outs = []
    for ref in ("saved", "files"):
        out = tmp_path / f"{ref}.jsonl"
        code = run_data(
            "prepare",
            f"hf:{tmp_path / ref}",
            "--out",
            out,
            "--problem-key",
            "question",
            "--answer-key",
            "final",
            "--tokenizer",
            "embedded",
        )
        assert code == 0
        outs.append(read_jsonl(out))
        c = card(out)["steps"][0]
        assert c["answers"]["converted"]["number"] == 30 and c["source"]["split"] == "train"
    assert outs[0] == outs[1] and len(outs[0]) == 30
    assert outs[0][0]["answer"] == bench_rows("aime25")[0]["answer"]
    assert card(tmp_path / "files.jsonl")["steps"][0]["source"]["kind"] == "datasets"


# --------------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------------


def test_check_finds_every_planted_problem_and_nothing_else(tmp_path, capsys):
    from sdpg.training.embedded import train_rows

    train = [dict(r) for r in train_rows(400)]
    a24, a25, amc = bench_rows("aime24"), bench_rows("aime25"), bench_rows("amc23")
    planted = {
        37: dict(a24[3]),  # exact
        120: dict(a25[7], problem=a25[7]["problem"].replace(" ", "  ").upper()),  # exact after normalisation
        200: dict(amc[11], problem="$" + amc[11]["problem"] + "$"),
        250: dict(a24[20], problem="Here is a competition problem for you. " + a24[20]["problem"][:-40] + " What do you get?"),
        300: dict(a25[0], problem=a25[0]["problem"].replace("the", "a", 2) + " Give the answer only."),
        350: dict(amc[2], problem="Consider this: " + amc[2]["problem"]),
    }
    for i, r in planted.items():
        train.insert(i, {"problem": r["problem"], "answer": r["answer"]})
    src = write_jsonl(tmp_path / "train.jsonl", train)
    out = tmp_path / "prepared.jsonl"
    assert run_data("prepare", src, "--out", out, "--tokenizer", "embedded") == 0
    prepared = read_jsonl(out)
    benches = [f"--bench={b}={BENCH / b}.jsonl" for b in ("aime24", "aime25", "amc23", "math500")]
    clean, report = tmp_path / "clean.jsonl", tmp_path / "report.json"
    assert run_data("check", out, *benches, "--drop", clean, "--report", report) == 0
    rep = json.loads(report.read_text())
    flagged = {p["train_index"] for p in rep["pairs"]}
    want = {i for i, r in enumerate(prepared) if "+" not in r["problem"][:5] or len(r["problem"]) > 40}
    assert len(want) == 6 and flagged == want
    assert rep["per_benchmark"]["aime24"]["benchmark_rows_found"] == 2
    assert rep["per_benchmark"]["aime25"]["benchmark_rows_found"] == 2
    assert rep["per_benchmark"]["amc23"]["benchmark_rows_found"] == 2
    assert rep["per_benchmark"]["math500"]["benchmark_rows_found"] == 0
    kinds = {(p["benchmark"], p["kind"]) for p in rep["pairs"]}
    assert ("aime24", "exact") in kinds and ("aime24", "13-gram") in kinds
    assert len(read_jsonl(clean)) == len(prepared) - 6
    assert card(clean)["steps"][-1]["dropped"] == 6 and card(out)["steps"][-1]["flagged_rows"] == 6  # both cards record it
    assert "Contamination check" in out.with_name("prepared.jsonl.card.md").read_text()
    assert "aime24: 2/30 benchmark problems found" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# hostile inputs
# --------------------------------------------------------------------------------------------


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_hostile_inputs(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    args = ("--out", out, "--tokenizer", "embedded")
    # no such column: named, with the columns there are
    src = write_jsonl(tmp_path / "q.jsonl", [{"question": "1+1", "answer": "2"}])
    assert run_data("prepare", src, *args) == 2
    msg = one_error(capsys)
    assert "'problem'" in msg and "--problem-key" in msg and "question" in msg and str(src) in msg
    # answers as lists and numbers become text; unusable ones are dropped and counted; a 1 MB problem is dropped
    rows = [
        {"problem": "What is 1+1?", "answer": 2},
        {"problem": "What is 1/2 as a decimal?", "answer": 0.5},
        {"problem": "Roots of x^2-1?", "answer": ["-1", 1]},
        {"problem": "Which is true?", "answer": True},
        {"problem": "Nested?", "answer": [[1, 2]]},
        {"problem": "x" * 1_000_000, "answer": "1"},
        {"problem": "", "answer": "3"},
    ]
    assert run_data("prepare", write_jsonl(tmp_path / "mixed.jsonl", rows), *args) == 0
    capsys.readouterr()
    got = read_jsonl(out)
    assert [r["answer"] for r in got] == ["2", "0.5", "-1, 1"]
    c = card(out)["steps"][0]
    assert c["answers"]["converted"] == {"number": 2, "list": 1}
    assert c["counts"]["dropped"] == {"unusable answer": 2, "problem too long": 1, "no problem": 1}
    # a binary file: one line, nothing written
    for name in ("bin.jsonl", "bin.parquet", "bin.csv"):
        (tmp_path / name).write_bytes(bytes(range(256)) * 64)
        assert run_data("prepare", tmp_path / name, "--out", tmp_path / "b.jsonl", "--tokenizer", "embedded") == 2
        assert name in one_error(capsys)
    # an output that holds a different dataset: refused, untouched; --overwrite replaces it
    before = out.read_bytes()
    assert run_data("prepare", BENCH / "amc23.jsonl", *args) == 2
    assert "different dataset" in one_error(capsys) and out.read_bytes() == before
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"a": 1}\n')
    assert run_data("prepare", BENCH / "amc23.jsonl", "--out", mine, "--tokenizer", "embedded") == 2
    assert mine.read_text() == '{"a": 1}\n' and "--overwrite" in one_error(capsys)
    assert run_data("prepare", BENCH / "amc23.jsonl", *args, "--overwrite") == 0 and len(read_jsonl(out)) == 40
    capsys.readouterr()
    # an empty source: refused, nothing created
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "empty.csv").write_text("problem,answer\n")
    for name in ("empty.jsonl", "empty.csv"):
        assert run_data("prepare", tmp_path / name, "--out", tmp_path / "e.jsonl", "--tokenizer", "embedded") == 2
        assert "has no rows" in one_error(capsys)
    assert not (tmp_path / "e.jsonl").exists() and not (tmp_path / "b.jsonl").exists()
    # a CSV source works; bad flags and a missing benchmark are one line each
    (tmp_path / "ok.csv").write_text('problem,answer\n"What is 2+2?",4\n')
    assert run_data("prepare", tmp_path / "ok.csv", "--out", tmp_path / "csv.jsonl", "--tokenizer", "embedded") == 0
    capsys.readouterr()
    assert run_data("check", out) == 2 and "--bench" in one_error(capsys)
    assert run_data("check", out, "--bench", "x=" + str(tmp_path / "nope.jsonl")) == 2 and "nope.jsonl" in one_error(capsys)
    assert run_data("contexts", out, "--out", tmp_path / "c.jsonl", "--teacher", "embedded", "--template", "nope") == 2
    assert "--template 'nope'" in one_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(
        [
            "q.jsonl",
            "mixed.jsonl",
            "out.jsonl",
            "out.jsonl.card.json",
            "out.jsonl.card.md",
            "bin.jsonl",
            "bin.parquet",
            "bin.csv",
            "mine.jsonl",
            "empty.jsonl",
            "empty.csv",
            "ok.csv",
            "csv.jsonl",
            "csv.jsonl.card.json",
            "csv.jsonl.card.md",
        ]
    )
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# contexts: the built-in model as teacher
# --------------------------------------------------------------------------------------------


def _contexts_cmd(rows: Path, out: Path, backend: str = "hf") -> list[str]:
    return [sys.executable, "-m", "sdpg.training.dataprep", "contexts", str(rows), "--out", str(out), "--verl-out",
            str(out.with_suffix(".parquet")), "--teacher", "embedded", "--template", "embedded", "--k", "2",
            "--max-new-tokens", "32", "--shard-size", "3", "--backend", backend]  # fmt: skip


def _prepared(tmp_path: Path, n: int = 12) -> Path:
    from sdpg.training.embedded import train_rows

    out = tmp_path / "rows.jsonl"
    assert run_data("prepare", write_jsonl(tmp_path / "src.jsonl", train_rows(n)), "--out", out, "--tokenizer", "embedded") == 0
    return out


def _kill_when(cmd: list[str], ready, timeout: float = 300) -> None:
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not ready() and proc.poll() is None and time.time() - t0 < timeout:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the kill point"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_contexts_verified_resumable_and_trainable(tmp_path, capfd):
    from sdpg.training.rewards import exact_reward

    rows = _prepared(tmp_path)
    whole, cut = tmp_path / "whole" / "ctx.jsonl", tmp_path / "cut" / "ctx.jsonl"
    whole.parent.mkdir()
    cut.parent.mkdir()
    subprocess.run(_contexts_cmd(rows, whole), env=ENV, check=True, timeout=600)
    got = read_jsonl(whole)
    assert [r["id"] for r in got] == [r["id"] for r in read_jsonl(rows)]
    res = card(whole)["steps"][-1]["results"]
    assert 0 < res["verified"] < len(got) and res["pass_rate_within_k"] == round(res["verified"] / len(got), 4)
    assert all(exact_reward(r["solution"], r["answer"]) == 1.0 for r in got if r["solution"] is not None)
    assert any(r["solution"] is None and r["context_attempts"] == 2 for r in got)
    # killed at three points (model loading, after one shard, after three), then finished: the same bytes
    parts = cut.with_name(".ctx.jsonl.parts")
    _kill_when(_contexts_cmd(rows, cut), lambda: (parts / "run.json").is_file())
    _kill_when(_contexts_cmd(rows, cut), lambda: (parts / "shard-00000.jsonl").is_file())
    _kill_when(_contexts_cmd(rows, cut), lambda: (parts / "shard-00002.jsonl").is_file())
    assert not cut.exists() and not any(p.suffix == ".tmp" for p in parts.iterdir())
    done = subprocess.run(_contexts_cmd(rows, cut), env=ENV, check=True, timeout=600, capture_output=True, text=True)
    assert "resuming: 3 of 4 shards already done" in done.stderr and "ETA" in done.stderr
    for name in ("ctx.jsonl", "ctx.parquet", "ctx.jsonl.card.json", "ctx.jsonl.card.md", "ctx.parquet.card.json"):
        assert (cut.parent / name).read_bytes() == (whole.parent / name).read_bytes(), name
    assert not parts.exists()
    again = subprocess.run(_contexts_cmd(rows, cut), env=ENV, check=True, timeout=600, capture_output=True, text=True)
    assert "already holds this run's output" in again.stderr and (cut.parent / "ctx.jsonl").read_bytes() == whole.read_bytes()
    # both formats train with sdpg-train (its main function here: a process of its own adds only its start-up)
    from conftest import TINY
    from test_hostile_input import run_in_process

    for data in (whole, whole.with_suffix(".parquet")):
        out = tmp_path / f"run-{data.suffix[1:]}"
        args = [*TINY, f"data.train={data}", "run.total_steps=2", "eval.every=0", f"run.output_dir={out}",
                "data.overlong_prompts=cut_left"]  # fmt: skip  # Fig. 4 prompts exceed the tiny model's 64 tokens
        r = run_in_process(capfd, "sdpg-train", args, tmp_path, env={"OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-2000:]
        assert "finished at step 2" in r.stderr


@pytest.mark.slow
def test_contexts_with_vllm_on_cpu(tmp_path):
    if os.environ.get("SDPG_REQUIRE_VLLM") != "1":
        pytest.importorskip("vllm")
    from sdpg.training.rewards import exact_reward

    rows = _prepared(tmp_path, n=6)
    out = tmp_path / "ctx.jsonl"
    subprocess.run(_contexts_cmd(rows, out, backend="vllm"), env=ENV, check=True, timeout=600)
    got = read_jsonl(out)
    assert len(got) == 6 and card(out)["steps"][-1]["settings"]["teacher"] == "embedded"
    assert all(exact_reward(r["solution"], r["answer"]) == 1.0 for r in got if r["solution"] is not None)
    assert card(out)["steps"][-1]["results"]["attempts"] >= 6


def test_console_script_in_a_real_process(tmp_path):
    """The entry as a user runs it: --help lists the subcommands; bad input is one line, exit 2, nothing written."""
    cmd = [sys.executable, "-c", "import sys; from sdpg.commands import data_main; sys.exit(data_main())"]
    h = subprocess.run([*cmd, "--help"], env=ENV, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert h.returncode == 0 and all(c in h.stdout for c in ("prepare", "contexts", "check"))
    (tmp_path / "x.parquet").write_bytes(b"\x00\x01binary" * 100)
    r = subprocess.run(
        [*cmd, "prepare", "x.parquet", "--out", "o.jsonl"], env=ENV, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "x.parquet" in r.stderr and "not a parquet file" in r.stderr
    r = subprocess.run([*cmd, "prepare"], env=ENV, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--out" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.parquet"]


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two real processes, each probing an endpoint
def test_default_tokenizer_without_the_hub_is_one_line_at_once(tmp_path):
    """The default ``--tokenizer Qwen/Qwen3-4B`` on a machine that cannot reach the hub (here: an endpoint that
    refuses connections), and with HF_HUB_OFFLINE set: one line saying so, no retry lines (huggingface_hub used to
    retry every file five times, about 30 s of 'Retrying in 8s' lines), nothing written."""
    cmd = [sys.executable, "-m", "sdpg.training.dataprep", "prepare", str(BENCH / "amc23.jsonl"), "--out", "o.jsonl"]
    base = {k: v for k, v in ENV.items() if not k.lower().endswith("_proxy") and k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    cases = {
        "unreachable": {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"},
        "offline": {"HF_HUB_OFFLINE": "1"},
    }
    procs = {}
    for name, extra in cases.items():
        (tmp_path / name).mkdir()
        env = {**base, "HF_HOME": str(tmp_path / name / ".hf"), **extra}  # an empty cache: nothing of Qwen3 there
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        procs[name] = subprocess.Popen(cmd, env=env, cwd=tmp_path / name, text=True, **pipes)
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and out == "", (name, err[-3000:])
        assert lines[0].startswith("error: --tokenizer 'Qwen/Qwen3-4B': cannot load it (not in the local Hugging Face cache")
        want = "HF_HUB_OFFLINE is set" if name == "offline" else "127.0.0.1"
        assert want in lines[0] and "'embedded'" in lines[0], lines[0]
        assert sorted(p.name for p in (tmp_path / name).iterdir() if p.name != ".hf") == []


def test_contexts_refuses_before_loading_a_teacher(tmp_path, capsys):
    """Outputs that hold something else, a half-done run with other settings, bad paths: refused, nothing touched."""
    rows = tmp_path / "rows.jsonl"
    assert run_data("prepare", BENCH / "amc23.jsonl", "--out", rows, "--tokenizer", "embedded") == 0
    capsys.readouterr()
    base = ("contexts", rows, "--teacher", "embedded", "--template", "embedded")
    other = tmp_path / "other.jsonl"
    other.write_text('{"x": 1}\n')
    assert run_data(*base, "--out", other) == 2 and "different dataset" in one_error(capsys)
    assert other.read_text() == '{"x": 1}\n'
    assert run_data(*base, "--out", tmp_path / "c.jsonl", "--verl-out", tmp_path / "c.jsonl2") == 2
    assert "--verl-out" in one_error(capsys)
    assert run_data(*base, "--out", tmp_path / "nowhere" / "c.jsonl") == 2 and "does not exist" in one_error(capsys)
    (tmp_path / "link.jsonl").symlink_to(other)
    assert run_data(*base, "--out", tmp_path / "link.jsonl") == 2 and "symlink" in one_error(capsys)
    assert run_data(*base, "--out", tmp_path / "c.jsonl", "--template-text", "no slot") == 2 and "{problem}" in one_error(capsys)
    assert run_data(*base, "--out", tmp_path / "c.jsonl", "--template-text", "{problem} {oops}") == 2
    assert "oops" in one_error(capsys)
    assert run_data(*base, "--out", tmp_path / "c.jsonl", "--k", "0") == 2 and "--k 0" in one_error(capsys)
    # a half-done run with another k: named, and kept
    parts = tmp_path / ".c.jsonl.parts"
    parts.mkdir()
    from sdpg.training.dataprep.contexts import ContextOptions, _settings
    from sdpg.training.dataprep.sources import content_sha256

    ins = [{"id": r["id"], "problem": r["problem"], "answer": r["answer"]} for r in read_jsonl(rows)]
    opts = ContextOptions(input=str(rows), out=tmp_path / "c.jsonl", teacher="embedded", template="embedded", k=3)
    settings = _settings(opts, "Q:{problem}\nA:", "exact")
    (parts / "run.json").write_text(json.dumps({"input_sha256": content_sha256(ins), "rows": len(ins), "settings": settings}))
    (parts / "shard-00000.jsonl").write_text("{}\n")
    assert run_data(*base, "--out", tmp_path / "c.jsonl") == 2
    msg = one_error(capsys)
    assert "unfinished run" in msg and "k: 3 vs 4" in msg and "--overwrite" in msg
    assert (parts / "shard-00000.jsonl").read_text() == "{}\n" and not (tmp_path / "c.jsonl").exists()
