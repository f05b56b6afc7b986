"""Compression, bench and `slm run` for NER and QA: tiny models trained once per module, then quantized (dynamic,
static, accuracy-aware, QAT), served through the torch-free TaskSession, benchmarked side by side and run
through the pipeline, each scored in the task's own metric (entity F1, SQuAD F1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slmkit.config import QuantizeConfig
from slmkit.errors import UserError
from test_ner import ner_rows, write_conll_rows
from test_qa import synthetic_squad


@pytest.fixture(scope="module")
def tiny_tasks(tiny_base, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """The tiny BERT trained for NER (IOB1 train, BIO dev) and for QA (24-token windows, stride 8), each exported:
    {task: {"model", "onnx", "train", "dev"}}."""
    from slmkit.config import DataConfig, ExportConfig, ModelConfig, OptimConfig, TrainConfig
    from slmkit.export import export
    from slmkit.train import train

    d = tmp_path_factory.mktemp("tasks")
    files = {
        "ner": (write_conll_rows(d / "train.conll", ner_rows(160, seed=1), "iob1"), write_conll_rows(d / "dev.conll", ner_rows(40, seed=2), "bio")),
        "qa": (synthetic_squad(d / "train.json", 40, seed=1), synthetic_squad(d / "dev.json", 15, seed=2)),
    }
    models = {"ner": ModelConfig(base=str(tiny_base)), "qa": ModelConfig(base=str(tiny_base), max_length=24, stride=8)}
    epochs = {"ner": 6, "qa": 3}
    found = {}
    for task, (train_file, dev_file) in files.items():
        cfg = TrainConfig(
            task=task, out=str(d / task), data=DataConfig(train=str(train_file), eval=str(dev_file)), model=models[task],
            train=OptimConfig(epochs=epochs[task], batch_size=16, lr=5e-3 if task == "ner" else 3e-3, warmup=0.0, seed=7, patience=0, threads=1),
        )
        model = train(cfg, progress=False).out
        onnx_dir = export(ExportConfig(model=str(model), out=str(d / f"{task}-onnx"))).out
        found[task] = {"model": model, "onnx": onnx_dir, "train": train_file, "dev": dev_file}
    return found


def _session_f1(directory: Path, task: str, dev: Path) -> float:
    """The task's F1 of an exported directory on `dev`, through the torch-free runtime."""
    from slmkit.config import DataConfig
    from slmkit.runtime import TaskSession

    session = TaskSession(directory)
    examples = session.task.read(dev, DataConfig())
    features, outputs = session.run(examples)
    return session.task.score(examples, features, outputs, session.labels, full=False)["f1"]


# ---------------------------------------------------------------------------------------------- quantize


@pytest.mark.parametrize("task", ["ner", "qa"])
def test_dynamic_and_static_int8_serve_through_the_task_session(tiny_tasks, task, tmp_path):
    from slmkit.quantize import quantize

    paths = tiny_tasks[task]
    fp32_f1 = _session_f1(paths["onnx"], task, paths["dev"])
    assert fp32_f1 >= 0.8  # the tiny model learned the task: the comparisons below mean something
    for method in ("dynamic", "static"):
        result = quantize(QuantizeConfig(model=str(paths["onnx"]), out=str(tmp_path / method), method=method, calib_size=16), progress=False)
        m = result.metrics
        # measured on the recorded eval set in the task's metric, in points
        assert m["metric_name"] == "f1" and m["fp32_metric"] == pytest.approx(fp32_f1)
        assert m["drop_points"] == pytest.approx(100 * (m["fp32_metric"] - m["int8_metric"]))
        assert m["agreement_with_fp32"] >= 0.8 and abs(m["drop_points"]) <= 10
        assert m["bytes"] < m["fp32_bytes"]
        manifest = json.loads((result.out / "manifest.json").read_text())
        assert manifest["precision"] == "int8" and manifest["task"] == task and manifest["quantization"]["method"] == method
        # the quantized directory serves through TaskSession and scores what metrics.json says
        assert _session_f1(result.out, task, paths["dev"]) == pytest.approx(m["int8_metric"])
        if method == "static":
            assert m["chosen"]["calib_size"] == 16


