"""`slm distill` for NER and QA teachers, through the same stage as classification: tiny NER and QA teachers
(the tiny BERT trained once per module) are distilled into each student kind the task takes; the loss falls, the
student learns the task, metrics.json carries the task's report and the retention, the students export to ONNX
with parity, and the combinations that cannot work are refused in one line before anything is written.

The runs use one torch thread (see test_distill.py)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from slmkit import artifacts, distill as distill_module
from slmkit.config import DataConfig, DistillConfig, ExportConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig
from slmkit.distill import distill
from slmkit.errors import UserError
from slmkit.lineage import recorded_task
from slmkit.ner import IGNORE
from slmkit.tasks import get_task
from slmkit.train import train
from test_ner import ner_rows, write_conll_rows
from test_qa import synthetic_squad

# per kind: a student that learns the tiny task in a second or two, its learning rate and epochs
NER_STUDENTS = {
    "drop": ("drop:layers=1", 5e-3, 4),
    "transformer": ("transformer:layers=1,hidden=32,heads=2,ffn=64", 5e-3, 4),
    "bilstm": ("bilstm:hidden=32,embed=32", 1e-2, 8),
}
QA_STUDENTS = {
    "drop": ("drop:layers=1", 3e-3, 4),
    "transformer": ("transformer:layers=2,hidden=32,heads=2,ffn=64", 3e-3, 4),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ner_teacher(tiny_base, tmp_path_factory) -> dict:
    """The tiny BERT fine-tuned for NER (IOB1 train file, BIO dev file), and its data files."""
    d = tmp_path_factory.mktemp("ner-teacher")
    files = {"train": write_conll_rows(d / "train.conll", ner_rows(240, seed=1), "iob1"), "dev": write_conll_rows(d / "dev.conll", ner_rows(60, seed=2), "bio")}
    cfg = TrainConfig(
        task="ner", out=str(d / "teacher"), data=DataConfig(train=str(files["train"]), eval=str(files["dev"])), model=ModelConfig(base=str(tiny_base)),
        train=OptimConfig(epochs=6, batch_size=16, lr=5e-3, warmup=0.0, seed=7, patience=0, threads=1),
    )
    return {"dir": train(cfg, progress=False).out, **files}


@pytest.fixture(scope="module")
def qa_teacher(tiny_base, tmp_path_factory) -> dict:
    """The tiny BERT fine-tuned for QA on windows of 24 tokens (stride 8): contexts of up to 41 tokens span windows."""
    d = tmp_path_factory.mktemp("qa-teacher")
    files = {"train": synthetic_squad(d / "train.json", 40, seed=1), "dev": synthetic_squad(d / "dev.json", 15, seed=2)}
    cfg = TrainConfig(
        task="qa", out=str(d / "teacher"), data=DataConfig(train=str(files["train"]), eval=str(files["dev"])),
        model=ModelConfig(base=str(tiny_base), max_length=24, stride=8),
        train=OptimConfig(epochs=3, batch_size=16, lr=3e-3, warmup=0.0, seed=7, patience=0, threads=1),
    )
    return {"dir": train(cfg, progress=False).out, **files}


def config(teacher: dict, out: Path, spec: str, lr: float, epochs: int = 4, **overrides) -> DistillConfig:
    return DistillConfig(
        teacher=str(teacher["dir"]), out=str(out), student=spec, data=DataConfig(train=str(teacher["train"]), eval=str(teacher["dev"])),
        train=OptimConfig(epochs=epochs, batch_size=16, lr=lr, warmup=0.0, seed=7, patience=0, threads=1), **overrides,
    )


@pytest.fixture(scope="module")
def distilled(ner_teacher, qa_teacher, tmp_path_factory):
    """distilled(task, kind): the distill result, run once per module."""
    runs = {}

    def run(task: str, kind: str):
        if (task, kind) not in runs:
            teacher, students = (ner_teacher, NER_STUDENTS) if task == "ner" else (qa_teacher, QA_STUDENTS)
            out = tmp_path_factory.mktemp("students") / f"{task}-{kind}"
            runs[task, kind] = distill(config(teacher, out, *students[kind]), progress=False)
        return runs[task, kind]

    return run


# ------------------------------------------------------------------------------------------ students


@pytest.mark.parametrize("kind", list(NER_STUDENTS))
def test_ner_students_learn_the_entities_from_the_teacher(distilled, ner_teacher, kind):
    result = distilled("ner", kind)
    out, m = result.out, result.metrics
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(m))
    assert m["task"] == "ner" and m["student_kind"] == kind and m["labels"] == ["O", "B-ACC", "I-ACC", "B-PAY", "I-PAY", "B-SHIP", "I-SHIP"]
    assert m["n_train"] == 240 and m["n_eval"] == 60
    ev = m["eval"]  # the task's full report: entity F1 with intervals, per entity type
    assert set(ev["per_class"]) == {"ACC", "PAY", "SHIP"} and ev["f1_ci95"][0] <= ev["f1"] <= ev["f1_ci95"][1]
    assert ev["f1"] == pytest.approx(m["student_eval"]["f1"])
    assert m["teacher_eval"]["f1"] >= 0.9 and ev["f1"] >= 0.8  # chance: near 0 (a random tag per word)
    assert m["retention_metric"] == "f1" and m["retention"] == pytest.approx(ev["f1"] / m["teacher_eval"]["f1"])
    assert 0.8 <= m["agreement"] <= 1.0
    losses = [h["train_loss"] for h in m["history"]]
    assert losses[-1] < losses[0]
    assert m["parameters"]["student"] < m["parameters"]["teacher"] or kind == "bilstm"
    assert m["vocab"]["trimmed"] is False and "[UNK]" in m["vocab"]["not_trimmed_because"]
    model, _ = artifacts.load_model(out)
    assert type(model).__name__ == {"bilstm": "BiLSTMForTokenClassification"}.get(kind, "BertForTokenClassification")
    assert artifacts.model_task(out) == "ner" and recorded_task(out).name == "ner"


@pytest.mark.parametrize("kind", list(QA_STUDENTS))
def test_qa_students_learn_to_point_at_the_answer(distilled, kind):
    out, m = distilled("qa", kind).out, distilled("qa", kind).metrics
    assert m["task"] == "qa" and m["labels"] == [] and m["n_train"] == 80 and m["n_eval"] == 30 and m["max_length"] == 24
    ev = m["eval"]
    assert ev["n_examples"] == 30 and ev["n_windows"] > 30 and ev["stride"] == 8  # the teacher's windows
    assert {"f1", "exact_match", "f1_ci95", "exact_match_ci95"} <= set(ev)
    assert m["teacher_eval"]["f1"] >= 0.9 and ev["f1"] >= 0.8 and m["retention"] == pytest.approx(ev["f1"] / m["teacher_eval"]["f1"])
    losses = [h["train_loss"] for h in m["history"]]
    assert losses[-1] < losses[0]
    model, _ = artifacts.load_model(out)
    assert type(model).__name__ == "BertForQuestionAnswering"
    assert recorded_task(out).stride == 8  # later stages window as the student was trained


def test_a_qa_student_learns_from_unlabeled_questions_too(qa_teacher, tmp_path):
    more = json.loads(synthetic_squad(tmp_path / "more.json", 20, seed=3).read_text())
    pairs = [{"question": q["question"], "context": p["context"]} for p in more["data"][0]["paragraphs"] for q in p["qas"]]
    unlabeled = tmp_path / "questions.jsonl"
    unlabeled.write_text("".join(json.dumps(row) + "\n" for row in pairs), encoding="utf-8")
    spec, lr, epochs = QA_STUDENTS["drop"]
    m = distill(config(qa_teacher, tmp_path / "out", spec, lr, epochs, unlabeled=str(unlabeled)), progress=False).metrics
    assert (m["n_train"], m["n_unlabeled"]) == (80, 40) and m["eval"]["f1"] >= 0.8
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(pairs[0]) + "\n" + json.dumps({"question": "why"}) + "\n", encoding="utf-8")
    refused(config(qa_teacher, tmp_path / "o", spec, lr, unlabeled=str(bad)), r"bad.jsonl line 2: expected a JSON object with a non-empty \"question\" and \"context\"")


def test_qa_hard_loss_skips_the_windows_of_unlabeled_questions():
    task = get_task("qa")
    logits = {n: torch.randn(3, 5, requires_grad=True) for n in ("start_logits", "end_logits")}
    out = type("Out", (), logits)()
    mask = torch.ones(3, 5, dtype=torch.long)
    labeled = {"attention_mask": mask[:2], "start_positions": torch.tensor([1, 2]), "end_positions": torch.tensor([3, 2])}
    alone = task.hard_loss(type("Out", (), {n: v[:2] for n, v in logits.items()})(), labeled).item()
    mixed = {"attention_mask": mask, "start_positions": torch.tensor([1, 2, -1]), "end_positions": torch.tensor([3, 2, -1])}
    assert task.hard_loss(out, mixed).item() == pytest.approx(alone, rel=1e-6)
    none = task.hard_loss(out, {"attention_mask": mask, "start_positions": torch.full((3,), -1), "end_positions": torch.full((3,), -1)})
    none.backward()  # a batch of unlabeled windows only: 0, and still part of the graph
    assert none.item() == 0.0 and logits["start_logits"].grad is not None


def test_a_second_run_reads_the_teacher_outputs_from_the_cache(ner_teacher, tmp_path, monkeypatch):
    spec, lr, _ = NER_STUDENTS["transformer"]
    first = distill(config(ner_teacher, tmp_path / "first", spec, lr, epochs=1, cache_dir=str(tmp_path / "cache")), progress=False)
    c = first.metrics["teacher_cache"]
    assert c["hit"] is False
    from safetensors.numpy import load_file

    cached = load_file(str(tmp_path / "cache" / f"{c['train']['key']}.safetensors"))
    assert cached["logits"].shape == (int(cached["lengths"].sum()), 7)  # per token: every sentence's pieces, concatenated

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran although its outputs are cached")

    monkeypatch.setattr(distill_module, "_teacher_forward", no_teacher)
    second = distill(config(ner_teacher, tmp_path / "second", spec, lr, epochs=1, cache_dir=str(tmp_path / "cache")), progress=False)
    assert second.metrics["teacher_cache"]["hit"] is True
    assert (second.out / "model.safetensors").read_bytes() == (first.out / "model.safetensors").read_bytes()


def test_hidden_state_transfer_for_ner(ner_teacher, tmp_path):
    spec = "transformer:layers=1,hidden=16,heads=2,ffn=32"  # narrower than the teacher: a learned projection
    m = distill(config(ner_teacher, tmp_path / "s", spec, 5e-3, epochs=2, loss=LossConfig(hidden=1.0)), progress=False).metrics
    assert m["loss"]["hidden_pairs"] == [[1, 2]] and m["teacher_cache"]["layers"]["hidden"] == [2]
    assert np.isfinite([h["train_loss"] for h in m["history"]]).all()


# ------------------------------------------------------------------------------------------ losses


def test_ner_kd_loss_reads_each_words_first_piece_only():
    task = get_task("ner")
    labels = torch.tensor([[IGNORE, 1, IGNORE, 0, IGNORE], [IGNORE, 2, IGNORE, IGNORE, IGNORE]])  # 3 words
    student, teacher = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    out, batch = type("Out", (), {"logits": student})(), {"labels": labels, "teacher_logits": teacher}
    keep = [(0, 1), (0, 3), (1, 1)]
    T = 2.0
    expected = np.mean([
        (torch.softmax(teacher[i, j] / T, -1) * (torch.log_softmax(teacher[i, j] / T, -1) - torch.log_softmax(student[i, j] / T, -1))).sum().item()
        for i, j in keep
    ]) * T**2
    assert task.kd_loss(out, batch, T).item() == pytest.approx(expected, rel=1e-5)
    student[0, 0] += 100.0  # a position without a label: not read
    assert task.kd_loss(out, batch, T).item() == pytest.approx(expected, rel=1e-5)
    assert task.logit_mse(out, batch).item() == pytest.approx(np.mean([((student[i, j] - teacher[i, j]) ** 2).mean().item() for i, j in keep]), rel=1e-5)


def test_qa_kd_loss_ignores_padding():
    task = get_task("qa")
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    s = {n: torch.randn(2, 4) for n in ("start_logits", "end_logits")}
    t = {n: torch.randn(2, 4) for n in ("start_logits", "end_logits")}
    batch = {"attention_mask": mask, **{f"teacher_{n}": v for n, v in t.items()}}
    loss = task.kd_loss(type("Out", (), s)(), batch, 1.0).item()
    s["start_logits"][0, 3] = 50.0  # padding
    assert task.kd_loss(type("Out", (), s)(), batch, 1.0).item() == pytest.approx(loss, rel=1e-5)
    same = {n: t[n].clone() for n in t}
    assert task.kd_loss(type("Out", (), same)(), batch, 3.0).item() == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------------ export


@pytest.mark.parametrize("task, kind", [("ner", "bilstm"), ("qa", "transformer")])
def test_students_export_to_onnx_with_parity(distilled, tmp_path, task, kind):
    from slmkit.export import export

    result = export(ExportConfig(model=str(distilled(task, kind).out), out=str(tmp_path / "onnx"), probe_size=16))  # fails unless outputs match
    parity = result.metrics["parity"]
    assert parity["argmax_identical"] and parity["max_abs_logit_diff"] <= 1e-4
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert manifest["task"] == task and manifest["outputs"] == list(get_task(task).outputs)
    if task == "qa":
        assert manifest["task_options"] == {"stride": 8}


# ------------------------------------------------------------------------------------------ refused


def refused(cfg: DistillConfig, match: str) -> None:
    with pytest.raises(UserError, match=match):
        distill(cfg, progress=False)
    assert not Path(cfg.out).exists() and not artifacts.staging_dir(Path(cfg.out)).exists()


def test_students_a_task_cannot_take_are_refused(ner_teacher, qa_teacher, tmp_path):
    refused(config(qa_teacher, tmp_path / "o", "bilstm:hidden=16", 1e-2), r"a bilstm student cannot do qa: use one of drop, transformer")
    refused(config(qa_teacher, tmp_path / "o", "cnn:filters=16", 1e-2), r"a cnn student cannot do qa: use one of drop, transformer")
    refused(config(ner_teacher, tmp_path / "o", "cnn:filters=16", 1e-2), r"a cnn student cannot do ner: use one of drop, transformer, bilstm")


def test_bad_settings_and_data_for_ner_and_qa_are_refused(ner_teacher, qa_teacher, tmp_path):
    spec, lr, _ = NER_STUDENTS["transformer"]
    texts = tmp_path / "more.txt"
    texts.write_text("my invoice\n", encoding="utf-8")
    refused(config(ner_teacher, tmp_path / "o", spec, lr, unlabeled=str(texts)), r"setting unlabeled: .*classification and QA teachers only")
    refused(config(qa_teacher, tmp_path / "o", spec, lr, augment=2.0), r"setting augment: .*classification teachers only")
    wrong_metric = config(ner_teacher, tmp_path / "o", spec, lr)
    wrong_metric.train.metric = "accuracy"
    refused(wrong_metric, r"train.metric: 'accuracy' is not a ner metric: use one of f1")
    refused(config(ner_teacher, tmp_path / "o", spec, lr, task="qa"), r"setting task: .* is a ner model, not qa")
    other = tmp_path / "other.conll"
    other.write_text("my O\ninvoice B-MONEY\n\n", encoding="utf-8")
    bad = config(ner_teacher, tmp_path / "o", spec, lr)
    bad.data = DataConfig(train=str(other), eval=str(ner_teacher["dev"]))
    refused(bad, r"other.conll line 1: entity type\(s\) 'MONEY' are not the teacher's \(ACC, PAY, SHIP\)")
    headless = tmp_path / "headless"
    shutil.copytree(ner_teacher["dir"], headless)
    hf = json.loads((headless / "config.json").read_text())
    (headless / "config.json").write_text(json.dumps({**hf, "architectures": ["BertModel"]}))
    refused(config({**ner_teacher, "dir": headless}, tmp_path / "o", spec, lr), r"not a fine-tuned ner model \(config.json names no TokenClassification head\)")


def test_slm_distill_on_a_qa_teacher_through_the_cli(qa_teacher, tmp_path):
    """The command prints the task's report (EM/F1 of 30 questions) and the retention in its metric; bad input is one line."""
    from typer.testing import CliRunner

    from slmkit.cli import app

    spec, lr, _ = QA_STUDENTS["drop"]
    common = ["distill", "--teacher", qa_teacher["dir"], "--data", qa_teacher["train"], "--eval", qa_teacher["dev"], "--epochs", "2",
              "--lr", lr, "--threads", "1", "--set", "train.batch_size=16", "--quiet"]
    result = CliRunner().invoke(app, [str(a) for a in common + ["--student", spec, "--out", tmp_path / "s"]])
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())  # the console wraps long lines
    assert "30 examples" in printed and "exact match" in printed and "teacher f1" in printed and "retention" in printed
    bad = CliRunner().invoke(app, [str(a) for a in common + ["--student", "bilstm:hidden=16", "--out", tmp_path / "b"]])
    assert bad.exit_code == 2 and "a bilstm student cannot do qa" in " ".join(bad.output.split()) and "Traceback" not in bad.output
    assert not (tmp_path / "b").exists()
