"""int8 quantization of an exported model: dynamic, static, QAT, the accuracy-aware back-off, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from conftest import write_csv
from slmkit.config import QuantizeConfig
from slmkit.data import read_examples
from slmkit.errors import UserError
from slmkit.quantize import backoff_steps, quantize
from slmkit.runtime import Predictor


def _dev(synthetic):
    return [e.text for e in read_examples(synthetic["dev"], "text", "label")]


@pytest.fixture(scope="module")
def dynamic(exported_tiny, tmp_path_factory):
    return quantize(QuantizeConfig(model=str(exported_tiny), out=str(tmp_path_factory.mktemp("q") / "int8")), progress=False)


def test_dynamic_int8_is_smaller_and_agrees_with_fp32(dynamic, exported_tiny, synthetic):
    m = dynamic.metrics
    assert m["bytes"] < m["fp32_bytes"] and m["size_ratio"] < 0.85  # the tiny graph's nodes weigh as much as its weights
    weights = [sum(t.ByteSize() for t in onnx.load(str(d / "model.onnx")).graph.initializer) for d in (dynamic.out, exported_tiny)]
    assert weights[0] < 0.35 * weights[1]  # the weights themselves: int8 and a scale per channel
    # the tiny model's recorded eval set is dev.csv: both accuracies and their agreement are measured
    assert m["fp32_metric"] >= 0.9 and m["agreement_with_fp32"] >= 0.9 and abs(m["drop_points"]) <= 10
    manifest = json.loads((dynamic.out / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["quantization"]["method"] == "dynamic"
    texts = _dev(synthetic)
    int8, fp32 = Predictor(dynamic.out).predict_proba(texts), Predictor(exported_tiny).predict_proba(texts)
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9
    info = Predictor(dynamic.out).fingerprint()
    assert info["precision"] == "int8" and (info["int8_instructions"] or "no faster" in info["note"])


def test_the_runtime_turns_off_the_slow_skip_layernorm_fusion(dynamic, tmp_path):
    """ONNX Runtime's defaults fuse the int8 graph's residual Adds and LayerNorm into SkipLayerNormalization
    (a slow CPU kernel); a session made as the runtime makes it keeps them apart."""
    import onnxruntime as ort

    from slmkit import runtime

    def fused_ops(disabled: list[str]) -> set[str]:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"optimized-{len(disabled)}.onnx")
        ort.InferenceSession(str(dynamic.out / "model.onnx"), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
        return {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}

    assert "SkipLayerNormalization" in fused_ops([])
    assert "SkipLayerNormalization" not in fused_ops(list(runtime.SLOW_FUSIONS)) and "LayerNormalization" in fused_ops(list(runtime.SLOW_FUSIONS))
    # the runtime's own session computes exactly what an unfused session computes
    unfused = ort.InferenceSession(str(dynamic.out / "model.onnx"), providers=["CPUExecutionProvider"], disabled_optimizers=list(runtime.SLOW_FUSIONS))
    session = runtime.open_session(dynamic.out, 1)
    ids = np.array([[2, 5, 7, 3], [2, 9, 3, 0]])
    feed = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64), "token_type_ids": np.zeros_like(ids)}
    feed = {i.name: feed[i.name] for i in session.get_inputs()}
    assert np.array_equal(session.run(None, feed)[0], unfused.run(None, feed)[0])


def test_static_int8_calibrates_on_training_texts(exported_tiny, tmp_path):
    for method in ("minmax", "percentile"):
        result = quantize(QuantizeConfig(model=str(exported_tiny), out=str(tmp_path / method), method="static", calib_size=32, calib_method=method), progress=False)
        m = result.metrics
        assert m["chosen"] | {"calib_size": 32, "calib_method": method} == m["chosen"]
        assert m["size_ratio"] < 1.0 and m["agreement_with_fp32"] >= 0.8  # QDQ scales weigh on a tiny model


def test_excluding_an_op_type_keeps_it_fp32(exported_tiny, dynamic, tmp_path):
    kept = quantize(QuantizeConfig(model=str(exported_tiny), out=str(tmp_path / "kept"), exclude=["Gather"]), progress=False)
    assert kept.metrics["bytes"] > dynamic.metrics["bytes"]  # the embedding tables stayed fp32


def test_backoff_ladder_excludes_more_at_every_step(exported_tiny):
    import onnx

    steps = backoff_steps(onnx.load(str(exported_tiny / "model.onnx")).graph, ["keep_me"])
    names = [name for name, _ in steps]
    assert names[:3] == ["all int8", "head fp32", "head and embeddings fp32"] and len(steps) == 4  # 2 layers: top 1
    sizes = [len(excluded) for _, excluded in steps]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert all("keep_me" in excluded for _, excluded in steps)
    # dynamic int8 never quantizes the Gemm head: keeping it fp32 would try the same model again, so that step goes
    dynamic_steps = backoff_steps(onnx.load(str(exported_tiny / "model.onnx")).graph, ["keep_me"], ("MatMul", "Gather"))
    assert [name for name, _ in dynamic_steps] == ["all int8", "head and embeddings fp32"] + names[3:]


def test_accuracy_aware_backs_off_to_fp32_when_nothing_holds(exported_tiny, tmp_path, monkeypatch):
    import slmkit.quantize as module

    real_score = module.score
    calls = []

    def pessimistic(predictor, evaluation, reference_pred=None):
        scores = real_score(predictor, evaluation, reference_pred)
        if reference_pred is not None:  # every int8 candidate loses 5 points
            calls.append(1)
            scores["metric"] -= 0.05
        return scores

    monkeypatch.setattr(module, "score", pessimistic)
    result = quantize(QuantizeConfig(model=str(exported_tiny), out=str(tmp_path / "aa"), max_drop=0.5), progress=False)
    m = result.metrics
    assert m["fell_back_to_fp32"] and len(calls) == 3 and len(m["tried"]) == 4  # dynamic: no Gemm-head step
    assert all(t["drop_points"] > 0.5 for t in m["tried"][:-1]) and m["tried"][-1]["step"].startswith("fp32")
    assert json.loads((result.out / "manifest.json").read_text())["precision"] == "fp32"
    assert (result.out / "model.onnx").read_bytes() == (exported_tiny / "model.onnx").read_bytes()


def test_accuracy_aware_stops_at_the_first_step_within_budget(exported_tiny, tmp_path):
    result = quantize(QuantizeConfig(model=str(exported_tiny), out=str(tmp_path / "aa"), max_drop=100.0), progress=False)
    assert result.metrics["tried"][0]["step"] == "all int8" and len(result.metrics["tried"]) == 1
    assert not result.metrics["fell_back_to_fp32"]


def test_qat_fine_tunes_with_fake_quantization_then_quantizes(exported_tiny, tmp_path):
    result = quantize(QuantizeConfig(model=str(exported_tiny), out=str(tmp_path / "qat"), method="qat", qat_limit=64, qat_lr=1e-3), progress=False)
    m = result.metrics
    assert m["chosen"]["method"] == "qat" and m["size_ratio"] < 0.85
    assert m["int8_metric"] >= 0.8 and m["agreement_with_fp32"] >= 0.8


def test_fake_quantization_rounds_like_int8_and_restores():
    import torch

    from slmkit.quantize import fake_quantize

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    x = torch.randn(3, 8)
    plain = model(x)
    restore = fake_quantize(model)
    simulated = model(x)
    simulated.sum().backward()  # straight-through: gradients reach the fp32 weights
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    assert 0 < (simulated - plain).abs().max() < 0.1
    restore()
    assert torch.equal(model(x), plain)
    restore = fake_quantize(model, reduce_range=False)  # 8-bit weights: finer steps, a smaller error
    assert (model(x) - plain).abs().max() < (simulated - plain).abs().max()
    restore()


def test_quantize_bad_input_is_one_line_and_writes_nothing(trained_tiny, exported_tiny, dynamic, tmp_path):
    empty = write_csv(tmp_path / "empty.csv", [("  ", "billing")])
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    out = tmp_path / "out"
    cases = [
        (dict(model=str(trained_tiny)), "a PyTorch model, not an ONNX export: run slm export"),
        (dict(model=str(tmp_path / "missing")), "model directory not found"),
        (dict(model=str(dynamic.out)), "already quantized"),
        (dict(model=str(exported_tiny), method="static", calib_data=str(empty)), "empty.csv: no examples"),
        (dict(model=str(exported_tiny), method="static", calib_data=str(blank)), "blank.txt: no texts"),
        (dict(model=str(exported_tiny), max_drop=-0.1), "max_drop must be 0 or more"),
        (dict(model=str(exported_tiny), method="int4"), "method must be dynamic, static or qat"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UserError, match=message) as info:
            quantize(QuantizeConfig(out=str(out), **kwargs), progress=False)
        assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.txt", "empty.csv"]


def test_quantizing_a_copy_without_its_source_still_works_but_qat_needs_the_source(exported_tiny, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(exported_tiny, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["source"] = str(tmp_path / "gone")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    result = quantize(QuantizeConfig(model=str(moved), out=str(tmp_path / "int8")), progress=False)
    assert result.metrics["fp32_metric"] is None and result.metrics["size_ratio"] < 0.85  # no eval set known
    with pytest.raises(UserError, match="QAT needs the PyTorch model"):
        quantize(QuantizeConfig(model=str(moved), out=str(tmp_path / "qat"), method="qat"), progress=False)
    assert not (tmp_path / "qat").exists() and not list(tmp_path.glob(".qat*"))
    assert np.isfinite(result.metrics["bytes"])
