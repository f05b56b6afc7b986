"""Export to ONNX and the torch-free runtime: parity with PyTorch, the no-torch import, safety checks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slmkit import artifacts
from slmkit.config import ExportConfig
from slmkit.data import read_examples
from slmkit.errors import UserError
from slmkit.export import check_parity, export
from slmkit.predict import TorchPredictor
from slmkit.runtime import Predictor

README = Path(__file__).resolve().parents[1] / "README.md"
MIXED = ["invoice", "my parcel is late again and the courier is still not here, why is that please help", "locked", ""]


def test_export_writes_a_servable_directory_with_parity(exported_tiny, trained_tiny):
    names = {p.name for p in exported_tiny.iterdir()}
    assert {"model.onnx", "tokenizer.json", "manifest.json", "metrics.json", "config.yaml", "config.json"} <= names
    assert not list(exported_tiny.parent.glob(".*partial"))
    manifest = json.loads((exported_tiny / "manifest.json").read_text())
    assert manifest["labels"] == artifacts.model_labels(trained_tiny)
    assert manifest["inputs"][:2] == ["input_ids", "attention_mask"] and manifest["opset"] == 18
    assert Path(manifest["source"]) == trained_tiny.resolve()
    parity = json.loads((exported_tiny / "metrics.json").read_text())["parity"]
    assert parity["max_abs_logit_diff"] <= 1e-4 and parity["argmax_identical"]


def test_runtime_matches_pytorch_in_input_order(exported_tiny, trained_tiny, synthetic):
    texts = [e.text for e in read_examples(synthetic["test"], "text", "label")] + MIXED
    runtime = Predictor(exported_tiny, batch_size=4)  # several length-sorted batches
    torch_probs = TorchPredictor(trained_tiny).predict_proba(texts)
    np.testing.assert_allclose(runtime.predict_proba(texts), torch_probs, atol=1e-5)
    predictions = runtime.predict(texts[:3])
    assert [p.text for p in predictions] == texts[:3]
    assert all(abs(sum(p.scores.values()) - 1) < 1e-5 and p.score == max(p.scores.values()) for p in predictions)
    assert runtime.predict([]) == []


def test_dynamic_axes_serve_any_batch_and_length(exported_tiny):
    runtime = Predictor(exported_tiny, batch_size=64)
    long_text = " ".join(["please help with my invoice"] * 40)  # truncated at the manifest's max length
    for texts in (["invoice"], [long_text] * 3, MIXED * 20):
        assert runtime.logits(texts).shape == (len(texts), 3)


def test_runtime_import_pulls_in_neither_torch_nor_transformers(exported_tiny):
    code = (
        "import sys\nfrom slmkit.runtime import Predictor\n"
        f"p = Predictor({str(exported_tiny)!r})\np.predict(['my invoice is wrong'])\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\nassert not bad, bad\nprint(p.fingerprint())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "onnxruntime" in done.stdout and "isa" in done.stdout


def test_fingerprint_names_cpu_isa_threads_and_runtime(exported_tiny):
    info = Predictor(exported_tiny, threads=1).fingerprint()
    assert {"cpu", "isa", "int8_instructions", "threads", "onnxruntime", "precision"} <= set(info)
    assert info["threads"] == 1 and info["precision"] == "fp32"


def test_readme_snippet_runs_in_plain_onnxruntime(exported_tiny, capsys):
    """The README's plain-onnxruntime snippet, executed as written (only the directory substituted)."""
    block = re.search(r"<!-- onnx-snippet -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README lost its onnx-snippet block"
    code = block.group(1).replace('"runs/x-onnx"', repr(str(exported_tiny)))
    exec(compile(code, "README-snippet", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    texts = re.search(r"texts = (\[.*?\])", code).group(1)
    assert printed == str([p.label for p in Predictor(exported_tiny).predict(eval(texts))])


def test_parity_failure_is_loud_and_writes_nothing(trained_tiny, tmp_path, monkeypatch):
    import slmkit.export as module

    def failing(onnx_path, probe, reference, tolerance, per_token):
        shifted = {name: logits + 1.0 for name, logits in reference.items()}  # as if the graph computed something else
        return check_parity(onnx_path, probe, shifted, tolerance, per_token)

    monkeypatch.setattr(module, "check_parity", failing)
    out = tmp_path / "x-onnx"
    with pytest.raises(UserError, match="parity check failed: max \\|logit difference\\| 1.00e\\+00"):
        export(ExportConfig(model=str(trained_tiny), out=str(out)))
    assert list(tmp_path.iterdir()) == []


def test_the_traced_graph_is_kept_and_a_failing_one_falls_back_to_dynamo(exported_tiny, trained_tiny, synthetic, tmp_path, monkeypatch):
    import torch

    import slmkit.export as module

    metrics = json.loads((exported_tiny / "metrics.json").read_text())
    assert metrics["exporter"] == {"name": "torchscript", "attention": "eager"}
    assert json.loads((exported_tiny / "manifest.json").read_text())["exporter"] == "torchscript"
    # a traced graph that matches the probe but not another shape (as a tracer that froze a length would) is not kept
    real_check, shapes = module.check_parity, []

    def check(onnx_path, probe, reference, tolerance, per_token=False):
        shapes.append(probe["input_ids"].shape)
        if len(shapes) == 2:  # the traced graph's second probe
            reference = {name: r + 1.0 for name, r in reference.items()}
        return real_check(onnx_path, probe, reference, tolerance, per_token)

    monkeypatch.setattr(module, "check_parity", check)
    out = export(ExportConfig(model=str(trained_tiny), out=str(tmp_path / "fallback"))).out
    m = json.loads((out / "metrics.json").read_text())
    assert shapes[1][0] == 1 and shapes[1] != shapes[0] and len(shapes) == 3  # probe, one short text, then dynamo's probe
    assert m["exporter"]["name"] == "dynamo" and "parity check failed" in m["exporter"]["traced_failed"]
    assert m["parity"]["max_abs_logit_diff"] <= 1e-4
    texts = [e.text for e in read_examples(synthetic["test"], "text", "label")] + MIXED
    np.testing.assert_allclose(Predictor(out).predict_proba(texts), TorchPredictor(trained_tiny).predict_proba(texts), atol=1e-5)
    # the model's own attention is restored after the traced export (sdpa trains and serves in PyTorch)
    model, _ = artifacts.load_model(trained_tiny)
    with module._eager_attention(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation != "eager"
    assert torch.is_grad_enabled()


def test_export_bad_input_is_one_line_and_writes_nothing(trained_tiny, exported_tiny, tmp_path):
    out = tmp_path / "o"
    cases = [
        (ExportConfig(model=str(tmp_path / "missing"), out=str(out)), "model directory not found"),
        (ExportConfig(model=str(exported_tiny), out=str(out)), "an exported ONNX model, not a PyTorch one"),
        (ExportConfig(model=str(trained_tiny), out=str(out), opset=9), "opset must be in"),
        (ExportConfig(model=str(trained_tiny), out=str(out), probe_data=str(tmp_path / "none.csv")), "none.csv"),
    ]
    for cfg, message in cases:
        with pytest.raises(UserError, match=message) as info:
            export(cfg)
        assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- security


def test_pickle_weights_are_refused(exported_tiny, trained_tiny, tmp_path):
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(exported_tiny, onnx_dir)
    (onnx_dir / "model.onnx").unlink()
    (onnx_dir / "model.pt").write_bytes(b"not loaded")
    with pytest.raises(UserError, match="model.pt: pickle weights are never loaded"):
        Predictor(onnx_dir)
    torch_dir = tmp_path / "torch"
    shutil.copytree(trained_tiny, torch_dir)
    (torch_dir / "model.safetensors").unlink()
    (torch_dir / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UserError, match="pytorch_model.bin: pickle weights are never loaded"):
        artifacts.load_model(torch_dir)


def test_external_data_outside_the_model_directory_is_refused(exported_tiny, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(16, dtype=np.float32).tobytes())
    model_dir = tmp_path / "crafted"
    shutil.copytree(exported_tiny, model_dir)
    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 4], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "64")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"])], "crafted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], [weight],
    )
    (model_dir / "model.onnx").write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(UserError, match="reads external data from '../secret.bin', outside the model directory"):
        Predictor(model_dir)
    assert onnx  # the check parses with the onnx package, never follows the path


def test_truncated_onnx_file_is_a_clear_error(exported_tiny, tmp_path):
    model_dir = tmp_path / "broken"
    shutil.copytree(exported_tiny, model_dir)
    data = (model_dir / "model.onnx").read_bytes()
    (model_dir / "model.onnx").write_bytes(data[: len(data) // 3] + b"\x0a\x08location")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        Predictor(model_dir)
