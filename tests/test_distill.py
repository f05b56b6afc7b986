"""Distillation on the tiny trained BERT teacher (2 layers, hidden 32, 2 heads) and the synthetic cue-word task:
every student kind learns the task from the teacher, the teacher runs once (its outputs are cached on disk),
hidden-state transfer works across widths, unlabeled and augmented texts train on soft targets only, the
student exports to ONNX and serves, and bad input is refused in one line before anything is written.

The runs use one torch thread: the tiny models are dominated by thread overhead, which on a shared, loaded
CPU made each run 10x slower."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import synthetic_rows, write_csv
from slmkit import artifacts, augment, distill as distill_module, losses
from slmkit.config import DataConfig, DistillConfig, ExportConfig, LossConfig, OptimConfig
from slmkit.distill import distill
from slmkit.errors import UserError
from slmkit.lineage import recorded_examples, training_config

# per kind: a student small enough to train in about a second, and its learning rate
STUDENTS = {
    "drop": ("drop:layers=1", 3e-3),
    "transformer": ("transformer:layers=1,hidden=32,heads=2,ffn=64", 3e-3),
    "bilstm": ("bilstm:hidden=16,embed=16", 1e-2),
    "cnn": ("cnn:filters=16,embed=16", 3e-3),
}
MODEL_FILES = ["config.json", "config.yaml", "metrics.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
TEXTS = ["my invoice is wrong", "where is the parcel today", "password locked again please help", "hello"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the runs set 1 (train.threads); later test modules get torch's default back


@pytest.fixture(scope="module")
def teacher(trained_tiny, tmp_path_factory) -> Path:
    """A private copy of the trained tiny model: its distill-cache/ must not leak into other modules' fixtures."""
    return Path(shutil.copytree(trained_tiny, tmp_path_factory.mktemp("teacher") / "tiny", ignore=shutil.ignore_patterns(artifacts.DISTILL_CACHE)))


def distill_config(teacher: Path, synthetic: dict, out: Path, kind: str = "transformer", **overrides) -> DistillConfig:
    student, lr = STUDENTS[kind]
    values = {
        "student": student,
        "data": DataConfig(train=str(synthetic["train"]), eval=str(synthetic["dev"])),
        "train": OptimConfig(epochs=4, batch_size=16, lr=lr, warmup=0.0, seed=7, patience=0, threads=1),
        **overrides,
    }
    return DistillConfig(teacher=str(teacher), out=str(out), **values)


@pytest.fixture(scope="module")
def distilled(teacher, synthetic, tmp_path_factory):
    """distilled(kind): the result of distilling the teacher into that kind of student, run once per module."""
    runs = {}

    def run(kind: str):
        if kind not in runs:
            runs[kind] = distill(distill_config(teacher, synthetic, tmp_path_factory.mktemp("students") / kind, kind), progress=False)
        return runs[kind]

    return run


# ------------------------------------------------------------------------------------------ students


