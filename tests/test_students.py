"""The students of `slm distill`, built from the tiny trained teacher (2 layers, hidden 32, 29-token vocabulary):
spec parsing, shapes and honest parameter counts, initialization from the teacher (copied layers, PCA-projected
embeddings), learning the synthetic task, padding invariance, save/load and ONNX export to the runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from slmkit import artifacts
from slmkit.config import ExportConfig, OptimConfig
from slmkit.data import read_examples
from slmkit.encoding import make_encoder, uses_token_types
from slmkit.errors import UserError
from slmkit.export import export
from slmkit.predict import TorchPredictor
from slmkit.runtime import Predictor
from slmkit.students import build_student, kept_layers, parameters_besides_words, parse_student, pca_projection
from slmkit.tasks import get_task
from slmkit.train import make_optimizer, run_epochs

LABELS = ["billing", "delivery", "login"]
VOCAB, TEACHER_HIDDEN = 29, 32  # the tiny teacher: 5 special tokens + 24 words
# one small student of each kind, as trained by `trained_students`
SPECS = {
    "drop": "drop:layers=1",
    "transformer": "transformer:layers=1,hidden=24,heads=2,ffn=48",  # hidden 16 gets stuck at 2 of 3 classes, PCA or random
    "bilstm": "bilstm:hidden=16,embed=16",
    "cnn": "cnn:filters=16,embed=16,widths=2-3-5",
}
TEXTS = ["invoice", "my parcel is late again and the courier is still not here why", "locked", "", "hello thanks", "refund please"]


@pytest.fixture(scope="module")
def teacher(trained_tiny):
    return artifacts.load_model(trained_tiny)  # (model, hf_tokenizer)


@pytest.fixture(scope="module")
def data(teacher, synthetic):
    """Train / dev features of the synthetic task and the collate function, as the training stage makes them."""
    model, hf_tokenizer = teacher
    task = get_task("classification")
    encoder = make_encoder(hf_tokenizer, 32)
    label2id = {label: i for i, label in enumerate(LABELS)}
    feats = {split: task.encode(read_examples(synthetic[split], "text", "label"), encoder, label2id) for split in ("train", "dev")}
    collate = partial(task.collate, pad_id=hf_tokenizer.pad_token_id, token_types=uses_token_types(model, hf_tokenizer))
    return feats, collate


def dev_accuracy(model, data) -> float:
    (feats, collate), task = data, get_task("classification")
    probs = task.predict_probs(model, feats["dev"], collate, 32)
    return float((probs.argmax(1) == np.array([f["label"] for f in feats["dev"]])).mean())


def fit(model, data, epochs: int, lr: float):
    """A plain cross-entropy loop with slmkit's optimizer and training loop."""
    (feats, collate), task = data, get_task("classification")
    cfg = OptimConfig(epochs=epochs, batch_size=16, lr=lr, warmup=0.0, seed=0)
    optimizer, scheduler = make_optimizer(model, cfg, epochs * -(-len(feats["train"]) // cfg.batch_size))
    for _ in run_epochs(model, optimizer, scheduler, feats["train"], collate, task.loss, cfg):
        pass
    return model.eval()


@pytest.fixture(scope="module")
def trained_students(teacher, data):
    """Each kind's student, built from the teacher and trained briefly: {kind: (model, dev accuracy before)}."""
    model, _ = teacher
    students = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small spend more time synchronizing threads than computing (LSTMs 100x)
    try:
        for kind, spec in SPECS.items():
            torch.manual_seed(0)
            student = build_student(spec, model, LABELS)
            before = dev_accuracy(student, data)
            students[kind] = (fit(student, data, epochs=8, lr=5e-3), before)
    finally:
        torch.set_num_threads(threads)
    return students


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def logits(model, ids, mask) -> np.ndarray:
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).logits.numpy()


def padded_batch(hf_tokenizer, texts):
    batch = hf_tokenizer(texts, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


# ------------------------------------------------------------------------------------------ the spec


@pytest.mark.parametrize("spec, expected", [
    ("transformer:layers=2,hidden=128", ("transformer", {"layers": 2, "hidden": 128})),
    ("transformer:layers=4,hidden=312,heads=12,ffn=1200", ("transformer", {"layers": 4, "hidden": 312, "heads": 12, "ffn": 1200})),
    ("drop:layers=0,2,4", ("drop", {"layers": [0, 2, 4]})),
    ("drop:layers=0-2-4", ("drop", {"layers": [0, 2, 4]})),
    ("drop:every=2", ("drop", {"every": 2})),
    ("bilstm", ("bilstm", {})),
    (" bilstm:hidden=300, embed=64 ", ("bilstm", {"hidden": 300, "embed": 64})),
    ("cnn:filters=100,widths=3-4-5", ("cnn", {"filters": 100, "widths": [3, 4, 5]})),
    ("cnn:widths=3,4,5,filters=100", ("cnn", {"filters": 100, "widths": [3, 4, 5]})),
])
def test_parse_student_known_answers(spec, expected):
    assert parse_student(spec) == expected


@pytest.mark.parametrize("spec, fragment", [
    ("lstm:hidden=300", "unknown kind 'lstm': use one of drop, transformer, bilstm, cnn, lm"),
    ("transformer:layers=2,hidden=130,heads=4", "student hidden 130 is not divisible by heads 4: use hidden=128 or heads=2"),
    ("transformer:layers=2,hidden=64,heads=128", "student hidden 64 is not divisible by heads 128"),
    ("transformer:hidden=128", "missing layers"),
    ("transformer:layers=0,hidden=128", "layers must be at least 1"),
    ("transformer:layers=2,hidden=4", "hidden must be at least 8"),
    ("transformer:layers=two,hidden=128", "layers must be an integer (got 'two')"),
    ("transformer:layers=2,hidden=128,dropout=1", "transformer takes layers, hidden, heads, ffn, not 'dropout'"),
    ("drop", "drop takes either layers=... (teacher layer indices) or every=k"),
    ("drop:layers=0,every=2", "drop takes either"),
    ("drop:layers=2,0", "distinct and increasing"),
    ("drop:every=0", "every must be at least 1"),
    ("bilstm:hidden=300,4", "bad part '4': write key=value"),
    ("cnn:widths=2-x", "widths must be integers"),
    ("cnn:filters=10,filters=20", "filters is given twice"),
    ("cnn:widths=0-2", "widths must be at least 1"),
])
def test_bad_specs_are_one_line_errors_naming_the_fix(spec, fragment):
    with pytest.raises(UserError) as error:
        parse_student(spec)
    message = str(error.value)
    assert fragment in message and message.startswith(f"--student {spec}:") and "\n" not in message
    assert "e.g." in message or "use " in message


def test_kept_layers_of_drop_specs():
    assert kept_layers({"every": 2}, 12) == [1, 3, 5, 7, 9, 11]  # the top layer is always kept
    assert kept_layers({"every": 3}, 5) == [1, 4]
    assert kept_layers({"every": 2}, 2) == [1]
    assert kept_layers({"layers": [0, 2]}, 4) == [0, 2]


def test_default_heads_and_ffn(teacher):
    model, _ = teacher
    for hidden, heads in ((16, 1), (128, 2), (200, 2), (312, 4)):  # hidden // 64, lowered to a divisor of hidden
        config = build_student(f"transformer:layers=1,hidden={hidden}", model, LABELS).config
        assert (config.num_attention_heads, config.intermediate_size) == (heads, 4 * hidden)


def test_bad_teachers_and_labels_are_refused(teacher):
    from slmkit.pruned_bert import PrunedBertConfig, PrunedBertForSequenceClassification

    model, _ = teacher
    with pytest.raises(UserError, match=r"the teacher has 2 layers \(0-1\)"):
        build_student("drop:layers=0,2", model, LABELS)
    with pytest.raises(UserError, match="differ from the teacher's"):
        build_student("bilstm", model, ["login", "billing", "delivery"])
    pruned = PrunedBertForSequenceClassification(PrunedBertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        layer_heads=[1, 2], layer_intermediate=[8, 64], id2label=dict(enumerate(LABELS)),
    ))
    with pytest.raises(UserError, match="distill from the unpruned teacher"):
        build_student("drop:every=2", pruned, LABELS)
    assert build_student("transformer:layers=1,hidden=16", pruned, LABELS).config.vocab_size == VOCAB  # others are fine


# ------------------------------------------------------------------------------------------ shapes and init


def bert_params(vocab, hidden, layers, ffn, positions, types, labels) -> int:
    embeddings = (vocab + positions + types) * hidden + 2 * hidden
    layer = 4 * (hidden * hidden + hidden) + (hidden * ffn + ffn) + (ffn * hidden + hidden) + 2 * 2 * hidden
    return embeddings + layers * layer + (hidden * hidden + hidden) + (hidden * labels + labels)


def lstm_params(inputs, hidden) -> int:
    return 4 * hidden * (inputs + hidden) + 2 * 4 * hidden  # gates' input and recurrent weights, two biases


@pytest.mark.parametrize("spec, expected, head_inputs", [
    ("drop:layers=1", bert_params(VOCAB, 32, 1, 64, 128, 2, 3), 32),
    ("transformer:layers=2,hidden=16,heads=2,ffn=24", bert_params(VOCAB, 16, 2, 24, 128, 2, 3), 16),
    ("bilstm:hidden=12,embed=10", VOCAB * 10 + 2 * lstm_params(10, 12) + (24 * 12 + 12) + (12 * 3 + 3), 12),
    ("bilstm:hidden=12,embed=10,layers=2", VOCAB * 10 + 2 * lstm_params(10, 12) + 2 * lstm_params(24, 12) + (24 * 12 + 12) + (12 * 3 + 3), 12),
    ("cnn:filters=7,embed=10,widths=2-4", VOCAB * 10 + (10 * 2 * 7 + 7) + (10 * 4 * 7 + 7) + (14 * 3 + 3), 14),
])
def test_students_have_the_expected_shapes_and_honest_parameter_counts(teacher, spec, expected, head_inputs, tmp_path):
    model, hf_tokenizer = teacher
    student = build_student(spec, model, LABELS)
    assert n_params(student) == expected
    # the size floor slm run plans with: everything but the word embedding, with a two-label head (one label less)
    words = VOCAB * student.get_input_embeddings().embedding_dim
    assert parameters_besides_words(spec, model.config) == expected - words - (head_inputs + 1)
    config = student.config
    assert config.num_labels == 3 and config.id2label == dict(enumerate(LABELS)) and config.label2id["login"] == 2
    assert config.vocab_size == VOCAB and student.get_input_embeddings().num_embeddings == VOCAB
    artifacts.save_model(student, hf_tokenizer, tmp_path)
    assert sum(t.numel() for t in load_file(str(tmp_path / artifacts.WEIGHTS)).values()) == expected  # what is on disk


def test_transformer_students_return_hidden_states_and_attentions(teacher):
    model, hf_tokenizer = teacher
    ids, mask = padded_batch(hf_tokenizer, TEXTS)
    teacher_attention = model.config._attn_implementation
    for spec, (layers, hidden, heads) in {"drop:layers=0,1": (2, 32, 2), "transformer:layers=3,hidden=24,heads=3": (3, 24, 3)}.items():
        student = build_student(spec, model, LABELS)
        assert (student.config.num_hidden_layers, student.config.hidden_size) == (layers, hidden)
        out = student(ids, mask, output_hidden_states=True, output_attentions=True)
        assert out.logits.shape == (len(TEXTS), 3)
        assert [tuple(h.shape) for h in out.hidden_states] == [(len(TEXTS), ids.shape[1], hidden)] * (layers + 1)
        assert [tuple(a.shape) for a in out.attentions] == [(len(TEXTS), heads, ids.shape[1], ids.shape[1])] * layers
    assert model.config._attn_implementation == teacher_attention  # the teacher is left as loaded
    for spec in (SPECS["bilstm"], SPECS["cnn"]):
        student = build_student(spec, model, LABELS)
        assert student.config.num_hidden_layers == 0
        assert student(ids, mask, output_hidden_states=True).logits.shape == (len(TEXTS), 3)


def test_drop_student_is_the_teachers_kept_layers(teacher):
    model, hf_tokenizer = teacher
    source = model.state_dict()
    student = build_student("drop:layers=1", model, LABELS)
    for name, tensor in student.state_dict().items():
        teacher_name = name.replace("encoder.layer.0.", "encoder.layer.1.")
        assert torch.equal(tensor, source[teacher_name]), name
    # keeping every layer rebuilds the teacher itself
    ids, mask = padded_batch(hf_tokenizer, TEXTS)
    np.testing.assert_allclose(logits(build_student("drop:layers=0,1", model, LABELS), ids, mask), logits(model, ids, mask), atol=1e-6)


def centered_cosines(matrix: np.ndarray) -> np.ndarray:
    centered = matrix - matrix.mean(axis=0)
    unit = centered / np.linalg.norm(centered, axis=1, keepdims=True)
    similarities = unit @ unit.T
    return similarities[np.triu_indices(len(matrix), k=1)]


def test_pca_projection_keeps_the_teachers_embedding_geometry(teacher):
    model, _ = teacher
    words = model.get_input_embeddings().weight.detach().numpy()  # (29, 32)
    teacher_cos = centered_cosines(words)
    rms = lambda m: np.sqrt(((m - m.mean(0)) ** 2).mean())  # per-dimension RMS  # noqa: E731

    def student_words(spec: str) -> np.ndarray:
        return build_student(spec, model, LABELS).get_input_embeddings().weight.detach().numpy()

    # as wide as the teacher or wider: a rotation (plus zero columns), so similarities are exactly the teacher's
    wide = student_words("transformer:layers=1,hidden=48")
    np.testing.assert_allclose(centered_cosines(wide), teacher_cos, atol=1e-4)
    assert np.allclose(wide[:, TEACHER_HIDDEN:], 0) and rms(wide) == pytest.approx(rms(words), rel=1e-4)
    # narrower: the top principal directions keep the geometry far better than a random start
    # (transformer students keep the teacher's per-dimension RMS, BiLSTM / CNN ones get unit RMS)
    for spec, size in (("transformer:layers=1,hidden=16", rms(words)), ("bilstm:embed=16,hidden=8", 1.0), ("cnn:embed=16,filters=8", 1.0)):
        projected = student_words(spec)
        assert projected.shape == (VOCAB, 16) and rms(projected) == pytest.approx(size, rel=1e-4)
        assert np.corrcoef(centered_cosines(projected), teacher_cos)[0, 1] > 0.8, spec
    random_start = torch.nn.Embedding(VOCAB, 16).weight.detach().numpy()
    assert abs(np.corrcoef(centered_cosines(random_start), teacher_cos)[0, 1]) < 0.3
    # position and token-type embeddings go through the same projection (without the word mean)
    mean, projection = pca_projection(words, 16)
    student = build_student("transformer:layers=1,hidden=16", model, LABELS).bert.embeddings
    for name in ("position_embeddings", "token_type_embeddings"):
        rows = getattr(model.bert.embeddings, name).weight.detach().numpy()
        np.testing.assert_allclose(getattr(student, name).weight.detach().numpy(), rows @ projection, atol=1e-6)
    np.testing.assert_allclose(student_words("transformer:layers=1,hidden=16"), (words - mean) @ projection, atol=1e-6)


# ------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("kind", SPECS)
def test_each_kind_learns_the_synthetic_task(trained_students, data, kind):
    student, before = trained_students[kind]
    after = dev_accuracy(student, data)
    assert after >= 0.9, (kind, before, after)  # chance is 1/3
    if kind != "drop":  # a drop student starts with the teacher's top layer, pooler and classifier: already right
        assert before < 0.6, (kind, before)


@pytest.mark.parametrize("kind", ["bilstm", "cnn", "transformer"])
def test_padding_does_not_change_the_logits(trained_students, teacher, kind):
    student, _ = trained_students[kind]
    _, hf_tokenizer = teacher
    ids, mask = padded_batch(hf_tokenizer, TEXTS)
    batched = logits(student, ids, mask)
    for row, text in enumerate(TEXTS):
        alone = logits(student, *padded_batch(hf_tokenizer, [text]))
        np.testing.assert_allclose(batched[row], alone[0], atol=1e-5)
    assert np.abs(batched).max() > 0.5  # trained logits, not near-zero ones that would match anyway


def test_two_layer_bilstm_is_padding_invariant(teacher):
    model, hf_tokenizer = teacher
    torch.manual_seed(0)
    student = build_student("bilstm:hidden=8,embed=16,layers=2", model, LABELS)
    for p in student.parameters():  # large random weights: any leak of padding would show
        torch.nn.init.normal_(p, std=0.5)
    ids, mask = padded_batch(hf_tokenizer, TEXTS)
    batched = logits(student, ids, mask)
    for row, text in enumerate(TEXTS):
        np.testing.assert_allclose(batched[row], logits(student, *padded_batch(hf_tokenizer, [text]))[0], atol=1e-5)


# ------------------------------------------------------------------------------------------ save, load, export


@pytest.fixture(scope="module")
def saved_students(trained_students, teacher, tmp_path_factory) -> dict[str, Path]:
    _, hf_tokenizer = teacher
    root = tmp_path_factory.mktemp("students")
    for kind, (student, _) in trained_students.items():
        artifacts.save_model(student, hf_tokenizer, root / kind)
    return {kind: root / kind for kind in trained_students}


@pytest.mark.parametrize("kind, model_type", [("drop", "bert"), ("transformer", "bert"), ("bilstm", "slm_bilstm"), ("cnn", "slm_cnn")])
def test_saved_students_load_back_with_load_model(saved_students, trained_students, teacher, kind, model_type):
    directory = saved_students[kind]
    assert json.loads((directory / artifacts.HF_CONFIG).read_text())["model_type"] == model_type
    loaded, hf_tokenizer = artifacts.load_model(directory)
    student, _ = trained_students[kind]
    assert type(loaded) is type(student) and n_params(loaded) == n_params(student)
    ids, mask = padded_batch(hf_tokenizer, TEXTS)
    np.testing.assert_allclose(logits(loaded, ids, mask), logits(student, ids, mask), atol=1e-6)


def test_bilstm_and_cnn_students_load_with_plain_transformers(saved_students):
    """save_pretrained copied student_models.py: trust_remote_code loads them without slmkit."""
    code = (
        "import sys, torch\nfrom transformers import AutoModelForSequenceClassification\n"
        "for d in sys.argv[1:]:\n"
        "    m = AutoModelForSequenceClassification.from_pretrained(d, trust_remote_code=True).eval()\n"
        "    print(type(m).__name__, m(torch.tensor([[2, 10, 3]])).logits.shape)\n"
    )
    dirs = [str(saved_students[k]) for k in ("bilstm", "cnn")]
    assert all((Path(d) / "student_models.py").is_file() for d in dirs)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", code, *dirs], capture_output=True, text=True, cwd="/", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["BiLSTMForSequenceClassification torch.Size([1, 3])", "CNNForSequenceClassification torch.Size([1, 3])"]


@pytest.mark.parametrize("kind", ["bilstm", "cnn", "transformer"])
def test_students_export_with_parity_and_run_in_the_runtime(saved_students, synthetic, tmp_path, kind):
    result = export(ExportConfig(model=str(saved_students[kind]), out=str(tmp_path / "onnx"), probe_data=str(synthetic["dev"])))
    assert result.metrics["parity"]["max_abs_logit_diff"] <= 1e-4
    runtime = Predictor(result.out, batch_size=4)  # several length-sorted, padded batches
    assert runtime.inputs[:2] == ["input_ids", "attention_mask"]
    texts = [e.text for e in read_examples(synthetic["test"], "text", "label")] + TEXTS
    expected = TorchPredictor(saved_students[kind]).predict_proba(texts)
    probs = runtime.predict_proba(texts)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert (probs.argmax(1) == expected.argmax(1)).all()
