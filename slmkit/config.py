"""Typed configuration: one dataclass per stage, loaded from YAML plus dotted `key=value` overrides.

Every field carries its help text in `metadata["help"]`; the CLI shows the same text. A config is validated
once, with messages that name the flag (`--set train.lr=...`), and saved as `config.yaml` beside every
output so that any artifact says exactly how it was made.

Precedence, lowest first: dataclass defaults < `--config` YAML < explicit CLI flags < `--set` overrides.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slmkit.errors import UserError


def _f(default: Any, help: str) -> Any:
    """A dataclass field with its help text (shown by `--help` and kept in one place)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# per task, the eval metrics that can select the best epoch (`train.metric`); the first is the default
TASK_METRICS = {"classification": ("accuracy", "macro_f1"), "ner": ("f1",), "qa": ("f1", "exact_match"), "lm": ("perplexity",)}
LOWER_IS_BETTER = ("perplexity",)  # the metrics whose best epoch is the lowest; every other one is higher-is-better
LM_DEFAULT_SHAPE = "layers=4,hidden=256,heads=4,ffn=1024,context=128"
LM_DEFAULT_VOCAB = 4096  # ModelConfig.vocab_size's default (written out there too)
LM_MIN_VOCAB = 259  # a byte-level BPE vocabulary holds the 256 bytes and <pad> <s> </s> before any merge


@dataclass
class DataConfig:
    """Where the labeled examples come from and how to read them."""

    train: str = _f("", "Training file: .csv, .tsv or .jsonl with one example per row.")
    eval: str | None = _f(None, "Evaluation file in the same format; without it a stratified split of train is held out.")
    text_col: str = _f("text", "Column (or JSON key) with the text; a 0-based index for headerless TSV/CSV.")
    label_col: str = _f("label", "Column (or JSON key) with the label; a 0-based index for headerless TSV/CSV.")
    eval_split: float = _f(0.1, "Fraction of train held out for evaluation when no eval file is given (seeded, stratified).")
    drop_empty: bool = _f(False, "Skip rows whose text is empty or whitespace instead of stopping with an error.")
    encoding: str = _f("utf-8", "Text encoding of the input files (for example latin-1 or cp1252).")
    scheme: str = _f("auto", "NER: tag scheme of the input files: auto, iob1, bio or bioes (predictions use the same).")
    tag_col: int = _f(-1, "NER: 0-based column of the tag in CoNLL files; negative counts from the end (-1: the last).")
    strict: bool = _f(False, "NER: refuse tags that break the scheme (an I- after O) instead of repairing them with a warning; QA: refuse answers not found at answer_start instead of moving or dropping them.")


@dataclass
class ModelConfig:
    """What to fine-tune."""

    base: str = _f(
        "minilm",
        "Base model: 'minilm' (the packaged all-MiniLM-L6-v2), a local Hugging Face model directory, "
        "or 'scratch:layers=2,hidden=128,heads=2' for a fresh tiny BERT that reuses the default tokenizer.",
    )
    max_length: int | None = _f(None, "Maximum tokens per text; default: the 99th percentile of the training texts, capped at 128.")
    dropout: float | None = _f(None, "Hidden and classifier dropout; default: keep the base model's.")
    stride: int = _f(128, "QA: tokens shared by consecutive windows of a context longer than max_length; 0 turns windows off (a context that does not fit is refused).")
    shape: str = _f(LM_DEFAULT_SHAPE, "LM from scratch: the Llama-style decoder's shape, keys layers, hidden, heads, kv_heads, ffn and context (tokens a window holds).")
    vocab_size: int = _f(4096, "LM from scratch: size of the byte-level BPE vocabulary trained on the corpus (at least 259; a corpus supports only so many merges, e.g. banking77's 10,000 messages about 5,100).")
    lora: str | None = _f(None, "LM with --base DIR: train LoRA adapters only, e.g. r=16,alpha=32,targets=q_proj,v_proj[,dropout=0.05].")
    merge: bool = _f(False, "With --lora: fold the adapters into the base and save a plain model (default: keep the adapter apart).")


@dataclass
class OptimConfig:
    """How to train: the optimizer, schedule and stopping rule."""

    epochs: int = _f(5, "Passes over the training data.")
    batch_size: int = _f(32, "Examples per optimizer step.")
    lr: float | None = _f(None, "Peak learning rate of AdamW (after warmup); default: the task's (1e-4 to fine-tune a pretrained model, 1e-3 for a language model trained from scratch).")
    weight_decay: float = _f(0.01, "AdamW weight decay; biases and LayerNorm weights are never decayed.")
    warmup: float = _f(0.1, "Fraction of all steps spent warming the learning rate up from 0 (then linear decay to 0).")
    grad_clip: float = _f(1.0, "Clip the global gradient norm to this value; 0 disables clipping.")
    label_smoothing: float = _f(0.0, "Label smoothing of the cross-entropy loss (0 to <1).")
    class_weights: bool = _f(False, "Weight the loss by inverse class frequency (for imbalanced labels).")
    patience: int = _f(2, "Stop after this many epochs without improvement of the eval metric; 0 never stops early.")
    metric: str | None = _f(None, "Eval metric that selects the best epoch (classification: accuracy or macro_f1; ner: f1; qa: f1 or exact_match; lm: perplexity, lowest best); default: the task's first.")
    seed: int = _f(42, "Random seed: the same seed and data give the same model and metrics.")
    bf16: bool = _f(False, "Run forward and backward passes under bfloat16 autocast on the CPU (faster on AVX-512 CPUs).")
    threads: int | None = _f(None, "Torch CPU threads; default: torch's own choice.")
    pack: bool = _f(True, "Random batches whose texts share rows under a block-diagonal attention mask: the speed of length bucketing without its length-sorted batches (slm train, classification and NER; checked against padded batches before training, else train.bucket decides).")
    bucket: bool = _f(True, "Where batches are not packed: batch examples of similar length together (less padding, faster); false: random batches. QA batches are always random (one paragraph's windows share a length).")
    bucket_pool: int = _f(50, "Length bucketing sorts shuffled pools of this many batches: smaller pools mix lengths more (more padding).")
    device: str = _f("cpu", "Where to train: cpu, or cuda / cuda:N where PyTorch sees a GPU (under torchrun: cuda:LOCAL_RANK).")
    eval_batch_size: int = _f(64, "Examples per batch when evaluating.")
    grad_checkpoint: bool = _f(False, "Gradient checkpointing: recompute activations in the backward pass (less memory, about a third slower).")


