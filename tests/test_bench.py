"""`slm bench` on the tiny models: the timing harness, metric intervals, baselines on the toy task, the report
files and their schema, the HTML rendered in headless Chromium, a failing baseline, and every bad input."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_csv, importable
from slmkit import artifacts, measure, metrics
from slmkit.bench import Entry, bench, pareto_front, time_rounds, timing_warnings
from slmkit.cli import app
from slmkit.config import BenchConfig, QuantizeConfig
from slmkit.data import read_examples

SCHEMA = Path(__file__).resolve().parents[1] / "slmkit" / "schemas" / "bench-results.schema.json"
QUICK = dict(threads=["1"], rounds=2, latency_calls=20, warmup=3, speed_texts=32, bootstrap=200)  # seconds, one torch thread
runner = CliRunner()



def fasttext_installed() -> bool:
    return importable("fasttext")


@pytest.fixture(scope="module")
def int8_tiny(exported_tiny, tmp_path_factory) -> Path:
    from slmkit.quantize import quantize

    return quantize(QuantizeConfig(model=str(exported_tiny), out=str(tmp_path_factory.mktemp("int8") / "tiny-int8")), progress=False).out


@pytest.fixture(scope="module")
def bench_run(trained_tiny, exported_tiny, int8_tiny, synthetic, tmp_path_factory):
    """Three slmkit models (PyTorch, ONNX fp32, ONNX int8) and all four baselines, the teacher being the tiny model."""
    out = tmp_path_factory.mktemp("bench") / "report"
    cfg = BenchConfig(
        models=[str(trained_tiny), str(exported_tiny), str(int8_tiny)], names=["tiny", "tiny-onnx", "tiny-int8"],
        data=str(synthetic["test"]), train=str(synthetic["train"]), teacher=str(trained_tiny), out=str(out),
        baselines=["tfidf", "fasttext", "teacher-torch", "teacher-int8"], **QUICK,
    )
    result = bench(cfg, progress=False)
    return result.out, result.results


def by_name(results: dict) -> dict:
    return {e["name"]: e for e in results["entries"]}


# ------------------------------------------------------------------------------------------ timing harness


def test_latency_excludes_warmup_and_orders_percentiles():
    calls = []

    def slow_start(texts):  # the warm-up calls are slow, as first calls are
        calls.append(texts)
        if len(calls) <= 5:
            time.sleep(0.05)

    latency = measure.latency_ms(slow_start, ["a", "b", "c"], n=40, warmup=5)
    assert len(calls) == 45 and all(len(c) == 1 for c in calls)
    assert latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] < 50  # no slow warm-up call was timed


def test_timing_rounds_on_a_tiny_model(exported_tiny, synthetic, tmp_path):
    model = measure.open_model(exported_tiny, threads=1, batch_size=8)
    batches: list[int] = []

    class Counting:
        labels = model.labels

        def predict_proba(self, texts):
            batches.append(len(texts))
            return model.predict_proba(texts)

    texts = [e.text for e in read_examples(synthetic["test"])][:40]
    cfg = BenchConfig(models=["x"], data="d", out="o", rounds=2, latency_calls=15, warmup=4, batch_size=8)
    runs = time_rounds([Entry("tiny", "model", "onnx")], {("tiny", "1"): (Counting(), 1)}, {"1": 1}, texts, cfg)
    rounds = runs[("tiny", "1")]
    assert len(rounds) == 2
    for r in rounds:
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["throughput_per_s"] > 0
    # per round: 4 warm-up + 15 timed batch-1 calls, then 2 warm-up + 5 timed batches of 8
    assert batches.count(1) == 2 * (4 + 15) and batches.count(8) == 2 * (2 + 5)


def test_pareto_front_known_answer():
    points = [("a", 0.9, 10.0), ("b", 0.8, 1.0), ("c", 0.7, 5.0), ("d", 0.9, 12.0), ("e", 0.95, 40.0)]
    assert pareto_front(points) == {"a", "b", "e"}  # c: b is faster and better; d: a is as good and faster


def test_warnings_for_noise_and_slow_int8():
    def speed(p50, lo, hi, rate):
        return {"1": {"threads": 1, "p50_ms": {"median": p50, "min": lo, "max": hi}, "throughput_per_s": {"median": rate, "min": rate, "max": rate}}}

    records = [
        {"name": "fp32", "status": "ok", "precision": "fp32", "fp32_reference": None, "speed": speed(1.0, 0.99, 1.01, 1000)},
        {"name": "int8", "status": "ok", "precision": "int8", "fp32_reference": "fp32", "speed": speed(1.5, 1.0, 1.6, 900)},
    ]
    lines = timing_warnings(records, {"1": 1})
    assert any(line.startswith("int8 at 1 thread: batch-1 p50 latency varied 40%") for line in lines)
    assert any(line.startswith("int8 (int8) is slower than its fp32 source fp32 at 1 thread on this CPU") and "throughput 900/s vs 1,000/s" in line for line in lines)
    assert not any(line.startswith("fp32 at") for line in lines)  # 2% spread is quiet


# ------------------------------------------------------------------------------------------------ a run


def test_report_files_and_schema(bench_run):
    out, results = bench_run
    for name in (artifacts.BENCH_RESULTS, artifacts.BENCH_MARKDOWN, artifacts.BENCH_HTML, artifacts.CONFIG, *artifacts.BENCH_CHARTS.values()):
        assert (out / name).is_file(), name
    for name in ("tiny", "tiny-onnx", "tiny-int8"):
        card = (out / artifacts.BENCH_CARDS / name / artifacts.MODEL_CARD).read_text()
        for section in ("## Intended use", "## Data", "## Metrics", "## Speed and footprint", "## Limitations"):
            assert section in card
    assert sorted(p.name for p in (out / artifacts.BENCH_CARDS).iterdir()) == ["tiny", "tiny-int8", "tiny-onnx"]  # models only
    assert not (out / ".work").exists() and not artifacts.staging_dir(out).exists()
    written = json.loads((out / artifacts.BENCH_RESULTS).read_text())
    assert written == json.loads(json.dumps(results))

    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extras: pip install -e '.[test]'")
    jsonschema.validate(written, json.loads(SCHEMA.read_text()))
    assert [e["name"] for e in results["entries"]] == ["tiny", "tiny-onnx", "tiny-int8", "tfidf", "fasttext", "teacher-torch", "teacher-int8"]
    assert results["hardware"]["cpu"] and results["timing"]["threads"] == {"1": 1}

    md = (out / artifacts.BENCH_MARKDOWN).read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table[0].startswith("| model | type | accuracy % (95% CI)")  # the headline table comes first
    assert len(table) >= 2 + len(results["entries"])
    page = (out / artifacts.BENCH_HTML).read_text()
    assert page.count('<img src="data:image/png;base64,') == 3 and "http://" not in page and "https://" not in page


def test_intervals_match_the_metric_functions(bench_run, trained_tiny, synthetic):
    _, results = bench_run
    entry = by_name(results)["tiny"]
    model = measure.open_model(trained_tiny)
    examples = read_examples(synthetic["test"])
    y = np.array([model.labels.index(e.label) for e in examples])
    pred = model.predict_proba([e.text for e in examples]).argmax(1)
    m = entry["metrics"]
    assert m["accuracy"] == metrics.accuracy(y, pred) and m["n_examples"] == 60
    assert tuple(m["accuracy_ci95"]) == metrics.bootstrap_ci(metrics.accuracy, y, pred, n_resamples=200, seed=0)
    macro = lambda t, p: metrics.macro_f1(t, p, 3)  # noqa: E731
    assert tuple(m["macro_f1_ci95"]) == metrics.bootstrap_ci(macro, y, pred, n_resamples=200, seed=0)
    assert m["accuracy_ci95"][0] <= m["accuracy"] <= m["accuracy_ci95"][1]
    speed = entry["speed"]["1"]
    assert speed["p50_ms"]["median"] <= speed["p95_ms"]["median"] <= speed["p99_ms"]["median"]
    assert len(speed["rounds"]) == 2 and speed["p50_ms"]["min"] <= speed["p50_ms"]["median"] <= speed["p50_ms"]["max"]


def test_baselines_on_the_toy_set(bench_run):
    _, results = bench_run
    e = by_name(results)
    tfidf = e["tfidf"]
    assert tfidf["status"] == "ok" and tfidf["metrics"]["accuracy_ci95"][0] > 1 / 3  # beats chance (3 labels)
    assert tfidf["bytes"] > 0 and tfidf["parameters"] > 0 and tfidf["peak_rss_mb"] > 0
    if fasttext_installed():
        assert e["fasttext"]["status"] == "ok" and e["fasttext"]["metrics"]["accuracy"] > 1 / 3
    else:
        assert e["fasttext"]["status"] == "failed" and "pip install fasttext-wheel" in e["fasttext"]["error"]
    # the teacher through the Hugging Face pipeline predicts what slmkit's PyTorch path predicts
    assert e["teacher-torch"]["metrics"]["accuracy"] == e["tiny"]["metrics"]["accuracy"]
    assert e["teacher-torch"]["backend"] == "hf-pipeline" and e["teacher-torch"]["rss_torch_imported"] is True
    assert e["teacher-int8"]["precision"] == "int8" and e["teacher-int8"]["fp32_reference"] == "teacher-torch"
    assert e["tiny-int8"]["fp32_reference"] == "tiny-onnx"  # found through the int8 model's config.yaml
    assert e["tiny-onnx"]["rss_torch_imported"] is False and e["tiny-int8"]["bytes"] < e["tiny-onnx"]["bytes"]
    front = set(results["pareto_front"])
    assert front and all(r["pareto"] == (r["name"] in front) for r in results["entries"])


def test_report_renders_in_chromium(bench_run, browser):
    """report.html opened by headless Debian chromium: every chart decoded, one results row per entry."""
    out, results = bench_run
    page = browser.new_page()
    try:
        page.goto((out / artifacts.BENCH_HTML).as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        rows = page.eval_on_selector_all("#results tbody tr", "rows => rows.map(r => r.cells[0].textContent)")
    finally:
        page.close()
    assert len(images) == 3 and all(complete and width > 0 and height > 0 for complete, width, height in images)
    assert rows == [e["name"] for e in results["entries"]]


def test_a_failing_baseline_is_reported_and_the_rest_still_appear(exported_tiny, synthetic, tmp_path, monkeypatch):
    from slmkit import baselines

    def broken(*args, **kwargs):
        raise RuntimeError("solver ran out of memory")

    monkeypatch.setattr(baselines.TfidfBaseline, "train", staticmethod(broken))
    cfg = BenchConfig(models=[str(exported_tiny)], data=str(synthetic["test"]), train=str(synthetic["train"]), out=str(tmp_path / "r"),
                      baselines=["tfidf", "fasttext"], rss=False, **{**QUICK, "rounds": 1})
    results = bench(cfg, progress=False).results
    e = by_name(results)
    assert e["tfidf"]["status"] == "failed" and e["tfidf"]["error"] == "RuntimeError: solver ran out of memory"
    assert e["tfidf"]["metrics"] is None and e["tiny-onnx"]["status"] == "ok"
    assert e["fasttext"]["status"] == ("ok" if fasttext_installed() else "failed")
    md = (tmp_path / "r" / artifacts.BENCH_MARKDOWN).read_text()
    assert "failed: RuntimeError: solver ran out of memory" in md and "**tfidf** failed" in md
    assert '<tr class="failed"><td>tfidf</td>' in (tmp_path / "r" / artifacts.BENCH_HTML).read_text()


# ---------------------------------------------------------------------------------------------------- CLI


def slm(*args):
    return runner.invoke(app, [str(a) for a in args])


FAST = ["--threads", "1", "--rounds", "1", "--latency-calls", "10", "--speed-texts", "16", "--bootstrap", "100", "--no-rss", "--quiet"]


def test_bench_command(trained_tiny, exported_tiny, synthetic, tmp_path):
    out = tmp_path / "report"
    result = slm("bench", "--models", trained_tiny, exported_tiny, "--data", synthetic["test"], "--baselines", "tfidf", "--train", synthetic["train"], "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    assert f"report written to {out}" in result.stdout.replace("\n", "")
    results = json.loads((out / artifacts.BENCH_RESULTS).read_text())
    assert [e["name"] for e in results["entries"]] == [Path(trained_tiny).name, "tiny-onnx", "tfidf"]
    # a previous report is replaced without --overwrite; a labels rename makes foreign data usable
    rows = [(t, {"billing": "money"}.get(label, label)) for t, label in read_rows(synthetic["test"])]
    renamed = write_csv(tmp_path / "renamed.csv", rows)
    result = slm("bench", "--models", exported_tiny, "--data", renamed, "--label-map", "money=billing", "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    assert json.loads((out / artifacts.BENCH_RESULTS).read_text())["data"]["label_map"] == {"money": "billing"}


def read_rows(path: Path) -> list[tuple[str, str]]:
    return [(e.text, e.label) for e in read_examples(path)]


def bench_bad_inputs(tmp_path: Path, synthetic: dict, model: Path) -> dict:
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "weights.txt").write_text("nothing here")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    weather = write_csv(tmp_path / "weather.csv", [("refund please", "billing"), ("sunny today", "weather"), ("rain", "weather"), ("x", "snow")])
    header_only = write_csv(tmp_path / "empty.csv", [])
    data, train = synthetic["test"], synthetic["train"]
    return {
        "neither model nor onnx": (["--models", tmp_path / "notamodel", "--data", data], "notamodel: neither an slmkit model (config.json + model.safetensors) nor an exported ONNX model"),
        "missing model": (["--models", tmp_path / "nowhere", "--data", data], "nowhere: model directory not found"),
        "unknown labels": (["--models", model, "--data", weather], "labels that model " + str(model) + " does not know: 'weather' (2 rows, first on line 3), 'snow' (1 row, first on line 5)"),
        "empty test set": (["--models", model, "--data", header_only], "empty.csv: no examples"),
        "trained baseline without --train": (["--models", model, "--data", data, "--baselines", "tfidf"], "baseline tfidf is trained here: pass --train FILE"),
        "teacher baseline without --teacher": (["--data", data, "--baselines", "teacher-int8"], "needs the teacher: pass --teacher DIR"),
        "unknown baseline": (["--models", model, "--data", data, "--baselines", "bert,tfidf", "--train", train], "unknown baseline bert: valid ones are tfidf, fasttext, teacher-torch, teacher-int8"),
        "bad label map": (["--models", model, "--data", data, "--label-map", "weather"], "setting label_map entries must be old=new"),
        "output not a run": (["--models", model, "--data", data, "--out", tmp_path / "busy"], "busy: exists and is not a previous slmkit run"),
        "nothing to measure": (["--data", data], "nothing to measure"),
    }


@pytest.mark.parametrize("case", ["neither model nor onnx", "missing model", "unknown labels", "empty test set", "trained baseline without --train",
                                  "teacher baseline without --teacher", "unknown baseline", "bad label map", "output not a run", "nothing to measure"])
def test_bench_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, synthetic, exported_tiny):
    args, expected = bench_bad_inputs(tmp_path, synthetic, exported_tiny)[case]
    if "--out" not in args:
        args = [*args, "--out", tmp_path / "out"]
    result = slm("bench", *args, *FAST)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert not (tmp_path / "out").exists() and not artifacts.staging_dir(tmp_path / "out").exists()
    if case == "unknown labels":
        assert "map them with --label-map weather=KNOWN_LABEL" in lines[0]
    if case == "output not a run":
        assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_benchmark_script_smoke(trained_tiny, exported_tiny, synthetic, tmp_path):
    """benchmarks/bench_report.py end to end on the tiny models (the real run uses banking77 and MiniLM)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_report.py"
    spec = importlib.util.spec_from_file_location("bench_report", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    student = tmp_path / "student-copy"
    shutil.copytree(exported_tiny, student)
    script.main([
        "--teacher", str(trained_tiny), "--students", str(exported_tiny), str(student), "--data", str(synthetic["test"]),
        "--train", str(synthetic["train"]), "--text-col", "text", "--label-col", "label", "--baselines", "tfidf",
        "--workdir", str(tmp_path / "work"), "--results", str(tmp_path / "results"), "--rounds", "1", "--latency-calls", "10",
        "--speed-texts", "16", "--threads", "1", "--quiet",
    ])
    md = (tmp_path / "results" / "bench_report.md").read_text()
    assert (tmp_path / "results" / "bench_report-pareto.png").is_file()
    assert "![" in md and "bench_report-pareto.png" in md and "python benchmarks/bench_report.py" in md


def test_help_names_every_flag_the_readme_uses():
    import re

    result = slm("bench", "--help")
    assert result.exit_code == 0 and "Usage" in result.stdout
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Benchmark: `slm bench`", 1)[1].split("\n## ", 1)[0]
    used = set(re.findall(r"(--[a-z][a-z-]+)", section))
    assert {"--models", "--data", "--out", "--baselines", "--train", "--teacher", "--label-map", "--threads", "--rounds"} <= used
    missing = [flag for flag in used if flag not in result.stdout]
    assert not missing, missing
