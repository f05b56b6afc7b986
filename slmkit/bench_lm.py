"""`slm bench` for causal language models: held-out perplexity, autocomplete quality, generation speed and footprint.

`slmkit.bench.bench` hands a run here when its models are causal LMs (PyTorch directories of `slm train --task lm`
or any local Hugging Face causal LM, and their ONNX exports, fp32 or int8). The steps are the bench's, in an LM's
terms, and the results land in the same `results.json` / report layout:

1. prepares each entry: models are opened with `slmkit.generate.open_lm` (one decode loop for PyTorch and ONNX);
   the `kn4` baseline is `slmkit.autocomplete.KneserNey` (word 4-gram, interpolated Kneser-Ney) trained on the
   words of `cfg.train`;
2. scores it on the held-out documents of `cfg.data`: perplexity per token with its 95% bootstrap interval over
   documents (`metrics.perplexity_report`), and perplexity per WORD (the same total NLL over the number of
   whitespace words, so models with different tokenizers and the n-gram baseline compare); on a seeded sample of
   `cfg.sample` documents, next-word accuracy@3 and keystroke savings (`slmkit.autocomplete`), each with a
   bootstrap interval over documents;
3. times it in `cfg.rounds` rounds interleaved over entries and thread settings (`measure.lm_speed`): prompts
   cut from the held-out documents, time to first token (the prompt's prefill) and batch-1 greedy decoding with
   the KV cache, one `perf_counter` interval per token; `p50_ms` is the median milliseconds per new token and
   `throughput_per_s` new tokens per second, so the bench's report, Pareto front and `slm run`'s latency budget
   read them as they read a classifier's batch-1 latency;
4. weighs it: bytes of the weights file, parameters, and the peak RSS of a fresh process that loads the model
   and generates a few tokens.

The n-gram baseline has no tokens to time: its speed is left out (null), and it is drawn as a reference line.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from slmkit import artifacts, measure
from slmkit.bench import (
    SCHEMA_VERSION, SPREAD_WARNING, VERSIONS, BenchResult, Entry, _guard, _model_names, _pair_int8, _provenance, _rss, _set_torch_threads, _summarize,
    _threads, _torch_threads, _version, pareto_front, timing_warnings,
)
from slmkit.config import BenchConfig, save_config
from slmkit.errors import UserError
from slmkit.hardware import fingerprint
from slmkit.progress import TaskProgress

K = 3  # next-word accuracy@K: the suggestions a ghost-text box can show
PROMPT_TOKENS = 16  # tokens of each timing prompt (fewer when the context window is short)
METRIC_COLUMNS = (("next_word_accuracy", "next-word accuracy@3"), ("keystroke_savings", "keystroke savings"))
LM_BASELINES = ("kn4",)  # the baselines a language model is compared with


def bench_lm(cfg: BenchConfig, overwrite: bool = False, progress: bool = True) -> BenchResult:
    """Measure the causal LMs `cfg.models` and the `kn4` baseline on the held-out text `cfg.data`."""
    from datetime import datetime, timezone

    from slmkit.tasks.lm import read_documents

    started = time.perf_counter()
    notes = [f"baseline {b} skipped: it applies to classifiers, not to language models" for b in cfg.baselines if b not in LM_BASELINES]
    baselines = [b for b in cfg.baselines if b in LM_BASELINES]
    docs = read_documents(Path(cfg.data), cfg.text_col, cfg.encoding)
    entries = [_model_entry(Path(m), name) for m, name in zip(cfg.models, _model_names(cfg))]
    train = read_documents(Path(cfg.train), cfg.text_col, cfg.encoding) if baselines else None
    taken = {e.name for e in entries} & set(baselines)
    if taken:
        raise UserError(f"--models: the name {sorted(taken)[0]!r} is a baseline's: pass --names to name the models")
    entries += [Entry(name, "baseline", "ngram") for name in baselines]
    settings = {s: 1 if s == "1" else (os.cpu_count() or 1) if s == "all" else int(s) for s in dict.fromkeys(cfg.threads)}
    rng = np.random.default_rng(cfg.seed)
    sample = [docs[i] for i in sorted(rng.permutation(len(docs))[: cfg.sample])]
    speed_docs = [docs[i] for i in rng.permutation(len(docs))[: cfg.speed_texts]]
    torch_threads = _torch_threads()
    out = Path(cfg.out)
    try:
        with artifacts.staged(out, overwrite) as staging, TaskProgress(progress) as bar:
            bar.start(len(entries) * (3 + cfg.rounds * len(settings)))
            for entry in entries:
                bar.step(f"preparing {entry.name}")
                if entry.kind == "baseline":
                    _guard(entry, lambda: _prepare_kn(entry, train, cfg))
                bar.advance()
            _pair_int8(entries, None)
            opened: dict[tuple[str, str], Any] = {}
            for entry in entries:
                bar.step(f"scoring {entry.name}")
                if entry.kind == "model":
                    for s, n in settings.items():
                        opened[(entry.name, s)] = entry.open(n)
                    # scoring is thousands of one-token steps: one thread when timed at one (more only spin on small models)
                    setting = "1" if "1" in settings else list(settings)[-1]
                    with _threads(settings[setting]):
                        entry.record["metrics"] = score_lm(opened[(entry.name, setting)], docs, sample, cfg)
                else:
                    _guard(entry, lambda: entry.record.update(metrics=score_ngram(entry.record.pop("model"), docs, sample, cfg)))
                bar.advance()
            runs = _time_rounds(entries, opened, settings, speed_docs, cfg, bar)
            for entry in entries:
                bar.step(f"peak RSS of {entry.name}")
                if entry.error is None and entry.kind == "model":
                    entry.record["speed"] = {s: {"threads": n, **_summarize(runs[(entry.name, s)])} for s, n in settings.items()}
                    if cfg.rss:
                        entry.record.update(_rss(entry))
                bar.advance()
            opened.clear()
            results = _results(cfg, entries, docs, sample, settings, len(speed_docs), time.perf_counter() - started, notes)
            results["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            save_config(cfg, staging / artifacts.CONFIG)
            artifacts.write_json(staging / artifacts.BENCH_RESULTS, results)
            from slmkit.report import write_report

            write_report(results, staging)
    finally:
        _set_torch_threads(torch_threads)
    return BenchResult(out, results)


# ---------------------------------------------------------------------------------------------- entries


def _model_entry(directory: Path, name: str) -> Entry:
    """A causal-LM directory (PyTorch or an ONNX export) as an entry; anything else is a one-line UserError."""
    from slmkit.generate import open_lm

    if not directory.is_dir():
        raise UserError(f"{directory}: model directory not found: pass the --out directory of slm train --task lm, slm export or slm quantize")
    if (directory / artifacts.ONNX_MODEL).is_file():
        from slmkit.runtime import load_lm_manifest

        manifest = load_lm_manifest(directory)
        backend, precision = "onnx", manifest.get("precision", "int8" if manifest.get("quantization") else "fp32")
    else:
        from slmkit.lm import check_causal_lm_dir

        check_causal_lm_dir(directory, "--models")
        backend, precision = "pytorch", "fp32"
    entry = Entry(name, "model", backend, precision, directory, rss_opener="slmkit.bench_lm:open_probe")
    entry.open = lambda threads: open_lm(directory, threads=threads)
    entry.bytes, entry.parameters = measure.size_bytes(directory), measure.parameters(directory)
    entry.provenance = _provenance(directory, [])
    entry.provenance["task"] = "lm"
    return entry


def _prepare_kn(entry: Entry, train: list[str], cfg: BenchConfig) -> None:
    """Train the word 4-gram Kneser-Ney baseline on the words of --train (counts in memory: no file to weigh)."""
    from slmkit.autocomplete import KneserNey, words

    started = time.perf_counter()
    model = KneserNey([words(t) for t in train], order=int(entry.name[2:]))
    entry.record["model"] = model
    entry.parameters = sum(len(c) for c in model.raw.values())  # stored n-gram counts
    entry.record["train_data"] = str(cfg.train)
    entry.record["prepare_seconds"] = time.perf_counter() - started


class LMProbe:
    """A causal LM behind the RSS probe's `predict_proba(texts)`: generate a few greedy tokens after the text."""

    def __init__(self, directory: str | Path, threads: int | None = None):
        from slmkit.generate import open_lm

        self.lm = open_lm(directory, threads=threads)

    def predict_proba(self, texts: list[str]) -> list[int]:
        ids = self.lm.encode(texts[0])[: PROMPT_TOKENS]
        token = int(np.argmax(self.lm.stepper.start(ids)))
        out = [token]
        for _ in range(8):
            token = int(np.argmax(self.lm.stepper.step(token)))
            out.append(token)
        return out


