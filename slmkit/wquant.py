"""`slm quantize --method int8-weight|int4-weight`: weight-only quantization of a PyTorch causal LM, with the
quality-per-quant report (perplexity, mean KL divergence vs the unquantized model, size, tokens/s).

Read top to bottom: `quantize_lm(cfg)` loads the causal-LM directory, builds each precision it reports on —
the model as it is (fp32), bf16, int8 and int4 — scores each on the held-out text against the fp32 model, and
writes the chosen method's model (safetensors) with the table in metrics.json.

The formats (weights only; activations stay in floating point):
- int8-weight: each linear layer's weight as int8, symmetric, one fp32 scale per output channel
  (w ≈ q · s, q in [-127, 127]). On the CPU the matmul runs in PyTorch's int8-weight kernel
  (`torch._weight_int8pack_mm`, dequantizing inside the kernel); elsewhere (GPU, bf16 inputs) the weight is
  dequantized on the fly.
- int4-weight: symmetric, one fp32 scale per group of `group_size` consecutive input weights (like llama.cpp's
  Q4_0: q in [-8, 7], s = max|w| / 7 per group), two 4-bit values packed per byte. On the CPU the matmul runs in
  PyTorch's int4 kernel (`torch._weight_int4pack_mm_for_cpu`, its packed layout built in memory on first use);
  elsewhere the weight is dequantized to the input's dtype. `group_size` must divide every quantized layer's
  input width.
On an AVX2 CPU without VNNI (this project's machines) both kernels are slower than fp32 at batch 1: weight-only
quantization saves memory and disk there, not time — the report's tokens/s says so.
Embeddings, norms and a head tied to the input embeddings stay fp32 (an untied head is quantized like the other
linear layers).

Why not torchao: torchao 0.18 on torch 2.13 (CPU) runs `Int8WeightOnlyConfig`, but `Int4WeightOnlyConfig` has no
CPU path (its default needs the GPU `mslk` kernels, `plain_int32` refuses device 'cpu', the CPU-packed layout is
gone), its quantized tensors are subclasses that `safetensors` cannot write (only pickle), and once installed it
is imported by every `transformers` import, printing load failures of its CUDA extensions. The format here is a
few dozen lines, saves as plain int8/uint8/fp32 tensors in safetensors, and runs the same on CPU and GPU.

The output directory: the model's config.json and tokenizer files, `quantized.safetensors` (the quantized
state dict: `<layer>.qweight` int8/uint8 and `<layer>.scale` fp32 beside the float tensors) and
`quantization.json` (method, group size, the quantized layers); `load_quantized` puts the model back together.
A different file name from model.safetensors keeps plain transformers from half-loading it with random layers.

The report follows llama.cpp's `perplexity --kl-divergence`: the held-out text is tokenized as one stream and cut
into windows of the model's context (at most `context` tokens, `eval_tokens` in all); perplexity is exp of the mean
next-token negative log-likelihood, KL is the mean over positions of KL(P_fp32 || P_quant) in nats, "top-1 agree"
the share of positions whose most likely next token is the fp32 model's. Size is the bytes of the weights
(what safetensors stores); tokens/s is batch-1 greedy generation with the KV cache through slmkit's decode loop.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from slmkit import artifacts
from slmkit.config import QuantizeConfig, save_config
from slmkit.errors import UserError

QUANT_WEIGHTS = "quantized.safetensors"
QUANT_RECORD = "quantization.json"
BITS = {"int8-weight": 8, "int4-weight": 4}  # the weight-only methods of slm quantize


@dataclass
class QuantizeLMResult:
    out: Path
    metrics: dict


# ------------------------------------------------------------------------------------------ the formats


@functools.cache
def _linear_module():
    """The QuantLinear class (defined on first use: importing this module does not import torch)."""
    import torch

    class QuantLinear(torch.nn.Module):
        """A linear layer whose weight is stored as int8 (per output channel) or packed int4 (per group)."""

        def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, bias: bool, dtype):
            super().__init__()
            self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
            if bits == 8:
                self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
                self.register_buffer("scale", torch.zeros(out_features, dtype=torch.float32))
            else:
                self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
                self.register_buffer("scale", torch.zeros(out_features, in_features // group_size, dtype=torch.float32))
            self.bias = torch.nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

        @classmethod
        def from_linear(cls, linear, bits: int, group_size: int):
            layer = cls(linear.in_features, linear.out_features, bits, group_size, linear.bias is not None, linear.weight.dtype)
            w = linear.weight.detach().float()
            q, s = quantize_int8(w) if bits == 8 else quantize_int4(w, group_size)
            layer.qweight.copy_(q)
            layer.scale.copy_(s)
            if linear.bias is not None:
                layer.bias.data.copy_(linear.bias.detach())
            return layer.to(linear.weight.device)

        def dequantized(self, dtype):
            if self.bits == 8:
                return (self.qweight.to(dtype) * self.scale.to(dtype)[:, None])
            return dequantize_int4(self.qweight, self.scale, self.group_size).to(dtype)

        def forward(self, x):
            import torch.nn.functional as F

            if x.dtype == torch.float32 and x.device.type == "cpu":
                x2d = x.reshape(-1, self.in_features).contiguous()  # (tokens, in)
                y = None
                if self.bits == 8 and hasattr(torch, "_weight_int8pack_mm"):
                    y = torch._weight_int8pack_mm(x2d, self.qweight, self.scale)
                elif self.bits == 4 and self._cpu_int4() is not None:
                    y = torch._weight_int4pack_mm_for_cpu(x2d, *self._cpu_int4())
                if y is not None:
                    y = y.reshape(*x.shape[:-1], self.out_features)
                    return y + self.bias if self.bias is not None else y
            return F.linear(x, self.dequantized(x.dtype), self.bias)

        def _cpu_int4(self):
            """(packed weight, group size, scales and zeros) for PyTorch's CPU int4 kernel, built on first use from
            the stored nibbles (the kernel computes (q - 8) * scale + zero per group; zero is 0 here). None where
            this PyTorch has no such kernel or refuses the shape."""
            if not hasattr(self, "_int4_kernel_args"):
                self._int4_kernel_args = None
                try:
                    q = torch.stack(((self.qweight & 0x0F), (self.qweight >> 4)), dim=2).reshape(self.out_features, -1).to(torch.int32)
                    packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
                    scales_zeros = torch.stack((self.scale.T, torch.zeros_like(self.scale.T)), dim=-1).contiguous()  # (groups, out, 2)
                    args = (packed, self.group_size, scales_zeros)
                    torch._weight_int4pack_mm_for_cpu(torch.zeros(1, self.in_features), *args)  # the kernel takes this shape
                    self._int4_kernel_args = args
                except (AttributeError, RuntimeError):
                    pass
            return self._int4_kernel_args

        def extra_repr(self) -> str:
            return f"in={self.in_features}, out={self.out_features}, int{self.bits}" + (f", group={self.group_size}" if self.bits == 4 else "")

    return QuantLinear


def quantize_int8(w):
    """(q int8 (out, in), scale fp32 (out,)): symmetric per output channel, w ≈ q * scale."""
    import torch

    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(w, group_size: int):
    """(packed uint8 (out, in/2), scale fp32 (out, in/group)): symmetric per group, q in [-8, 7] stored as q+8,
    two per byte (the even column in the low nibble)."""
    import torch

    out, width = w.shape
    groups = w.reshape(out, width // group_size, group_size)
    scale = (groups.abs().amax(dim=2) / 7).clamp(min=1e-12)  # (out, groups)
    q = torch.round(groups / scale[..., None]).clamp(-8, 7).to(torch.int16).reshape(out, width) + 8  # 0..15
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)
    return packed, scale


def dequantize_int4(packed, scale, group_size: int):
    """The fp32 weight (out, in) of a packed int4 weight."""
    import torch

    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    q = torch.stack((low, high), dim=2).reshape(packed.shape[0], -1)  # (out, in): columns interleaved back
    groups = q.reshape(q.shape[0], -1, group_size).float() * scale[..., None]
    return groups.reshape(q.shape[0], -1)


def quantizable_layers(model) -> list[tuple[str, object]]:
    """(name, nn.Linear) of every linear layer except a head tied to the input embeddings."""
    import torch

    embedding = model.get_input_embeddings().weight
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.weight is not embedding]


def check_group_size(model, group_size: int) -> None:
    """int4 needs `group_size` to divide every quantized layer's input width (and to be even, for the packing)."""
    layers = quantizable_layers(model)
    widths = sorted({m.in_features for _, m in layers})
    bad = next(((n, m) for n, m in layers if m.in_features % group_size), None)
    if group_size < 2 or group_size % 2 or bad:
        gcd = math.gcd(*widths) if widths else 0
        fits = [g for g in (128, 64, 32, 16, 8) if gcd % g == 0] or [2]
        where = f"does not divide the input width {bad[1].in_features} of {bad[0]}" if bad else "must be an even number"
        raise UserError(f"--group-size {group_size} {where}: use a divisor of every width ({', '.join(map(str, widths))}) such as {fits[0]}")