@dataclass
class TrainConfig:
    """`slm train`: fine-tune a base model on labeled data."""

    task: str = _f("classification", "Task: classification, ner (token classification), qa (extractive question answering) or lm (a causal language model on plain text).")
    out: str = _f("", "Output directory for the trained model.")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: OptimConfig = field(default_factory=OptimConfig)

    def validate(self) -> None:
        o, d, m = self.train, self.data, self.model
        checks = [
            (bool(d.train), "data.train", "no training data: pass --data FILE"),
            (bool(self.out), "out", "no output directory: pass --out DIR"),
            (o.epochs >= 1, "train.epochs", f"must be at least 1 (got {o.epochs})"),
            (o.batch_size >= 1, "train.batch_size", f"must be at least 1 (got {o.batch_size})"),
            (o.eval_batch_size >= 1, "train.eval_batch_size", f"must be at least 1 (got {o.eval_batch_size})"),
            (re.fullmatch(r"cpu|cuda(:\d+)?", o.device) is not None, "train.device", f"must be cpu, cuda or cuda:N (got {o.device!r})"),
            (o.lr is None or o.lr > 0, "train.lr", f"must be positive (got {o.lr})"),
            (o.weight_decay >= 0, "train.weight_decay", f"must be 0 or more (got {o.weight_decay})"),
            (0 <= o.warmup < 1, "train.warmup", f"must be a fraction in [0, 1) (got {o.warmup})"),
            (o.grad_clip >= 0, "train.grad_clip", f"must be 0 or more (got {o.grad_clip})"),
            (0 <= o.label_smoothing < 1, "train.label_smoothing", f"must be in [0, 1) (got {o.label_smoothing})"),
            (o.patience >= 0, "train.patience", f"must be 0 or more (got {o.patience})"),
            (o.threads is None or o.threads >= 1, "train.threads", f"must be at least 1 (got {o.threads})"),
            (o.bucket_pool >= 1, "train.bucket_pool", f"must be at least 1 (got {o.bucket_pool})"),
            (0 < d.eval_split < 1, "data.eval_split", f"must be a fraction in (0, 1) (got {d.eval_split})"),
            (m.max_length is None or 8 <= m.max_length <= (4096 if self.task == "lm" else 512), "model.max_length", f"must be in [8, {4096 if self.task == 'lm' else 512}] (got {m.max_length})"),
            (m.dropout is None or 0 <= m.dropout < 1, "model.dropout", f"must be in [0, 1) (got {m.dropout})"),
            (not o.class_weights or self.task == "classification", "train.class_weights", "applies to classification only: drop it"),
            (m.stride >= 0, "model.stride", f"must be 0 or more (got {m.stride})"),
            (d.scheme in ("auto", "iob1", "bio", "bioes"), "data.scheme", f"must be auto, iob1, bio or bioes (got {d.scheme!r})"),
            (self.task in TASK_METRICS, "task", f"unknown task {self.task!r}: valid tasks are {', '.join(TASK_METRICS)}"),
            (self.task != "lm" or m.vocab_size >= LM_MIN_VOCAB, "model.vocab_size", f"must be at least {LM_MIN_VOCAB}, the 256 bytes and 3 special tokens (got {m.vocab_size})"),
            (not m.lora or self.task == "lm", "model.lora", "LoRA adapts a causal LM: use it with --task lm --base DIR"),
            (not m.merge or bool(m.lora), "model.merge", "merges LoRA adapters: pass --lora too, or drop --merge"),
        ]
        metrics = TASK_METRICS.get(self.task, ())
        checks.append((o.metric is None or o.metric in metrics, "train.metric", f"must be {' or '.join(metrics)} for task {self.task} (got {o.metric!r})"))
        for ok, key, message in checks:
            if not ok:
                raise UserError(f"setting {key} {message}" if "must" in message else f"setting {key}: {message}")


@dataclass
class EvalConfig:
    """`slm evaluate`: score a trained model on labeled data."""

    model: str = _f("", "Trained model directory (the output of slm train).")
    out: str | None = _f(None, "Where to write metrics.json; default: <model>/eval/<data file name>.")
    data: DataConfig = field(default_factory=DataConfig)
    batch_size: int = _f(64, "Texts per batch.")
    bootstrap: int = _f(1000, "Bootstrap resamples for the 95% confidence intervals.")
    seed: int = _f(0, "Seed of the bootstrap resampling.")

    def validate(self) -> None:
        if not self.model:
            raise UserError("setting model: no model directory: pass --model DIR")
        if not self.data.eval:
            raise UserError("setting data.eval: no evaluation data: pass --data FILE")
        if self.batch_size < 1:
            raise UserError(f"setting batch_size must be at least 1 (got {self.batch_size})")
        if self.bootstrap < 100:
            raise UserError(f"setting bootstrap must be at least 100 resamples (got {self.bootstrap})")


def _check(checks: list[tuple[bool, str, str]]) -> None:
    for ok, key, message in checks:
        if not ok:
            raise UserError(f"setting {key} {message}" if "must" in message else f"setting {key}: {message}")


@dataclass
class ExportConfig:
    """`slm export`: a trained model as ONNX with its tokenizer, labels and a parity check."""

    model: str = _f("", "Trained model directory (the output of slm train, prune or trim-vocab).")
    out: str = _f("", "Output directory for the ONNX model.")
    opset: int = _f(18, "ONNX opset version (18 is what the exporter writes natively).")
    probe_size: int = _f(64, "Training examples in the parity probe batch.")
    probe_data: str | None = _f(None, "File to draw the probe batch from; default: the model's training file.")
    text_col: str = _f("text", "Column (or JSON key) with the text in --probe-data.")
    tolerance: float = _f(1e-4, "Largest allowed |logit difference| between ONNX and PyTorch on the probe batch.")

    def validate(self) -> None:
        _check([
            (bool(self.model), "model", "no model directory: pass --model DIR"),
            (bool(self.out), "out", "no output directory: pass --out DIR"),
            (14 <= self.opset <= 23, "opset", f"must be in [14, 23] (got {self.opset})"),
            (self.probe_size >= 1, "probe_size", f"must be at least 1 (got {self.probe_size})"),
            (self.tolerance > 0, "tolerance", f"must be positive (got {self.tolerance})"),
        ])