def open_probe(directory: str | Path, threads: int | None = None) -> LMProbe:
    """`measure.peak_rss`'s opener for a causal LM."""
    return LMProbe(directory, threads=threads)


# ---------------------------------------------------------------------------------------------- scoring


def document_nll(lm, text: str) -> tuple[float, int]:
    """(total NLL in nats, predicted tokens) of one document: every token after the first, in windows of the
    context length that overlap by one token (each window starts fresh), so long documents are scored whole."""
    ids = lm.encode(text)
    context = max(lm.context_length or len(ids), 2)
    total, count, start = 0.0, 0, 0
    while start < len(ids) - 1:
        window = ids[start : start + context]
        logits = _sequence_logits(lm.stepper, window)[:-1].astype(np.float64)  # (n - 1, vocab): each predicts the next
        top = logits.max(-1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(-1))
        total += float((log_norm - logits[np.arange(len(window) - 1), window[1:]]).sum())
        count += len(window) - 1
        start += context - 1
    return total, count


def _sequence_logits(stepper, ids: list[int]) -> np.ndarray:
    """Logits (len(ids), vocab) at every position of one sequence: the ONNX stepper's own, or one PyTorch forward."""
    if hasattr(stepper, "sequence_logits"):
        return stepper.sequence_logits(ids)
    import torch

    with torch.inference_mode():
        return stepper.model(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0].float().numpy()


