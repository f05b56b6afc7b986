"""The torch-free runtime: serve an exported (and possibly quantized) model with ONNX Runtime and `tokenizers`.

    from slmkit.runtime import Predictor
    predictor = Predictor("runs/x-int8")
    predictor.predict(["where is my parcel?"])   # [Prediction(label=..., score=..., scores={...})]

An exported causal LM (task "lm") is served by `LMGenerator` (text completions, streamed) over `OnnxStepper`
(the KV-cache steps behind slmkit.generate's decode loop); see docs/lm-export.md.

Importing this module imports neither torch nor transformers (a test checks it): a serving process stays near
100 MB. Texts are tokenized together, sorted by length and run in batches padded only to their own longest
member, then returned in input order.

Loading is defensive: the directory must hold an ONNX model and its manifest; pickle files are never read;
an ONNX model whose external-data paths point outside its directory is refused (a crafted model could
otherwise make the runtime read any file on the machine).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slmkit import artifacts
from slmkit.errors import UserError
from slmkit.hardware import fingerprint, int8_speedup_expected


@dataclass
class Prediction:
    text: str
    label: str
    score: float  # probability of `label`
    scores: dict[str, float]  # probability of every label


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def check_onnx_file(path: Path) -> None:
    """Refuse an ONNX model whose tensors live in external files outside its own directory."""
    import mmap

    import onnx

    # Fast path: an external-data reference is a StringStringEntryProto whose key is "location", serialized as
    # the bytes 0A 08 "location". A file without those bytes has no external data; one with them is parsed.
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            if view.find(b"\x0a\x08location") < 0:
                return
    except (OSError, ValueError):
        pass  # empty or unmappable: the parse below reports it
    root = path.parent.resolve()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # a truncated or non-ONNX file
        raise UserError(f"{path}: not a readable ONNX model ({type(e).__name__}): export it again with slm export") from None
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.HasField("t")]
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(root):
            raise UserError(f"{path}: tensor {tensor.name!r} reads external data from {location!r}, outside the model directory: refusing to load it")


def load_manifest(directory: Path) -> dict:
    """The manifest of an exported directory, after the safety checks on its files."""
    if not directory.is_dir():
        raise UserError(f"{directory}: model directory not found: pass the --out directory of slm export or slm quantize")
    artifacts.refuse_pickle(directory, artifacts.ONNX_MODEL)
    missing = [n for n in (artifacts.ONNX_MODEL, artifacts.MANIFEST, artifacts.TOKENIZER) if not (directory / n).is_file()]
    if missing:
        hint = "export it first: slm export --model DIR --out DIR" if (directory / artifacts.WEIGHTS).is_file() else "pass the --out directory of slm export or slm quantize"
        raise UserError(f"{directory}: not an exported model (missing {', '.join(missing)}): {hint}")
    check_onnx_file(directory / artifacts.ONNX_MODEL)
    return artifacts.read_json(directory / artifacts.MANIFEST)


# ONNX Runtime graph fusions the runtime turns off, because the fused kernel is slower than the ops it replaces.
# SkipLayerNormFusion folds a quantized layer's bias and residual Adds and its LayerNorm into one
# SkipLayerNormalization, whose CPU kernel (onnxruntime 1.32) took 396 µs at 32 x 15 x 384 against 64 µs for the
# Add, Add, LayerNormalization it replaces. Without it dynamic int8 MiniLM runs 1.13x faster (1.14x pruned), with
# the same accuracy on banking77 (fp32 graphs are not fused this way). The browser page keeps ORT's defaults.
SLOW_FUSIONS = ("SkipLayerNormFusion",)


def open_session(directory: Path, threads: int | None):
    """An ONNX Runtime CPU session over the directory's model.onnx (`threads` intra-op threads, one inter-op),
    without the `SLOW_FUSIONS`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(directory / artifacts.ONNX_MODEL), options, providers=["CPUExecutionProvider"], disabled_optimizers=list(SLOW_FUSIONS))


