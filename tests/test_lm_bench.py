"""`slm bench` on causal LMs: a PyTorch LM, its ONNX export and int8 model beside the kn4 baseline in one report —
perplexity parity between backends, per-word perplexity from the same NLL, the n-gram baseline's figures equal to
slmkit.autocomplete's, the per-token timing harness, the report files and schema, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from slmkit import artifacts, measure
from slmkit.cli import app
from slmkit.config import BenchConfig

SCHEMA = Path(__file__).resolve().parents[1] / "slmkit" / "schemas" / "bench-results.schema.json"
QUICK = ["--threads", "1", "--rounds", "2", "--latency-calls", "24", "--new-tokens", "8", "--sample", "3", "--bootstrap", "200", "--no-rss", "--quiet"]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture(scope="module")
def texts(lm_text, tmp_path_factory) -> dict[str, Path]:
    """The corpus, and 10 of the held-out lines (the autocomplete sample is 3 of them)."""
    d = tmp_path_factory.mktemp("lm-bench-text")
    held = lm_text["eval"].read_text(encoding="utf-8").splitlines()[:10]
    (d / "heldout.txt").write_text("\n".join(held) + "\n", encoding="utf-8")
    return {"train": lm_text["train"], "eval": d / "heldout.txt"}


@pytest.fixture(scope="module")
def lm_models(tiny_lm, texts, tmp_path_factory) -> dict[str, Path]:
    """The tiny random LM, its ONNX export with the KV cache, and that export dynamically quantized to int8."""
    from slmkit.config import ExportConfig, QuantizeConfig
    from slmkit.export import export
    from slmkit.quantize import quantize

    d = tmp_path_factory.mktemp("lm-bench-models")
    onnx_dir = export(ExportConfig(model=str(tiny_lm), out=str(d / "lm-onnx"), probe_data=str(texts["train"]))).out
    int8_dir = quantize(QuantizeConfig(model=str(onnx_dir), out=str(d / "lm-int8"), method="dynamic", eval_data=str(texts["eval"])), progress=False).out
    return {"lm": Path(tiny_lm), "lm-onnx": Path(onnx_dir), "lm-int8": Path(int8_dir)}


@pytest.fixture(scope="module")
def report(lm_models, texts, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm-bench-report") / "lm"
    result = invoke("bench", "--models", lm_models["lm"], lm_models["lm-onnx"], lm_models["lm-int8"], "--names", "lm,lm-onnx,lm-int8",
                    "--data", texts["eval"], "--baselines", "kn4", "--train", texts["train"], "--out", out, *QUICK)
    assert result.exit_code == 0, result.output
    return out, result.output, json.loads((out / artifacts.BENCH_RESULTS).read_text(encoding="utf-8"))


def test_report_files_schema_and_entries(report):
    out, printed, results = report
    for name in ("results.json", "report.md", "report.html", "config.yaml", "pareto.png", "size.png"):
        assert (out / name).is_file(), name
    for name in ("lm", "lm-onnx", "lm-int8"):
        assert "perplexity per word" in (out / "models" / name / "model-card.md").read_text(encoding="utf-8")
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extras: pip install -e '.[test]'")
    jsonschema.validate(results, json.loads(SCHEMA.read_text()))
    assert results["task"] == "lm" and results["unit"] == "tokens" and results["timing"]["batch_size"] == 1
    entries = {e["name"]: e for e in results["entries"]}
    assert [(e["name"], e["kind"], e["backend"], e["precision"]) for e in results["entries"]] == [
        ("lm", "model", "pytorch", "fp32"), ("lm-onnx", "model", "onnx", "fp32"), ("lm-int8", "model", "onnx", "int8"), ("kn4", "baseline", "ngram", "fp32")]
    assert entries["lm-int8"]["fp32_reference"] == "lm-onnx"
    assert entries["lm-int8"]["bytes"] < entries["lm-onnx"]["bytes"]
    assert all(e["status"] == "ok" for e in entries.values())
    assert set(results["pareto_front"]) <= {"lm", "lm-onnx", "lm-int8"} and results["pareto_front"]
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "perplexity / word" in md and "kn4" in md and "time to first token" in md
    assert "report written to" in printed and "kn4" in printed


def test_perplexity_parity_and_per_word(report):
    _, _, results = report
    m = {e["name"]: e["metrics"] for e in results["entries"]}
    torch_ppl, onnx_ppl = m["lm"]["perplexity_per_token"], m["lm-onnx"]["perplexity_per_token"]
    assert onnx_ppl == pytest.approx(torch_ppl, rel=1e-4)  # the same model through two runtimes
    assert m["lm-int8"]["perplexity_per_token"] == pytest.approx(torch_ppl, rel=0.05)
    for name in ("lm", "lm-onnx", "lm-int8"):
        x = m[name]
        lo, hi = x["perplexity_per_token_ci95"]
        assert lo <= x["perplexity_per_token"] <= hi
        # one total NLL, two denominators: per word = exp(loss per token * tokens / words)
        assert x["perplexity_per_word"] == pytest.approx(math.exp(x["loss"] * x["n_tokens"] / x["n_words"]), rel=1e-9)
        assert x["n_words"] == m["kn4"]["n_words"] and x["sample_texts"] == 3
    # a random-initialized LM predicts words far worse than counts of the training text
    assert m["kn4"]["perplexity_per_word"] < m["lm"]["perplexity_per_word"]
    assert "perplexity_per_token" not in m["kn4"]


def test_speed_figures(report):
    _, _, results = report
    entries = {e["name"]: e for e in results["entries"]}
    assert entries["kn4"]["speed"] is None and entries["kn4"]["bytes"] is None
    for name in ("lm", "lm-onnx", "lm-int8"):
        speed = entries[name]["speed"]["1"]
        assert len(speed["rounds"]) == 2
        assert 0 < speed["p50_ms"]["min"] <= speed["p50_ms"]["median"] <= speed["p50_ms"]["max"]
        assert speed["ttft_ms"]["median"] > 0 and speed["throughput_per_s"]["median"] > 0
        # tokens/s is tokens over the summed step times: at least as fast as the slowest step allows
        assert speed["throughput_per_s"]["median"] >= 1000 / max(r["p99_ms"] for r in speed["rounds"]) * 0.5


def test_ngram_baseline_matches_autocomplete(texts):
    """kn4's figures are slmkit.autocomplete's for the same model and texts; per-word perplexity with no end term."""
    from slmkit.autocomplete import BOS, KneserNey, autocomplete_scores, words
    from slmkit.bench_lm import score_ngram
    from slmkit.tasks.lm import read_documents

    train, docs = read_documents(texts["train"]), read_documents(texts["eval"])
    model = KneserNey([words(t) for t in train], order=4)
    cfg = BenchConfig(bootstrap=200)
    m = score_ngram(model, docs, docs, cfg)
    expected = autocomplete_scores(model, docs, k=3)
    assert m["next_word_accuracy"] == pytest.approx(expected.next_word_accuracy)
    assert m["keystroke_savings"] == pytest.approx(expected.keystroke_savings)
    logp = [math.log(model.score(w, tuple(([BOS] * 3 + words(d)[:i])[-3:]))) for d in docs for i, w in enumerate(words(d))]
    assert m["perplexity_per_word"] == pytest.approx(math.exp(-np.mean(logp)))
    for key in ("next_word_accuracy", "keystroke_savings", "perplexity_per_word"):
        lo, hi = m[f"{key}_ci95"]
        assert lo <= m[key] <= hi


def test_document_nll_covers_long_texts(lm_models):
    """A text longer than the context window is scored whole: every token after the first, once."""
    from slmkit.bench_lm import document_nll
    from slmkit.generate import open_lm
    from slmkit.runtime import LMGenerator

    lm = open_lm(lm_models["lm-onnx"], threads=1)
    short = "my card was declined at the shop"
    nll, count = document_nll(lm, short)
    reference = LMGenerator(lm_models["lm-onnx"]).token_nll(short)
    assert count == len(reference) and nll == pytest.approx(float(reference.sum()), rel=1e-6)
    long = " ".join([short] * 40)
    ids = lm.encode(long)
    assert len(ids) > lm.context_length
    nll, count = document_nll(lm, long)
    assert count == len(ids) - 1 and np.isfinite(nll)


def test_lm_speed_respects_the_context_window():
    """The timing harness: prompts cut to a quarter of the context, new tokens to what is left, enough tokens timed."""
    from slmkit.bench_lm import lm_speed

    class Counting:
        def __init__(self):
            self.length, self.longest, self.starts = 0, 0, 0

        def start(self, ids):
            self.length, self.starts = len(ids), self.starts + 1
            return np.zeros(5, dtype=np.float32)

        def step(self, token):
            self.length += 1
            self.longest = max(self.longest, self.length)
            return np.zeros(5, dtype=np.float32)

    class FakeLM:
        context_length, bos_id = 20, 1
        stepper = Counting()

        def encode(self, text):
            return list(range(len(text)))

    lm = FakeLM()
    record = lm_speed(lm, ["a long enough document " * 3], tokens=50, new_tokens=32, warmup=2)
    assert lm.stepper.longest <= 20  # prompt of 5 (20 // 4) + 15 new tokens
    assert lm.stepper.starts == 1 + 4  # the warm-up prompt, then 4 prompts of 15 timed tokens >= 50
    assert set(record) == {"p50_ms", "p95_ms", "p99_ms", "ttft_ms", "throughput_per_s"}


def test_peak_rss_of_an_onnx_lm_is_torch_free(lm_models):
    rss = measure.peak_rss(lm_models["lm-int8"], threads=1, opener="slmkit.bench_lm:open_probe")
    assert rss["peak_rss_mb"] > 0 and rss["torch_imported"] is False


def test_bad_input(lm_models, texts, tiny_base, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    base = ["bench", "--models", lm_models["lm-onnx"], "--out", tmp_path / "r", *QUICK]
    assert "no text" in one_line_error(invoke(*base, "--data", empty))
    squad = tmp_path / "dev.json"
    squad.write_text(json.dumps({"version": "1.1", "data": []}), encoding="utf-8")
    assert "a corpus must be" in one_line_error(invoke(*base, "--data", squad))
    line = one_line_error(invoke("bench", "--models", lm_models["lm-onnx"], tiny_base, "--data", texts["eval"], "--out", tmp_path / "r", *QUICK))
    assert "models of different tasks" in line and "(lm)" in line
    assert "--train" in one_line_error(invoke(*base, "--data", texts["eval"], "--baselines", "kn4"))
    # and the other way round: a classifier given a plain-text corpus
    assert "unknown file type '.txt'" in one_line_error(invoke("bench", "--models", tiny_base, "--data", texts["eval"], "--out", tmp_path / "r", *QUICK))
    assert not (tmp_path / "r").exists()