@pytest.mark.parametrize("kind", list(STUDENTS))
def test_each_student_kind_learns_the_task_from_the_teacher(distilled, teacher, synthetic, kind):
    result = distilled(kind)
    out, m = result.out, result.metrics
    extra = ["student_models.py"] if kind in ("bilstm", "cnn") else []  # the model class, for trust_remote_code
    assert sorted(p.name for p in out.iterdir()) == sorted(MODEL_FILES + extra)
    assert not artifacts.staging_dir(out).exists()

    assert m["teacher_eval"]["accuracy"] >= 0.95
    assert m["student_eval"]["accuracy"] >= 0.9  # chance is 1/3
    assert m["eval"]["accuracy"] == m["student_eval"]["accuracy"]  # the full report scores the same (best) weights
    assert m["retention"] == pytest.approx(m["student_eval"]["accuracy"] / m["teacher_eval"]["accuracy"])
    assert m["agreement"] >= 0.9
    assert m["parameters"]["student"] < m["parameters"]["teacher"]
    assert m["bytes"]["student"] == (out / "model.safetensors").stat().st_size < m["bytes"]["teacher"]
    assert m["n_train"] == 240 and m["n_unlabeled"] == m["n_augmented"] == 0 and m["n_eval"] == 60
    assert m["vocab"]["trimmed"] and m["vocab"]["after"] <= m["vocab"]["before"] == 29
    assert len(m["history"]) == 4 and 1 <= m["best_epoch"] <= 4 and not m["stopped_early"]
    assert m["train_examples_per_s"] > 0 and m["seconds"] >= m["train_seconds"]
    assert m["student_kind"] == kind and m["loss"]["hidden_pairs"] == m["loss"]["attention_pairs"] == []

    # an ordinary model directory: it loads, predicts the cue words, and names its data for later stages
    model, hf_tokenizer = artifacts.load_model(out)
    assert model.config.id2label == {0: "billing", 1: "delivery", 2: "login"}
    assert len(hf_tokenizer) == m["vocab"]["after"] == model.get_input_embeddings().num_embeddings
    batch = hf_tokenizer(TEXTS[:3], padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.inference_mode():
        assert model(**batch).logits.argmax(-1).tolist() == [0, 1, 2]
    recorded = training_config(out)
    assert recorded["data"]["train"] == str(Path(synthetic["train"]).resolve())
    assert recorded["teacher"] == str(teacher.resolve())
    eval_ex, eval_path = recorded_examples(out, "eval", "--eval")
    assert eval_path == Path(synthetic["dev"]).resolve() and len(eval_ex) == 60


def test_the_vocabulary_is_trimmed_to_the_training_texts_unless_turned_off(teacher, synthetic, tmp_path):
    """Training texts without the word 'thanks': the trimmed student has one embedding row less, and the eval
    texts that hold the word read it as [UNK]; untrimmed, the student keeps the teacher's 29 tokens."""
    rows = [(text, label) for text, label in synthetic_rows(240, seed=1) if "thanks" not in text.split()]
    data = DataConfig(train=str(write_csv(tmp_path / "no-thanks.csv", rows)), eval=str(synthetic["dev"]))

    def vocab(directory: Path) -> dict:
        return json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"]

    trimmed = distill(distill_config(teacher, synthetic, tmp_path / "trimmed", "cnn", data=data), progress=False)
    v = trimmed.metrics["vocab"]
    assert (v["trimmed"], v["before"], v["after"]) == (True, 29, 28) and v["eval_oov_token_rate"] > 0
    assert v["trimmed_teacher_parity"]["max_prob_diff_kept_texts"] <= 1e-5  # exact on texts without 'thanks'
    assert v["trimmed_teacher_parity"]["n_eval"] == 60  # every eval text: fewer than TRIM_PARITY_TEXTS
    assert set(vocab(teacher)) - set(vocab(trimmed.out)) == {"thanks"}
    untrimmed = distill(distill_config(teacher, synthetic, tmp_path / "untrimmed", "cnn", data=data, trim_vocab=False), progress=False)
    assert untrimmed.metrics["vocab"] == {"trimmed": False, "before": 29, "after": 29, "eval_oov_token_rate": 0.0, "trimmed_teacher_parity": None}
    assert vocab(untrimmed.out) == vocab(teacher)
    embed = 16  # the cnn student's embedding width: one row less is 16 parameters less
    assert untrimmed.metrics["parameters"]["student"] - trimmed.metrics["parameters"]["student"] == embed


def assert_exports_and_serves(exported, student) -> None:
    """An exported student: logits equal PyTorch's on the probe batch and on TEXTS through the runtime."""
    from slmkit.predict import TorchPredictor
    from slmkit.runtime import Predictor

    assert exported.metrics["parity"]["max_abs_logit_diff"] <= 1e-4 and exported.metrics["parity"]["argmax_identical"]
    predictor = Predictor(exported.out)
    assert [p.label for p in predictor.predict(TEXTS[:3])] == ["billing", "delivery", "login"]
    expected = TorchPredictor(student.out).predict_proba(TEXTS)
    assert np.abs(predictor.predict_proba(TEXTS) - expected).max() <= 1e-4


def test_a_transformer_student_exports_to_onnx_with_parity_and_serves(distilled, tmp_path):
    from slmkit.export import export

    assert_exports_and_serves(export(ExportConfig(model=str(distilled("transformer").out), out=str(tmp_path / "onnx"))), distilled("transformer"))


def test_a_bilstm_student_exports_with_parity_and_serves_twice_in_one_process(distilled, tmp_path):
    """The exporter's dynamic-length LSTM decomposition is picked up on every export, not only the first one
    (the op's dispatch cache once turned the second export's sequence axis into a constant)."""
    from slmkit.export import export

    for n in (8, 32):
        exported = export(ExportConfig(model=str(distilled("bilstm").out), out=str(tmp_path / f"onnx-{n}"), probe_size=n))
        assert_exports_and_serves(exported, distilled("bilstm"))


def test_dynamic_int8_quantizes_a_bilstm_students_lstm_weights(distilled, tmp_path):
    """The LSTM layers go int8 too (DynamicQuantizeLSTM), not only the embedding and the head, and the student
    still predicts as in fp32."""
    import onnx

    from slmkit.config import QuantizeConfig
    from slmkit.export import export
    from slmkit.quantize import quantize
    from slmkit.runtime import Predictor

    fp32 = export(ExportConfig(model=str(distilled("bilstm").out), out=str(tmp_path / "onnx"))).out
    int8 = quantize(QuantizeConfig(model=str(fp32), out=str(tmp_path / "int8")), progress=False).out
    ops = {n.op_type for n in onnx.load(str(int8 / "model.onnx")).graph.node}
    assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops
    # the LSTM weights and recurrent weights are the 3-D initializers (directions, ., .): int8 stores them in a quarter of the bytes
    lstm_bytes = [sum(t.ByteSize() for t in onnx.load(str(d / "model.onnx")).graph.initializer if len(t.dims) == 3) for d in (fp32, int8)]
    assert lstm_bytes[0] > 0 and lstm_bytes[1] < 0.3 * lstm_bytes[0]
    assert (Predictor(int8).predict_proba(TEXTS).argmax(1) == Predictor(fp32).predict_proba(TEXTS).argmax(1)).mean() >= 0.9


# ------------------------------------------------------------------------------------------ the teacher cache


def test_a_second_run_reads_the_teacher_outputs_from_the_cache(teacher, synthetic, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = distill(distill_config(teacher, synthetic, tmp_path / "first", "cnn", cache_dir=str(cache)), progress=False)
    c = first.metrics["teacher_cache"]
    assert c["hit"] is False and c["dir"] == str(cache)
    files = sorted(p.name for p in cache.iterdir())
    assert files == sorted([f"{c['train']['key']}.safetensors", f"{c['eval']['key']}.safetensors"])
    cached = load_file(str(cache / f"{c['train']['key']}.safetensors"))
    assert set(cached) == {"logits", "lengths", "int8", "int8_agreement", "int8_prob_diff"} and cached["logits"].shape == (240, 3)  # no hidden states unless asked
    assert c["train"]["int8"] is True and cached["int8"][0] == 1  # the default: the int8 graph labeled the training texts
    assert c["train"]["int8_agreement"] >= distill_module.INT8_LABEL_AGREEMENT and c["train"]["int8_prob_diff"] <= distill_module.INT8_LABEL_PROB_DIFF

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran although its outputs are cached")

    monkeypatch.setattr(distill_module, "_teacher_forward", no_teacher)
    second = distill(distill_config(teacher, synthetic, tmp_path / "second", "cnn", cache_dir=str(cache)), progress=False)
    assert second.metrics["teacher_cache"]["hit"] is True
    assert second.metrics["teacher_cache"]["train"]["key"] == c["train"]["key"]
    # same targets, same seed: the same student, bit for bit
    assert (second.out / "model.safetensors").read_bytes() == (first.out / "model.safetensors").read_bytes()
    assert second.metrics["teacher_eval"] == first.metrics["teacher_eval"]

    # other texts are another key: a different training file misses (and here, with the teacher disabled, fails)
    other = write_csv(tmp_path / "other.csv", synthetic_rows(90, seed=11))
    with pytest.raises(AssertionError, match="the teacher ran"):
        distill(distill_config(teacher, synthetic, tmp_path / "third", "cnn", cache_dir=str(cache), data=DataConfig(train=str(other))), progress=False)
    assert not (tmp_path / "third").exists()


def test_the_teacher_labels_through_its_onnx_graph_as_pytorch_does(teacher, synthetic, monkeypatch):
    from functools import partial

    from slmkit.data import read_examples
    from slmkit.encoding import make_encoder
    from slmkit.tasks import get_task

    model, tokenizer = artifacts.load_model(teacher)
    task = get_task("classification")
    labels = artifacts.model_labels(teacher)
    examples = read_examples(synthetic["train"], "text", "label")[:70]
    features = task.encode(examples, make_encoder(tokenizer, 64), {label: i for i, label in enumerate(labels)})
    collate = partial(task.collate, pad_id=tokenizer.pad_token_id or 0, token_types=True)
    via_onnx = distill_module._teacher_forward(model, features, collate, 16, [], [])
    monkeypatch.setattr(distill_module, "_onnx_teacher_logits", lambda *args: None)  # as for a teacher the tracer cannot follow
    via_torch = distill_module._teacher_forward(model, features, collate, 16, [], [])
    assert set(via_onnx) == {"lengths", "logits", "int8"} and via_onnx["logits"].shape == (70, len(labels))
    np.testing.assert_array_equal(via_onnx["lengths"], via_torch["lengths"])
    np.testing.assert_allclose(via_onnx["logits"], via_torch["logits"], atol=1e-4)
    assert not np.array_equal(via_onnx["logits"], via_torch["logits"])  # two computations, not one twice
    monkeypatch.undo()
    # a traced graph that fails its parity check is not used: PyTorch labels the texts
    import slmkit.export as export_module

    def broken(onnx_path, probe, reference, tolerance, per_token=False):
        raise UserError("parity check failed")

    monkeypatch.setattr(export_module, "check_parity", broken)
    assert distill_module._onnx_teacher_logits(model, features, collate, 16, via_torch["lengths"]) is None


def test_the_int8_graph_labels_only_when_it_agrees_with_the_fp32_one(teacher, synthetic, monkeypatch):
    from functools import partial

    from slmkit.data import read_examples
    from slmkit.encoding import make_encoder
    from slmkit.tasks import get_task

    model, tokenizer = artifacts.load_model(teacher)
    task = get_task("classification")
    labels = artifacts.model_labels(teacher)
    examples = read_examples(synthetic["train"], "text", "label")
    features = task.encode(examples, make_encoder(tokenizer, 64), {label: i for i, label in enumerate(labels)})
    collate = partial(task.collate, pad_id=tokenizer.pad_token_id or 0, token_types=True)
    fp32 = distill_module._teacher_forward(model, features, collate, 16, [], [])
    int8 = distill_module._teacher_forward(model, features, collate, 16, [], [], int8=True)
    assert fp32["int8"][0] == 0 and int8["int8"][0] == 1
    assert not np.allclose(int8["logits"], fp32["logits"], atol=1e-4)  # the quantized graph, not the fp32 one again
    agreement = np.mean(int8["logits"].argmax(1) == fp32["logits"].argmax(1))
    assert agreement >= distill_module.INT8_LABEL_AGREEMENT
    # an int8 graph that falls short of the agreement asked for is not used: the fp32 graph labels the texts
    monkeypatch.setattr(distill_module, "INT8_LABEL_AGREEMENT", 1.01)
    refused = distill_module._teacher_forward(model, features, collate, 16, [], [], int8=True)
    assert refused["int8"][0] == 0 and refused["int8_agreement"][0] == int8["int8_agreement"][0]  # the check that refused it is kept
    np.testing.assert_allclose(refused["logits"], fp32["logits"], atol=1e-6)


def test_the_default_cache_lives_in_the_teacher_directory(distilled, teacher):
    m = distilled("drop").metrics
    key = m["teacher_cache"]["train"]["key"]
    assert (teacher / "distill-cache" / f"{key}.safetensors").is_file()


def test_cache_key_depends_on_every_input():
    base = ("w" * 64, b"{}", 128, ["a b", "c"], [], [])
    key = distill_module.cache_key(*base)
    assert key == distill_module.cache_key(*base)
    changed = [
        ("x" * 64, b"{}", 128, ["a b", "c"], [], []),
        ("w" * 64, b"{ }", 128, ["a b", "c"], [], []),
        ("w" * 64, b"{}", 64, ["a b", "c"], [], []),
        ("w" * 64, b"{}", 128, ["a", "b c"], [], []),
        ("w" * 64, b"{}", 128, ["a b", "c"], [2], []),
        ("w" * 64, b"{}", 128, ["a b", "c"], [], [2]),
        ("w" * 64, b"{}", 128, ["a b", "c"], [], [], True),  # asked of the int8 graph
    ]
    assert len({distill_module.cache_key(*c) for c in changed} | {key}) == len(changed) + 1


# ------------------------------------------------------------------------------------------ losses


def test_kd_loss_equals_the_hand_computed_value():
    """T = 2. Row 1: teacher (3, 2, 1) and student (1, 2, 3) have the same softmax normalizer, so
    log p_t - log p_s = (t - s) / T = (1, 0, -1) and KL = p_t[0] - p_t[2]. Row 2: student uniform, so
    KL = sum p_t log(3 p_t). The loss is T² times the mean over the two rows."""
    e = math.exp
    z1 = e(1.5) + e(1.0) + e(0.5)
    kl1 = (e(1.5) - e(0.5)) / z1
    p2 = [e(0.5) / (e(0.5) + 2), 1 / (e(0.5) + 2), 1 / (e(0.5) + 2)]
    kl2 = sum(p * math.log(3 * p) for p in p2)
    expected = 4 * (kl1 + kl2) / 2
    assert expected == pytest.approx(0.7006471, abs=1e-7)
    got = losses.kd_loss(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]), torch.tensor([[3.0, 2.0, 1.0], [1.0, 0.0, 0.0]]), temperature=2.0)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert losses.kd_loss(torch.tensor([[1.0, -1.0]]), torch.tensor([[1.0, -1.0]]), 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_cross_entropy_counts_only_labeled_rows():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]], requires_grad=True)
    labeled_only = -math.log(math.exp(2) / (math.exp(2) + 1))  # rows 1 and 2 are right with margin 2
    assert losses.ce_loss(logits, torch.tensor([0, 1, losses.UNLABELED])).item() == pytest.approx(labeled_only, abs=1e-6)
    none = losses.ce_loss(logits, torch.tensor([losses.UNLABELED] * 3))
    assert none.item() == 0.0
    none.backward()  # still a graph: a batch of augmented texts only trains on the other terms
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_logit_mse_hidden_and_attention_losses():
    assert losses.logit_mse(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])).item() == pytest.approx(2.5)
    mask = torch.tensor([[1, 1, 0]])
    student = torch.zeros(1, 3, 2)
    teacher = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])  # the padded position must not count
    assert losses.hidden_loss(student, teacher, None, mask).item() == pytest.approx((1 + 1 + 9 + 9) / 4)
    assert losses.hidden_loss(student[:, :2], teacher[:, :2]).item() == pytest.approx((1 + 1 + 9 + 9) / 4)  # no mask: every position
    projection = torch.nn.Linear(2, 4, bias=False)
    torch.nn.init.ones_(projection.weight)
    widened = losses.hidden_loss(torch.ones(1, 3, 2), torch.full((1, 3, 4), 2.0), projection, mask)  # 1+1 = 2 everywhere
    assert widened.item() == pytest.approx(0.0)
    a = torch.softmax(torch.randn(1, 2, 3, 3), dim=-1)
    assert losses.attention_loss(a, a, mask).item() == 0.0
    b = a.clone()
    b[0, :, 2] += 1.0  # only the padded query row differs
    assert losses.attention_loss(b, a, mask).item() == 0.0
    b[0, 0, 0, 0] += 1.0
    assert losses.attention_loss(b, a, mask).item() == pytest.approx(1 / (2 * 2 * 3))