def _bootstrap_rate(numerators: np.ndarray, denominators: np.ndarray, n_resamples: int, seed: int) -> list[float]:
    """95% percentile-bootstrap interval of sum(numerators) / sum(denominators) over documents."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(numerators), size=(n_resamples, len(numerators)))
    den = denominators[idx].sum(1)
    values = numerators[idx].sum(1)[den > 0] / den[den > 0]
    low, high = np.quantile(values, [0.025, 0.975])
    return [float(low), float(high)]


def _quality(nll: np.ndarray, tokens: np.ndarray | None, n_words: np.ndarray, suggester, sample: list[str], cfg: BenchConfig) -> dict:
    """Perplexities (per token when `tokens`, per word) and autocomplete figures, each with its 95% interval."""
    from slmkit.autocomplete import next_word_hits, text_keystrokes
    from slmkit.metrics import perplexity_report

    metrics: dict[str, Any] = {"n_examples": int(len(nll)), "n_words": int(n_words.sum())}
    if tokens is not None:
        report = perplexity_report(nll, tokens, cfg.bootstrap, cfg.seed)
        metrics.update(n_tokens=report["n_tokens"], perplexity_per_token=report["perplexity"], perplexity_per_token_ci95=list(report["perplexity_ci95"]),
                       loss=report["loss"])
    words_report = perplexity_report(nll, n_words, cfg.bootstrap, cfg.seed)
    metrics.update(perplexity_per_word=words_report["perplexity"], perplexity_per_word_ci95=list(words_report["perplexity_ci95"]))
    hits = [next_word_hits(suggester, [text], K) for text in sample]
    keys = np.array([text_keystrokes(suggester, text) for text in sample], dtype=np.float64)  # (texts, 2): pressed, typed
    hit_sum, hit_n = np.array([h.sum() for h in hits]), np.array([len(h) for h in hits], dtype=np.float64)
    saved = keys[:, 1] - keys[:, 0]
    metrics.update(
        next_word_accuracy=float(hit_sum.sum() / max(hit_n.sum(), 1)),
        next_word_accuracy_ci95=_bootstrap_rate(hit_sum, hit_n, cfg.bootstrap, cfg.seed),
        keystroke_savings=float(saved.sum() / max(keys[:, 1].sum(), 1)),
        keystroke_savings_ci95=_bootstrap_rate(saved, keys[:, 1], cfg.bootstrap, cfg.seed),
        k=K, sample_texts=len(sample), sample_words=int(hit_n.sum()),
    )
    return metrics


def score_lm(lm, docs: list[str], sample: list[str], cfg: BenchConfig) -> dict:
    """A causal LM's figures on the held-out documents (perplexities) and the sample (autocomplete)."""
    from slmkit.autocomplete import LMSuggester, words

    scored = [document_nll(lm, d) for d in docs]
    nll = np.array([s[0] for s in scored])
    tokens = np.array([s[1] for s in scored], dtype=np.float64)
    if tokens.sum() == 0:
        raise UserError(f"{cfg.data}: every document is a single token: nothing to predict, so no perplexity: pass longer held-out texts")
    n_words = np.array([len(words(d)) for d in docs], dtype=np.float64)
    return _quality(nll, tokens, n_words, LMSuggester.from_lm(lm), sample, cfg)


