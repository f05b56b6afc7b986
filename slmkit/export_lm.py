"""`slm export` of a causal language model: one ONNX graph with a KV cache, proven equal to PyTorch.

`slm export` sends here any local Hugging Face causal-LM directory (the `slm train --task lm` output, or a
Llama, Mistral, Phi, Gemma or Qwen2 checkpoint). Read top to bottom: `export_lm(cfg)` loads the model in fp32,
wraps it so the graph takes flat tensors (transformers 5 passes the cache as a `DynamicCache` object, which no
exporter can take as an input) and exports one graph:

    inputs   input_ids (batch, sequence), attention_mask (batch, past_sequence + sequence),
             position_ids (batch, sequence), past_key_values.<layer>.key / .value (batch, kv_heads, past_sequence, head_dim)
    outputs  logits (batch, sequence, vocab), present.<layer>.key / .value (batch, kv_heads, past_sequence + sequence, head_dim)

The same graph serves the prompt (past length 0) and each one-token step (the presents fed back as the next
pasts), so a new token costs one step, not a re-run of the whole text. The names are optimum's / onnxruntime-genai's.

A small Llama decoder (what `slm train --task lm` writes, and plain Llama checkpoints under SMALL_MODEL
parameters: see `fused_refusal`) is written
directly from its weights as ONNX Runtime's fused decoder ops (`write_fused_graph`: RotaryEmbedding,
MultiHeadAttention with the past, SimplifiedLayerNormalization), with the same inputs and outputs: about 80 nodes
where the traced graph runs 270, which makes a small model's one-token step 1.4x faster. Every other model is traced.

The traced graph uses `dynamo=False`: the dynamo exporter takes ~30 s per tiny model here against ~1 s, and the
transformers code paths the tracer fixes (prompt vs one-token step, padding or not) are each checked below, so a
graph that took the wrong branch cannot pass. The tracer computes every reshape target from other tensors' shapes,
node by node, on every call; for models under SMALL_MODEL parameters `fold_shape_arithmetic` replaces what
symbolic shape inference proves with constants (a quarter of the nodes ONNX Runtime runs per step, for the
default 4-layer model), and the parity checks below run on the folded graph. Parity, through ONNX Runtime on the probe prompts:

- the prompts as one left-padded batch (past length 0): logits at every real position;
- each prompt then 16 cached steps, fed PyTorch's greedy tokens: logits at every step, argmax identical;
- the written directory through `slmkit.runtime.LMGenerator` (its tokenizer.json, manifest and graph, as a user
  loads it): greedy continuations identical to PyTorch's, token for token.

The export fails, writing nothing, unless every max |logit difference| is within `cfg.tolerance`. The manifest
records task "lm", the cache layout (layers, kv heads, head dim, names), the context length and bos/eos ids.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from slmkit import artifacts
from slmkit.config import ExportConfig, save_config
from slmkit.errors import UserError

PROBE_PROMPTS = 8  # at most this many probe prompts (cfg.probe_size caps it lower)
PROBE_STEPS = 16  # cached steps (and greedy tokens) checked per prompt
MAX_PROMPT_TOKENS = 32
SMALL_MODEL = 100_000_000  # parameters: below, the parity probe runs PyTorch on one thread (see _threads)
LM_FILES = ("generation_config.json", "chat_template.jinja")  # beside artifacts.SERVING_FILES: what generation reads
PAST_INPUT = "past_key_values.{layer}.{kind}"  # kind: key | value
PRESENT_OUTPUT = "present.{layer}.{kind}"
# when neither --probe-data nor the model's training corpus is at hand (a checkpoint brought from elsewhere)
BUILTIN_PROBE = (
    "The quick brown fox jumps over the lazy dog.",
    "Please help me with my order, it has not arrived yet.",
    "In 1969 the first humans walked on the Moon.",
    "def add(a, b):\n    return a + b",
    "My password is not working again today",
    "Thanks for your help, have a nice day!",
    "Le café est fermé le dimanche.",
    "Where can I find the refund form?",
)


def is_causal_lm_dir(directory: Path) -> bool:
    """Whether `directory` holds a causal LM (its config.yaml says task lm, or config.json a *ForCausalLM), read
    cheaply: `slm export` picks the LM path on it."""
    if artifacts.model_task(directory) == "lm":
        return True
    try:
        config = artifacts.read_json(directory / artifacts.HF_CONFIG)
    except (OSError, ValueError):
        return False
    return any(isinstance(a, str) and a.endswith("ForCausalLM") for a in config.get("architectures") or [])


def cache_layout(config) -> dict:
    """Layers, KV heads and head dim of the model's cache, and the graph's names for it."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return {
        "layers": int(text.num_hidden_layers),
        "kv_heads": int(getattr(text, "num_key_value_heads", None) or heads),
        "head_dim": int(head_dim),
        "layout": "batch, kv_heads, sequence, head_dim",
        "past": PAST_INPUT,
        "present": PRESENT_OUTPUT,
    }


