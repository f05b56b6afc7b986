"""The `slm` command in-process: train → evaluate → predict, --help, and every bad-input case of the CLI
(exit code 2, one line naming the problem and the fix, nothing left behind)."""

import json

import pytest
from typer.testing import CliRunner

from conftest import write_csv
from slmkit import artifacts
from slmkit.cli import app

runner = CliRunner()
TINY = ["--epochs", "4", "--lr", "3e-3", "--batch-size", "16", "--seed", "7", "--set", "train.warmup=0", "--set", "train.pack=false", "--quiet"]  # as tiny_config


def slm(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_evaluate_predict_end_to_end(tiny_base, synthetic, tmp_path):
    out = tmp_path / "run"
    result = slm("train", "--data", synthetic["train"], "--eval", synthetic["dev"], "--base", tiny_base, "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    assert f"model saved to {out}" in result.stdout.replace("\n", "")
    assert "accuracy" in result.stdout and "billing" in result.stdout

    result = slm("evaluate", "--model", out, "--data", synthetic["test"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "eval" / "test" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.95 and metrics["n_examples"] == 60
    assert set(metrics) >= {"accuracy_ci95", "macro_f1", "macro_f1_ci95", "ece", "per_class", "confusion_matrix"}
    assert (out / "eval" / "test" / "config.yaml").is_file()
    unknown = write_csv(tmp_path / "unknown.csv", [("refund", "billing"), ("sunny", "weather")])
    result = slm("evaluate", "--model", out, "--data", unknown)
    assert result.exit_code == 2 and "unknown.csv line 3: label 'weather' is not one the model knows (billing, delivery, login)" in result.stderr

    result = slm("predict", "--model", out, "refund that charge", "my parcel is lost")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["label"] for p in lines] == ["billing", "delivery"]
    assert sum(lines[0]["scores"].values()) == pytest.approx(1.0)

    (tmp_path / "in.jsonl").write_text('{"text": "password locked"}\n{"text": "courier"}\n')
    result = slm("predict", "--model", out, "--input", tmp_path / "in.jsonl", "--output", tmp_path / "preds.jsonl")
    assert result.exit_code == 0, result.output
    preds = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert [p["label"] for p in preds] == ["login", "delivery"]


def test_config_file_with_set_overrides(tiny_base, synthetic, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"data:\n  train: {synthetic['train']}\n  eval: {synthetic['dev']}\nmodel:\n  base: {tiny_base}\n"
        f"train:\n  epochs: 1\n  lr: 3.0e-3\nout: {tmp_path / 'from-yaml'}\n"
    )
    result = slm("train", "--config", cfg, "--set", "train.epochs=2", "--set", "train.lr=5e-3", "--quiet")
    assert result.exit_code == 0, result.output
    saved = (tmp_path / "from-yaml" / "config.yaml").read_text()
    assert "epochs: 2" in saved and "lr: 0.005" in saved


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["predict"], ["demo"], ["distill"], ["export"], ["quantize"], ["prune"], ["trim-vocab"]])
def test_help_explains_every_option(command):
    result = slm(*command, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.stdout
    if command == ["train"]:
        for option in ("--data", "--eval", "--text-col", "--label-col", "--eval-split", "--drop-empty", "--encoding", "--base", "--set", "--resume", "--overwrite"):
            assert option in result.stdout


def bad_input_cases(tmp_path, synthetic, tiny_base):
    good, dev = synthetic["train"], synthetic["dev"]
    (tmp_path / "latin.csv").write_bytes(b"text,label\nok,billing\ncaf\xe9,login\n")
    (tmp_path / "ragged.csv").write_text("text,label\nok,billing\nno, quotes,login\n")
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    return {
        "missing file": (["--data", tmp_path / "nope.csv"], "nope.csv: file not found"),
        "misspelled column": (["--data", good, "--label-col", "lable"], "no column 'lable': did you mean --label-col label?"),
        "empty text": (["--data", write_csv(tmp_path / "empty.csv", [("ok", "a"), ("  ", "b"), ("fine", "b")])], "line(s) 3 (1 in all): fix them or pass --drop-empty"),
        "eval label unseen": (["--data", good, "--eval", write_csv(tmp_path / "dev.csv", [("x", "billing"), ("y", "weather")])], "dev.csv line 3: label 'weather' does not occur in the training data"),
        "single class": (["--data", write_csv(tmp_path / "one.csv", [("a", "x"), ("b", "x")])], "only one class ('x')"),
        "not utf-8": (["--data", tmp_path / "latin.csv"], "latin.csv line 3: bytes that are not utf-8"),
        "ragged rows": (["--data", tmp_path / "ragged.csv"], "ragged.csv line 3: 3 fields where the header has 2"),
        "output not a run": (["--data", good, "--eval", dev, "--out", tmp_path / "busy"], "busy: exists and is not a previous slmkit run: choose another --out or pass --overwrite"),
        "base not a model": (["--data", good, "--base", tmp_path / "notamodel"], "not a Hugging Face model directory (no config.json)"),
        "base missing": (["--data", good, "--base", tmp_path / "nowhere"], "--base"),
        "bad setting": (["--data", good, "--set", "train.epochs=0"], "setting train.epochs must be at least 1"),
    }


CASES = ["missing file", "misspelled column", "empty text", "eval label unseen", "single class", "not utf-8", "ragged rows", "output not a run", "base not a model", "base missing", "bad setting"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, tmp_path, synthetic, tiny_base):
    args, expected = bad_input_cases(tmp_path, synthetic, tiny_base)[case]
    if "--out" not in args:
        args = [*args, "--out", tmp_path / "out"]
    if "--base" not in args:
        args = [*args, "--base", tiny_base]
    result = slm("train", *args, "--quiet")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and not artifacts.staging_dir(tmp_path / "out").exists()
    if case == "output not a run":
        assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_drop_empty_and_overwrite(tiny_base, synthetic, tmp_path):
    rows = [(t, l) for t, l in [("refund charge", "billing"), ("", "login"), ("parcel late", "delivery"), ("password", "login")] * 10]
    data = write_csv(tmp_path / "gaps.csv", rows)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    result = slm("train", "--data", data, "--drop-empty", "--base", tiny_base, "--out", tmp_path / "busy", "--overwrite", "--epochs", "1", "--quiet")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "busy" / "notes.txt").exists() and artifacts.is_run_dir(tmp_path / "busy")


def test_headerless_tsv(tiny_base, tmp_path):
    (tmp_path / "a.tsv").write_text("".join(f"text number {i}\t{'ab'[i % 2]}\n" for i in range(40)))
    result = slm("train", "--data", tmp_path / "a.tsv", "--text-col", "0", "--label-col", "1", "--base", tiny_base, "--out", tmp_path / "o", "--epochs", "1", "--quiet")
    assert result.exit_code == 0, result.output


def test_evaluate_and_predict_errors(tiny_base, synthetic, tmp_path):
    result = slm("evaluate", "--model", tmp_path / "nothing", "--data", synthetic["test"])
    assert result.exit_code == 2 and "model directory not found" in result.stderr
    result = slm("predict", "--model", tmp_path / "nothing")
    assert result.exit_code == 2 and "give texts as arguments or --input FILE" in result.stderr
    result = slm("train", "--out", tmp_path / "r", "--resume")
    assert result.exit_code == 2 and "nothing to resume" in result.stderr


def test_compress_commands_end_to_end(trained_tiny, tmp_path):
    """export → quantize → predict/evaluate on the int8 model, then prune and trim-vocab, all through `slm`."""
    onnx_dir, int8_dir = tmp_path / "onnx", tmp_path / "int8"
    result = slm("export", "--model", trained_tiny, "--out", onnx_dir)
    assert result.exit_code == 0, result.output
    assert "argmax identical" in result.output
    result = slm("quantize", "--model", onnx_dir, "--out", int8_dir, "--max-drop", "5")
    assert result.exit_code == 0, result.output
    assert "all int8" in result.output and "quantized model saved" in result.output
    result = slm("predict", "--model", int8_dir, "my invoice is wrong")
    assert result.exit_code == 0 and json.loads(result.output.splitlines()[0])["label"] == "billing"
    result = slm("prune", "--model", trained_tiny, "--out", tmp_path / "pruned", "--heads", "0.5", "--ffn", "0.5", "--recovery-epochs", "0", "--quiet")
    assert result.exit_code == 0, result.output
    result = slm("trim-vocab", "--model", trained_tiny, "--out", tmp_path / "trimmed")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["quantize", "--model", "{model}", "--out", "{tmp}/q"], "a PyTorch model, not an ONNX export"),
        (["quantize", "--model", "{tmp}/nope", "--out", "{tmp}/q", "--max-drop", "-1"], "max_drop must be 0 or more"),
        (["prune", "--model", "{model}", "--out", "{tmp}/p", "--heads", "1.0"], "heads must be a fraction in [0, 1)"),
        (["export", "--model", "{tmp}/nope", "--out", "{tmp}/e"], "model directory not found"),
        (["trim-vocab", "--model", "{model}", "--out", "{tmp}/t", "--data", "{tmp}/none.txt"], "none.txt: file not found"),
    ],
)
def test_compress_bad_input_is_one_line_exit_2(args, message, trained_tiny, tmp_path):
    result = slm(*[a.format(model=trained_tiny, tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_distill_command(trained_tiny, synthetic, tmp_path):
    out = tmp_path / "student"
    args = ["distill", "--teacher", trained_tiny, "--data", synthetic["train"], "--eval", synthetic["dev"], "--out", out,
            "--student", "transformer:layers=1,hidden=32,heads=2", "--epochs", "6", "--lr", "5e-3", "--threads", "1", "--augment", "1x", "--quiet"]
    result = slm(*args)
    assert result.exit_code == 0, result.output
    assert "retention" in result.output and "student saved" in result.output
    assert json.loads((out / "metrics.json").read_text())["n_augmented"] == 240
    bad = slm("distill", "--teacher", trained_tiny, "--data", synthetic["train"], "--out", tmp_path / "x", "--student", "transformer:layers=1,hidden=30,heads=4")
    assert bad.exit_code == 2 and "not divisible by heads" in bad.output and len(bad.output.strip().splitlines()) == 1
    bad = slm("distill", "--teacher", trained_tiny, "--data", synthetic["train"], "--out", tmp_path / "x", "--augment", "lots")
    assert bad.exit_code == 2 and "--augment 'lots'" in bad.output
    assert not (tmp_path / "x").exists()