@dataclass
class QuantizeConfig:
    """`slm quantize`: an exported ONNX model to int8, checked against the fp32 model."""

    model: str = _f("", "Exported ONNX model directory (the output of slm export).")
    out: str = _f("", "Output directory for the quantized model.")
    method: str = _f(
        "dynamic",
        "dynamic (weights int8, activations quantized at run time), static (QDQ with calibration) or qat; for a PyTorch "
        "causal-LM directory: int8-weight or int4-weight (weight-only, with the perplexity/KL report).",
    )
    per_channel: bool = _f(True, "Quantize weights per output channel (more accurate, same size and speed).")
    reduce_range: bool = _f(
        True,
        "Quantize weights to 7 bits. CPUs without VNNI (AVX2 only) saturate sums of 8-bit products, so full-range "
        "weights give results that differ from other machines and from the browser; 7-bit weights are exact everywhere.",
    )
    calib_size: int = _f(256, "Training examples used to calibrate static quantization.")
    calib_data: str | None = _f(None, "File of calibration texts; default: the model's training file.")
    calib_method: str = _f("minmax", "Static calibration: minmax, entropy or percentile.")
    exclude: list[str] = _f([], "Node names (or op types such as Gather) to keep in fp32.")
    max_drop: float | None = _f(None, "Accuracy-aware: largest allowed drop of the eval metric, in points; back off until it holds.")
    eval_data: str | None = _f(None, "Labeled file for the accuracy check; default: the model's eval data.")
    text_col: str = _f("text", "Column (or JSON key) with the text in the data files given on the command line.")
    label_col: str = _f("label", "Column (or JSON key) with the label in the labeled files given on the command line.")
    qat_epochs: int = _f(1, "QAT: fine-tuning passes with fake quantization.")
    qat_lr: float = _f(2e-5, "QAT: peak learning rate.")
    qat_limit: int = _f(4000, "QAT: at most this many training examples per pass (0: all).")
    seed: int = _f(42, "Seed of the calibration and probe sampling.")
    group_size: int = _f(32, "int4-weight: input weights sharing one scale (must divide every layer's input width).")
    context: int = _f(512, "Causal LM report: tokens per scoring window of the held-out text (capped at the model's context).")
    eval_tokens: int = _f(8192, "Causal LM report: at most this many held-out tokens are scored.")
    gen_tokens: int = _f(64, "Causal LM report: tokens generated (greedy, batch 1) to measure tokens/s.")
    report_all: bool = _f(True, "Causal LM report: measure fp32, bf16, int8 and int4 side by side (false: fp32 and the chosen method).")

    def validate(self) -> None:
        _check([
            (bool(self.model), "model", "no model directory: pass --model DIR"),
            (bool(self.out), "out", "no output directory: pass --out DIR"),
            (self.method in ("dynamic", "static", "qat", "int8-weight", "int4-weight"), "method", f"must be dynamic, static or qat (for a PyTorch causal LM: int8-weight or int4-weight) (got {self.method!r})"),
            (self.context >= 8, "context", f"must be at least 8 tokens (got {self.context})"),
            (self.eval_tokens >= 2, "eval_tokens", f"must be at least 2 (got {self.eval_tokens})"),
            (self.gen_tokens >= 1, "gen_tokens", f"must be at least 1 (got {self.gen_tokens})"),
            (self.calib_size >= 1, "calib_size", f"must be at least 1 (got {self.calib_size})"),
            (self.calib_method in ("minmax", "entropy", "percentile"), "calib_method", f"must be minmax, entropy or percentile (got {self.calib_method!r})"),
            (self.max_drop is None or self.max_drop >= 0, "max_drop", f"must be 0 or more points (got {self.max_drop})"),
            (self.qat_epochs >= 1, "qat_epochs", f"must be at least 1 (got {self.qat_epochs})"),
            (self.qat_lr > 0, "qat_lr", f"must be positive (got {self.qat_lr})"),
            (self.qat_limit >= 0, "qat_limit", f"must be 0 or more (got {self.qat_limit})"),
        ])


@dataclass
class PruneConfig:
    """`slm prune`: remove the least important attention heads and FFN neurons, then recover by fine-tuning."""

    model: str = _f("", "Trained model directory (the output of slm train).")
    out: str = _f("", "Output directory for the pruned model.")
    heads: float = _f(0.3, "Fraction of attention heads to remove, in [0, 1).")
    ffn: float = _f(0.3, "Fraction of feed-forward neurons to remove, in [0, 1).")
    data: str | None = _f(None, "Labeled training file for importance scores and recovery; default: the model's training file.")
    eval: str | None = _f(None, "Labeled file for the before/after check; default: the model's eval data.")
    text_col: str = _f("text", "Column (or JSON key) with the text in the data files given on the command line.")
    label_col: str = _f("label", "Column (or JSON key) with the label in the labeled files given on the command line.")
    importance_batches: int = _f(32, "Training batches used to score head and neuron importance.")
    recovery_epochs: int = _f(1, "Recovery fine-tuning passes after pruning (0: none).")
    recovery_lr: float = _f(5e-5, "Recovery peak learning rate.")
    recovery_limit: int = _f(0, "At most this many training examples per recovery pass (0: all).")
    distill: bool = _f(True, "Recover by distillation from the unpruned model (soft targets) plus the labels.")
    temperature: float = _f(2.0, "Distillation temperature.")
    batch_size: int = _f(32, "Examples per batch.")
    seed: int = _f(42, "Random seed.")

    def validate(self) -> None:
        _check([
            (bool(self.model), "model", "no model directory: pass --model DIR"),
            (bool(self.out), "out", "no output directory: pass --out DIR"),
            (0 <= self.heads < 1, "heads", f"must be a fraction in [0, 1) (got {self.heads})"),
            (0 <= self.ffn < 1, "ffn", f"must be a fraction in [0, 1) (got {self.ffn})"),
            (self.importance_batches >= 1, "importance_batches", f"must be at least 1 (got {self.importance_batches})"),
            (self.recovery_epochs >= 0, "recovery_epochs", f"must be 0 or more (got {self.recovery_epochs})"),
            (self.recovery_lr > 0, "recovery_lr", f"must be positive (got {self.recovery_lr})"),
            (self.recovery_limit >= 0, "recovery_limit", f"must be 0 or more (got {self.recovery_limit})"),
            (self.temperature > 0, "temperature", f"must be positive (got {self.temperature})"),
            (self.batch_size >= 1, "batch_size", f"must be at least 1 (got {self.batch_size})"),
        ])


@dataclass
class TrimConfig:
    """`slm trim-vocab`: keep only the vocabulary the data uses, rewriting tokenizer and embeddings together."""

    model: str = _f("", "Trained model directory (the output of slm train or prune).")
    out: str = _f("", "Output directory for the trimmed model.")
    data: list[str] = _f([], "Files whose texts decide the kept tokens (labeled files or .txt); default: the model's training file.")
    text_col: str = _f("text", "Column (or JSON key) with the text in --data and --eval files.")
    label_col: str = _f("label", "Column (or JSON key) with the label in the --eval file.")
    extra_text: list[str] = _f([], "More text files (.txt, one text per line) whose tokens are kept too: a coverage margin.")
    min_count: int = _f(1, "Keep a token only if it occurs at least this many times.")
    keep_top: int = _f(0, "Also keep the N most frequent pieces of the original vocabulary (BERT-family vocabularies list them first): a margin for unseen words.")
    eval: str | None = _f(None, "Labeled file for the OOV rate and the before/after check; default: the model's eval data.")
    fallback: str = _f(
        "nearest",
        "What a removed piece becomes: nearest (the kept piece whose embedding is closest by cosine; words keep their "
        "segmentation), unk ([UNK], segmentation kept) or none (a plain vocabulary: WordPiece re-segments the word "
        "with kept pieces, or makes it [UNK]).",
    )

    def validate(self) -> None:
        _check([
            (self.fallback in ("nearest", "unk", "none"), "fallback", f"must be nearest, unk or none (got {self.fallback!r})"),
            (bool(self.model), "model", "no model directory: pass --model DIR"),
            (bool(self.out), "out", "no output directory: pass --out DIR"),
            (self.min_count >= 1, "min_count", f"must be at least 1 (got {self.min_count})"),
            (self.keep_top >= 0, "keep_top", f"must be 0 or more (got {self.keep_top})"),
        ])


@dataclass
class ExportWebConfig:
    """`slm export-web`: an exported model as a static page that classifies text in the browser."""

    model: str = _f("", "Exported model directory (the output of slm export or slm quantize, or a pipeline's deploy directory).")
    out: str = _f("", "Output directory for the site (index.html and its assets).")
    npm_cache: str | None = _f(None, "Where the pinned JavaScript packages are kept after their one download; default: ~/.cache/slmkit/npm.")
    registry: str = _f("https://registry.npmjs.org", "npm registry (or mirror) the pinned packages are downloaded from; their integrity is checked either way.")
    batch_size: int = _f(32, "Texts per model call in the page (as slmkit.runtime.Predictor batches them).")

    def validate(self) -> None:
        _check([
            (bool(self.model), "model", "no model directory: pass the exported directory, e.g. slm export-web runs/x-onnx --out site"),
            (bool(self.out), "out", "no output directory: pass --out DIR"),
            (self.registry.startswith(("https://", "http://", "file://")), "registry", f"must be an http(s) or file URL (got {self.registry!r})"),
            (self.batch_size >= 1, "batch_size", f"must be at least 1 (got {self.batch_size})"),
        ])