def test_static_calibration_feeds_qa_windows_with_their_token_types(tiny_tasks):
    """The QA calibration batches are the task's padded windows: question segment 0, context segment 1."""
    from slmkit.config import DataConfig
    from slmkit.quantize import TaskCalibrationReader
    from slmkit.tasks.qa import QATask

    paths = tiny_tasks["qa"]
    examples = QATask(stride=8).read(paths["train"], DataConfig())[:10]
    reader = TaskCalibrationReader(paths["onnx"], examples)
    batches = []
    while (batch := reader.get_next()) is not None:
        batches.append(batch)
    assert len(batches) >= 2 and len({b["input_ids"].shape[1] for b in batches}) == 1  # one width for the histogram calibrators
    assert all(b["input_ids"].shape[0] == TaskCalibrationReader.BATCH for b in batches)
    # a BERT that takes token types gets the windows' segments (question 0, context 1), not zeros
    from slmkit.runtime import TaskSession, pad_features

    session = TaskSession(paths["onnx"])
    features = session.task.encode(examples[:2], session.encoder, None)
    batch = pad_features(features, ["input_ids", "attention_mask", "token_type_ids"], session.pad_id)
    for row, f in enumerate(features):
        types = batch["token_type_ids"][row, : len(f["input_ids"])].tolist()
        assert types == f["token_type_ids"] and types[0] == 0 and types[-1] == 1


def test_accuracy_aware_ladder_keeps_the_per_token_head_fp32_then_falls_back(tiny_tasks, tmp_path, monkeypatch):
    import onnx

    import slmkit.quantize as module

    paths = tiny_tasks["ner"]
    graph = onnx.load(str(paths["onnx"] / "model.onnx")).graph
    steps = module.backoff_steps(graph, [])
    assert [name for name, _ in steps][:3] == ["all int8", "head fp32", "head and embeddings fp32"] and len(steps) == 4
    weights = {t.name for t in graph.initializer}
    matmuls = [n.name for n in graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)]
    assert steps[1][1] == [matmuls[-1]]  # the classifier over every token: a MatMul, not a Gemm

    real = module.score_task

    def pessimistic(session, evaluation, reference_pred=None):
        scores = real(session, evaluation, reference_pred)
        if reference_pred is not None:  # every int8 candidate loses 5 points of entity F1
            scores["metric"] -= 0.05
        return scores

    monkeypatch.setattr(module, "score_task", pessimistic)
    result = module.quantize(QuantizeConfig(model=str(paths["onnx"]), out=str(tmp_path / "aa"), max_drop=0.5), progress=False)
    m = result.metrics
    assert m["fell_back_to_fp32"] and [t["step"] for t in m["tried"]][:4] == [name for name, _ in steps]
    assert all(t["drop_points"] == pytest.approx(5.0, abs=1e-6) for t in m["tried"][:4])
    assert json.loads((result.out / "manifest.json").read_text())["precision"] == "fp32"
    assert _session_f1(result.out, "ner", paths["dev"]) == pytest.approx(m["fp32_metric"])


def test_accuracy_aware_qa_within_budget_stops_at_the_first_step(tiny_tasks, tmp_path):
    from slmkit.quantize import quantize

    m = quantize(QuantizeConfig(model=str(tiny_tasks["qa"]["onnx"]), out=str(tmp_path / "qa-aa"), max_drop=100.0), progress=False).metrics
    assert [t["step"] for t in m["tried"]] == ["all int8"] and not m["fell_back_to_fp32"] and m["metric_name"] == "f1"


def test_qat_fine_tunes_a_qa_model_through_its_task_then_exports_and_quantizes(tiny_tasks, tmp_path):
    """QAT reads the QA training questions through the task (windows with answer targets), fine-tunes with fake
    quantization, exports again (the export's parity check passes) and quantizes dynamically."""
    from slmkit.quantize import quantize

    paths = tiny_tasks["qa"]
    result = quantize(QuantizeConfig(model=str(paths["onnx"]), out=str(tmp_path / "qat"), method="qat", qat_limit=40), progress=False)
    m = result.metrics
    assert m["chosen"]["method"] == "qat" and m["metric_name"] == "f1" and abs(m["drop_points"]) <= 10
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["task_options"] == {"stride": 8}
    assert _session_f1(result.out, "qa", paths["dev"]) == pytest.approx(m["int8_metric"])


def test_prune_and_trim_vocab_refuse_ner_and_qa_in_one_line(tiny_tasks, tmp_path):
    from typer.testing import CliRunner

    from slmkit.cli import app

    for task in ("ner", "qa"):
        for command in ("prune", "trim-vocab"):
            result = CliRunner().invoke(app, [command, "--model", str(tiny_tasks[task]["model"]), "--out", str(tmp_path / f"{task}-{command}")])
            assert result.exit_code == 2, result.output
            line = result.output.strip()
            assert "\n" not in line and f"a {task} model" in line and "slm quantize" in line
            assert not (tmp_path / f"{task}-{command}").exists()


