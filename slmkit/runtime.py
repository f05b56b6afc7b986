"""The torch-free runtime: serve an exported (and possibly quantized) model with ONNX Runtime and `tokenizers`.

    from slmkit.runtime import Predictor
    predictor = Predictor("runs/x-int8")
    predictor.predict(["where is my parcel?"])   # [Prediction(label=..., score=..., scores={...})]

Importing this module imports neither torch nor transformers (a test checks it): a serving process stays near
100 MB. Texts are tokenized together, sorted by length and run in batches padded only to their own longest
member, then returned in input order.

Loading is defensive: the directory must hold an ONNX model and its manifest; pickle files are never read;
an ONNX model whose external-data paths point outside its directory is refused (a crafted model could
otherwise make the runtime read any file on the machine).
"""

from __future__ import annotations

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


def open_session(directory: Path, threads: int | None):
    """An ONNX Runtime CPU session over the directory's model.onnx (`threads` intra-op threads, one inter-op)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(directory / artifacts.ONNX_MODEL), options, providers=["CPUExecutionProvider"])


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