def cache_names(layers: int, template: str) -> list[str]:
    return [template.format(layer=i, kind=kind) for i in range(layers) for kind in ("key", "value")]


def cached_module(model, layers: int, position_ids: bool):
    """`model` as a module over flat tensors: (input_ids, attention_mask[, position_ids], key0, value0, key1, ...)
    -> (logits, present key0, value0, ...). The pasts become the `DynamicCache` the model takes."""
    import torch
    from transformers import DynamicCache

    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    class WithCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, *rest):
            positions, past = (rest[0], rest[1:]) if position_ids else (None, rest)
            cache = DynamicCache(config=self.model.config)
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)  # (batch, kv_heads, past, head_dim) each
            extra = {"position_ids": positions} if position_ids else {}
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **{cache_arg: cache}, **extra)
            present = getattr(out, "cache", None) or out.past_key_values
            tensors = [t for i in range(layers) for t in (present.layers[i].keys, present.layers[i].values)]
            return (out.logits, *tensors)

    return WithCache().eval()


def export_lm(cfg: ExportConfig, overwrite: bool = False):
    """Export the causal LM `cfg.model` to ONNX with a KV cache in `cfg.out` and prove parity (module doc)."""
    import torch
    import transformers
    from tokenizers import Tokenizer

    from slmkit.export import ExportResult, _quiet
    from slmkit.lm import context_length, load_causal_lm

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars: the CLI prints its own lines
    cfg.validate()
    model_dir, out = Path(cfg.model), Path(cfg.out)
    artifacts.check_output(out, overwrite)
    if (model_dir / artifacts.ONNX_MODEL).is_file() and not list(model_dir.glob("*.safetensors")):
        raise UserError(f"{model_dir}: an exported ONNX model, not a PyTorch one: pass the causal-LM directory it was exported from")
    if model_dir.is_dir() and not (model_dir / artifacts.TOKENIZER).is_file():
        raise UserError(f"{model_dir}: no tokenizer.json: the runtime and the browser read the tokenizer from it; save the tokenizer with save_pretrained (a fast tokenizer)")
    model, _ = load_causal_lm(model_dir)
    model = model.float()  # the graph is fp32 (a bf16 checkpoint is upcast); slm quantize makes it int8
    layout = cache_layout(model.config)
    layers = layout["layers"]
    with_positions = "position_ids" in inspect.signature(model.forward).parameters
    inputs = ["input_ids", "attention_mask"] + (["position_ids"] if with_positions else []) + cache_names(layers, PAST_INPUT)
    outputs = ["logits"] + cache_names(layers, PRESENT_OUTPUT)
    context = context_length(model.config) or 2048
    window = getattr(model.config, "sliding_window", None)
    if isinstance(window, int) and 0 < window < context and getattr(model.config, "use_sliding_window", True):
        context = window - 1  # a sliding layer keeps the last window - 1 tokens: within them, no token is dropped
    tokenizer = Tokenizer.from_file(str(model_dir / artifacts.TOKENIZER))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    texts, source = probe_texts(cfg, model_dir)
    prompts = probe_prompts(tokenizer, texts, min(cfg.probe_size, PROBE_PROMPTS), min(MAX_PROMPT_TOKENS, context - PROBE_STEPS - 1))
    special = special_tokens(model_dir, model.config)

    with artifacts.staged(out, overwrite) as staging:
        started = time.perf_counter()
        onnx_path = staging / artifacts.ONNX_MODEL
        example = trace_inputs(layout, with_positions)
        dims = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"}, "logits": {0: "batch", 1: "sequence"}}
        if with_positions:
            dims["position_ids"] = {0: "batch", 1: "sequence"}
        dims.update({name: {0: "batch", 2: "past_sequence"} for name in inputs if name.startswith("past_")})
        dims.update({name: {0: "batch", 2: "total_sequence"} for name in outputs if name.startswith("present")})
        refusal = fused_refusal(model) if with_positions else "no position_ids input"
        if refusal is None:
            exporter, folded = "fused", 0
            nodes = write_fused_graph(model, onnx_path, cfg.opset, max(context, context_length(model.config) or 0))
        else:
            exporter = "torchscript"
            with torch.no_grad(), _quiet():
                torch.onnx.export(
                    cached_module(model, layers, with_positions), example, str(onnx_path), input_names=inputs, output_names=outputs,
                    dynamic_axes=dims, opset_version=cfg.opset, dynamo=False, do_constant_folding=True,
                )
            # a tiny model's cached step is bound by per-node overhead; a large model's graph is left as traced
            folded = fold_shape_arithmetic(onnx_path) if parameter_count(model) < SMALL_MODEL else 0
            nodes = None
        export_seconds = time.perf_counter() - started

        manifest = {
            "format": "slmkit-onnx",
            "task": "lm",
            "task_options": {},
            "labels": [],
            "inputs": inputs,
            "output": "logits",
            "outputs": outputs,
            "cache": layout,
            "position_ids": with_positions,
            "max_length": context,  # the context window: prompt + generated tokens
            "context_length": context,
            "vocab_size": int(model.config.get_text_config(decoder=True).vocab_size),
            **special,
            "opset": cfg.opset,
            "precision": "fp32",
            "exporter": exporter,
            "architecture": (model.config.architectures or [type(model).__name__])[0],
            "model_type": model.config.model_type,
            "source": str(model_dir.resolve()),
            "torch": torch.__version__,
        }
        artifacts.copy_serving_files(model_dir, staging)
        for name in LM_FILES:
            if (model_dir / name).is_file():
                (staging / name).write_bytes((model_dir / name).read_bytes())
        artifacts.write_json(staging / artifacts.MANIFEST, manifest)
        with _threads(1 if parameter_count(model) < SMALL_MODEL else None):
            parity = check_lm_parity(model, staging, prompts, cfg.tolerance, model_dir.name)
        metrics = {
            "parity": parity,
            "probe": {"prompts": len(prompts), "steps": PROBE_STEPS, "source": str(source), "prompt_tokens": [len(p) for p in prompts]},
            "export_seconds": export_seconds,
            "exporter": {"name": exporter, "nodes": nodes} if refusal is None else {"name": exporter, "not_fused": refusal},
            "shape_nodes_folded": folded,
            "onnx_bytes": onnx_path.stat().st_size,
            "pytorch_bytes": sum(p.stat().st_size for p in model_dir.glob("*.safetensors")),
            "parameters": parameter_count(model),
        }
        save_config(replace(cfg, model=str(model_dir.resolve())), staging / artifacts.CONFIG)
        artifacts.write_json(staging / artifacts.METRICS, metrics)
    return ExportResult(out, metrics)


