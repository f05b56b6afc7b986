"""Speed and footprint of a model directory, measured the same way by every stage and benchmark that reports them.

- latency: batch 1, after warm-up, one `perf_counter` interval per call; p50/p95/p99 in milliseconds;
- throughput: texts per second at batch 32, tokenization included (the caller's texts, in order);
- size: bytes of the weights file (`model.onnx` or `model.safetensors`); parameters: elements of the weights;
- peak RSS: a fresh process that loads the model and serves one batch-1 request (so nothing else counts).

These VMs flip between fast and slow states from run to run, so `compare` measures several models in
interleaved rounds and keeps each one's median: ratios between models of one `compare` call are meaningful,
absolute numbers from different runs are not. Nothing here imports torch unless a PyTorch model is measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from slmkit import artifacts


def open_model(directory: str | Path, threads: int | None = None, batch_size: int = 32):
    """The runtime `Predictor` (ONNX) or a `TorchPredictor` (PyTorch) for `directory`; a `TaskModel` for an NER
    or QA model."""
    if artifacts.model_task(Path(directory)) != "classification":
        return TaskModel(directory, threads=threads, batch_size=batch_size)
    if (Path(directory) / artifacts.ONNX_MODEL).is_file():
        from slmkit.runtime import Predictor

        return Predictor(directory, threads=threads, batch_size=batch_size)
    from slmkit.predict import TorchPredictor

    return TorchPredictor(directory, threads=threads, batch_size=batch_size)


class TaskModel:
    """An NER or QA model directory (exported: the torch-free `TaskSession`; trained: PyTorch) behind the timing
    interface: `predict_proba(items)` runs the model over a batch of the task's examples and decodes them (each
    sentence's tags, each question's best answer), which is what serving one request costs. A plain string is
    taken as a one-sentence text (NER) or as a question asked of itself (QA), so a probe needs no data file."""

    def __init__(self, directory: str | Path, threads: int | None = None, batch_size: int = 32):
        from slmkit.predict import open_task_model

        self.runner = open_task_model(directory, threads=threads, batch_size=batch_size)
        self.task, self.labels = self.runner.task, list(self.runner.labels)

    def examples(self, items: list) -> list:
        if self.task.name == "ner":
            from slmkit.ner import text_sentence

            return [text_sentence(x, i) if isinstance(x, str) else x for i, x in enumerate(items)]
        from slmkit.qa import QAExample

        return [QAExample(str(i), x, x, [], i) if isinstance(x, str) else x for i, x in enumerate(items)]

    def predict_proba(self, items: list) -> list:
        """Per item: (tags, their probabilities) for NER, the best answers for QA."""
        examples = self.examples(items)
        features, outputs = self.runner.run(examples)
        if self.task.name == "ner":
            return self.task.predict_tags(features, outputs, self.labels)
        from slmkit.qa import decode_answers

        return decode_answers(examples, features, outputs)

    def score(self, examples: list, n_resamples: int = 1000, seed: int = 0) -> dict:
        """The task's full report (point estimates with 95% bootstrap intervals) against the examples' gold."""
        features, outputs = self.runner.run(examples)
        return self.task.score(examples, features, outputs, self.labels, full=True, seed=seed, n_resamples=n_resamples)


def latency_ms(call: Callable[[list[str]], object], texts: list[str], n: int = 200, warmup: int = 10) -> dict:
    """Batch-1 latency percentiles over `n` calls cycling through `texts`."""
    for i in range(warmup):
        call([texts[i % len(texts)]])
    times = np.empty(n)
    for i in range(n):
        text = [texts[i % len(texts)]]
        started = time.perf_counter()
        call(text)
        times[i] = time.perf_counter() - started
    p50, p95, p99 = np.percentile(times * 1000, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


def throughput(call: Callable[[list[str]], object], texts: list[str], batch: int = 32, warmup: int = 2) -> float:
    """Texts per second when `texts` arrive in batches of `batch` (tokenization included)."""
    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    for chunk in chunks[:warmup]:
        call(chunk)
    started = time.perf_counter()
    for chunk in chunks:
        call(chunk)
    return len(texts) / (time.perf_counter() - started)


def weights_file(directory: str | Path) -> Path:
    directory = Path(directory)
    onnx_path = directory / artifacts.ONNX_MODEL
    return onnx_path if onnx_path.is_file() else directory / artifacts.WEIGHTS


def size_bytes(directory: str | Path) -> int:
    return weights_file(directory).stat().st_size


def parameters(directory: str | Path) -> int:
    """Elements of the stored weights (an int8 weight counts as one parameter, like its fp32 original)."""
    path = weights_file(directory)
    if path.suffix == ".onnx":
        import onnx

        graph = onnx.load(str(path)).graph
        # quantized graphs also store scales and zero points (scalars or one per channel): not parameters
        return sum(int(np.prod(t.dims)) for t in graph.initializer if len(t.dims) >= 2 or (len(t.dims) == 1 and not t.name.endswith(("_scale", "_zero_point"))))
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())


_RSS_PROBE = """
import importlib, json, sys
from slmkit.measure import vm_hwm_mb
module, name = sys.argv[3].split(":")
open_model = getattr(importlib.import_module(module), name)
model = open_model(sys.argv[1], threads=int(sys.argv[2]) if sys.argv[2] != "0" else None)
model.predict_proba(["is this thing on? a short request to serve"])
print(json.dumps({"peak_rss_mb": vm_hwm_mb(), "torch_imported": "torch" in sys.modules}))
"""


def vm_hwm_mb() -> float:
    """This process's peak RSS in MB (VmHWM: unlike ru_maxrss, it does not inherit the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss(directory: str | Path, threads: int | None = None, opener: str = "slmkit.measure:open_model") -> dict:
    """Peak RSS (MB) of a fresh process that loads `directory` and serves one batch-1 request.

    `opener` ("module:function", called as `function(directory, threads=...)`) loads it in the child; the
    default serves slmkit model directories, and benchmarks pass their own (e.g. `slmkit.baselines:open_baseline`)."""
    argv = [sys.executable, "-c", _RSS_PROBE, str(directory), str(threads or 0), opener]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def runtime_overhead(predictor, texts: list[str], batch: int = 32, rounds: int = 3) -> dict:
    """The runtime's batch-32 throughput against its parts alone: the tokenizer plus ONNX Runtime sessions fed
    pre-tokenized, pre-padded batches. `ratio` = parts time / predictor time (1.0 = no overhead)."""
    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    feeds = []
    for chunk in chunks:
        ids = [e.ids for e in predictor.tokenizer.encode_batch(chunk)]
        feeds.append(predictor.feed(ids, max(map(len, ids))))
    best_predictor, best_parts = np.inf, np.inf
    for _ in range(rounds):
        started = time.perf_counter()
        for chunk in chunks:
            predictor.predict_proba(chunk)
        best_predictor = min(best_predictor, time.perf_counter() - started)
        started = time.perf_counter()
        for chunk in chunks:
            predictor.tokenizer.encode_batch(chunk)
        for feed in feeds:
            predictor.session.run([predictor.output], feed)
        best_parts = min(best_parts, time.perf_counter() - started)
    return {"predictor_per_s": len(texts) / best_predictor, "parts_per_s": len(texts) / best_parts, "ratio": best_parts / best_predictor}


def compare(models: dict[str, str | Path], texts: list[str], rounds: int = 3, threads: int | None = None, latency_calls: int = 200) -> dict[str, dict]:
    """Latency, throughput, size, parameters and peak RSS of several model directories, measured in
    interleaved rounds (each figure is the median over rounds)."""
    loaded = {name: open_model(path, threads=threads) for name, path in models.items()}
    runs: dict[str, list[dict]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in loaded.items():
            runs[name].append({**latency_ms(model.predict_proba, texts, n=latency_calls), "throughput_per_s": throughput(model.predict_proba, texts)})
    results = {}
    for name, path in models.items():
        median = {key: float(np.median([r[key] for r in runs[name]])) for key in runs[name][0]}
        results[name] = {**median, "bytes": size_bytes(path), "parameters": parameters(path), **peak_rss(path, threads)}
    return results