def test_layer_maps():
    assert losses.uniform_layer_map(2, 6) == [(1, 3), (2, 6)]
    assert losses.uniform_layer_map(4, 6) == [(1, 1), (2, 3), (3, 4), (4, 6)]
    assert losses.uniform_layer_map(3, 3) == [(1, 1), (2, 2), (3, 3)]
    assert losses.parse_layer_map(["0:0", "1:2"], 1, 2) == [(0, 0), (1, 2)]
    for bad, message in [(["1-2"], "bad pair"), (["2:1"], "out of range"), (["1:1", "1:2"], "appears twice")]:
        with pytest.raises(UserError, match=message):
            losses.parse_layer_map(bad, 1, 2)


def test_hidden_state_transfer_across_widths(teacher, synthetic, tmp_path):
    """Student hidden 16, teacher 32: a learned projection maps the student's states; it is trained, not saved."""
    cfg = distill_config(
        teacher, synthetic, tmp_path / "narrow", student="transformer:layers=1,hidden=16,heads=2,ffn=32",
        loss=LossConfig(hidden=1.0, attention=1.0), train=OptimConfig(epochs=4, batch_size=16, lr=1e-2, warmup=0.0, seed=7, patience=0, threads=1),
    )
    result = distill(cfg, progress=False)
    m = result.metrics
    assert m["loss"]["hidden_pairs"] == [[1, 2]] and m["loss"]["attention_pairs"] == [[1, 2]]  # uniform: 1 of 1 -> 2 of 2
    assert m["teacher_cache"]["layers"] == {"hidden": [2], "attention": [2]}
    assert m["student_eval"]["accuracy"] >= 0.9
    losses_by_epoch = [h["train_loss"] for h in m["history"]]
    assert losses_by_epoch[-1] < losses_by_epoch[0] / 2
    cached = load_file(str(teacher / "distill-cache" / f"{m['teacher_cache']['train']['key']}.safetensors"))
    total_tokens = int(cached["lengths"].sum())
    assert cached["hidden.2"].shape == (total_tokens, 32) and cached["hidden.2"].dtype == np.float16
    assert cached["attention.2"].shape == (int((2 * cached["lengths"] ** 2).sum()),)
    saved = load_file(str(result.out / "model.safetensors"))
    assert not [k for k in saved if "projection" in k]
    assert saved["bert.embeddings.word_embeddings.weight"].shape[1] == 16