def score_ngram(model, docs: list[str], sample: list[str], cfg: BenchConfig) -> dict:
    """The n-gram baseline's per-word perplexity (the same words, no end-of-text term: as the LMs are scored) and
    autocomplete figures. A word never seen in training gets a floor probability of 1e-12."""
    from slmkit.autocomplete import BOS, words

    nll, n_words = [], []
    for d in docs:
        ws = words(d)
        history = [BOS] * (model.order - 1)
        total = 0.0
        for w in ws:
            total -= math.log(max(model.score(w, tuple(history[-(model.order - 1) :])), 1e-12))
            history.append(w)
        nll.append(total)
        n_words.append(len(ws))
    return _quality(np.array(nll), None, np.array(n_words, dtype=np.float64), model, sample, cfg)


# ---------------------------------------------------------------------------------------------- timing


def _time_rounds(entries: list[Entry], opened: dict, settings: dict[str, int], docs: list[str], cfg: BenchConfig, bar: TaskProgress) -> dict:
    """Per (model, thread setting), one `measure.lm_speed` record per round; rounds interleaved over everyone."""
    runs: dict[tuple[str, str], list[dict]] = {key: [] for key in opened}
    for round_ in range(cfg.rounds):
        for entry in entries:
            for setting, threads in settings.items():
                bar.step(f"timing round {round_ + 1}/{cfg.rounds}: {entry.name} @ {setting} thread(s)")
                if entry.kind == "model":
                    lm = opened[(entry.name, setting)]
                    with _threads(threads):
                        runs[(entry.name, setting)].append(lm_speed(lm, docs, cfg.latency_calls, cfg.new_tokens, cfg.warmup))
                bar.advance()
    return runs


