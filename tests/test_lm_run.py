"""`slm run --task lm`: the pipeline's stages for a causal LM — data splits, a tiny LM trained from scratch, its ONNX
export with the KV cache and int8, the LM benchmark beside kn4, the fastest candidate within the budgets, and a
deploy bundle the torch-free generator loads — then a cached rerun, budgets nothing meets, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import lm_corpus
from slmkit import artifacts
from slmkit.cli import app
from slmkit.selection import Budgets, Candidate, describe, select

runner = CliRunner()
STUDENT = "lm:layers=1,hidden=16,heads=2,ffn=32"
TINY = ["--set", "model.shape=layers=1,hidden=32,heads=2,ffn=64,context=64", "--set", "model.vocab_size=300", "--set", "train.epochs=1",
        "--student", STUDENT, "--set", "distill.train.epochs=2", "--set", "distill.train.lr=1e-2",
        "--set", "bench.threads=[1]", "--set", "bench.rounds=1", "--set", "bench.latency_calls=20", "--set", "bench.sample=2",
        "--set", "bench.bootstrap=200", "--set", "bench.rss=false", "--quiet"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lm-run-data") / "corpus.txt"
    path.write_text("\n".join(lm_corpus(150, seed=5)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lm_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm-run") / "run"
    result = invoke("run", "--task", "lm", "--data", corpus, "--out", out, "--budget-size", "5MB", "--budget-latency", "1s", "--max-drop", "5", *TINY)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_stages_selection_and_bundle(lm_run):
    from slmkit.generate import GenerationConfig
    from slmkit.pipeline import verify_bundle
    from slmkit.runtime import LMGenerator

    out, printed = lm_run
    record = json.loads((out / artifacts.RUN_RECORD).read_text(encoding="utf-8"))
    kinds = ["data", "teacher", "distill", "export", "quantize", "export", "quantize", "bench", "deploy"]
    assert record["finished"] and [s["kind"] for s in record["stages"]] == kinds
    assert all(s["status"] == "ran" for s in record["stages"])
    chosen = record["selection"]["chosen"]
    assert chosen in ("teacher", "teacher-int8", "lm-L1-H16-A2-F32", "lm-L1-H16-A2-F32-int8") and "fastest" in record["selection"]["explanation"]
    assert record["selection"]["budgets"] == "size ≤ 5 MB, latency ≤ 1e+03 ms, perplexity increase ≤ 5.00%"
    data_dir = Path(record["stages"][0]["dir"])
    assert sum(len(data_dir.joinpath(f).read_text(encoding="utf-8").splitlines()) for f in ("train.jsonl", "eval.jsonl", "test.jsonl")) == 150

    bench = json.loads((Path(record["stages"][kinds.index("bench")]["dir"]) / artifacts.BENCH_RESULTS).read_text(encoding="utf-8"))
    entries = {e["name"]: e for e in bench["entries"]}
    assert bench["task"] == "lm" and set(entries) == {"teacher", "teacher-int8", "lm-L1-H16-A2-F32", "lm-L1-H16-A2-F32-int8", "kn4"}
    assert entries["teacher-int8"]["precision"] == "int8" and entries["teacher-int8"]["fp32_reference"] == "teacher"
    # the student: the teacher's tokenizer and context, the training split learnt with token-level KD, no continuations
    student = Path(record["stages"][2]["dir"])
    metrics = json.loads((student / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["distill"]["token_kd"] == "on" and metrics["distill"]["generation"]["max_new_tokens"] == 0
    teacher_dir = Path(record["stages"][1]["dir"])
    assert (student / "tokenizer.json").read_bytes() == (teacher_dir / "tokenizer.json").read_bytes()
    config = json.loads((student / "config.json").read_text(encoding="utf-8"))
    assert (config["num_hidden_layers"], config["hidden_size"], config["max_position_embeddings"]) == (1, 16, 64)
    assert entries["lm-L1-H16-A2-F32"]["parameters"] < entries["teacher"]["parameters"]
    # the fastest candidate within the budgets (ms per generated token), as select(prefer="speed") picks it
    ok = {n: e for n, e in entries.items() if n != "kn4"}
    fastest = min(ok, key=lambda n: (ok[n]["speed"]["1"]["p50_ms"]["median"], ok[n]["bytes"]))
    increase = 100 * (ok[fastest]["metrics"]["perplexity_per_word"] / ok["teacher"]["metrics"]["perplexity_per_word"] - 1)
    assert chosen == fastest or increase > 5

    deploy = out / artifacts.DEPLOY_DIR
    for name in ("model.onnx", "tokenizer.json", "config.json", "manifest.json", "README.md", "report/report.html"):
        assert (deploy / name).is_file(), name
    assert not (deploy / artifacts.LABELS).exists()
    assert verify_bundle(deploy) > 5
    cfg = GenerationConfig(max_new_tokens=6, temperature=0)
    source = Path(entries[chosen]["path"])
    assert LMGenerator(deploy).generate_ids([1, 5, 9], cfg) == LMGenerator(source).generate_ids([1, 5, 9], cfg)
    card = (deploy / "README.md").read_text(encoding="utf-8")
    assert "causal language model" in card and "LMGenerator" in card and "labels.txt" not in card
    assert f"chosen: {chosen}" in " ".join(printed.split()) and "LMGenerator" in printed


def test_rerun_is_cached_and_budgets_nothing_meets(lm_run, corpus):
    out, _ = lm_run
    result = invoke("run", "--task", "lm", "--data", corpus, "--out", out, "--budget-size", "5MB", "--budget-latency", "1s", "--max-drop", "5", *TINY)
    assert result.exit_code == 0, result.output
    record = json.loads((out / artifacts.RUN_RECORD).read_text(encoding="utf-8"))
    assert [s["status"] for s in record["stages"]] == ["cached"] * 9
    # a latency budget no model meets: nothing is chosen, the reason is given; --strict makes that exit 1
    result = invoke("run", "--task", "lm", "--data", corpus, "--out", out, "--budget-latency", "1us", "--strict", *TINY)
    assert result.exit_code == 1, result.output
    assert "no candidate meets every budget" in " ".join(result.output.split())
    record = json.loads((out / artifacts.RUN_RECORD).read_text(encoding="utf-8"))
    assert record["selection"]["chosen"] is None and all(s["status"] == "cached" for s in record["stages"])


def test_select_prefers_speed_within_budgets():
    fast_bad = Candidate("int8", 0.30, 9.0, 0.2, 100)  # 9% higher perplexity
    fast_ok = Candidate("small", 0.31, 2.0, 0.3, 300)
    slow = Candidate("teacher", 0.32, 0.0, 0.5, 500)
    budgets = Budgets(max_drop=5.0, quality="perplexity")
    assert select([slow, fast_bad, fast_ok], budgets, prefer="speed").chosen.name == "small"
    assert select([slow, fast_bad, fast_ok], budgets).chosen.name == "teacher"  # the classifiers' rule: most accurate
    assert describe(budgets) == "perplexity increase ≤ 5.00%"
    none = select([slow, fast_bad], Budgets(max_drop=1.0, max_latency_ms=0.3, quality="perplexity"), prefer="speed")
    assert none.chosen is None and [c.missed for c in none.checks] == [["latency"], ["perplexity increase"]]
    assert none.explanation == ("Every budget is met by some candidate, but none meets all of latency ≤ 0.3 ms, perplexity increase ≤ 1.00% at once. "
                                "Closest overall: teacher, which misses latency by 0.2 ms (0.5 ms).")


def test_bad_input(corpus, tiny_base, tmp_path):
    def error(*args) -> str:
        result = invoke("run", "--task", "lm", "--out", tmp_path / "r", *args, *TINY)
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
        return lines[0]

    assert "not a causal language model" in error("--data", corpus, "--teacher", tiny_base)
    assert "dynamic" in error("--data", corpus, "--set", "quantize.method=static")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    assert "no text" in error("--data", empty)
    assert not (tmp_path / "r").exists()