def test_the_loop_trains_the_projection(teacher, synthetic, tmp_path, monkeypatch):
    """The projection's weights move: they are in the optimizer with the student's."""
    seen = {}
    real = distill_module.make_optimizer

    def spy(model, cfg, total_steps):
        seen["model"] = model
        seen["before"] = model.projections["0"].weight.detach().clone()
        return real(model, cfg, total_steps)

    monkeypatch.setattr(distill_module, "make_optimizer", spy)
    cfg = distill_config(
        teacher, synthetic, tmp_path / "narrow", student="transformer:layers=1,hidden=16,heads=2,ffn=32", loss=LossConfig(hidden=1.0),
        train=OptimConfig(epochs=1, batch_size=16, lr=1e-2, warmup=0.0, seed=7, patience=0, threads=1),
    )
    distill(cfg, progress=False)
    assert seen["model"].projections["0"].weight.shape == (32, 16)
    assert not torch.equal(seen["model"].projections["0"].weight, seen["before"])


# ------------------------------------------------------------------------------------------ more texts


def test_unlabeled_and_augmented_texts_train_on_soft_targets_only(teacher, synthetic, tmp_path, monkeypatch):
    unlabeled = tmp_path / "unlabeled.txt"
    unlabeled.write_text("\n".join(text for text, _ in synthetic_rows(30, seed=5)) + "\n", encoding="utf-8")
    captured = {}
    real = distill_module.run_epochs

    def spy(model, optimizer, scheduler, features, *args, **kwargs):
        captured["features"] = features
        return real(model, optimizer, scheduler, features, *args, **kwargs)

    monkeypatch.setattr(distill_module, "run_epochs", spy)
    cfg = distill_config(teacher, synthetic, tmp_path / "more", "cnn", unlabeled=str(unlabeled), augment=1.5)
    m = distill(cfg, progress=False).metrics
    assert (m["n_train"], m["n_unlabeled"], m["n_augmented"]) == (240, 30, 360)
    features = captured["features"]
    assert len(features) == 240 + 30 + 360
    labels = np.array([f["label"] for f in features])
    assert set(labels[:240]) == {0, 1, 2} and (labels[240:] == losses.UNLABELED).all()  # soft targets only
    assert all(f["teacher_logits"].shape == (3,) and np.isfinite(f["teacher_logits"]).all() for f in features)
    assert m["student_eval"]["accuracy"] >= 0.9
    assert m["augment_seconds"] >= 0 and m["teacher_cache"]["hit"] is False
    saved = training_config(tmp_path / "more")
    assert saved["unlabeled"] == str(unlabeled.resolve()) and saved["augment"] == 1.5


