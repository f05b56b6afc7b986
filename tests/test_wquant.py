"""Weight-only int8/int4 quantization of causal LMs (slmkit.wquant, `slm quantize --method int8-weight|int4-weight`)
on tiny random models of every family: the formats round-trip, size shrinks, the report has perplexity, KL, size and
tokens/s, the saved model loads back (safetensors only) and generates what it was measured as; bad input is one line."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import LM_FAMILIES, make_causal_lm
from slmkit import wquant
from slmkit.cli import app
from slmkit.config import QuantizeConfig
from slmkit.errors import UserError

runner = CliRunner()


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("wquant-families")
    return {family: make_causal_lm(root / family, family) for family in LM_FAMILIES}


def test_kl_divergence_known_answers():
    p = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
    q = np.log(np.array([[0.5, 0.5], [0.5, 0.5]]))
    kl = wquant.kl_divergence(p, q)
    assert kl[0] == pytest.approx(0.0)
    assert kl[1] == pytest.approx(0.9 * np.log(0.9 / 0.5) + 0.1 * np.log(0.1 / 0.5))
    assert (wquant.kl_divergence(q, p) >= 0).all()


def test_int8_and_int4_formats_round_trip():
    import torch

    torch.manual_seed(0)
    w = torch.randn(6, 64)
    q, s = wquant.quantize_int8(w)
    assert q.dtype == torch.int8 and s.shape == (6,)
    assert (q.float() * s[:, None] - w).abs().max() <= s.max() / 2 + 1e-6  # within half a step
    packed, scale = wquant.quantize_int4(w, 32)
    assert packed.dtype == torch.uint8 and packed.shape == (6, 32) and scale.shape == (6, 2)
    back = wquant.dequantize_int4(packed, scale, 32)
    step = scale.repeat_interleave(32, dim=1)
    assert ((back - w).abs() <= step / 2 + 1e-6).all()
    # the CPU kernels (int8-weight, int4) compute what the dequantized weights do
    import torch.nn.functional as F

    linear, x = torch.nn.Linear(64, 6), torch.randn(3, 5, 64)
    for bits in (8, 4):
        layer = wquant._linear_module().from_linear(linear, bits, 32)
        assert torch.allclose(layer(x), F.linear(x, layer.dequantized(torch.float32), linear.bias), atol=1e-4)
        assert (layer(x) - linear(x)).abs().max() < (0.02 if bits == 8 else 0.2)
    # exactly representable values come back exactly (the nibble packing loses nothing)
    exact = torch.arange(-7, 8).float().repeat(6, 3)[:, :32] * 0.25
    assert torch.equal(wquant.dequantize_int4(*wquant.quantize_int4(exact, 16), 16), exact)


@pytest.mark.parametrize("family", LM_FAMILIES)
def test_quantize_every_family(family, family_dirs, lm_text, tmp_path):
    import torch

    from slmkit.generate import GenerationConfig, generate_ids
    from slmkit.lm import TorchStepper, load_causal_lm

    torch.set_num_threads(1)
    cfg = QuantizeConfig(model=str(family_dirs[family]), out=str(tmp_path / "q4"), method="int4-weight", eval_data=str(lm_text["eval"]), gen_tokens=8, eval_tokens=400)
    m = wquant.quantize_lm(cfg).metrics
    rows = {r["precision"]: r for r in m["report"]}
    assert list(rows) == ["fp32", "bf16", "int8", "int4"]
    for row in rows.values():
        assert row["perplexity"] > 1 and row["gen_tokens_per_s"] > 0 and row["eval_tokens"] == rows["fp32"]["eval_tokens"]
    assert rows["fp32"]["mean_kl"] == 0 and rows["fp32"]["top1_agreement"] == 1
    assert rows["int4"]["bytes"] < rows["int8"]["bytes"] < rows["fp32"]["bytes"] and rows["bf16"]["size_ratio"] == pytest.approx(0.5, abs=0.01)
    assert 0 < rows["int8"]["mean_kl"] < 1e-3 and rows["int8"]["mean_kl"] <= rows["int4"]["mean_kl"] < 0.05
    assert m["mean_kl"] == rows["int4"]["mean_kl"] and m["reload_max_abs_logit_diff"] == 0.0
    out = tmp_path / "q4"
    assert {"quantized.safetensors", "quantization.json", "config.json", "tokenizer.json", "config.yaml", "metrics.json"} <= {p.name for p in out.iterdir()}
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in out.iterdir())
    assert (out / "quantized.safetensors").stat().st_size < (family_dirs[family] / "model.safetensors").stat().st_size / 2

    # loads back through the one causal-LM loader and generates greedily what the in-memory int4 model does
    loaded, tokenizer = load_causal_lm(out)
    reference, _ = load_causal_lm(family_dirs[family])
    wquant.quantize_model(reference, "int4-weight", 32)
    prompt = tokenizer("my parcel")["input_ids"]
    greedy = GenerationConfig(max_new_tokens=8, temperature=0.0)
    assert list(generate_ids(TorchStepper(loaded), prompt, greedy)) == list(generate_ids(TorchStepper(reference), prompt, greedy))


def test_cli_int8_prints_the_table(family_dirs, lm_text, tmp_path):
    out = tmp_path / "q8"
    result = runner.invoke(app, ["quantize", "--model", str(family_dirs["llama"]), "--method", "int8-weight", "--eval", str(lm_text["eval"]), "--out", str(out), "--set", "gen_tokens=4", "--set", "report_all=false", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.stdout and "mean KL" in result.stdout and "int8" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["precision"] for r in metrics["report"]] == ["fp32", "int8"] and metrics["size_ratio"] < 0.6
    assert json.loads((out / "quantization.json").read_text())["method"] == "int8-weight"


def test_bad_input_is_one_line_and_writes_nothing(family_dirs, tiny_base, lm_text, tmp_path):
    out = tmp_path / "out"
    llama = str(family_dirs["llama"])
    cases = [
        (dict(model=str(tiny_base), method="int8-weight"), "not a causal language model"),
        (dict(model=llama, method="int4-weight", group_size=24), "--group-size 24 does not divide the input width 32 of model.layers.0"),
        (dict(model=llama, method="int4-weight", group_size=3), "--group-size 3"),
        (dict(model=llama, method="dynamic"), "a PyTorch causal LM: pass --method int8-weight or int4-weight"),
        (dict(model=llama, method="int8-weight", eval_data=None), "--eval: weight-only quantization is measured on held-out text"),
        (dict(model=llama, method="int8-weight", eval_data=str(tmp_path / "nope.txt")), "nope.txt: file not found"),
    ]
    for kwargs, message in cases:
        values = {"eval_data": str(lm_text["eval"]), **kwargs}
        with pytest.raises(UserError, match=message) as info:
            wquant.quantize_lm(QuantizeConfig(out=str(out), **values)) if values["method"] != "dynamic" else _quantize(values, out)
        assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
    result = runner.invoke(app, ["quantize", "--model", llama, "--method", "int4-weight", "--group-size", "24", "--eval", str(lm_text["eval"]), "--out", str(out)])
    assert result.exit_code == 2 and "does not divide" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _quantize(values, out):
    from slmkit.quantize import quantize

    return quantize(QuantizeConfig(out=str(out), **values), progress=False)
