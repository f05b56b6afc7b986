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

The graph is traced (`dynamo=False`): the dynamo exporter takes ~30 s per tiny model here against ~1 s, and the
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
        with torch.no_grad(), _quiet():
            torch.onnx.export(
                cached_module(model, layers, with_positions), example, str(onnx_path), input_names=inputs, output_names=outputs,
                dynamic_axes=dims, opset_version=cfg.opset, dynamo=False, do_constant_folding=True,
            )
        # a tiny model's cached step is bound by per-node overhead; a large model's graph is left as traced
        folded = fold_shape_arithmetic(onnx_path) if parameter_count(model) < SMALL_MODEL else 0
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
            "exporter": "torchscript",
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
            "shape_nodes_folded": folded,
            "onnx_bytes": onnx_path.stat().st_size,
            "pytorch_bytes": sum(p.stat().st_size for p in model_dir.glob("*.safetensors")),
            "parameters": parameter_count(model),
        }
        save_config(replace(cfg, model=str(model_dir.resolve())), staging / artifacts.CONFIG)
        artifacts.write_json(staging / artifacts.METRICS, metrics)
    return ExportResult(out, metrics)


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