def test_augmentation_is_seeded_and_replaces_words_by_neighbours():
    texts = ["my invoice is wrong", "Where is the parcel?", "hello"]
    neighbours = {"invoice": ["refund", "charge"], "parcel": ["courier"], "where": ["why"], "is": ["was"], "my": ["the"]}
    first = augment.augment_texts(texts, 2.5, neighbours, seed=3)
    assert first == augment.augment_texts(texts, 2.5, neighbours, seed=3)
    assert first != augment.augment_texts(texts, 2.5, neighbours, seed=4)
    assert len(first) == round(2.5 * 3) and [i for i, _ in first] == sorted(i for i, _ in first)
    assert {i for i, _ in first} == {0, 1, 2}
    vocabulary = {w.strip("?").lower() for t in texts for w in t.split()} | {w for ws in neighbours.values() for w in ws} | {"?"}
    for _, text in first:
        assert text.strip() and {w.strip("?").lower() for w in text.split()} <= vocabulary
    assert len(augment.augment_texts(texts, 0.5, neighbours, seed=0)) == 2  # round(0.5 * 3)
    # a text's variants do not depend on the texts around it
    alone = augment.augment_texts(texts[:1], 2, neighbours, seed=3)
    assert [t for i, t in first if i == 0][:2] == [t for _, t in alone]