def test_quantize_refuses_an_eval_file_that_is_not_the_task_s(tiny_tasks, tmp_path):
    from slmkit.quantize import quantize

    bad = tmp_path / "dev.conll"
    bad.write_text("just one column\n", encoding="utf-8")
    with pytest.raises(UserError):
        quantize(QuantizeConfig(model=str(tiny_tasks["ner"]["onnx"]), out=str(tmp_path / "x"), eval_data=str(bad), max_drop=1.0), progress=False)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------- bench


@pytest.fixture(scope="module")
def ner_int8(tiny_tasks, tmp_path_factory) -> Path:
    from slmkit.quantize import quantize

    return quantize(QuantizeConfig(model=str(tiny_tasks["ner"]["onnx"]), out=str(tmp_path_factory.mktemp("ner-q") / "ner-int8")), progress=False).out


def _quick_bench(**overrides):
    from slmkit.config import BenchConfig

    settings = dict(threads=["1"], rounds=2, latency_calls=10, warmup=1, speed_texts=12, bootstrap=200, rss=False)
    return BenchConfig(**{**settings, **overrides})


def test_bench_ner_side_by_side_in_entity_f1(tiny_tasks, ner_int8, tmp_path):
    from slmkit.bench import bench

    paths = tiny_tasks["ner"]
    cfg = _quick_bench(models=[str(paths["onnx"]), str(ner_int8)], data=str(paths["dev"]), out=str(tmp_path / "report"),
                       baselines=["tfidf", "teacher-torch"], teacher=str(paths["model"]), train=str(paths["train"]))
    results = bench(cfg, progress=False).results
    assert results["task"] == "ner" and results["unit"] == "sentences" and results["metric_columns"][0] == ["f1", "entity F1"]
    names = [r["name"] for r in results["entries"]]
    assert names == ["ner-onnx", "ner-int8", "teacher-torch"]  # tfidf does not apply: skipped with a note
    assert any("tfidf skipped" in w for w in results["warnings"])
    fp32_f1 = _session_f1(paths["onnx"], "ner", paths["dev"])
    for r in results["entries"]:
        m = r["metrics"]
        assert r["status"] == "ok" and m["f1_ci95"][0] <= m["f1"] <= m["f1_ci95"][1] and m["per_class"]
        speed = r["speed"]["1"]
        assert speed["p50_ms"]["median"] <= speed["p99_ms"]["median"] and speed["throughput_per_s"]["median"] > 0
    by_name = {r["name"]: r for r in results["entries"]}
    assert by_name["ner-onnx"]["metrics"]["f1"] == pytest.approx(fp32_f1)
    assert by_name["teacher-torch"]["backend"] == "pytorch"
    assert by_name["ner-int8"]["fp32_reference"] == "ner-onnx"
    assert by_name["ner-int8"]["bytes"] < by_name["ner-onnx"]["bytes"]
    assert set(results["pareto_front"]) <= set(names) and results["pareto_front"]
    out = tmp_path / "report"
    report = (out / "report.md").read_text()
    assert "NER benchmark" in report and "entity F1 % (95% CI)" in report and "sentences/s" in report and "accuracy %" not in report
    assert "Per-entity-type F1" in report and "PAY" in report
    card = (out / "models" / "ner-int8" / "model-card.md").read_text()
    assert "entity F1" in card and "Named entities" in card
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extras: pip install -e '.[test]'")
    schema = json.loads((Path(__file__).resolve().parents[1] / "slmkit" / "schemas" / "bench-results.schema.json").read_text())
    jsonschema.validate(json.loads((out / "results.json").read_text()), schema)


def test_peak_rss_probe_serves_an_int8_ner_model_without_torch(ner_int8):
    from slmkit.measure import peak_rss

    rss = peak_rss(ner_int8)  # a fresh process: load, then one request (a raw sentence) through TaskSession
    assert rss["torch_imported"] is False and 10 < rss["peak_rss_mb"] < 1000