FUSED_ROPE_TYPES = ("default", "linear", "llama3")  # rotary variants with fixed frequencies: one cos/sin table


def fused_refusal(model) -> str | None:
    """None when `write_fused_graph` can write `model` (a Llama decoder under SMALL_MODEL parameters: RMSNorm,
    rotary attention with grouped or per-head keys and values, SiLU-gated MLP, bias-free projections); otherwise
    why the traced graph is used."""
    import torch

    config = model.config
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    checks = (
        (type(model).__name__ == "LlamaForCausalLM", f"{type(model).__name__} is not LlamaForCausalLM"),
        # a large model's step is bound by its matrix products, not by node overhead; its weights also need the
        # external-data files the exporter writes past protobuf's 2 GB
        (parameter_count(model) < SMALL_MODEL, f"over {SMALL_MODEL // 10**6}M parameters"),
        (config.num_attention_heads % (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) == 0, "key/value heads do not divide the heads"),
        (not getattr(config, "attention_bias", False) and not getattr(config, "mlp_bias", False), "biased projections"),
        (getattr(config, "hidden_act", None) == "silu", f"activation {getattr(config, 'hidden_act', None)}"),
        (getattr(config, "pretraining_tp", 1) == 1, "pretraining_tp > 1"),
        (rope in FUSED_ROPE_TYPES, f"rotary type {rope}"),
    )
    for ok, why in checks:
        if not ok:
            return why
    for layer in model.model.layers:
        for linear in (*(getattr(layer.self_attn, f"{n}_proj") for n in "qkvo"), *(getattr(layer.mlp, f"{n}_proj") for n in ("gate", "up", "down"))):
            if type(linear) is not torch.nn.Linear or linear.bias is not None:
                return f"a projection is {type(linear).__name__}, not a plain Linear"
    return None


