"""`slm export` of causal LMs with a KV cache, `slm quantize` of them, and the torch-free generator in slmkit.runtime.

The tiny Llama (`tiny_lm`) is exported once for the module through the CLI; every family in LM_FAMILIES is
exported too (with a smaller probe). References are independent of the export's own checks: Hugging Face's
`generate` for the greedy continuations, PyTorch's full-sequence logits for the cached steps.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import LM_FAMILIES, make_causal_lm
from slmkit import artifacts
from slmkit.cli import app
from slmkit.config import ExportConfig
from slmkit.errors import UserError
from slmkit.export import export
from slmkit.generate import GenerationConfig
from slmkit.runtime import LMGenerator, OnnxStepper

runner = CliRunner()
GREEDY = GenerationConfig(max_new_tokens=16, temperature=0.0)
PROMPTS = ["my parcel is", "please help with the", "why is my password still", "thanks"]


@pytest.fixture(scope="module")
def lm_onnx(tiny_lm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm-export") / "tiny-lm-onnx"
    result = runner.invoke(app, ["export", "--model", str(tiny_lm), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "greedy continuations identical" in " ".join(result.output.split())
    return out


@pytest.fixture(scope="module")
def lm_int8(lm_onnx, lm_text, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm-int8") / "tiny-lm-int8"
    result = runner.invoke(app, ["quantize", "--model", str(lm_onnx), "--out", str(out), "--eval-data", str(lm_text["eval"])])
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    assert "held-out perplexity" in printed and "greedy agreement" in printed
    return out


@pytest.fixture(scope="module")
def torch_lm(tiny_lm):
    from slmkit.lm import load_causal_lm

    return load_causal_lm(tiny_lm)


def test_export_writes_one_cached_graph_with_its_manifest_and_parity(lm_onnx, tiny_lm):
    import onnxruntime as ort

    names = {p.name for p in lm_onnx.iterdir()}
    assert {"model.onnx", "manifest.json", "metrics.json", "config.yaml", "tokenizer.json", "config.json"} <= names
    assert not list(lm_onnx.parent.glob(".*partial"))
    manifest = artifacts.read_json(lm_onnx / "manifest.json")
    assert manifest["task"] == "lm" and artifacts.model_task(lm_onnx) == "lm" and manifest["precision"] == "fp32"
    assert {k: manifest["cache"][k] for k in ("layers", "kv_heads", "head_dim")} == {"layers": 2, "kv_heads": 1, "head_dim": 16}
    assert (manifest["bos_id"], manifest["eos_ids"], manifest["pad_id"], manifest["context_length"]) == (1, [2], 0, 128)
    past = [f"past_key_values.{i}.{k}" for i in range(2) for k in ("key", "value")]
    assert manifest["inputs"] == ["input_ids", "attention_mask", "position_ids", *past]
    assert manifest["outputs"] == ["logits"] + [n.replace("past_key_values", "present") for n in past]
    session = ort.InferenceSession(str(lm_onnx / "model.onnx"), providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert shapes["input_ids"] == ["batch", "sequence"] and shapes["past_key_values.0.key"] == ["batch", 1, "past_sequence", 16]
    metrics = artifacts.read_json(lm_onnx / "metrics.json")
    parity = metrics["parity"]
    assert parity["prompt_max_abs_logit_diff"] <= 1e-4 and parity["step_max_abs_logit_diff"] <= 1e-4
    assert parity["greedy_identical"] and parity["greedy_tokens_agreeing"] == parity["greedy_tokens_compared"] == 8 * 16
    assert manifest["exporter"] == metrics["exporter"]["name"] == "fused"  # a Llama decoder: ONNX Runtime's fused ops


def test_greedy_continuations_equal_hugging_face_generate(lm_onnx, torch_lm):
    import torch

    model, _ = torch_lm
    generator = LMGenerator(lm_onnx)
    for prompt in PROMPTS:
        ids = generator.encode(prompt)
        with torch.no_grad():
            reference = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False, max_new_tokens=16)[0, len(ids):].tolist()
        if reference and reference[-1] in generator.eos_ids:
            reference = reference[:-1]  # generate keeps the end-of-sequence token; the decode loop stops before it
        got = generator.generate_ids(ids, GREEDY)
        assert got == reference, prompt
        text = generator.complete(prompt, GREEDY)
        # a random model emits stray bytes: the streamed text holds back a trailing incomplete UTF-8 sequence
        assert generator.tokenizer.decode(got).startswith(text) and "".join(generator.stream(prompt, GREEDY)) == text


def test_cached_steps_equal_full_sequence_logits(lm_onnx, torch_lm):
    """One graph serves the prompt (past 0) and each step: the cached logits equal PyTorch's over the whole
    sequence, and a no-cache stepper (full re-run each step) gives the same."""
    import torch

    model, _ = torch_lm
    cached, rerun = OnnxStepper(lm_onnx), OnnxStepper(lm_onnx, cache=False)
    ids = LMGenerator(lm_onnx).encode("the courier lost my parcel")
    rng = np.random.default_rng(0)
    steps = [cached.start(ids)]
    assert np.abs(rerun.start(ids) - steps[0]).max() <= 1e-5
    fed = [int(t) for t in rng.integers(3, 300, 20)]
    for token in fed:
        steps.append(cached.step(token))
        assert np.abs(rerun.step(token) - steps[-1]).max() <= 1e-4
    with torch.no_grad():
        full = model(torch.tensor([ids + fed])).logits[0].numpy()  # (sequence, vocab)
    want = full[len(ids) - 1 :]
    assert np.abs(np.stack(steps) - want).max() <= 1e-4
    assert cached.length == len(ids) + len(fed)


def test_forked_steppers_share_the_session_and_keep_their_own_cache(lm_onnx):
    first = OnnxStepper(lm_onnx)
    second = first.fork()
    assert second.session is first.session
    a, b = [1, 40, 41, 42], [1, 90]
    got_a, got_b = [first.start(a)], [second.start(b)]
    for token in (7, 8, 9):  # interleaved, as two requests in flight
        got_a.append(first.step(token))
        got_b.append(second.step(token + 100))
    alone = OnnxStepper(lm_onnx)
    want_b = [alone.start(b)] + [alone.step(t + 100) for t in (7, 8, 9)]
    want_a = [alone.start(a)] + [alone.step(t) for t in (7, 8, 9)]
    assert all(np.array_equal(x, y) for x, y in zip(got_a + got_b, want_a + want_b))


def test_batched_left_padded_prompts_and_a_past_match_pytorch(lm_onnx, torch_lm):
    """The dynamic axes: batch 3, left padding, a past of 5 tokens, a 2-token step."""
    import onnxruntime as ort
    import torch
    from transformers import DynamicCache

    model, _ = torch_lm
    session = ort.InferenceSession(str(lm_onnx / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    ids = rng.integers(3, 300, (3, 7))
    mask = np.ones((3, 7), dtype=np.int64)
    mask[0, :3] = 0
    mask[2, :1] = 0
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    past_len = 5
    with torch.no_grad():
        first = model(input_ids=torch.tensor(ids[:, :past_len]), attention_mask=torch.tensor(mask[:, :past_len]),
                      position_ids=torch.tensor(positions[:, :past_len]), cache=DynamicCache(config=model.config), use_cache=True)
        pasts = [t.numpy().copy() for layer in first.cache.layers for t in (layer.keys, layer.values)]
        want = model(input_ids=torch.tensor(ids[:, past_len:]), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions[:, past_len:]),
                     cache=first.cache, use_cache=True).logits.numpy()
    feed = {"input_ids": ids[:, past_len:], "attention_mask": mask, "position_ids": positions[:, past_len:]}
    feed.update({f"past_key_values.{i}.{k}": pasts[2 * i + j] for i in range(2) for j, k in enumerate(("key", "value"))})
    logits, *present = session.run(None, feed)
    assert logits.shape == (3, 2, 300) and present[0].shape == (3, 1, 7, 16)
    assert np.abs(logits - want).max() <= 1e-4


@pytest.mark.parametrize("family", [f for f in LM_FAMILIES if f != "llama"])
def test_every_family_exports_with_parity(family, tmp_path):
    source = make_causal_lm(tmp_path / family, family)
    result = export(ExportConfig(model=str(source), out=str(tmp_path / f"{family}-onnx"), probe_size=2))
    parity = result.metrics["parity"]
    assert parity["max_abs_logit_diff"] <= 1e-4 and parity["greedy_identical"], family
    assert result.metrics["exporter"]["name"] == "torchscript" and "LlamaForCausalLM" in result.metrics["exporter"]["not_fused"]
    assert result.metrics["shape_nodes_folded"] > 50, family  # the tracer's shape arithmetic, folded (with parity)
    manifest = artifacts.read_json(result.out / "manifest.json")
    assert manifest["model_type"] == family and manifest["cache"]["kv_heads"] == (2 if family == "phi" else 1)
    assert len(LMGenerator(result.out).generate_ids([1, 5, 9], GREEDY, stop_at_eos=False)) == 16


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_a_llama_decoder_is_written_as_fused_ops_with_parity(kv_heads, tmp_path, monkeypatch):
    import onnx

    from slmkit import export_lm

    source = make_causal_lm(tmp_path / "llama", "llama", num_key_value_heads=kv_heads)
    result = export(ExportConfig(model=str(source), out=str(tmp_path / "fused"), probe_size=2))
    parity = result.metrics["parity"]
    assert parity["max_abs_logit_diff"] <= 1e-4 and parity["greedy_identical"]  # left-padded prompts, cached steps, greedy runs
    ops = Counter(n.op_type for n in onnx.load(str(result.out / "model.onnx")).graph.node)
    assert ops["MultiHeadAttention"] == 2 and ops["RotaryEmbedding"] == 4 and ops["SimplifiedLayerNormalization"] == 5
    assert result.metrics["exporter"] == {"name": "fused", "nodes": sum(ops.values())} and sum(ops.values()) < 80
    assert artifacts.read_json(result.out / "manifest.json")["cache"]["kv_heads"] == kv_heads
    # the same model traced: the same logits, prompt and cached steps, from a graph of many more nodes
    monkeypatch.setattr(export_lm, "fused_refusal", lambda model: "traced for the comparison")
    traced = export(ExportConfig(model=str(source), out=str(tmp_path / "traced"), probe_size=2))
    assert traced.metrics["exporter"]["name"] == "torchscript" and len(onnx.load(str(traced.out / "model.onnx")).graph.node) > 2 * sum(ops.values())
    fused_steps, traced_steps = OnnxStepper(result.out), OnnxStepper(traced.out)
    a, b = fused_steps.start([1, 5, 9, 12]), traced_steps.start([1, 5, 9, 12])
    for token in (7, 30, 2, 99):
        assert np.abs(a - b).max() <= 1e-4
        a, b = fused_steps.step(token), traced_steps.step(token)
    assert np.abs(a - b).max() <= 1e-4


def test_a_llama_the_fused_ops_cannot_express_is_traced(tmp_path):
    source = make_causal_lm(tmp_path / "llama", "llama", attention_bias=True)
    result = export(ExportConfig(model=str(source), out=str(tmp_path / "onnx"), probe_size=2))
    assert result.metrics["exporter"] == {"name": "torchscript", "not_fused": "biased projections"}
    assert result.metrics["parity"]["max_abs_logit_diff"] <= 1e-4 and result.metrics["parity"]["greedy_identical"]


def test_int8_shrinks_and_reports_perplexity_and_greedy_agreement(lm_int8, lm_onnx, lm_text):
    metrics = artifacts.read_json(lm_int8 / "metrics.json")
    assert artifacts.read_json(lm_int8 / "manifest.json")["precision"] == "int8"
    assert metrics["bytes"] < metrics["fp32_bytes"] == (lm_onnx / "model.onnx").stat().st_size
    ppl = metrics["perplexity"]
    assert ppl["fp32"] > 1 and abs(ppl["change_pct"]) < 5 and metrics["eval"]["source"] == str(lm_text["eval"])
    assert metrics["eval"]["texts"] == 60 and metrics["eval"]["tokens"] > 300
    greedy = metrics["greedy"]
    assert greedy["prompts"] == 16 and 0 <= greedy["agreement"] <= 1
    assert isinstance(LMGenerator(lm_int8).complete("my parcel", GREEDY), str)


def test_runtime_generates_without_importing_torch(lm_int8):
    code = (
        "import sys\nfrom slmkit.runtime import LMGenerator\nfrom slmkit.generate import GenerationConfig\n"
        f"g = LMGenerator({str(lm_int8)!r})\nprint(repr(g.complete('my invoice', GenerationConfig(max_new_tokens=8, temperature=0))))\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\nassert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr(LMGenerator(lm_int8).complete("my invoice", GenerationConfig(max_new_tokens=8, temperature=0)))


# -------------------------------------------------------------------------------------------- bad input


def test_a_prompt_longer_than_the_context_is_cut_from_the_left_or_refused(lm_onnx):
    generator = LMGenerator(lm_onnx)
    long = " ".join(["my parcel is late"] * 60)
    assert len(generator.encode(long)) > 128
    with pytest.warns(UserWarning, match=r"the first \d+ were dropped to fit the context window of 128"):
        text = generator.complete(long, GREEDY)
    with pytest.warns(UserWarning):
        kept = generator.fit(generator.encode(long), 16)
    assert len(kept) <= 128 - 16 and generator.tokenizer.decode(generator.generate_ids(kept, GREEDY)).startswith(text)
    with pytest.raises(UserError, match="context window is 128"):
        generator.complete(long, GREEDY, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a prompt that fits: no warning
        generator.complete("my parcel", GREEDY)


def test_an_export_that_is_not_an_lm_is_refused_where_an_lm_is_needed(lm_onnx, tmp_path):
    other = tmp_path / "classifier-onnx"
    other.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        (other / name).write_bytes((lm_onnx / name).read_bytes())
    manifest = artifacts.read_json(lm_onnx / "manifest.json")
    artifacts.write_json(other / "manifest.json", {k: v for k, v in manifest.items() if k != "cache"} | {"task": "classification", "labels": ["a", "b"]})
    with pytest.raises(UserError, match="a classification model, not an exported causal LM"):
        LMGenerator(other)


@pytest.mark.parametrize("case", ["export an export", "static int8", "accuracy budget", "parity fails"])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, lm_onnx, tiny_lm, tmp_path):
    out = tmp_path / "out"
    args, expected = {
        "export an export": (["export", "--model", str(lm_onnx)], "an exported ONNX model, not a PyTorch one"),
        "static int8": (["quantize", "--model", str(lm_onnx), "--method", "static"], "a causal LM is quantized with --method dynamic"),
        "accuracy budget": (["quantize", "--model", str(lm_onnx), "--max-drop", "1"], "perplexity and greedy agreement"),
        "parity fails": (["export", "--model", str(tiny_lm), "--tolerance", "1e-12", "--probe-size", "1"], "LM parity check failed"),
    }[case]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error: ") and expected in result.output, result.output
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_the_documented_snippet_runs(lm_int8, capsys):
    """docs/lm-export.md's runtime snippet, executed as written (only the directory substituted)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "lm-export.md").read_text(encoding="utf-8")
    code = doc.split("<!-- lm-runtime-snippet -->\n```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code.replace("runs/lm-int8", str(lm_int8)), "lm-export.md", "exec"), namespace)
    printed = capsys.readouterr().out
    greedy = namespace["lm"].complete("my parcel", namespace["greedy"])
    assert printed.startswith(greedy + "\n") and namespace["ids"] == namespace["lm"].generate_ids(namespace["lm"].encode("my parcel"), namespace["greedy"])


def test_the_slm_train_lm_output_exports_and_quantizes_with_its_own_corpus(lm_text, tmp_path):
    """`slm train --task lm` -> export -> quantize: the probe prompts come from its training corpus and the int8
    perplexity from the eval split it held out (the lineage), not from built-in sentences."""
    shape = ["--shape", "layers=1,hidden=32,heads=2,ffn=64,context=64", "--vocab-size", "300", "--epochs", "1", "--batch-size", "32",
             "--set", "train.threads=1", "--quiet"]
    trained, onnx_dir, int8_dir = tmp_path / "lm", tmp_path / "lm-onnx", tmp_path / "lm-int8"
    result = runner.invoke(app, ["train", "--task", "lm", "--data", str(lm_text["train"]), "--out", str(trained), *shape])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", "--model", str(trained), "--out", str(onnx_dir), "--probe-size", "2"])
    assert result.exit_code == 0, result.output
    assert artifacts.read_json(onnx_dir / "metrics.json")["probe"]["source"] == str(lm_text["train"])
    assert artifacts.read_json(onnx_dir / "manifest.json")["context_length"] == 64
    result = runner.invoke(app, ["quantize", "--model", str(onnx_dir), "--out", str(int8_dir)])
    assert result.exit_code == 0, result.output
    evaluated = artifacts.read_json(int8_dir / "metrics.json")["eval"]
    assert evaluated["source"] == f"{lm_text['train']} (eval split)" and evaluated["texts"] == 40  # 10% of 400 documents