@dataclass
class LossConfig:
    """`slm distill` losses: each term's weight (0 turns it off)."""

    kd: float = _f(0.5, "Weight of the soft-target KL divergence at temperature T (Hinton et al. 2015; DistilBERT).")
    ce: float = _f(0.5, "Weight of the hard-label cross-entropy.")
    mse: float = _f(0.0, "Weight of the logit mean squared error (Tang et al. 2019).")
    hidden: float = _f(0.0, "Weight of the hidden-state transfer (TinyBERT), projected when widths differ.")
    attention: float = _f(0.0, "Weight of the attention-map transfer (TinyBERT); students and teacher need equal head counts.")
    temperature: float = _f(2.0, "Softmax temperature of the KD term.")
    layer_map: list[str] = _f([], "Student layer → teacher layer pairs for hidden/attention transfer, e.g. 1:2,2:4; default: uniform.")


@dataclass
class DistillConfig:
    """`slm distill`: train a small student to imitate a fine-tuned teacher."""

    teacher: str = _f("", "Fine-tuned teacher model directory (the output of slm train).")
    student: str = _f(
        "transformer:layers=2,hidden=128,heads=2,ffn=512",
        "Student: 'drop:layers=0,2,4' or 'drop:every=2' (the teacher's own layers), "
        "'transformer:layers=4,hidden=312,heads=12,ffn=1200' (a small BERT), 'bilstm:hidden=300' or 'cnn:filters=256'.",
    )
    out: str = _f("", "Output directory for the student.")
    data: DataConfig = field(default_factory=DataConfig)
    unlabeled: str | None = _f(None, "In-domain texts without labels (.txt or a text column; for a QA teacher, questions: JSONL {\"question\", \"context\"}): labeled by the teacher's soft targets.")
    augment: float = _f(0.0, "Generated augmentation: this many new texts per training text (e.g. 10 for 10x); 0 for none.")
    trim_vocab: bool = _f(True, "Give the student only the vocabulary its training texts use (honest on-disk parameter counts).")
    cache_dir: str | None = _f(None, "Where cached teacher outputs live; default: <teacher>/distill-cache.")
    teacher_int8: bool = _f(
        True,
        "Classification: label the training texts with the teacher's int8 ONNX graph (about 2.4x faster than fp32 here; "
        "it must agree with the fp32 graph on 256 of the texts, else fp32 labels them). The eval texts always get fp32 outputs.",
    )
    task: str | None = _f(None, "The teacher's task (classification, ner or qa); read from the teacher and recorded with the student: leave unset.")
    stride: int | None = _f(None, "QA: tokens shared by consecutive windows of a long context; default: the teacher's.")
    loss: LossConfig = field(default_factory=LossConfig)
    train: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=10, lr=1e-3, batch_size=32, patience=3))

    def validate(self) -> None:
        o, loss = self.train, self.loss
        _check([
            (bool(self.teacher), "teacher", "no teacher: pass --teacher DIR (the output of slm train)"),
            (bool(self.out), "out", "no output directory: pass --out DIR"),
            (bool(self.data.train), "data.train", "no training data: pass --data FILE"),
            (self.augment >= 0, "augment", f"must be 0 or more (got {self.augment})"),
            (min(loss.kd, loss.ce, loss.mse, loss.hidden, loss.attention) >= 0, "loss", "weights must be 0 or more"),
            (loss.kd + loss.ce + loss.mse + loss.hidden + loss.attention > 0, "loss", "at least one loss weight must be positive"),
            (loss.temperature > 0, "loss.temperature", f"must be positive (got {loss.temperature})"),
            (o.epochs >= 1, "train.epochs", f"must be at least 1 (got {o.epochs})"),
            (o.batch_size >= 1, "train.batch_size", f"must be at least 1 (got {o.batch_size})"),
            (o.lr > 0, "train.lr", f"must be positive (got {o.lr})"),
            (0 <= o.warmup < 1, "train.warmup", f"must be a fraction in [0, 1) (got {o.warmup})"),
            (o.metric in (None, *sorted({m for ms in TASK_METRICS.values() for m in ms})), "train.metric",
             f"must be a metric of the teacher's task: accuracy or macro_f1 (classification), f1 (ner, qa) or exact_match (qa) (got {o.metric!r})"),
            (self.task in (None, *TASK_METRICS), "task", f"unknown task {self.task!r}: valid tasks are {', '.join(TASK_METRICS)}"),
            (self.stride is None or self.stride >= 0, "stride", f"must be 0 or more (got {self.stride})"),
            (0 < self.data.eval_split < 1, "data.eval_split", f"must be a fraction in (0, 1) (got {self.data.eval_split})"),
        ])


BASELINES = ("tfidf", "fasttext", "teacher-torch", "teacher-int8", "kn4")  # what `slm bench --baselines` accepts (kn4: language models)