def write_fused_graph(model, path: Path, opset: int, positions: int) -> int:
    """Write `model` (see `fused_refusal`) as ONNX Runtime's fused decoder ops, with the traced graph's inputs and
    outputs, and return its node count.

    Each layer is SimplifiedLayerNormalization, one MatMul for the query, key and value projections, RotaryEmbedding
    on the queries and keys, MultiHeadAttention (which appends the step's keys and values to the past and returns
    the presents; with grouped heads the graph appends them, and each query head reads its group's head through a
    Gather), the output MatMul, the residual Add, then the MLP: one MatMul for gate and up, SiLU (ONNX
    Runtime fuses x·sigmoid(x)), Mul, the down MatMul and the residual Add. One additive attention bias, built
    once per call from attention_mask and the past length, makes attention causal and masks padding: key j is
    visible to query i when j ≤ past + i and attention_mask[j] = 1, as in PyTorch. About 80 nodes for the
    default 4-layer model where the traced graph has 270 after ONNX Runtime's own fusions: a one-token step of a
    small model is bound by per-node overhead. The rotary table covers `positions` positions."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    config = model.config
    weights = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    heads, layers = config.num_attention_heads, config.num_hidden_layers
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    eps = float(config.rms_norm_eps)
    rotary = model.model.rotary_emb
    angles = np.outer(np.arange(positions, dtype=np.float32), rotary.inv_freq.detach().float().numpy()).astype(np.float32)
    scaling = float(getattr(rotary, "attention_scaling", 1.0))
    initializers, nodes, ints, bools = [], [], set(), set()

    def const(name: str, value) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(kind: str, inputs: list[str], outputs: list[str], domain: str = "", **attributes):
        nodes.append(helper.make_node(kind, inputs, outputs, domain=domain, **attributes))
        return outputs[0] if len(outputs) == 1 else outputs

    const("cos_cache", np.cos(angles) * scaling)
    const("sin_cache", np.sin(angles) * scaling)
    const("zero", np.array(0, np.int64))
    const("one", np.array(1, np.int64))
    const("axis_last", np.array([-1], np.int64))
    const("axes_1_2", np.array([1, 2], np.int64))
    const("visible", np.array(0, np.float32))
    const("hidden", np.array(np.finfo(np.float32).min, np.float32))
    # the attention bias (batch, 1, sequence, total): 0 where key j is visible to query i, the float minimum elsewhere
    op("Shape", ["input_ids"], ["ids_shape"])
    op("Gather", ["ids_shape", "one"], ["sequence"], axis=0)
    op("Shape", ["attention_mask"], ["mask_shape"])
    op("Gather", ["mask_shape", "one"], ["total"], axis=0)
    op("Sub", ["total", "sequence"], ["past"])
    op("Range", ["past", "total", "one"], ["query_positions"])
    op("Unsqueeze", ["query_positions", "axis_last"], ["query_column"])
    op("Range", ["zero", "total", "one"], ["key_positions"])
    op("LessOrEqual", ["key_positions", "query_column"], ["causal"])
    op("Cast", ["attention_mask"], ["present_keys"], to=TensorProto.BOOL)
    op("Unsqueeze", ["present_keys", "axes_1_2"], ["key_mask"])
    op("And", ["causal", "key_mask"], ["allowed"])
    op("Where", ["allowed", "visible", "hidden"], ["attention_bias"])
    ints.update({"ids_shape", "sequence", "mask_shape", "total", "past", "query_positions", "query_column", "key_positions"})
    bools.update({"causal", "present_keys", "key_mask", "allowed"})

    const("qkv_split", np.array([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], np.int64))
    const("kv_heads_shape", np.array([0, 0, kv_heads, head_dim], np.int64))
    const("query_head_kv", np.arange(heads, dtype=np.int64) // (heads // kv_heads))  # query head h reads key/value head h // groups
    const("mlp_split", np.array([config.intermediate_size] * 2, np.int64))
    x = op("Gather", [const("embed_tokens", weights["model.embed_tokens.weight"]), "input_ids"], ["embedded"])
    for i in range(layers):
        w = f"model.layers.{i}."
        qkv_weight = np.concatenate([weights[w + f"self_attn.{n}_proj.weight"].T for n in "qkv"], axis=1)
        gate_up = np.concatenate([weights[w + "mlp.gate_proj.weight"].T, weights[w + "mlp.up_proj.weight"].T], axis=1)
        h = op("SimplifiedLayerNormalization", [x, const(f"norm_{i}", weights[w + "input_layernorm.weight"])], [f"attn_in_{i}"], axis=-1, epsilon=eps)
        q, k, v = op("Split", [op("MatMul", [h, const(f"qkv_{i}", qkv_weight)], [f"qkv_out_{i}"]), "qkv_split"], [f"q_{i}", f"k_{i}", f"v_{i}"], axis=-1)
        q, k = (op("RotaryEmbedding", [t, "position_ids", "cos_cache", "sin_cache"], [f"{t}_rot"], domain="com.microsoft", num_heads=n, interleaved=0)
                for t, n in ((q, heads), (k, kv_heads)))
        past_k, past_v = PAST_INPUT.format(layer=i, kind="key"), PAST_INPUT.format(layer=i, kind="value")
        present_k, present_v = PRESENT_OUTPUT.format(layer=i, kind="key"), PRESENT_OUTPUT.format(layer=i, kind="value")
        if kv_heads == heads:  # the attention op appends the step to the past itself
            attended = op("MultiHeadAttention", [q, k, v, "", "", "attention_bias", past_k, past_v], [f"attended_{i}", present_k, present_v],
                          domain="com.microsoft", num_heads=heads, scale=float(head_dim) ** -0.5)[0]
        else:  # grouped: the presents keep kv_heads heads; each query head attends to its group's key/value head
            for t, past, present in ((k, past_k, present_k), (v, past_v, present_v)):
                heads_first = op("Transpose", [op("Reshape", [t, "kv_heads_shape"], [f"{t}_heads"])], [f"{t}_bnsh"], perm=[0, 2, 1, 3])
                op("Concat", [past, heads_first], [present], axis=2)
                op("Gather", [present, "query_head_kv"], [f"{present}_per_query_head"], axis=1)
            attended = op("MultiHeadAttention", [q, f"{present_k}_per_query_head", f"{present_v}_per_query_head", "", "", "attention_bias"],
                          [f"attended_{i}"], domain="com.microsoft", num_heads=heads, scale=float(head_dim) ** -0.5)
        x = op("Add", [x, op("MatMul", [attended, const(f"o_{i}", weights[w + "self_attn.o_proj.weight"].T)], [f"attn_out_{i}"])], [f"resid_attn_{i}"])
        h = op("SimplifiedLayerNormalization", [x, const(f"post_norm_{i}", weights[w + "post_attention_layernorm.weight"])], [f"mlp_in_{i}"], axis=-1, epsilon=eps)
        gate, up = op("Split", [op("MatMul", [h, const(f"gate_up_{i}", gate_up)], [f"gate_up_out_{i}"]), "mlp_split"], [f"gate_{i}", f"up_{i}"], axis=-1)
        silu = op("Mul", [gate, op("Sigmoid", [gate], [f"sigmoid_{i}"])], [f"silu_{i}"])
        down = op("MatMul", [op("Mul", [silu, up], [f"gated_{i}"]), const(f"down_{i}", weights[w + "mlp.down_proj.weight"].T)], [f"mlp_out_{i}"])
        x = op("Add", [x, down], [f"resid_mlp_{i}"])
    h = op("SimplifiedLayerNormalization", [x, const("final_norm", weights["model.norm.weight"])], ["final"], axis=-1, epsilon=eps)
    op("MatMul", [h, const("lm_head", weights.get("lm_head.weight", weights["model.embed_tokens.weight"]).T)], ["logits"])

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", int(config.vocab_size)])]
    for name in cache_names(layers, PAST_INPUT):
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", kv_heads, "past_sequence", head_dim]))
    for name in cache_names(layers, PRESENT_OUTPUT):
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", kv_heads, "total_sequence", head_dim]))
    # every intermediate's element type, stated: ONNX's shape inference does not know the com.microsoft ops, and
    # slm quantize's int8 tools need the types of what flows out of them
    io = {t.name for t in inputs + outputs}
    types = [helper.make_tensor_value_info(o, TensorProto.INT64 if o in ints else TensorProto.BOOL if o in bools else TensorProto.FLOAT, None)
             for n in nodes for o in n.output if o not in io]
    graph = helper.make_graph(nodes, "slmkit_decoder", inputs, outputs, initializers, value_info=types)
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    # the oldest IR version the opsets allow: the newest onnx writes one that older runtimes (the browser's) refuse
    ir_version = helper.find_min_ir_version_for([opsets[0]], ignore_unknown=True)
    onnx.save(helper.make_model(graph, opset_imports=opsets, producer_name="slmkit", ir_version=ir_version), str(path))
    return len(nodes)


def fold_shape_arithmetic(path: Path) -> int:
    """Replace the tracer's shape arithmetic with constants where symbolic shape inference proves the values.

    The traced graph computes every Reshape target from other tensors' shapes (Shape -> Gather -> Unsqueeze ->
    Concat), node by node, on each call. Where inference shows a dimension to be a fixed number, Gather(Shape(x), i)
    becomes that number; where a Reshape target part is a dimension of another tensor equal to the reshaped
    input's own dimension at the same place, it becomes 0 (ONNX Reshape: keep the input's dimension). The shape
    arithmetic that then feeds nothing is dropped. Returns the number of nodes removed (0 where inference fails)."""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(path))
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in model.graph.node for a in n.attribute):
        return 0  # a subgraph may read any outer value: the dead-node sweep below could not see it
    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # an operator the inference does not know: the graph stays as traced (still correct)
        return 0
    dims = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def attr(node, name, default=None):
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)

    def shape_dim(name):
        """(tensor, index) when `name` is Gather(Shape(tensor), scalar index)."""
        node = producer.get(name)
        if node is None or node.op_type != "Gather" or attr(node, "axis", 0) != 0:
            return None
        shape = producer.get(node.input[0])
        index = constants.get(node.input[1])
        if shape is None or shape.op_type != "Shape" or index is None or index.ndim != 0 or attr(shape, "start") or attr(shape, "end") is not None:
            return None
        return shape.input[0], int(index)

    def known(tensor, i):
        d = dims.get(tensor)
        return d[i] if d is not None and -len(d) <= i < len(d) else None

    # 1. Gather(Shape(x), i) with a fixed dimension: a constant (what follows folds when the session loads)
    renamed = {}
    for node in graph.node:
        if node.op_type == "Gather" and (src := shape_dim(node.output[0])) and isinstance(known(*src), int) and known(*src) > 0:
            renamed[node.output[0]] = name = node.output[0] + "_folded"
            constants[name] = np.array(known(*src), dtype=np.int64)
            graph.initializer.append(numpy_helper.from_array(constants[name], name))
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]

    # 2. Reshape targets: Concat of constants and Unsqueeze(Gather(Shape(x), i)) parts
    for node in graph.node:
        if node.op_type != "Reshape" or attr(node, "allowzero", 0):
            continue
        concat = producer.get(node.input[1])
        data = dims.get(node.input[0])
        if concat is None or concat.op_type != "Concat" or data is None:
            continue
        target, ok = [], True
        for part in concat.input:
            if part in constants:
                target.extend(int(v) for v in constants[part].reshape(-1))
                continue
            unsq = producer.get(part)
            src = shape_dim(unsq.input[0]) if unsq is not None and unsq.op_type == "Unsqueeze" else None
            value = known(*src) if src else None
            p = len(target)
            if value is not None and p < len(data) and data[p] == value:
                target.append(0)
            else:
                ok = False
                break
        if ok and sum(v == -1 for v in target) <= 1:
            name = node.output[0] + "_target"
            graph.initializer.append(numpy_helper.from_array(np.array(target, dtype=np.int64), name))
            node.input[1] = name

    # 3. drop what feeds nothing
    before = len(graph.node)
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.save(model, str(path))
    return before - len(graph.node)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def _threads(n: int | None):
    """PyTorch on `n` intra-op threads for the block. The probe's one-token steps of a small model are
    overhead-bound: on a busy 2-vCPU machine two spinning threads made each step 18x slower (27 vs 1.5 ms)."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def special_tokens(model_dir: Path, config) -> dict:
    """bos_id, eos_ids (a model may end on several) and pad_id, from the model's configs and tokenizer config."""
    from slmkit.generate import special_ids

    ids = special_ids(model_dir)
    pad = getattr(config, "pad_token_id", None)
    tok_config = model_dir / artifacts.TOKENIZER_CONFIG
    if not ids["eos_ids"] and tok_config.is_file():  # only the tokenizer knows it: its eos token's id
        eos = artifacts.read_json(tok_config).get("eos_token")
        vocab = json.loads((model_dir / artifacts.TOKENIZER).read_text(encoding="utf-8"))
        found = [t["id"] for t in vocab.get("added_tokens", []) if t.get("content") == eos]
        ids["eos_ids"] = tuple(found[:1])
    return {"bos_id": ids["bos_id"], "eos_ids": list(ids["eos_ids"]), "pad_id": int(pad) if isinstance(pad, int) else 0}