def lm_speed(lm, docs: list[str], tokens: int, new_tokens: int, warmup: int) -> dict:
    """Batch-1 greedy generation with the KV cache, after `warmup` untimed steps: prompts of up to PROMPT_TOKENS
    tokens cut from `docs` in turn, `new_tokens` tokens after each, until at least `tokens` tokens are timed.
    Time to first token = the prompt's prefill and the pick of the first token (ms); per-token latency
    percentiles (ms) over the decoding steps; throughput = decoded tokens per second of decoding."""
    context = lm.context_length or 1 << 30
    prompt_len = max(1, min(PROMPT_TOKENS, context // 4))
    steps = max(1, min(new_tokens, context - prompt_len))
    prompts = [ids[:prompt_len] for ids in (lm.encode(d) for d in docs) if ids] or [[lm.bos_id or 0]]
    stepper = lm.stepper
    token = int(np.argmax(stepper.start(prompts[0])))
    for _ in range(min(warmup, steps)):
        token = int(np.argmax(stepper.step(token)))
    first, per_token = [], []
    i = 0
    while len(per_token) < tokens:
        prompt = prompts[i % len(prompts)]
        i += 1
        began = time.perf_counter()
        token = int(np.argmax(stepper.start(prompt)))
        first.append(time.perf_counter() - began)
        for _ in range(steps):
            began = time.perf_counter()
            token = int(np.argmax(stepper.step(token)))
            per_token.append(time.perf_counter() - began)
    ms = np.array(per_token) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "ttft_ms": float(np.median(first) * 1000), "throughput_per_s": float(len(ms) / (ms.sum() / 1000))}


# ---------------------------------------------------------------------------------------------- results


def _results(cfg: BenchConfig, entries: list[Entry], docs: list[str], sample: list[str], settings: dict, n_speed: int, seconds: float, notes: list[str]) -> dict:
    """results.json in the bench's layout (task lm): `metric_columns` rank by next-word accuracy@3, speed is per token."""
    pareto_setting = "1" if "1" in settings else next(iter(settings))
    key = METRIC_COLUMNS[0][0]
    timed = [e for e in entries if e.error is None and "speed" in e.record]
    front = pareto_front([(e.name, e.record["metrics"][key], e.record["speed"][pareto_setting]["p50_ms"]["median"]) for e in timed])
    records = []
    for e in entries:
        records.append({
            "name": e.name, "kind": e.kind, "backend": e.backend, "precision": e.precision,
            "path": str(e.path) if e.path is not None else None,
            "status": "ok" if e.error is None else "failed", "error": e.error,
            "metrics": e.record.get("metrics") if e.error is None else None,
            "speed": e.record.get("speed") if e.error is None else None,
            "bytes": e.bytes, "parameters": e.parameters,
            "peak_rss_mb": e.record.get("peak_rss_mb"), "rss_torch_imported": e.record.get("rss_torch_imported"), "rss_error": e.record.get("rss_error"),
            "pareto": e.name in front, "fp32_reference": e.fp32_reference, "prepare_seconds": e.record.get("prepare_seconds"),
            "provenance": e.provenance, "train_data": e.record.get("train_data"),
        })
    hardware = fingerprint(None)
    hardware["versions"] = {name: _version(name) for name in VERSIONS if _version(name)}
    timed_records = [r for r in records if r["speed"] is not None]
    return {
        "schema_version": SCHEMA_VERSION,
        "created": "",
        "data": {"path": str(cfg.data), "n_examples": len(docs), "labels": [], "label_map": {}, "text_col": cfg.text_col, "label_col": cfg.label_col,
                 "sample": len(sample)},
        "task": "lm",
        "metric_columns": [list(c) for c in METRIC_COLUMNS],
        "unit": "tokens",
        "train_data": cfg.train,
        "teacher": None,
        "timing": {
            "rounds": cfg.rounds, "latency_calls": cfg.latency_calls, "warmup": cfg.warmup, "speed_texts": n_speed, "batch_size": 1,
            "threads": settings, "pareto_threads": pareto_setting, "spread_warning": SPREAD_WARNING,
            "prompt_tokens": PROMPT_TOKENS, "new_tokens": cfg.new_tokens,
        },
        "bootstrap": {"resamples": cfg.bootstrap, "confidence": 0.95, "seed": cfg.seed},
        "hardware": hardware,
        "entries": records,
        "pareto_front": [n for n, _ in sorted(((r["name"], r["speed"][pareto_setting]["p50_ms"]["median"]) for r in timed_records if r["pareto"]), key=lambda x: x[1])],
        "warnings": list(notes) + timing_warnings(timed_records, settings) + [f"peak RSS of {r['name']} not measured: {r['rss_error']}" for r in records if r["rss_error"]],
        "seconds": seconds,
    }