@dataclass
class BenchConfig:
    """`slm bench`: accuracy, speed and footprint of models and baselines on one test set, as a report."""

    models: list[str] = _f([], "Model directories: outputs of slm train, distill, prune (PyTorch) or slm export, quantize (ONNX).")
    names: list[str] = _f([], "Display names for --models, in the same order; default: each directory's name.")
    data: str = _f("", "Labeled test file (.csv, .tsv or .jsonl) every model and baseline is scored on.")
    out: str = _f("", "Output directory for results.json, report.md, report.html, the charts and model cards.")
    text_col: str = _f("text", "Column (or JSON key) with the text in --data and --train.")
    label_col: str = _f("label", "Column (or JSON key) with the label in --data and --train.")
    encoding: str = _f("utf-8", "Text encoding of --data and --train.")
    label_map: list[str] = _f([], "Rename data labels to the models' labels: old=new,other=new2 (applies to --data and --train).")
    drop_empty: bool = _f(False, "Skip rows whose text is empty instead of stopping with an error.")
    baselines: list[str] = _f([], "Baselines measured beside the models: tfidf, fasttext (trained on --train), teacher-torch, teacher-int8 (from --teacher); for language models kn4, a word 4-gram Kneser-Ney model trained on --train.")
    train: str | None = _f(None, "Labeled training file for the trained baselines (tfidf, fasttext).")
    teacher: str | None = _f(None, "Fine-tuned teacher directory (slm train output) for teacher-torch and teacher-int8.")
    threads: list[str] = _f(["1", "all"], "Thread counts every model is timed at: numbers, or 'all' for every CPU.")
    rounds: int = _f(3, "Interleaved timing rounds; each figure is the median over rounds, reported with its min and max.")
    latency_calls: int = _f(200, "Timed batch-1 calls per round (latency percentiles p50/p95/p99).")
    warmup: int = _f(10, "Untimed batch-1 calls before each latency measurement.")
    speed_texts: int = _f(512, "Test texts (a seeded sample) used for timing; all when the test set is smaller.")
    batch_size: int = _f(32, "Texts per batch for the throughput figure (tokenization included).")
    rss: bool = _f(True, "Measure peak RSS in a fresh process per model (loads the model and serves one request).")
    bootstrap: int = _f(1000, "Bootstrap resamples for the 95% confidence intervals.")
    seed: int = _f(0, "Seed of the bootstrap, the timing sample and the trained baselines.")
    sample: int = _f(200, "Language models: texts of --data (a seeded sample) scored for next-word accuracy@3 and keystroke savings; all when fewer.")
    new_tokens: int = _f(32, "Language models: tokens generated greedily after each timing prompt (fewer when the context window is short).")

    def validate(self) -> None:
        unknown = [b for b in self.baselines if b not in BASELINES]
        needs_train = [b for b in self.baselines if b in ("tfidf", "fasttext", "kn4")]
        needs_teacher = [b for b in self.baselines if b.startswith("teacher-")]
        _check([
            (bool(self.models) or bool(self.baselines), "models", "nothing to measure: pass --models DIR [DIR ...] and/or --baselines"),
            (bool(self.data), "data", "no test data: pass --data FILE"),
            (bool(self.out), "out", "no output directory: pass --out DIR"),
            (not unknown, "baselines", f"unknown baseline {', '.join(unknown)}: valid ones are {', '.join(BASELINES)}"),
            (len(set(self.baselines)) == len(self.baselines), "baselines", "lists a baseline twice"),
            (not needs_train or bool(self.train), "train", f"baseline {', '.join(needs_train)} is trained here: pass --train FILE (labeled training data)"),
            (not needs_teacher or bool(self.teacher), "teacher", f"baseline {', '.join(needs_teacher)} needs the teacher: pass --teacher DIR (an slm train output)"),
            (not self.names or len(self.names) == len(self.models), "names", f"gives {len(self.names)} names for {len(self.models)} models: one per --models directory"),
            (all("=" in m and m.split("=", 1)[0].strip() and m.split("=", 1)[1].strip() for m in self.label_map), "label_map", "entries must be old=new, e.g. --label-map weather=other,bill=billing"),
            (bool(self.threads) and all(t == "all" or (t.isdigit() and int(t) >= 1) for t in self.threads), "threads", f"must be thread counts (1, 2, ...) or 'all' (got {','.join(self.threads)})"),
            (self.rounds >= 1, "rounds", f"must be at least 1 (got {self.rounds})"),
            (self.latency_calls >= 10, "latency_calls", f"must be at least 10 (got {self.latency_calls})"),
            (self.warmup >= 0, "warmup", f"must be 0 or more (got {self.warmup})"),
            (self.speed_texts >= 1, "speed_texts", f"must be at least 1 (got {self.speed_texts})"),
            (self.batch_size >= 1, "batch_size", f"must be at least 1 (got {self.batch_size})"),
            (self.bootstrap >= 100, "bootstrap", f"must be at least 100 resamples (got {self.bootstrap})"),
            (self.sample >= 1, "sample", f"must be at least 1 text (got {self.sample})"),
            (self.new_tokens >= 1, "new_tokens", f"must be at least 1 token (got {self.new_tokens})"),
        ])


@dataclass
class ServeConfig:
    """`slm serve`: an exported model behind HTTP, with micro-batching, limits and a graceful shutdown."""

    model: str = _f("", "Model bundle: an slm export or slm quantize output, or a run's deploy/ directory; or a causal LM (a Hugging Face causal-LM directory or an ONNX LM export), served with an OpenAI-compatible API.")
    host: str = _f("127.0.0.1", "Interface to listen on; 0.0.0.0 opens the server to other machines.")
    port: int = _f(8000, "TCP port to listen on.")
    workers: int = _f(1, "Server processes (uvicorn workers) sharing the port; each loads its own copy of the model.")
    api_key_file: str | None = _f(None, "File whose first line is the API key every request but the health checks must send (Authorization: Bearer KEY or X-API-Key: KEY).")
    max_batch: int = _f(32, "Most texts per model call: texts of concurrent requests are merged into batches up to this size.")
    max_wait_ms: float = _f(2.0, "How long the first waiting text waits for others to fill its batch (ms).")
    max_body_bytes: int = _f(1_000_000, "Largest request body in bytes; a larger one gets 413.")
    max_texts: int = _f(64, "Most texts in one request; more get 422.")
    max_chars: int = _f(2000, "Most characters in one text; a longer one gets 422, or is cut when truncate is on.")
    truncate: bool = _f(False, "Cut texts longer than max_chars instead of refusing the request (each result says whether it was cut).")
    queue_size: int = _f(128, "Most requests admitted and not yet answered; more get 429 with Retry-After at once (before their body is read).")
    timeout_s: float = _f(10.0, "Deadline of one request in seconds: past it the answer is 503, never a late result.")
    threads: int | None = _f(1, "ONNX Runtime threads per worker (a causal LM in PyTorch: torch's); 1 leaves the other cores to HTTP handling and other workers.")
    access_log: bool = _f(False, "Log every request (costs throughput under load).")
    max_sequences: int = _f(2, "Causal LMs: sequences generated at once, each on a thread of its own; further requests wait for one (within timeout_s).")
    max_tokens: int = _f(256, "Causal LMs: most tokens one request may ask for (max_tokens); a request asking more gets 422.")

    def validate(self) -> None:
        _check([
            (bool(self.model), "model", "no model: pass the bundle directory, e.g. slm serve runs/x-int8"),
            (bool(self.host), "host", "must be an interface address such as 127.0.0.1"),
            (0 <= self.port <= 65535, "port", f"must be in [0, 65535] (got {self.port})"),
            (self.workers >= 1, "workers", f"must be at least 1 (got {self.workers})"),
            (self.max_batch >= 1, "max_batch", f"must be at least 1 (got {self.max_batch})"),
            (self.max_wait_ms >= 0, "max_wait_ms", f"must be 0 or more (got {self.max_wait_ms})"),
            (self.max_body_bytes >= 1024, "max_body_bytes", f"must be at least 1024 (got {self.max_body_bytes})"),
            (self.max_texts >= 1, "max_texts", f"must be at least 1 (got {self.max_texts})"),
            (self.max_chars >= 1, "max_chars", f"must be at least 1 (got {self.max_chars})"),
            (self.queue_size >= 1, "queue_size", f"must be at least 1 (got {self.queue_size})"),
            (self.timeout_s > 0, "timeout_s", f"must be positive (got {self.timeout_s})"),
            (self.threads is None or self.threads >= 1, "threads", f"must be at least 1 (got {self.threads})"),
            (self.max_sequences >= 1, "max_sequences", f"must be at least 1 (got {self.max_sequences})"),
            (self.max_tokens >= 1, "max_tokens", f"must be at least 1 (got {self.max_tokens})"),
        ])


