"""Packed training batches (slmkit.packing): the layout of a packed batch, the same loss and gradients as the
padded batch, which model types pass the parity check, and `slm train` packing by default, saying why when it
does not."""

import json
from functools import partial

import pytest
import torch

from conftest import tiny_config
from slmkit import packing
from slmkit.encoding import pad_batch, make_encoder
from slmkit.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def features(lengths):
    return [{"input_ids": list(range(5, 5 + n)), "label": n % 2} for n in lengths]


def collate(rows):
    return {**pad_batch(rows, 1, True), "labels": torch.tensor([f["label"] for f in rows])}


def test_packed_layout():
    batch = collate(features([3, 9, 4, 12, 5, 2]))  # width 12
    packed = packing.pack(batch, "sdpa")
    # first-fit decreasing: [12], [9, 3], [5, 4, 2]
    assert packed["input_ids"].shape == (3, 12) and packed["attention_mask"].shape == (3, 1, 12, 12)
    assert packed["position_ids"][1].tolist() == list(range(9)) + [0, 1, 2]
    assert packed["position_ids"][2].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 0]
    assert packed["input_ids"][2].tolist() == [5, 6, 7, 8, 9, 5, 6, 7, 8, 5, 6, 1]  # the row's last slot is padding
    # a text sees its own tokens only; padding sees only itself
    mask = packed["attention_mask"][2, 0]
    assert mask[0].tolist() == [True] * 5 + [False] * 7 and mask[6].tolist() == [False] * 5 + [True] * 4 + [False] * 3
    assert mask[11].tolist() == [False] * 11 + [True]
    # unpack_index gives each text its tokens back, in place
    gathered = packed["input_ids"].flatten()[packed["unpack_index"]]
    real = batch["attention_mask"].bool()
    assert torch.equal(gathered[real], batch["input_ids"][real])
    assert torch.equal(packed["labels"], batch["labels"]) and torch.equal(packed["token_type_ids"], torch.zeros(3, 12, dtype=torch.long))
    # eager attention takes an additive mask; RoBERTa-style positions start after the padding index
    eager = packing.pack(batch, "eager", position_offset=2)
    assert eager["attention_mask"].dtype == torch.float32 and eager["attention_mask"][2, 0, 0, 5] == torch.finfo(torch.float32).min
    assert eager["position_ids"][0].tolist() == list(range(2, 14))


def loss_and_grads(model, loss_fn, batch):
    model.zero_grad()
    loss = loss_fn(model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("task_name", ["classification", "ner"])
def test_packed_step_computes_the_padded_step(task_name, tiny_base, synthetic):
    """The same loss and the same gradients, packed or padded (eval mode: no dropout to differ)."""
    from slmkit.base import resolve_base
    from slmkit.tasks import get_task

    task = get_task(task_name)
    base = resolve_base(str(tiny_base))
    encoder = make_encoder(base.hf_tokenizer, 32)
    texts = [line.split(",")[0] for line in synthetic["train"].read_text().splitlines()[1:33]]
    if task_name == "classification":
        feats = [{"input_ids": e.ids, "label": i % 3} for i, e in enumerate(encoder.encode_batch(texts))]
        labels = ["a", "b", "c"]
    else:
        feats = [{"input_ids": e.ids, "labels": [-100] + [i % 3 for i in range(len(e.ids) - 2)] + [-100]} for e in encoder.encode_batch(texts)]
        labels = ["O", "B-X", "I-X"]
    torch.manual_seed(0)
    model = task.build_model(base, labels, None)
    batch_of = partial(task.collate, pad_id=0, token_types=True)
    to_packed, why = packing.plan(model, feats, batch_of)
    assert to_packed is not None, why
    padded = batch_of(feats[:24])
    packed = to_packed(batch_of(feats[:24]))
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # rows really are shared
    model.eval()
    loss_a, grads_a = loss_and_grads(model, task.loss, padded)
    loss_b, grads_b = loss_and_grads(model, packing.packed_loss(task.loss), packed)
    assert loss_b == pytest.approx(loss_a, abs=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        assert (grads_b[name] - grad).abs().max().item() <= 1e-6 + 1e-4 * grad.abs().max().item(), name


def test_parity_check_on_model_types():
    """BERT, DistilBERT, RoBERTa and ELECTRA heads pack; DeBERTa's relative attention does not, and says so."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    feats = features([3, 9, 4, 12, 5, 7, 2, 11, 6, 8])
    small = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, pad_token_id=1, max_position_embeddings=64)
    shapes = {"distilbert": dict(vocab_size=64, dim=32, n_layers=1, n_heads=2, hidden_dim=64, pad_token_id=1)}
    for model_type in ("bert", "distilbert", "roberta", "electra"):
        model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(model_type, **shapes.get(model_type, small)))
        to_packed, why = packing.plan(model, feats, collate)
        assert to_packed is not None, (model_type, why)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model("deberta-v2", **small))
    to_packed, why = packing.plan(model, feats, collate)
    assert to_packed is None and why.startswith("DebertaV2ForSequenceClassification does not take packed inputs (")


def test_train_packs_by_default_and_says_when_it_cannot(tiny_base, synthetic, tmp_path, monkeypatch, capsys):
    packed = train(tiny_config(tiny_base, synthetic, tmp_path / "packed", pack=True, epochs=2), progress=False).metrics
    assert packed["batches"] == "packed"
    losses = [h["train_loss"] for h in packed["history"]]
    assert losses[1] < losses[0]
    assert json.loads((tmp_path / "packed" / "metrics.json").read_text())["batches"] == "packed"

    random = train(tiny_config(tiny_base, synthetic, tmp_path / "random", pack=False, bucket=False, epochs=1), progress=False).metrics
    assert random["batches"] == "random"

    capsys.readouterr()
    monkeypatch.setattr(packing, "PARITY_TOLERANCE", -1.0)  # no model passes: train falls back to bucketing
    fallback = train(tiny_config(tiny_base, synthetic, tmp_path / "fallback", pack=True, epochs=1), progress=False).metrics
    assert fallback["batches"] == "bucketed"
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "note: train.pack: packed logits differ from padded ones by" in err and "length-bucketed batches instead" in err


def test_packed_run_resumes_as_if_uninterrupted(tiny_base, synthetic, tmp_path, monkeypatch):
    from slmkit import artifacts

    whole = train(tiny_config(tiny_base, synthetic, tmp_path / "whole", pack=True, epochs=3), progress=False).metrics
    real_save = artifacts.save_checkpoint

    def killed_after_epoch_2(staging, model, optimizer, state):
        real_save(staging, model, optimizer, state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    cfg = tiny_config(tiny_base, synthetic, tmp_path / "resumed", pack=True, epochs=3)
    monkeypatch.setattr(artifacts, "save_checkpoint", killed_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    monkeypatch.setattr(artifacts, "save_checkpoint", real_save)
    resumed = train(cfg, resume=True, progress=False).metrics
    assert resumed["batches"] == "packed"
    assert [h["train_loss"] for h in resumed["history"]] == pytest.approx([h["train_loss"] for h in whole["history"]], rel=1e-5)
