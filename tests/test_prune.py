"""The pruning stage on the tiny trained BERT (2 layers, 2 heads of size 16, 64 FFN neurons per layer): the
written model is genuinely smaller, equals the original with the removed units masked to zero, loads with plain
transformers (trust_remote_code) and exports to ONNX; bad input is refused before anything is written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import write_csv
from slmkit import artifacts
from slmkit.config import PruneConfig
from slmkit.errors import UserError
from slmkit.prune import prune, slice_model, units_to_keep

HIDDEN, HEAD_SIZE = 32, 16
PER_HEAD = 3 * (HIDDEN * HEAD_SIZE + HEAD_SIZE) + HIDDEN * HEAD_SIZE  # q/k/v rows + attention output columns
PER_NEURON = (HIDDEN + 1) + HIDDEN  # intermediate row and bias + FFN output column
TEXTS = ["my invoice is wrong", "where is the parcel today", "password locked again please help", "hello"]


@pytest.fixture(scope="module")
def trained(trained_tiny) -> Path:
    return trained_tiny


def prune_config(model: Path, out: Path, **overrides) -> PruneConfig:
    values = {"heads": 0.5, "ffn": 0.5, "importance_batches": 4, "recovery_epochs": 1, "batch_size": 16, **overrides}
    return PruneConfig(model=str(model), out=str(out), **values)


@pytest.fixture(scope="module")
def pruned(trained, tmp_path_factory):
    return prune(prune_config(trained, tmp_path_factory.mktemp("pruned") / "half"), progress=False)


def logits_of(model, hf_tokenizer, texts=TEXTS) -> torch.Tensor:
    batch = hf_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**batch).logits


# ------------------------------------------------------------------------------------------ the output


def test_smaller_config_weights_and_metrics(pruned, trained):
    out = pruned.out
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "config.yaml", "metrics.json", "model.safetensors", "pruned_bert.py", "tokenizer.json", "tokenizer_config.json",
    ]
    assert not artifacts.staging_dir(out).exists()
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "slm_pruned_bert" and config["attention_head_size"] == HEAD_SIZE
    heads, neurons = config["layer_heads"], config["layer_intermediate"]
    assert sum(heads) == 2 and min(heads) >= 1  # half of 4 heads, at least one per layer
    assert sum(neurons) == 64 and min(neurons) >= 1  # half of 2 x 64 neurons
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "pruned_bert.PrunedBertForSequenceClassification"

    weights = load_file(str(out / "model.safetensors"))
    for i, (h, n) in enumerate(zip(heads, neurons)):
        p = f"bert.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            assert weights[f"{p}attention.self.{name}.weight"].shape == (h * HEAD_SIZE, HIDDEN)
        assert weights[f"{p}attention.output.dense.weight"].shape == (HIDDEN, h * HEAD_SIZE)
        assert weights[f"{p}intermediate.dense.weight"].shape == (n, HIDDEN)
        assert weights[f"{p}output.dense.weight"].shape == (HIDDEN, n)

    m = json.loads((out / "metrics.json").read_text())
    assert m["parameters"]["before"] - m["parameters"]["after"] == 2 * PER_HEAD + 64 * PER_NEURON
    assert sum(v.numel() for v in weights.values()) == m["parameters"]["after"]
    assert m["heads"]["before"] == [2, 2] and m["heads"]["after"] == heads
    assert m["ffn_neurons"]["before"] == [64, 64] and m["ffn_neurons"]["after"] == neurons
    assert m["parity"]["max_abs_logit_diff"] <= 1e-5
    c = m["compare"]
    assert c["unpruned"]["accuracy"] >= 0.95 and c["unpruned"]["agreement"] == 1.0
    for stage in ("pruned", "recovered"):
        assert set(c[stage]) == {"accuracy", "macro_f1", "agreement"} and 0 <= c[stage]["agreement"] <= 1
    assert c["recovered"]["accuracy"] >= 0.9  # the cue-word task survives half the heads and neurons after recovery
    assert m["eval"]["accuracy"] == c["recovered"]["accuracy"]
    assert m["recovery"]["n_examples"] == 240 and len(m["recovery"]["history"]) == 1


def test_loads_through_slmkit_and_plain_transformers(pruned, tmp_path):
    """slmkit's loader, and transformers with trust_remote_code in a process that never imports slmkit, agree."""
    model, hf_tokenizer = artifacts.load_model(pruned.out)
    assert type(model).__name__ == "PrunedBertForSequenceClassification"
    expected = logits_of(model, hf_tokenizer)
    code = f"""
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained({str(pruned.out)!r}, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained({str(pruned.out)!r}, trust_remote_code=True)
assert "slmkit" not in sys.modules
with torch.inference_mode():
    print(json.dumps(model(**tok({TEXTS!r}, padding=True, return_tensors="pt")).logits.tolist()))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    got = torch.tensor(json.loads(run.stdout.strip().splitlines()[-1]))
    assert (got - expected).abs().max() <= 1e-5


def test_onnx_export_of_a_pruned_model(pruned, tmp_path):
    import onnxruntime as ort

    model, hf_tokenizer = artifacts.load_model(pruned.out)
    batch = hf_tokenizer(TEXTS, padding=True, return_tensors="pt")
    names = list(batch.keys())  # input_ids, attention_mask (the tiny tokenizer has no token types)
    path = tmp_path / "model.onnx"
    axes = {n: {0: "batch", 1: "seq"} for n in names} | {"logits": {0: "batch"}}
    torch.onnx.export(model, tuple(batch[n] for n in names), str(path), input_names=names, output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {n: batch[n].numpy() for n in names})
    assert np.abs(onnx_logits - logits_of(model, hf_tokenizer).numpy()).max() <= 1e-4


# ------------------------------------------------------------------------------------------ parity


def test_sliced_model_equals_the_original_with_units_zeroed(trained):
    """Independent of the stage's hooks: zeroing a head's columns of attention.output.dense (or a neuron's
    column of output.dense) removes its contribution, which slicing must reproduce."""
    model, hf_tokenizer = artifacts.load_model(trained)
    keep_heads = [[1], [0]]
    rng = np.random.default_rng(0)
    keep_neurons = [sorted(rng.choice(64, 40, replace=False).tolist()), sorted(rng.choice(64, 9, replace=False).tolist())]
    sliced = slice_model(model, keep_heads, keep_neurons)
    with torch.no_grad():
        for layer, heads, neurons in zip(model.bert.encoder.layer, keep_heads, keep_neurons):
            for h in set(range(2)) - set(heads):
                layer.attention.output.dense.weight[:, h * HEAD_SIZE : (h + 1) * HEAD_SIZE] = 0
            layer.output.dense.weight[:, sorted(set(range(64)) - set(neurons))] = 0
    assert sliced.config.layer_heads == [1, 1] and sliced.config.layer_intermediate == [40, 9]
    assert (logits_of(sliced, hf_tokenizer) - logits_of(model, hf_tokenizer)).abs().max() <= 1e-5


def test_nothing_removed_is_the_original(trained, tmp_path):
    result = prune(prune_config(trained, tmp_path / "same", heads=0.0, ffn=0.0, recovery_epochs=0), progress=False)
    original, hf_tokenizer = artifacts.load_model(trained)
    copy, _ = artifacts.load_model(result.out)
    assert copy.config.layer_heads == [2, 2] and copy.config.layer_intermediate == [64, 64]
    assert torch.equal(logits_of(copy, hf_tokenizer), logits_of(original, hf_tokenizer))
    m = result.metrics
    assert m["parameters"]["before"] == m["parameters"]["after"]
    assert m["compare"]["pruned"]["agreement"] == 1.0 and m["compare"]["recovered"] is None


def test_a_pruned_model_prunes_again_without_distillation(pruned, tmp_path):
    result = prune(prune_config(pruned.out, tmp_path / "again", heads=0.0, ffn=0.25, distill=False, recovery_limit=50), progress=False)
    m = result.metrics
    assert m["heads"]["before"] == m["heads"]["after"] == pruned.metrics["heads"]["after"]
    assert sum(m["ffn_neurons"]["after"]) == 64 - 16
    assert m["recovery"]["n_examples"] == 50 and m["recovery"]["loss"] == "CE"
    assert m["parity"]["max_abs_logit_diff"] <= 1e-5


def test_units_to_keep_removes_the_globally_lowest_but_never_a_whole_layer():
    scores = [np.array([0.1, 0.9]), np.array([0.2, 0.05])]
    assert units_to_keep(scores, 0.0) == [[0, 1], [0, 1]]
    assert units_to_keep(scores, 0.25) == [[0, 1], [0]]
    assert units_to_keep(scores, 0.5) == [[1], [0]]
    assert units_to_keep(scores, 0.75) == [[1], [0]]  # the third-lowest is its layer's last unit


# ------------------------------------------------------------------------------------------ bad input


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() and not artifacts.staging_dir(out).exists()


@pytest.mark.parametrize("setting, value", [("heads", 1.0), ("heads", -0.1), ("ffn", 1.5)])
def test_ratios_outside_0_1_are_refused(trained, tmp_path, setting, value):
    out = tmp_path / "bad"
    with pytest.raises(UserError, match=f"setting {setting} must be a fraction in \\[0, 1\\)") as e:
        prune(prune_config(trained, out, **{setting: value}), progress=False)
    assert "\n" not in str(e.value)
    assert_nothing_written(out)


def test_non_bert_models_are_refused(tiny_base, tmp_path):
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    model_dir = tmp_path / "distilbert"
    config = DistilBertConfig(vocab_size=80, dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=64, num_labels=3)
    DistilBertForSequenceClassification(config).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(model_dir)
    out = tmp_path / "out"
    with pytest.raises(UserError, match="model_type 'distilbert' cannot be pruned: only BERT"):
        prune(prune_config(model_dir, out), progress=False)
    assert_nothing_written(out)


def test_pickle_only_models_are_refused(trained, tmp_path):
    model_dir = tmp_path / "pickled"
    model_dir.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).write_bytes((trained / name).read_bytes())
    (model_dir / "pytorch_model.bin").write_bytes(b"not loaded")
    out = tmp_path / "out"
    with pytest.raises(UserError, match="pickle weights are never loaded"):
        prune(prune_config(model_dir, out), progress=False)
    assert_nothing_written(out)


def test_labels_the_model_does_not_know_are_refused(trained, tmp_path):
    data = write_csv(tmp_path / "new.csv", [("my invoice", "billing"), ("a refund please", "refunds")])
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"new.csv line 3: label 'refunds' is not one the model knows"):
        prune(prune_config(trained, out, data=str(data)), progress=False)
    assert_nothing_written(out)