def test_embedding_neighbours_are_cosine_nearest_whole_words():
    vocab = {"[PAD]": 0, "cat": 1, "dog": 2, "car": 3, "##s": 4, "a": 5, "truck": 6}
    embeddings = np.array([
        [0.0, 0.0, 9.0],  # [PAD]: never a neighbour
        [1.0, 0.1, 0.0],  # cat
        [2.0, 0.3, 0.0],  # dog: the direction of cat, longer (cosine ignores length)
        [0.0, 1.0, 0.1],  # car
        [1.0, 0.1, 0.0],  # ##s: a word piece, never a neighbour
        [1.0, 0.1, 0.0],  # a: one letter, never a neighbour
        [0.1, 1.0, 0.0],  # truck
    ])
    found = augment.build_neighbours(vocab, embeddings, ["Cat", "car,", "zebra", "##s"], k=2)
    assert found == {"cat": ["dog", "truck"], "car": ["truck", "dog"]}


# ------------------------------------------------------------------------------------------ bad input


def assert_refused(cfg: DistillConfig, match: str) -> None:
    with pytest.raises(UserError, match=match) as e:
        distill(cfg, progress=False)
    assert "\n" not in str(e.value)
    out = Path(cfg.out)
    assert not out.exists() and not artifacts.staging_dir(out).exists()
    assert not Path(cfg.cache_dir).exists()  # refused before the teacher ran