# The default ladder of `slm run`, smallest first: two CNNs over PCA-projected teacher embeddings (Kim 2014), a
# 2-layer BERT, and half of the teacher's own layers (DistilBERT's recipe). After vocabulary trimming they hold
# about 0.3M, 0.8M, 1M and 7M parameters on the bundled demo (2M to 17M with MiniLM's whole 30k vocabulary).
# Every student learns from 5 teacher-labeled rewrites of each training text (`distill.augment`): on the demo that
# lifted a BiLSTM from 84.6 to 89.4% test accuracy and the half-teacher from 88.0 to 94.2% (the teacher: 93.3%).
# An entry may end with overrides for that student alone (`lr=1e-4 epochs=2`): the students that start from the
# teacher's own layers need a fine-tuning learning rate.
# Chosen to keep the demo's whole run within 15 minutes on 2 vCPUs.
DEFAULT_STUDENTS = [
    "cnn:filters=128,embed=64",
    "cnn:filters=256,embed=128",
    "transformer:layers=2,hidden=128,heads=2,ffn=512 epochs=3",
    "drop:every=2 lr=1e-4 epochs=2",
]
# `slm run --task lm`'s students when `students` is left at its default: a 2-layer, 128-wide decoder (0.5M
# parameters besides the teacher's vocabulary), trained on the training text with token-level KD from the teacher
LM_DEFAULT_STUDENTS = ["lm:layers=2,hidden=128,heads=2,ffn=512"]
# `slm run --task ner` puts a BiLSTM tagger ahead of the default ladder's kinds NER takes: on CoNLL-2003 it kept
# 97.3% of the teacher's test F1 (83.19 against 85.47) at 4.8M parameters, 4.9 MB in int8, where the 2-layer
# transformer of the default ladder reached 64.35 (benchmarks/results/ner-run.md)
NER_DEFAULT_STUDENTS = ["bilstm:hidden=256,embed=128 epochs=8"]
PIPELINE_BASELINES = ("tfidf", "fasttext", "teacher-torch")  # slm run measures the teacher's int8 itself


@dataclass
class LadderConfig:
    """`slm run` students: how every student of the ladder is distilled (`slm distill` settings)."""

    augment: float = _f(5.0, "Teacher-labeled rewrites per training text that every student also learns from (0 for none).")
    trim_vocab: bool = _f(True, "Give each student only the vocabulary its training texts use (smaller on disk).")
    loss: LossConfig = field(default_factory=LossConfig)
    train: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=6, lr=1e-3, batch_size=32, patience=3))


@dataclass
class RunQuantizeConfig:
    """`slm run` int8: how every candidate (students and the teacher) is quantized (`slm quantize` settings)."""

    method: str = _f("dynamic", "dynamic, static or qat (see slm quantize).")
    max_drop: float | None = _f(1.0, "Accuracy-aware int8: largest drop vs the same model in fp32, in points, on the eval set (none: no check).")
    per_channel: bool = _f(True, "Quantize weights per output channel.")


@dataclass
class RunBenchConfig:
    """`slm run` benchmark: how the candidates and baselines are measured (`slm bench` settings)."""

    baselines: list[str] = _f(list(PIPELINE_BASELINES), "Baselines measured beside the candidates: tfidf, fasttext, teacher-torch.")
    threads: list[str] = _f(["1", "all"], "Thread counts timed; the latency budget reads 1 thread (the first setting when 1 is not timed).")
    rounds: int = _f(3, "Interleaved timing rounds (each figure is the median over rounds).")
    latency_calls: int = _f(100, "Timed batch-1 calls per round.")
    speed_texts: int = _f(256, "Test texts used for timing.")
    rss: bool = _f(True, "Measure each candidate's peak RSS in a fresh process.")
    sample: int = _f(200, "--task lm: test texts (a seeded sample) scored for next-word accuracy@3 and keystroke savings.")
    bootstrap: int = _f(1000, "Bootstrap resamples for the 95% intervals.")


@dataclass
class BudgetConfig:
    """`slm run` budgets: what the chosen model must meet; none turns a budget off."""

    size: str | None = _f("5MB", "Largest model file on disk, like 5MB, 500kB or 1.5GB (decimal units; KiB/MiB/GiB binary).")
    latency: str | None = _f("1ms", "Largest batch-1 p50 latency on this CPU, at 1 thread (or the first bench.threads setting), like 1ms or 500us.")
    max_drop: float | None = _f(3.0, "Largest test-accuracy drop vs the teacher, in points (a few hundred test texts give intervals of about ±3 points); --task lm: largest increase of the per-word perplexity vs the teacher, in percent.")


SEARCH_KINDS = ("cnn", "bilstm", "transformer", "drop")  # the student kinds a search may try (slmkit.students)


@dataclass
class SearchConfig:
    """`slm run --search N`: an Optuna study over students, on top of the ladder (see slmkit.search)."""

    trials: int = _f(0, "Finished trials the study should hold, counting every worker's (0: no search); a rerun continues the same study.")
    storage: str | None = _f(None, "Where the study lives: any SQLAlchemy URL (postgresql://user:password@host/db) that several machines can share; default: sqlite:///<out>/search.db.")
    study_name: str | None = _f(None, "Study name; default: slm-run- and a hash of the data, the teacher and the search space, so that workers of one run meet.")
    timeout: float | None = _f(None, "This worker starts no new trial after this many seconds (none: no limit).")
    kinds: list[str] = _f(list(SEARCH_KINDS), "Student kinds tried: cnn, bilstm, transformer, drop.")
    widths: list[int] = _f([64, 128, 256], "Widths tried: cnn filters, bilstm and transformer hidden units.")
    embeds: list[int] = _f([32, 64, 128], "Word-embedding widths tried for cnn and bilstm students.")
    layers: list[int] = _f([1, 2, 4], "Layer counts tried for transformer students.")
    max_epochs: int = _f(6, "Most distillation epochs a trial trains (each trial draws 1 to this many).")
    max_augment: int = _f(5, "Most teacher-labeled rewrites per training text a trial uses (each draws 0 to this many).")
    seed: int | None = _f(None, "Seed of the sampler, for a reproducible search by one worker (none: each worker draws its own; workers sharing a study must not share a seed, or they draw the same trials).")
    prune_drop: float | None = _f(30.0, "Stop a trial whose eval accuracy after an epoch before its last is this many points below the teacher's (none: never).")