def quantize_model(model, method: str, group_size: int = 32) -> list[str]:
    """Replace the linear layers of `model` (in place) by quantized ones; the names of the layers replaced."""
    bits = BITS[method]
    if bits == 4:
        check_group_size(model, group_size)
    QuantLinear = _linear_module()
    names = []
    for name, linear in quantizable_layers(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantLinear.from_linear(linear, bits, group_size))
        names.append(name)
    return names


def save_quantized(model, hf_tokenizer, source: Path, directory: Path, method: str, group_size: int, layers: list[str]) -> None:
    """The quantized model as `quantized.safetensors` + `quantization.json`, with the source's config and tokenizer."""
    from safetensors.torch import save_model

    model.config.save_pretrained(directory)  # from the model: the source may be an adapter directory (no config.json)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
    hf_tokenizer.save_pretrained(directory)
    save_model(model, str(directory / QUANT_WEIGHTS))  # shared tensors (a tied head) stored once
    artifacts.write_json(directory / QUANT_RECORD, {"method": method, "group_size": group_size if BITS[method] == 4 else None, "layers": layers, "source": str(source.resolve())})


def is_quantized_dir(directory: Path) -> bool:
    return (Path(directory) / QUANT_RECORD).is_file()


def load_quantized(directory: Path):
    """(model in eval mode, tokenizer) of a `save_quantized` directory: the architecture from config.json, the
    quantized layers put in place, every tensor from quantized.safetensors (strict)."""
    import torch
    import transformers
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from slmkit.lm import load_causal_lm_tokenizer

    directory = Path(directory)
    record = artifacts.read_json(directory / QUANT_RECORD)
    if record.get("method") not in BITS or not (directory / QUANT_WEIGHTS).is_file():
        raise UserError(f"{directory}: an incomplete quantized model ({QUANT_RECORD} without a valid method or {QUANT_WEIGHTS}): quantize it again")
    transformers.logging.set_verbosity_error()
    config = AutoConfig.from_pretrained(directory)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # the unquantized tensors were saved fp32
    QuantLinear = _linear_module()
    bits, group = BITS[record["method"]], record.get("group_size") or 0
    for name in record["layers"]:
        linear = model.get_submodule(name)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantLinear(linear.in_features, linear.out_features, bits, group, linear.bias is not None, linear.weight.dtype))
    missing, unexpected = load_model(model, str(directory / QUANT_WEIGHTS), strict=False)
    if missing or unexpected:
        raise UserError(f"{directory / QUANT_WEIGHTS}: does not match config.json ({len(missing)} missing, {len(unexpected)} unexpected tensors): quantize it again")
    model.eval()
    return model, load_causal_lm_tokenizer(directory)