def test_bench_qa_scores_questions_and_refuses_mixed_tasks(tiny_tasks, tmp_path):
    from slmkit.bench import bench

    from typer.testing import CliRunner

    from slmkit.cli import app

    paths = tiny_tasks["qa"]
    args = ["bench", "--models", str(paths["onnx"]), str(paths["model"]), "--data", str(paths["dev"]), "--out", str(tmp_path / "qa"), "--threads", "1",
            "--rounds", "2", "--latency-calls", "10", "--speed-texts", "12", "--bootstrap", "200", "--no-rss", "--quiet"]
    printed = CliRunner().invoke(app, args)
    assert printed.exit_code == 0, printed.output
    assert "30 questions of" in printed.output and "F1 (95% CI)" in printed.output and "questions/s" in printed.output
    results = json.loads((tmp_path / "qa" / "results.json").read_text())
    assert results["task"] == "qa" and results["unit"] == "questions" and results["data"]["labels"] == []
    onnx_row, torch_row = results["entries"]
    assert onnx_row["metrics"]["n_examples"] == 30 and onnx_row["metrics"]["exact_match_ci95"]
    # the torch-free runtime and PyTorch answer alike on the same questions
    assert onnx_row["metrics"]["f1"] == pytest.approx(torch_row["metrics"]["f1"], abs=0.02)
    assert "exact match % (95% CI)" in (tmp_path / "qa" / "report.md").read_text()
    with pytest.raises(UserError, match="different tasks"):
        bench(_quick_bench(models=[str(paths["onnx"]), str(tiny_tasks["ner"]["onnx"])], data=str(paths["dev"]), out=str(tmp_path / "mixed")), progress=False)
    assert not (tmp_path / "mixed").exists()


# ------------------------------------------------------------------------------------------------ slm run


def _run_config(tiny_base: Path, task: str, train_file: Path, out: Path, **overrides):
    from slmkit.config import BudgetConfig, DataConfig, ModelConfig, OptimConfig, RunBenchConfig, RunConfig

    optim = dict(batch_size=16, lr=5e-3 if task == "ner" else 3e-3, warmup=0.0, seed=7, patience=0, threads=1, epochs=6 if task == "ner" else 3)
    values = {
        "task": task,
        "data": DataConfig(train=str(train_file)),
        "model": ModelConfig(base=str(tiny_base), **({"max_length": 24, "stride": 8} if task == "qa" else {})),
        "train": OptimConfig(**optim),
        "bench": RunBenchConfig(baselines=["tfidf", "teacher-torch"], threads=["1"], rounds=1, latency_calls=10, speed_texts=12, rss=False, bootstrap=100),
        "budget": BudgetConfig(size=None, latency=None, max_drop=50.0),
        **overrides,
    }
    return RunConfig(out=str(out), **values)