@dataclass
class RunConfig:
    """`slm run`: fine-tune a teacher, distill a ladder of students, compress, benchmark, select and ship."""

    out: str = _f("", "Run directory: cached stages, the benchmark report and the deployable bundle (deploy/).")
    task: str = _f("classification", "Task: classification, ner, qa or lm; NER and QA select on entity / SQuAD F1 and distill the ladder's students of the kinds they take; lm trains a causal LM (or takes --teacher), exports it with the KV cache and int8, and ships the fastest within the budgets (latency per generated token).")
    data: DataConfig = field(default_factory=DataConfig)
    test: str | None = _f(None, "Labeled test file for the benchmark and the budgets; default: a held-out split of --data.")
    test_split: float = _f(0.2, "Fraction of --data held out as the test set when no --test file is given (seeded, stratified).")
    seed: int = _f(42, "Seed of the eval and test splits.")
    teacher: str | None = _f(None, "A fine-tuned teacher (slm train output) to reuse instead of training one.")
    model: ModelConfig = field(default_factory=ModelConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    students: list[str] = _f(list(DEFAULT_STUDENTS), "The student ladder: slm distill --student specs, each optionally followed by its own distill.train or augment settings (`drop:every=2 lr=1e-4 epochs=2`); an empty list ships the teacher (fp32 or int8) alone. --task lm: lm:layers=2,hidden=128 decoders (default: one), which learn the training text from the teacher.")
    distill: LadderConfig = field(default_factory=LadderConfig)
    quantize: RunQuantizeConfig = field(default_factory=RunQuantizeConfig)
    bench: RunBenchConfig = field(default_factory=RunBenchConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    strict: bool = _f(False, "Exit with code 1 when no candidate meets every budget (default: explain and exit 0).")
    search: SearchConfig = field(default_factory=SearchConfig)

    def validate(self) -> None:
        from slmkit.selection import parse_latency, parse_size  # the budget formats live with the selection rule
        from slmkit.students import check_task, parse_student

        b, q, bench = self.budget, self.quantize, self.bench
        unknown = [x for x in bench.baselines if x not in PIPELINE_BASELINES + ("kn4",)]
        _check([
            (self.task in TASK_METRICS, "task", f"unknown task {self.task!r}: valid tasks are {', '.join(TASK_METRICS)}"),
            (self.task != "lm" or q.method == "dynamic", "quantize.method", f"a causal LM is quantized with dynamic int8 (got {q.method!r}): set quantize.method=dynamic"),
            (self.task == "classification" or self.search.trials == 0, "search.trials", f"--search explores classification students only: leave it out for --task {self.task}"),
            (bool(self.data.train), "data.train", "no training data: pass --data FILE"),
            (bool(self.out), "out", "no output directory: pass --out DIR"),
            (0 < self.data.eval_split < 1, "data.eval_split", f"must be a fraction in (0, 1) (got {self.data.eval_split})"),
            (0 < self.test_split < 1, "test_split", f"must be a fraction in (0, 1) (got {self.test_split})"),
            (len(set(self.students)) == len(self.students), "students", "lists a student twice"),
            (q.method in ("dynamic", "static", "qat"), "quantize.method", f"must be dynamic, static or qat (got {q.method!r})"),
            (q.max_drop is None or q.max_drop >= 0, "quantize.max_drop", f"must be 0 or more points (got {q.max_drop})"),
            (b.max_drop is None or b.max_drop >= 0, "budget.max_drop", f"must be 0 or more points (got {b.max_drop}); --max-drop none turns it off"),
            (not unknown, "bench.baselines", f"unknown baseline {', '.join(unknown)}: valid ones are {', '.join(PIPELINE_BASELINES)} (and kn4 for --task lm)"),
            (bool(bench.threads) and all(t == "all" or (t.isdigit() and int(t) >= 1) for t in bench.threads), "bench.threads", f"must be thread counts (1, 2, ...) or 'all' (got {','.join(bench.threads)})"),
            (bench.rounds >= 1, "bench.rounds", f"must be at least 1 (got {bench.rounds})"),
            (bench.latency_calls >= 10, "bench.latency_calls", f"must be at least 10 (got {bench.latency_calls})"),
            (bench.speed_texts >= 1, "bench.speed_texts", f"must be at least 1 (got {bench.speed_texts})"),
            (bench.bootstrap >= 100, "bench.bootstrap", f"must be at least 100 resamples (got {bench.bootstrap})"),
        ])
        sc = self.search
        bad_kinds = [k for k in sc.kinds if k not in SEARCH_KINDS]
        _check([
            (sc.trials >= 0, "search.trials", f"must be 0 or more (got {sc.trials}); --search N runs N trials"),
            (sc.timeout is None or sc.timeout > 0, "search.timeout", f"must be positive seconds (got {sc.timeout})"),
            (bool(sc.kinds) and not bad_kinds, "search.kinds", f"must list student kinds of {', '.join(SEARCH_KINDS)} (got {', '.join(sc.kinds) or 'none'})"),
            (bool(sc.widths) and min(sc.widths) >= 8, "search.widths", f"must list widths of at least 8 (got {sc.widths})"),
            (bool(sc.embeds) and min(sc.embeds) >= 8, "search.embeds", f"must list widths of at least 8 (got {sc.embeds})"),
            (bool(sc.layers) and min(sc.layers) >= 1, "search.layers", f"must list layer counts of at least 1 (got {sc.layers})"),
            (sc.max_epochs >= 1, "search.max_epochs", f"must be at least 1 (got {sc.max_epochs})"),
            (sc.max_augment >= 0, "search.max_augment", f"must be 0 or more (got {sc.max_augment})"),
            (sc.prune_drop is None or sc.prune_drop >= 0, "search.prune_drop", f"must be 0 or more points (got {sc.prune_drop}), or none"),
            (sc.storage is None or bool(sc.storage.strip()), "search.storage", "is empty: pass --storage URL, or leave it out for sqlite in the run directory"),
        ])
        parse_size(b.size, "--budget-size")
        parse_latency(b.latency, "--budget-latency")
        TrainConfig(task=self.task, out=self.out, data=self.data, model=self.model, train=self.train).validate()
        for entry in self.students:
            spec, train, augment, loss = ladder_entry(entry, self.distill)
            if "=" in spec.split(":")[0]:  # `--set students=cnn:filters=128,embed=64` split at the spec's own commas
                raise UserError(
                    f"setting students: {entry!r} is not a student spec: specs hold commas, so give each with --student SPEC "
                    "or as a YAML list (--set 'students=[\"cnn:filters=128,embed=64\"]')"
                )
            kind = parse_student(spec)[0]
            if self.task == "classification":  # (the other tasks keep the default ladder's kinds they take, and refuse the rest)
                check_task(spec, kind, self.task)
            DistillConfig(teacher="-", student=spec, out=self.out, data=self.data, augment=augment, loss=loss, train=train).validate()


LOSS_OVERRIDES = ("kd", "ce", "mse", "hidden", "attention", "temperature")  # distill.loss keys a ladder entry may set


def ladder_entry(entry: str, ladder: LadderConfig | None = None) -> tuple[str, OptimConfig, float, LossConfig]:
    """A ladder entry `"SPEC [key=value ...]"` as its student spec, training settings, augmentation and loss: the
    ladder's (`ladder.train`, `ladder.augment`, `ladder.loss`) with the entry's own overrides, e.g.
    `"drop:every=2 lr=1e-4 augment=0"` or `"cnn:filters=64 temperature=4 kd=0.7 ce=0.3"` (what a search trial is)."""
    ladder = ladder or LadderConfig()
    if not entry.split():
        raise UserError("setting students: an empty entry: give a student spec such as cnn:filters=128,embed=64")
    spec, *overrides = entry.split()
    keys = {f.name for f in dataclasses.fields(OptimConfig)} | {"augment"} | set(LOSS_OVERRIDES)
    values = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or key not in keys:
            raise UserError(
                f"--student {entry!r}: {item!r} is not a training override: write key=value after the spec with a "
                f"distill.train key (epochs, lr, batch_size, patience, ...), augment or a distill.loss weight ({', '.join(LOSS_OVERRIDES)}), "
                "e.g. 'drop:every=2 lr=1e-4 epochs=4'"
            )
        values[key] = _parse_yaml(raw)
    augment = float(_coerce(values.pop("augment", ladder.augment), float, f"students[{spec}].augment"))
    if augment < 0:
        raise UserError(f"setting students[{spec}].augment must be 0 or more (got {augment})")
    loss_values = {k: values.pop(k) for k in LOSS_OVERRIDES if k in values}
    own_loss = from_dict(LossConfig, loss_values, f"students[{spec}].")
    loss = dataclasses.replace(ladder.loss, **{k: getattr(own_loss, k) for k in loss_values})
    own = from_dict(OptimConfig, values, f"students[{spec}].")
    return spec, dataclasses.replace(ladder.train, **{k: getattr(own, k) for k in values}), augment, loss


# ---------------------------------------------------------------------------------------------- load / save


@dataclass
class LMDistillConfig:
    """`slm distill --task lm`: a small language model learns from a large one's continuations of your prompts
    (sequence-level distillation), and from its next-token distributions where the two share a vocabulary."""

    teacher: str = _f("", "The large causal LM: a local Hugging Face causal-LM directory (or its ONNX export: sequence-level only).")
    prompts: str = _f("", "Prompts the teacher continues: .txt (one per line), .jsonl or .csv (the --text-col field).")
    out: str = _f("", "Output directory for the student (a Hugging Face causal-LM directory).")
    eval: str | None = _f(None, "Held-out text for the student's perplexity; default: a split of the teacher's continuations.")
    text_col: str = _f("text", "Field (or column) of the prompts with the text.")
    samples: int = _f(1, "Continuations the teacher writes per prompt (more than 1 wants temperature > 0).")
    max_new_tokens: int = _f(64, "Most tokens per continuation; 0: none, the student learns the prompts themselves with token-level KD (what slm run --task lm does with the training text).")
    temperature: float = _f(0.0, "Teacher sampling temperature; 0 is greedy (Kim & Rush's sequence-level KD).")
    top_p: float = _f(1.0, "Teacher nucleus sampling; 1 turns it off.")
    shape: str = _f(LM_DEFAULT_SHAPE, "The student's shape (a Llama-style decoder): keys layers, hidden, heads, kv_heads, ffn, context.")
    vocab_size: int | None = _f(None, "None: the student shares the teacher's tokenizer (token-level KD applies); a number: its own byte-level BPE of that size trained on the continuations (sequence-level only).")
    kd: float = _f(0.5, "Weight of the token-level KL loss against the teacher's next-token distributions (0 to 1; needs a shared vocabulary and a PyTorch teacher).")
    kd_temperature: float = _f(2.0, "Temperature of the token-level KD.")
    cache_dir: str | None = _f(None, "Where the teacher's continuations are cached; default: <teacher>/distill-cache.")
    seed: int = _f(0, "Seed of the teacher's sampling.")
    train: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=10, lr=1e-3, batch_size=32, patience=0, warmup=0.05))

    def validate(self) -> None:
        o = self.train
        _check([
            (bool(self.teacher), "teacher", "no teacher: pass --teacher DIR (a causal-LM directory)"),
            (bool(self.prompts), "prompts", "no prompts: pass --prompts FILE"),
            (bool(self.out), "out", "no output directory: pass --out DIR"),
            (self.samples >= 1, "samples", f"must be at least 1 (got {self.samples})"),
            (self.max_new_tokens >= 0, "max_new_tokens", f"must be 0 or more (got {self.max_new_tokens})"),
            (self.max_new_tokens > 0 or self.samples == 1, "samples", "must be 1 when max_new_tokens is 0 (no continuations to sample)"),
            (self.temperature >= 0, "temperature", f"must be 0 or more (got {self.temperature})"),
            (0 < self.top_p <= 1, "top_p", f"must be in (0, 1] (got {self.top_p})"),
            (self.vocab_size is None or self.vocab_size >= LM_MIN_VOCAB, "vocab_size", f"must be at least {LM_MIN_VOCAB} (got {self.vocab_size})"),
            (0 <= self.kd <= 1, "kd", f"must be in [0, 1] (got {self.kd})"),
            (self.kd_temperature > 0, "kd_temperature", f"must be positive (got {self.kd_temperature})"),
            (o.epochs >= 1, "train.epochs", f"must be at least 1 (got {o.epochs})"),
            (o.lr > 0, "train.lr", f"must be positive (got {o.lr})"),
        ])