def open_tokenizer(directory: Path, manifest: dict):
    """The directory's tokenizer.json, truncating at the model's maximum length and never padding."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / artifacts.TOKENIZER))
    tokenizer.no_padding()
    tokenizer.enable_truncation(int(manifest["max_length"]))
    return tokenizer


def pad_features(features: list[dict], inputs: list[str], pad_id: int) -> dict[str, np.ndarray]:
    """Session inputs for a batch of features, padded to its longest; token types come from the features
    (QA's question/context segments) or are zeros."""
    width = max(len(f["input_ids"]) for f in features)
    batch = {"input_ids": np.full((len(features), width), pad_id, dtype=np.int64), "attention_mask": np.zeros((len(features), width), dtype=np.int64)}
    if "token_type_ids" in inputs:
        batch["token_type_ids"] = np.zeros((len(features), width), dtype=np.int64)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        batch["input_ids"][row, :n] = f["input_ids"]
        batch["attention_mask"][row, :n] = 1
        types = f.get("token_type_ids")  # QA's question/context segments
        if "token_type_ids" in inputs and types is not None:
            batch["token_type_ids"][row, :n] = types
    return batch


class TaskSession:
    """An exported directory of a per-token task (NER, QA): the task's features in, its raw outputs out, in the
    structure the task's `score` and decoders read (see `outputs`)."""

    def __init__(self, directory: str | Path, threads: int | None = None, batch_size: int = 32, data=None):
        from slmkit.tasks import get_task

        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        options = dict(self.manifest.get("task_options", {}))
        if data is not None and self.manifest["task"] == "ner":  # reading settings of a new file
            options.update(scheme=data.scheme, strict=data.strict)
        self.task = get_task(self.manifest["task"], **options)
        self.labels: list[str] = self.manifest["labels"]
        self.inputs: list[str] = self.manifest["inputs"]
        self.outputs_names: list[str] = self.manifest.get("outputs", [self.manifest.get("output", "logits")])
        self.pad_id = int(self.manifest.get("pad_id", 0))
        self.batch_size = batch_size
        self.threads = threads
        self.session = open_session(self.directory, threads)
        self.encoder = open_tokenizer(self.directory, self.manifest)

    def run(self, examples: list) -> tuple[list[dict], list]:
        """The task's features of `examples` and the model's outputs over them."""
        features = self.task.encode(examples, self.encoder, None)
        return features, self.outputs(features)

    def outputs(self, features: list[dict]) -> list:
        """Per feature, in feature order, its unpadded outputs (first axis: the feature's tokens): one array for a
        one-output task (NER's logits), a tuple for several (QA's start and end logits) — what the task's
        `predict_logits` returns for a PyTorch model."""
        named = self.named_outputs(features)
        if len(self.outputs_names) == 1:
            return named[self.outputs_names[0]]
        return list(zip(*(named[name] for name in self.outputs_names)))

    def named_outputs(self, features: list[dict]) -> dict[str, list[np.ndarray]]:
        """{output name: one unpadded array per feature}."""
        result: dict[str, list] = {name: [None] * len(features) for name in self.outputs_names}
        lengths = np.fromiter((len(f["input_ids"]) for f in features), dtype=np.int64, count=len(features))
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            values = self.session.run(self.outputs_names, pad_features([features[i] for i in rows], self.inputs, self.pad_id))
            for name, array in zip(self.outputs_names, values):
                for j, i in enumerate(rows):
                    result[name][i] = array[j, : lengths[i]]
        return result


class Predictor:
    """Labels and probabilities from an exported model directory, with ONNX Runtime on the CPU."""

    def __init__(self, directory: str | Path, threads: int | None = None, batch_size: int = 32):
        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        self.labels: list[str] = self.manifest["labels"]
        self.inputs: list[str] = self.manifest["inputs"]
        self.batch_size = batch_size
        self.threads = threads
        self.session = open_session(self.directory, threads)
        self.tokenizer = open_tokenizer(self.directory, self.manifest)
        self.pad_id = int(self.manifest.get("pad_id", 0))
        self.output = self.manifest.get("output", "logits")

    def logits(self, texts: list[str]) -> np.ndarray:
        """Raw logits (n_texts, n_labels) in input order."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        ids = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        lengths = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(ids), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self.session.run([self.output], self.feed([ids[i] for i in rows], int(lengths[rows].max())))[0]
        return out

    def feed(self, ids: list[list[int]], width: int) -> dict[str, np.ndarray]:
        """The session inputs of one batch, padded to `width`."""
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            batch["token_type_ids"] = np.zeros_like(input_ids)
        return batch

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities (n_texts, n_labels) in input order; columns follow `self.labels`."""
        return softmax(self.logits(texts))

    def predict(self, texts: list[str]) -> list[Prediction]:
        """One `Prediction` per text, in input order."""
        probs = self.predict_proba(texts)
        return [
            Prediction(text, self.labels[int(row.argmax())], float(row.max()), dict(zip(self.labels, map(float, row))))
            for text, row in zip(texts, probs)
        ]

    def fingerprint(self) -> dict:
        """The hardware and runtime this predictor runs on, and whether int8 has native instructions here."""
        info = fingerprint(self.threads or self.session.get_session_options().intra_op_num_threads or None)
        info["precision"] = self.manifest.get("precision", "fp32")
        if info["precision"] == "int8" and not int8_speedup_expected():
            info["note"] = "this CPU has no VNNI/AMX int8 instructions: int8 may be no faster than fp32 here"
        return info


# ------------------------------------------------------------------------------------------ causal LMs


def load_lm_manifest(directory: Path) -> dict:
    """The manifest of an exported causal LM (`slm export` of a causal-LM directory), refusing anything else."""
    manifest = load_manifest(directory)
    if manifest.get("task") != "lm" or "cache" not in manifest:
        raise UserError(f"{directory}: a {manifest.get('task', 'classification')} model, not an exported causal LM: pass the slm export output of a causal-LM directory")
    return manifest


class OnnxStepper:
    """An exported causal LM behind `slmkit.generate` (its `Stepper`), batch 1, on ONNX Runtime.

    `start` runs the prompt with an empty past; `step` feeds one token with the previous call's present
    key/values as its past, kept as numpy arrays between calls (the graph concatenates the new token's keys
    and values onto them). `cache=False` re-runs the whole sequence every step instead: the same logits, what
    the cache saves.

    One intra-op thread by default: a small model's one-token step is overhead-bound, and more threads only
    spin (on a shared 2-vCPU machine they made steps many times slower); pass `threads` for a large model."""

    def __init__(self, directory: str | Path, threads: int | None = 1, cache: bool = True, manifest: dict | None = None):
        self.directory = Path(directory)
        self.manifest = manifest or load_lm_manifest(self.directory)
        self.session = open_session(self.directory, threads)
        layout = self.manifest["cache"]
        self.layers, self.kv_heads, self.head_dim = layout["layers"], layout["kv_heads"], layout["head_dim"]
        self.past_names = [layout["past"].format(layer=i, kind=k) for i in range(self.layers) for k in ("key", "value")]
        self.present_names = [layout["present"].format(layer=i, kind=k) for i in range(self.layers) for k in ("key", "value")]
        self.outputs = ["logits"] + self.present_names
        self.positions = bool(self.manifest.get("position_ids", True))
        self.context_length = int(self.manifest["context_length"])
        self.cache = cache
        self._ones = np.ones((1, self.context_length), dtype=np.int64)  # attention masks are views of it
        self._arange = np.arange(self.context_length, dtype=np.int64)[None, :]
        self._empty = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        self._past: list[np.ndarray] = []
        self._ids: list[int] = []

    @property
    def length(self) -> int:
        """Tokens seen since `start` (prompt and steps)."""
        return len(self._ids)

    def fork(self) -> "OnnxStepper":
        """A new stepper over the same loaded session (ONNX Runtime sessions run concurrently), with its own cache:
        one per sequence in flight, without loading the model again."""
        other = copy.copy(self)
        other._past, other._ids = [], []
        return other

    def snapshot(self) -> tuple:
        """The sequence so far, to `restore` later (the arrays are replaced by each step, never changed in place)."""
        return list(self._past), list(self._ids)

    def restore(self, state: tuple) -> None:
        self._past, self._ids = list(state[0]), list(state[1])

    def _run(self, new_ids: list[int], past: list[np.ndarray], past_length: int) -> np.ndarray:
        total = past_length + len(new_ids)
        if total > self.context_length:
            raise UserError(f"{total} tokens exceed the model's context window of {self.context_length}: shorten the prompt or generate fewer tokens")
        feed = {"input_ids": np.array([new_ids], dtype=np.int64), "attention_mask": self._ones[:, :total]}
        if self.positions:
            feed["position_ids"] = self._arange[:, past_length:total]
        feed.update(zip(self.past_names, past))
        result = self.session.run(self.outputs, feed)
        self._past = result[1:]  # (1, kv_heads, total, head_dim) each
        return result[0][0, -1]  # (vocab,) float32

    def start(self, prompt_ids: list[int]) -> np.ndarray:
        self._ids = [int(t) for t in prompt_ids]
        if not self._ids:
            raise UserError("empty prompt: give at least one token")
        return self._run(self._ids, [self._empty] * len(self.past_names), 0)

    def step(self, token_id: int) -> np.ndarray:
        if not self._ids:
            raise RuntimeError("OnnxStepper.step before start")
        self._ids.append(int(token_id))
        if not self.cache:
            return self._run(self._ids, [self._empty] * len(self.past_names), 0)
        return self._run([int(token_id)], self._past, len(self._ids) - 1)

    def sequence_logits(self, ids: list[int]) -> np.ndarray:
        """The logits (len(ids), vocab) at every position of one sequence, no past: for perplexity."""
        if len(ids) > self.context_length:
            raise UserError(f"{len(ids)} tokens exceed the model's context window of {self.context_length}")
        feed = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": self._ones[:, : len(ids)]}
        if self.positions:
            feed["position_ids"] = self._arange[:, : len(ids)]
        feed.update({name: self._empty for name in self.past_names})
        return self.session.run(["logits"], feed)[0][0]


class LMGenerator:
    """Text completions from an exported causal LM, torch-free: ONNX Runtime with the KV cache, `tokenizers`,
    and slmkit's one decode loop (`slmkit.generate`: greedy, sampling, beam search, stop strings).

        from slmkit.runtime import LMGenerator
        from slmkit.generate import GenerationConfig
        lm = LMGenerator("runs/lm-onnx")
        lm.complete("my parcel has", GenerationConfig(max_new_tokens=8, temperature=0))
        for piece in lm.stream("my parcel has", GenerationConfig(max_new_tokens=8)): print(piece, end="")

    A prompt longer than the context window (less room for the new tokens) is cut from the left with a warning,
    or refused with `strict=True`."""

    def __init__(self, directory: str | Path, threads: int | None = 1, cache: bool = True):
        from tokenizers import Tokenizer

        self.directory = Path(directory)
        self.manifest = load_lm_manifest(self.directory)
        self.stepper = OnnxStepper(self.directory, threads, cache, self.manifest)
        self.tokenizer = Tokenizer.from_file(str(self.directory / artifacts.TOKENIZER))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.bos_id = self.manifest.get("bos_id")
        self.eos_ids = tuple(self.manifest.get("eos_ids") or ())
        self.context_length = self.stepper.context_length

    def encode(self, prompt: str) -> list[int]:
        """The prompt's token ids, with the tokenizer's own special tokens (as Hugging Face encodes it)."""
        ids = self.tokenizer.encode(prompt).ids
        return ids if ids or self.bos_id is None else [int(self.bos_id)]

    def fit(self, prompt_ids: list[int], max_new_tokens: int, strict: bool = False) -> list[int]:
        """The prompt cut from the left to leave room for the new tokens (a warning says so), or refused (`strict`)."""
        import warnings

        from slmkit.generate import truncate_prompt

        kept, dropped = truncate_prompt(prompt_ids, self.context_length, max_new_tokens, strict)
        if dropped:
            warnings.warn(f"prompt is {len(prompt_ids)} tokens: the first {dropped} were dropped to fit the context window of {self.context_length}", stacklevel=3)
        return kept

    def stream(self, prompt: str, cfg=None, strict: bool = False, info: dict | None = None):
        """The continuation of `prompt` as text pieces, as they are generated."""
        from slmkit.generate import GenerationConfig, generate_text

        cfg = cfg or GenerationConfig()
        cfg.validate()
        ids = self.fit(self.encode(prompt), cfg.max_new_tokens, strict)
        return generate_text(self.stepper, self.tokenizer, ids, cfg, eos_ids=self.eos_ids, bos_id=self.bos_id, info=info)

    def complete(self, prompt: str, cfg=None, strict: bool = False) -> str:
        """The whole continuation of `prompt` (greedy when cfg.temperature is 0)."""
        return "".join(self.stream(prompt, cfg, strict))

    def generate_ids(self, prompt_ids: list[int], cfg=None, stop_at_eos: bool = True, strict: bool = False) -> list[int]:
        """The new token ids after `prompt_ids`."""
        from slmkit.generate import GenerationConfig, generate_ids

        cfg = cfg or GenerationConfig()
        ids = self.fit([int(t) for t in prompt_ids], cfg.max_new_tokens, strict)
        return list(generate_ids(self.stepper, ids, cfg, self.eos_ids if stop_at_eos else ()))

    def token_nll(self, text: str) -> np.ndarray:
        """Negative log-likelihood (nats) of each token of `text` after the first, the text cut to the context window."""
        ids = self.encode(text)[: self.context_length]
        if len(ids) < 2:
            return np.zeros(0, dtype=np.float64)
        logits = self.stepper.sequence_logits(ids)[:-1].astype(np.float64)  # (n - 1, vocab): each predicts the next
        top = logits.max(-1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(-1))
        return log_norm - logits[np.arange(len(ids) - 1), ids[1:]]