def test_run_ner_trains_compresses_benches_selects_and_deploys_on_entity_f1(tiny_base, tiny_tasks, tmp_path):
    """slm run --task ner through the CLI: held-out BIO splits, the teacher and a distilled BiLSTM tagger (fp32, int8),
    the benchmark in entity F1, a bundle the torch-free runtime serves; the same command again recomputes nothing."""
    import yaml
    from typer.testing import CliRunner

    from slmkit.cli import app
    from slmkit.config import to_dict
    from slmkit.pipeline import verify_bundle
    from slmkit.tasks.ner import predict_entities

    cfg = _run_config(tiny_base, "ner", tiny_tasks["ner"]["train"], tmp_path / "run", students=["bilstm:hidden=16,embed=16 epochs=4 lr=5e-3"])
    settings = tmp_path / "run.yaml"
    settings.write_text(yaml.safe_dump({k: v for k, v in to_dict(cfg).items() if k in ("data", "model", "train", "bench", "budget", "students")}))
    args = ["run", "--task", "ner", "--config", str(settings), "--out", str(tmp_path / "run"), "--quiet"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "chosen:" in first.output and "f1" in first.output
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    kinds = [s["kind"] for s in record["stages"]]
    assert kinds == ["data", "teacher", "distill", "export", "quantize", "export", "quantize", "bench", "deploy"]
    assert record["selection"]["metric"] == "f1" and record["selection"]["chosen"] is not None
    data_dir = Path(record["stages"][0]["dir"])
    assert sorted(p.name for p in data_dir.glob("*.conll")) == ["eval.conll", "test.conll", "train.conll"]
    results = json.loads((Path(record["stages"][7]["dir"]) / "results.json").read_text())
    student = "bilstm-H16-E16-epochs4-lr5e-3"
    assert results["task"] == "ner" and [e["name"] for e in results["entries"]] == ["teacher", "teacher-int8", student, student + "-int8", "teacher-torch"]
    assert results["entries"][0]["metrics"]["f1"] >= 0.8
    deploy = tmp_path / "run" / "deploy"
    assert verify_bundle(deploy) > 3
    manifest = json.loads((deploy / "manifest.json").read_text())
    assert manifest["task"] == "ner" and manifest["bundle"]["metric"] == "f1"
    assert "named-entity tagger" in (deploy / "README.md").read_text()
    if manifest["bundle"]["model"].startswith("teacher"):
        entities = predict_entities(deploy, ["please help with my refund today"])[0]
        assert [(e["label"], e["text"]) for e in entities] == [("PAY", "refund")]

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert {s["status"] for s in json.loads((tmp_path / "run" / "run.json").read_text())["stages"]} == {"cached"}


def test_the_ladder_of_ner_and_qa_keeps_the_kinds_each_task_takes(tiny_base, tmp_path):
    from slmkit.config import RunConfig
    from slmkit.pipeline import task_ladder

    kinds = lambda task: [entry.split(":")[0] for entry in task_ladder(RunConfig(task=task, out=str(tmp_path)))]  # noqa: E731
    assert kinds("classification") == ["cnn", "cnn", "transformer", "drop"]
    assert kinds("ner") == ["bilstm", "transformer", "drop"] and kinds("qa") == ["transformer", "drop"]
    assert task_ladder(RunConfig(task="ner", out=str(tmp_path), students=["bilstm:hidden=16", "drop:every=2"])) == ["bilstm:hidden=16", "drop:every=2"]
    with pytest.raises(UserError, match="a bilstm student cannot do qa: use one of drop, transformer"):
        task_ladder(RunConfig(task="qa", out=str(tmp_path), students=["bilstm:hidden=16"]))


def test_run_qa_selects_on_squad_f1_and_refuses_what_does_not_apply(tiny_base, tiny_tasks, tmp_path):
    from slmkit.config import SearchConfig
    from slmkit.pipeline import run
    from slmkit.runtime import TaskSession

    # the fixture's QA model as --teacher (the NER test trains its own): given, not trained
    result = run(_run_config(tiny_base, "qa", tiny_tasks["qa"]["train"], tmp_path / "qa", teacher=str(tiny_tasks["qa"]["model"]), students=[]), progress=False)
    assert result.metric == "f1" and result.selection.chosen is not None
    assert [s["status"] for s in result.stages if s["kind"] == "teacher"] == ["given"]
    assert [check.candidate.name for check in result.selection.checks] == ["teacher", "teacher-int8"]
    assert result.teacher.accuracy >= 0.8  # SQuAD F1 of the tiny teacher on the held-out paragraphs
    session = TaskSession(result.bundle)
    assert session.task.name == "qa" and session.task.stride == 8
    with pytest.raises(UserError, match="--search explores classification"):
        run(_run_config(tiny_base, "qa", tiny_tasks["qa"]["train"], tmp_path / "s", search=SearchConfig(trials=2)), progress=False)
    with pytest.raises(UserError, match="not a qa one"):
        run(_run_config(tiny_base, "qa", tiny_tasks["qa"]["train"], tmp_path / "t", teacher=str(tiny_tasks["ner"]["model"])), progress=False)
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()


def test_a_model_trained_on_a_seq_in_folder_finds_its_data_again(tmp_path):
    """Export, quantize and bench read a model's recorded data back: a SNIPS/ATIS-style folder is data, not a gone file."""
    from slmkit.config import DataConfig, TrainConfig, save_config
    from slmkit.lineage import recorded_examples

    folder = tmp_path / "slots"
    folder.mkdir()
    (folder / "seq.in").write_text("play jazz now\nbook a table\nplay rock\n", encoding="utf-8")
    (folder / "seq.out").write_text("O B-genre O\nO O O\nO B-genre\n", encoding="utf-8")
    model = tmp_path / "model"
    model.mkdir()
    save_config(TrainConfig(task="ner", out=str(model), data=DataConfig(train=str(folder), eval_split=0.34)), model / "config.yaml")
    train, source = recorded_examples(model, "train", "--data")
    held, _ = recorded_examples(model, "eval", "--eval-data")
    assert source == folder and len(train) == 2 and len(held) == 1
    assert sorted(tuple(s.words) for s in train + held) == [("book", "a", "table"), ("play", "jazz", "now"), ("play", "rock")]