def help_of(cls: type, name: str) -> str:
    """The help text of field `name` of dataclass `cls` (the CLI's option help)."""
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, values: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, checking names and types; `where` prefixes key names."""
    if not isinstance(values, dict):
        raise UserError(f"setting {where.rstrip('.') or 'config'} must be a mapping (got {values!r})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {where}{close[0]}?" if close else f"; valid keys: {', '.join(fields)}"
            raise UserError(f"unknown setting {where}{key}{hint}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            nested = from_dict(kind, value, f"{where}{key}.")
            default = fields[key].default_factory() if fields[key].default_factory is not dataclasses.MISSING else kind()
            given = {name: getattr(nested, name) for name in (value or {})}
            kwargs[key] = dataclasses.replace(default, **given)  # a stage's own defaults (e.g. distill's lr) stay
        else:
            kwargs[key] = _coerce(value, kind, f"{where}{key}")
    return cls(**kwargs)


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML without YAML 1.1's base-60 numbers, so a layer pair such as 3:6 stays a string instead of 186."""


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)] for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0b[0-1_]+|0[0-7_]+|0|[1-9][0-9_]*|0x[0-9a-fA-F_]+)$"), list("-+0123456789"))
_YamlLoader.add_implicit_resolver(
    _FLOAT, re.compile(r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def _parse_yaml(text: str) -> Any:
    """A YAML config document or `--set` value (see `_YamlLoader`)."""
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None, **flags: Any) -> Any:
    """Defaults < YAML file < CLI flags (dotted keys, None = not given) < `--set key=value` overrides."""
    values: dict = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: config file not found: check the path given to --config")
        try:
            loaded = _parse_yaml(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise UserError(f"{path}{line}: not valid YAML: fix the syntax") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: a config must be a YAML mapping of settings")
        values = loaded
    for key, value in flags.items():
        if value is not None:
            _set_dotted(values, key, value)
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value, for example --set train.lr=3e-5")
        key, raw = item.split("=", 1)
        _set_dotted(values, key.strip(), _parse_yaml(raw) if raw.strip() else None)
    return from_dict(cls, values)


def save_config(cfg: Any, path: Path) -> None:
    """Write `cfg` as YAML, atomically: a reader (another process of a torchrun --resume) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)


def _set_dotted(values: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: {part} is not a section")
    node[leaf] = value


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check `value` against the annotated type, converting the lossless cases (\"3e-5\" → float, 3 → 3.0)."""
    options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    if value is None:
        if type(None) in options:
            return None
        raise UserError(f"setting {key} needs a value")
    for option in options:
        if typing.get_origin(option) is list:
            items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
            if typing.get_args(option) == (int,):  # list[int]: whole numbers, written 64,128 or as a YAML list
                if isinstance(items, list) and all(isinstance(v, int) and not isinstance(v, bool) or isinstance(v, str) and v.strip().isdigit() for v in items):
                    return [int(v) for v in items]
                raise UserError(f"setting {key} must be a list of whole numbers, like 64,128 (got {value!r})")
            if isinstance(items, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in items):
                return [str(v).strip() for v in items]
            continue
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if option is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    names = " or ".join("none" if o is type(None) else "a list" if typing.get_origin(o) is list else o.__name__ for o in options)
    raise UserError(f"setting {key} must be {names} (got {value!r})")