def weight_bytes(model) -> int:
    """Bytes of the model's tensors (parameters and persistent buffers), each storage counted once: the payload of
    its safetensors file."""
    seen, total = set(), 0
    for tensor in model.state_dict().values():
        key = (tensor.untyped_storage().data_ptr(), tensor.dtype, tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


# ------------------------------------------------------------------------------------------ the report


def kl_divergence(ref_logprobs: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
    """KL(P || Q) in nats per row, from log-probabilities (rows, vocab) of P (the reference) and Q."""
    ref_logprobs, logprobs = np.asarray(ref_logprobs, dtype=np.float64), np.asarray(logprobs, dtype=np.float64)
    return np.sum(np.exp(ref_logprobs) * (ref_logprobs - logprobs), axis=-1)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def eval_windows(hf_tokenizer, text_path: Path, context: int, limit: int) -> list[list[int]]:
    """The held-out text as one token stream (lines joined by newlines), cut into windows of `context` tokens
    (at most `limit` tokens in all); each window starts with the beginning-of-sequence token when there is one."""
    from slmkit.data import read_texts

    text = "\n".join(read_texts(text_path))
    ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"][:limit]
    bos = [hf_tokenizer.bos_token_id] if hf_tokenizer.bos_token_id is not None else []
    step = context - len(bos)
    windows = [bos + ids[i : i + step] for i in range(0, len(ids), step)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise UserError(f"{text_path}: too little text to score (needs 2 tokens at least): pass a longer --eval file")
    return windows


def score_windows(model, windows: list[list[int]], reference: list[np.ndarray] | None) -> tuple[dict, list[np.ndarray]]:
    """Perplexity, mean KL vs `reference` (its per-window log-probs) and top-1 agreement; and this model's log-probs
    (positions 0..n-2 of each window predict tokens 1..n-1)."""
    import torch

    nll, kl, agree, count, logprobs, seconds = 0.0, 0.0, 0, 0, [], 0.0
    for k, window in enumerate(windows):
        started = time.perf_counter()
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([window])).logits[0, :-1].float().numpy()  # (n-1, vocab)
        seconds += time.perf_counter() - started
        lp = _log_softmax(logits.astype(np.float64))
        targets = np.array(window[1:])
        nll -= lp[np.arange(len(targets)), targets].sum()
        count += len(targets)
        if reference is not None:
            kl += kl_divergence(reference[k], lp).sum()
            agree += int((reference[k].argmax(-1) == lp.argmax(-1)).sum())
        logprobs.append(lp.astype(np.float32))
    scores = {
        "perplexity": math.exp(nll / count),
        "mean_kl": kl / count if reference is not None else 0.0,
        "top1_agreement": agree / count if reference is not None else 1.0,
        "eval_tokens": count,
        "eval_tokens_per_s": count / max(seconds, 1e-9),
    }
    return scores, logprobs


def generation_speed(model, prompt_ids: list[int], tokens: int, rounds: int = 3) -> float:
    """Batch-1 greedy tokens/s with the KV cache, through slmkit's decode loop: the best of `rounds` timed runs
    after a warm-up (the least disturbed by other work on the machine)."""
    from slmkit.generate import GenerationConfig, generate_ids
    from slmkit.lm import TorchStepper

    stepper = TorchStepper(model)
    cfg = GenerationConfig(max_new_tokens=tokens, temperature=0.0)
    list(generate_ids(stepper, prompt_ids, GenerationConfig(max_new_tokens=4, temperature=0.0)))
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        n = sum(1 for _ in generate_ids(stepper, prompt_ids, cfg))  # no eos: a random model would stop anywhere
        best = max(best, n / max(time.perf_counter() - started, 1e-9))
    return best


def build_variant(model, name: str, group_size: int):
    """The fp32 model itself, or a bf16 / int8 / int4 copy of it."""
    import torch

    if name == "fp32":
        return model
    variant = copy.deepcopy(model)
    if name == "bf16":
        return variant.to(torch.bfloat16)
    quantize_model(variant, f"{name}-weight", group_size)
    return variant


# ------------------------------------------------------------------------------------------ the stage


def check_lm_config(cfg: QuantizeConfig) -> None:
    if not cfg.eval_data:
        raise UserError("--eval: weight-only quantization is measured on held-out text: pass --eval heldout.txt (one text per line)")
    if not Path(cfg.eval_data).is_file():
        raise UserError(f"--eval {cfg.eval_data}: file not found: pass a held-out text file")


def quantize_lm(cfg: QuantizeConfig, overwrite: bool = False) -> QuantizeLMResult:
    """Quantize the causal LM `cfg.model` (int8-weight or int4-weight) into `cfg.out` with the quality report."""
    import torch
    import transformers

    from slmkit.lm import context_length, load_causal_lm

    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars: the stage reports its own progress
    transformers.logging.set_verbosity_error()
    cfg.validate()
    check_lm_config(cfg)
    src, out = Path(cfg.model), Path(cfg.out)
    artifacts.check_output(out, overwrite)
    model, hf_tokenizer = load_causal_lm(src)
    model = model.float()  # the reference: fp32 whatever the checkpoint's dtype
    chosen = cfg.method.removesuffix("-weight")
    if chosen == "int4":
        check_group_size(model, cfg.group_size)
    context = min(cfg.context, context_length(model.config) or cfg.context)
    windows = eval_windows(hf_tokenizer, Path(cfg.eval_data), context, cfg.eval_tokens)
    prompt = windows[0][: max(2, min(16, context - cfg.gen_tokens))]
    names = ["fp32", "bf16", "int8", "int4"] if cfg.report_all else ["fp32", chosen]
    rows, reference, kept = [], None, None
    for name in names:
        try:
            variant = build_variant(model, name, cfg.group_size)
        except UserError as e:  # int4 in the report of an int8 run, with a group size that does not fit
            rows.append({"precision": name, "skipped": str(e)})
            continue
        scores, logprobs = score_windows(variant, windows, reference)
        if name == "fp32":
            reference = logprobs
        rows.append({"precision": name, "bytes": weight_bytes(variant), **scores, "gen_tokens_per_s": generation_speed(variant, prompt, cfg.gen_tokens)})
        if name == chosen:
            kept = variant
        elif variant is not model:
            del variant
    fp32_bytes = rows[0]["bytes"]
    for row in rows:
        if "bytes" in row:
            row["size_ratio"] = row["bytes"] / fp32_bytes

    with artifacts.staged(out, overwrite) as staging:
        layers = [n for n, m in kept.named_modules() if type(m).__name__ == "QuantLinear"]
        save_quantized(kept, hf_tokenizer, src, staging, cfg.method, cfg.group_size, layers)
        # the saved model must load back and give the logits it was measured with
        loaded, _ = load_quantized(staging)
        with torch.inference_mode():
            probe = torch.tensor([windows[0]])
            parity = float((loaded(input_ids=probe).logits - kept(input_ids=probe).logits).abs().max())
        chosen_row = next(r for r in rows if r["precision"] == chosen)
        metrics = {
            "method": cfg.method,
            "group_size": cfg.group_size if chosen == "int4" else None,
            "source": str(src.resolve()),
            "eval_data": str(Path(cfg.eval_data).resolve()),
            "context": context,
            "quantized_layers": len(layers),
            "bytes": (staging / QUANT_WEIGHTS).stat().st_size,
            "size_ratio": chosen_row["size_ratio"],
            "perplexity": chosen_row["perplexity"],
            "mean_kl": chosen_row["mean_kl"],
            "reload_max_abs_logit_diff": parity,
            "report": rows,
        }
        save_config(replace(cfg, model=str(src.resolve()), eval_data=str(Path(cfg.eval_data).resolve())), staging / artifacts.CONFIG)
        artifacts.write_json(staging / artifacts.METRICS, metrics)
    return QuantizeLMResult(out, metrics)


def report_table(rows: list[dict]) -> list[tuple[str, ...]]:
    """The report as text rows (header first), for the terminal and the docs."""
    table = [("precision", "size MB", "x fp32", "perplexity", "mean KL", "top-1 agree", "gen tok/s")]
    for r in rows:
        if "skipped" in r:
            table.append((r["precision"], "-", "-", "-", "-", "-", "skipped"))
            continue
        table.append((
            r["precision"], f"{r['bytes'] / 1e6:.2f}", f"{r['size_ratio']:.2f}", f"{r['perplexity']:.3f}",
            f"{r['mean_kl']:.2e}", f"{r['top1_agreement']:.3f}", f"{r['gen_tokens_per_s']:.0f}",
        ))
    return table