@pytest.fixture
def bad(teacher, synthetic, tmp_path):
    def config(**overrides) -> DistillConfig:
        source = overrides.pop("teacher", teacher)
        return distill_config(source, synthetic, tmp_path / "out", "cnn", cache_dir=str(tmp_path / "cache"), **overrides)

    return config


def test_a_teacher_that_is_not_a_trained_classifier_is_refused(bad, tiny_base, tmp_path):
    assert_refused(bad(teacher=str(tiny_base)), r"not a fine-tuned classifier .*pass --teacher")
    assert_refused(bad(teacher=str(tmp_path / "missing")), "model directory not found")
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    assert_refused(bad(teacher=str(half)), r"not a trained model \(missing model.safetensors, tokenizer.json\)")


def test_labels_the_teacher_lacks_are_refused_by_name(bad, tmp_path):
    data = write_csv(tmp_path / "new.csv", [("my invoice", "billing"), ("a refund please", "refunds"), ("hi", "greeting"), ("hey", "refunds")])
    expected = r"new.csv line 3: label\(s\) 'greeting', 'refunds' are not the teacher's \(billing, delivery, login\)"
    assert_refused(bad(data=DataConfig(train=str(data))), expected)


def test_inconsistent_student_shapes_are_refused(bad):
    assert_refused(bad(student="transformer:layers=1,hidden=30,heads=4"), "not divisible by heads")
    assert_refused(bad(student="drop:layers=0,5"), "the teacher has 2 layers")
    assert_refused(bad(student="rnn:hidden=4"), "unknown kind 'rnn'")