def lm_texts(path: str | None, model_dir: Path, split: str, flag: str, text_col: str = "text") -> tuple[list[str], str]:
    """Documents of an LM: `path` (a .txt or .jsonl corpus) when given, else the model's recorded `split` (its
    training corpus, or the held-out documents `slm train --task lm` split off), else the built-in sentences (a
    checkpoint brought from elsewhere records no data). Returns them and where they came from."""
    from slmkit.lineage import recorded_examples
    from slmkit.tasks.lm import read_documents

    if path:
        return read_documents(Path(path), text_col), str(path)
    try:
        docs, source = recorded_examples(model_dir, split, flag)
        return list(docs), str(source) + ("" if split == "train" else f" ({split} split)")
    except UserError:
        return list(BUILTIN_PROBE), "built-in probe sentences"


def probe_texts(cfg: ExportConfig, model_dir: Path) -> tuple[list[str], str]:
    """Texts to draw the probe prompts from: --probe-data, else the model's training corpus, else built-in ones."""
    return lm_texts(cfg.probe_data, model_dir, "train", "--probe-data", cfg.text_col)


def probe_prompts(tokenizer, texts: list[str], n: int, max_tokens: int) -> list[list[int]]:
    """`n` prompts: the first half of the tokens of seeded-sampled texts (1 to `max_tokens` tokens each)."""
    rng = np.random.default_rng(0)
    texts = [t for t in texts if t.strip()] or list(BUILTIN_PROBE)
    chosen = [texts[i] for i in sorted(rng.choice(len(texts), min(n, len(texts)), replace=False))]
    prompts = []
    for text in chosen:
        ids = tokenizer.encode(text).ids
        prompts.append(ids[: max(1, min(max_tokens, (len(ids) + 1) // 2))])
    return prompts


def trace_inputs(layout: dict, with_positions: bool) -> tuple:
    """The example the graph is traced on: 2 rows, 4 new tokens after a 3-token past (a prompt and a cached
    step are both checked afterwards)."""
    import torch

    batch, past, new = 2, 3, 4
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 50, (batch, new), generator=generator)
    mask = torch.ones(batch, past + new, dtype=torch.long)
    positions = (torch.arange(past, past + new).unsqueeze(0).expand(batch, -1).contiguous(),) if with_positions else ()
    shape = (batch, layout["kv_heads"], past, layout["head_dim"])
    pasts = tuple(torch.randn(shape, generator=generator) for _ in range(2 * layout["layers"]))
    return (ids, mask, *positions, *pasts)


def _left_padded(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(map(len, prompts))
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = p
        mask[row, width - len(p) :] = 1
    return ids, mask


def check_lm_parity(model, directory: Path, prompts: list[list[int]], tolerance: float, name: str = "") -> dict:
    """The three checks of the module doc over the graph in `directory`; fails (UserError) unless all hold."""
    import torch

    from slmkit.generate import GenerationConfig, generate_ids
    from slmkit.lm import TorchStepper
    from slmkit.runtime import LMGenerator

    generator = LMGenerator(directory)
    session, manifest = generator.stepper.session, generator.manifest
    layout = manifest["cache"]

    # 1. the prompts as one left-padded batch, no past
    ids, mask = _left_padded(prompts, manifest["pad_id"])
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    feed = {"input_ids": ids, "attention_mask": mask}
    if manifest["position_ids"]:
        feed["position_ids"] = positions
    empty = np.zeros((len(prompts), layout["kv_heads"], 0, layout["head_dim"]), dtype=np.float32)
    feed.update({name: empty for name in cache_names(layout["layers"], PAST_INPUT)})
    got = session.run(["logits"], feed)[0]
    with torch.no_grad():
        extra = {"position_ids": torch.from_numpy(positions)} if manifest["position_ids"] else {}
        want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), **extra).logits.float().numpy()
    prompt_diff = float(np.abs(got - want)[mask == 1].max())

    # 2. cached steps, teacher-forced with PyTorch's greedy tokens; 3. greedy continuations through the runtime
    greedy = GenerationConfig(max_new_tokens=PROBE_STEPS, temperature=0.0)
    step_diff, same_argmax, same_greedy, agreed = 0.0, True, True, 0
    for prompt in prompts:
        torch_stepper = TorchStepper(model)
        reference = list(generate_ids(torch_stepper, prompt, greedy))  # no eos: all 16 tokens
        onnx_stepper = generator.stepper
        torch_stepper = TorchStepper(model)
        pairs = [(onnx_stepper.start(prompt), torch_stepper.start(prompt))]
        for token in reference[:-1]:
            pairs.append((onnx_stepper.step(token), torch_stepper.step(token)))
        step_diff = max(step_diff, *(float(np.abs(a - b).max()) for a, b in pairs))
        same_argmax &= all(int(a.argmax()) == int(b.argmax()) for a, b in pairs)
        continuation = generator.generate_ids(prompt, greedy, stop_at_eos=False)
        same_greedy &= continuation == reference
        agreed += sum(1 for _ in _common_prefix(continuation, reference))
    ok = prompt_diff <= tolerance and step_diff <= tolerance and same_argmax and same_greedy
    if not ok:
        raise UserError(
            f"{name or directory.name}: LM parity check failed: max |logit difference| {prompt_diff:.2e} on the prompts and "
            f"{step_diff:.2e} on cached steps (allowed {tolerance:.0e}), greedy continuations "
            f"{'identical' if same_greedy else 'differ'}: nothing was written; report this model's architecture"
        )
    return {
        "prompt_max_abs_logit_diff": prompt_diff,
        "step_max_abs_logit_diff": step_diff,
        "max_abs_logit_diff": max(prompt_diff, step_diff),
        "tolerance": tolerance,
        "argmax_identical": same_argmax,
        "greedy_identical": same_greedy,
        "greedy_tokens_compared": len(prompts) * PROBE_STEPS,
        "greedy_tokens_agreeing": agreed,
    }


def _common_prefix(a: list[int], b: list[int]):
    for x, y in zip(a, b):
        if x != y:
            return
        yield x