def test_losses_the_student_shape_cannot_take_are_refused(bad):
    assert_refused(bad(loss=LossConfig(hidden=1.0)), r"setting loss.hidden: a cnn student has no transformer layers")
    assert_refused(
        bad(student="transformer:layers=1,hidden=32,heads=4", loss=LossConfig(attention=1.0)),
        r"setting loss.attention: student layer 1 has 4 attention heads and teacher layer 2 has 2: .*heads=2",
    )
    assert_refused(bad(student="drop:layers=1", loss=LossConfig(hidden=1.0, layer_map=["1:3"])), r"setting loss.layer_map: pair '1:3' is out of range")


def test_an_empty_unlabeled_file_is_refused(bad, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    assert_refused(bad(unlabeled=str(empty)), "empty.txt: no texts: the file is empty")


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"augment": -1.0}, "setting augment must be 0 or more"),
        ({"loss": LossConfig(kd=0.0, ce=0.0)}, "setting loss at least one loss weight must be positive"),
        ({"teacher": ""}, "setting teacher: no teacher"),
    ],
)
def test_bad_settings_are_refused(bad, overrides, match):
    assert_refused(bad(**overrides), match)


def test_metrics_json_is_what_the_result_returns(distilled):
    result = distilled("cnn")
    assert json.loads((result.out / "metrics.json").read_text()) == json.loads(json.dumps(result.metrics))


def test_a_failure_after_the_checks_leaves_nothing_half_written(bad, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(distill_module, "run_epochs", broken)
    cfg = bad()
    with pytest.raises(RuntimeError, match="interrupted"):
        distill(cfg, progress=False)
    assert not Path(cfg.out).exists() and not artifacts.staging_dir(Path(cfg.out)).exists()
