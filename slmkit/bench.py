"""`slm bench`: accuracy, speed and footprint of models and baselines on one test set, written as a report.

Read top to bottom: `bench(cfg)` checks every input before it writes anything (model directories, the test
set, the labels), then, for each entry (the slmkit models given, then the baselines asked for):

1. prepares it: TF-IDF and fastText are trained on `cfg.train`; teacher-int8 is the teacher exported and
   dynamically quantized by slmkit's own stages, in the run's work directory. A baseline that fails is kept
   as a failed row with its reason, and the run goes on;
2. scores it on the whole test set with `metrics.classification_report`: accuracy and macro-F1 with 95%
   bootstrap intervals, the per-class table, the confusion matrix;
3. times it in `cfg.rounds` rounds, interleaved over entries and thread settings (these VMs drift between fast
   and slow states; interleaving spreads the drift over everyone): batch-1 latency percentiles after warm-up
   (`measure.latency_ms`) and batch-32 throughput with tokenization (`measure.throughput`). Each figure is the
   median over rounds, kept with its min and max;
4. weighs it: bytes on disk, parameters, and the peak RSS of a fresh process that loads it and serves batch 1.

Then it warns about noisy figures (max - min over 10% of the median) and int8 models slower than their fp32
source, marks the Pareto front of accuracy vs batch-1 latency, and writes `results.json` (its schema is
`slmkit/schemas/bench-results.schema.json`), `report.md`, `report.html`, the charts and a model card per slmkit
model (`slmkit.report`). Nothing is written unless the whole run succeeds.

NER and QA models go through the same steps in their task's terms: the test file is read by the models' task
(CoNLL / seq.in+seq.out / JSONL spans; SQuAD / MRQA), each model is scored by the task's full report (entity
F1, precision and recall; SQuAD F1 and exact match; 95% bootstrap intervals), and timed per sentence / per
question with decoding included (`measure.TaskModel`). The teacher baselines apply (teacher-torch runs the
PyTorch model directly: transformers 5 has no QA pipeline); tfidf and fastText classify whole texts, so they are
skipped with a note in the report.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from slmkit import artifacts, measure
from slmkit.config import BenchConfig, ExportConfig, QuantizeConfig, save_config
from slmkit.data import Example, read_examples
from slmkit.errors import UserError
from slmkit.hardware import fingerprint, int8_speedup_expected
from slmkit.metrics import classification_report
from slmkit.progress import TaskProgress

SCHEMA_VERSION = 1  # results.json: bump on any change that is not a pure addition
SPREAD_WARNING = 0.10  # (max - min) / median over rounds above this: the figure is noisy
# per task: the metrics the report shows, (key in the entry's metrics, display name); the first is the one the
# Pareto front, the charts and `slm run`'s selection use
METRIC_COLUMNS = {
    "classification": (("accuracy", "accuracy"), ("macro_f1", "macro-F1")),
    "ner": (("f1", "entity F1"), ("precision", "entity precision"), ("recall", "entity recall")),
    "qa": (("f1", "F1"), ("exact_match", "exact match")),
}
UNITS = {"classification": "texts", "ner": "sentences", "qa": "questions"}  # what one timed item is
TEXT_BASELINES = ("tfidf", "fasttext")  # text classifiers: they do not apply to NER or QA
VERSIONS = ("slmkit", "numpy", "onnxruntime", "torch", "transformers", "tokenizers", "scikit-learn", "fasttext-wheel")


@dataclass
class BenchResult:
    out: Path
    results: dict  # what results.json holds


@dataclass
class Entry:
    """One row of the report: an slmkit model or a baseline, and how to open, weigh and time it."""

    name: str
    kind: str  # "model" or "baseline"
    backend: str  # "pytorch", "onnx", "sklearn", "fasttext" or "hf-pipeline"
    precision: str = "fp32"  # "fp32" or "int8"
    path: Path | None = None  # what is weighed and loaded by the fresh RSS process (set by `prepare` for baselines)
    open: Callable[[int], Any] | None = None  # threads -> an object with `labels` and `predict_proba(texts)`
    rss_opener: str = "slmkit.measure:open_model"
    bytes: int | None = None
    parameters: int | None = None
    fp32_reference: str | None = None  # the entry this int8 model was quantized from, when it is measured too
    provenance: dict | None = None
    error: str | None = None
    record: dict = field(default_factory=dict)


def bench(cfg: BenchConfig, overwrite: bool = False, progress: bool = True) -> BenchResult:
    """Measure `cfg.models` and `cfg.baselines` on `cfg.data` and write the report to `cfg.out`."""
    cfg.validate()
    started = time.perf_counter()
    label_map = dict(item.split("=", 1) for item in cfg.label_map)
    label_map = {old.strip(): new.strip() for old, new in label_map.items()}
    data_path = Path(cfg.data)
    task = bench_task(cfg)
    if task == "lm":  # causal language models: perplexity, autocomplete and per-token speed (slmkit.bench_lm)
        from slmkit.bench_lm import bench_lm

        return bench_lm(cfg, overwrite, progress)
    baselines, notes = list(cfg.baselines), []
    if "kn4" in baselines:
        baselines.remove("kn4")
        notes.append("baseline kn4 skipped: it is a word n-gram language model and applies to --models that are causal LMs")
    if task != "classification":
        skipped = [b for b in baselines if b in TEXT_BASELINES]
        baselines = [b for b in baselines if b not in TEXT_BASELINES]
        notes += [f"baseline {b} skipped: it classifies whole texts and does not apply to the {task} task" for b in skipped]
    teacher = Path(cfg.teacher) if cfg.teacher and any(b.startswith("teacher-") for b in baselines) else None
    if task == "classification":
        examples = _read(data_path, cfg, label_map)
    else:  # read by the task, with the reading settings recorded for the models (NER columns and scheme)
        examples = _read_task(data_path, Path(cfg.models[0]) if cfg.models else teacher)
    entries = [_model_entry(Path(m), name, cfg.batch_size) for m, name in zip(cfg.models, _model_names(cfg))]
    if task == "classification":
        for entry in entries:
            _check_labels(examples, data_path, entry.record["labels"], f"model {entry.path}")
    if teacher is not None:
        artifacts.check_model_dir(teacher)
        if task == "classification":
            _check_labels(examples, data_path, artifacts.model_labels(teacher), f"teacher {teacher}")
    train = _read(Path(cfg.train), cfg, label_map) if set(TEXT_BASELINES) & set(baselines) else None
    taken = {e.name for e in entries} & set(baselines)
    if taken:
        raise UserError(f"--models: the name {sorted(taken)[0]!r} is a baseline's: pass --names to name the models")
    entries += [Entry(name, "baseline", _BASELINE_BACKENDS[name] if task == "classification" or name != "teacher-torch" else "pytorch") for name in baselines]
    settings = {s: 1 if s == "1" else (os.cpu_count() or 1) if s == "all" else int(s) for s in dict.fromkeys(cfg.threads)}

    texts = [e.text for e in examples] if task == "classification" else examples  # timed items: texts, sentences or questions
    order = np.random.default_rng(cfg.seed).permutation(len(texts))[: cfg.speed_texts]
    speed_texts = [texts[i] for i in order]
    torch_threads = _torch_threads()
    out = Path(cfg.out)
    try:
        with artifacts.staged(out, overwrite) as staging, TaskProgress(progress) as bar:
            work = staging / ".work"
            bar.start(len(entries) * (3 + cfg.rounds * len(settings)))  # prepare, score, time, weigh
            for entry in entries:
                bar.step(f"preparing {entry.name}")
                if entry.kind == "baseline":
                    _guard(entry, lambda: _prepare_baseline(entry, cfg, train, teacher, work))
                bar.advance()
            _pair_int8(entries, teacher)
            scorers = {}
            for entry in entries:
                bar.step(f"scoring {entry.name}")
                _guard(entry, lambda: scorers.update({(entry.name, s): (entry.open(n), n) for s, n in settings.items()}))
                _guard(entry, lambda: _score(entry, scorers[(entry.name, list(settings)[-1])], examples, cfg, task))
                bar.advance()
            runs = time_rounds(entries, scorers, settings, speed_texts, cfg, bar)
            for entry in entries:
                bar.step(f"peak RSS of {entry.name}")
                if entry.error is None:
                    entry.record["speed"] = {s: {"threads": n, **_summarize(runs[(entry.name, s)])} for s, n in settings.items()}
                    if cfg.rss:
                        _guard(entry, lambda: entry.record.update(_rss(entry)))
                bar.advance()
            scorers.clear()
            results = _results(cfg, entries, examples, label_map, settings, len(speed_texts), time.perf_counter() - started, task, notes)
            shutil.rmtree(work, ignore_errors=True)
            save_config(cfg, staging / artifacts.CONFIG)
            artifacts.write_json(staging / artifacts.BENCH_RESULTS, results)
            from slmkit.report import write_report  # matplotlib is imported only here

            write_report(results, staging)
    finally:
        _set_torch_threads(torch_threads)
    return BenchResult(out, results)


# ---------------------------------------------------------------------------------------------- inputs


def _read(path: Path, cfg: BenchConfig, label_map: dict[str, str]) -> list[Example]:
    examples = read_examples(path, cfg.text_col, cfg.label_col, cfg.encoding, cfg.drop_empty)
    if not examples:  # read_examples already refuses a file without rows; kept for other readers
        raise UserError(f"{path}: empty test set: nothing to score")
    return [replace(e, label=label_map.get(e.label, e.label)) for e in examples]


def bench_task(cfg: BenchConfig) -> str:
    """The task of every model (and of the teacher): one task per report."""
    dirs = [Path(m) for m in cfg.models] + ([Path(cfg.teacher)] if cfg.teacher and any(b.startswith("teacher-") for b in cfg.baselines) else [])
    tasks = {d: _dir_task(d) for d in dirs if d.is_dir()}
    if len(set(tasks.values())) > 1:
        shown = ", ".join(f"{d} ({t})" for d, t in tasks.items())
        raise UserError(f"--models: models of different tasks in one report: {shown}: bench each task's models separately")
    if not tasks and cfg.baselines and all(b == "kn4" for b in cfg.baselines):
        return "lm"  # only the word n-gram baseline: a language-model report
    return next(iter(tasks.values()), "classification")


def _dir_task(directory: Path) -> str:
    """A model directory's task; "lm" for any causal LM (a Hugging Face *ForCausalLM records no slmkit task)."""
    from slmkit.export_lm import is_causal_lm_dir

    return "lm" if is_causal_lm_dir(directory) else artifacts.model_task(directory)


def _read_task(path: Path, model_dir: Path) -> list:
    """NER sentences or QA questions of the test file, read with the settings recorded for `model_dir`."""
    from slmkit.lineage import task_examples

    if not path.is_file():
        raise UserError(f"{path}: test file not found: pass --data FILE")
    examples, _ = task_examples(path, model_dir, "eval", "--data")
    if not examples:
        raise UserError(f"{path}: empty test set: nothing to score")
    return examples


def _model_names(cfg: BenchConfig) -> list[str]:
    names = list(cfg.names) or [Path(m).name or str(m) for m in cfg.models]
    if len(set(names)) < len(names) and not cfg.names:
        names = [str(m) for m in cfg.models]  # two directories with one name: show their paths
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--models: {twice[0]} is given twice: measure each directory once, or pass --names")
    return names


def _model_entry(directory: Path, name: str, batch_size: int) -> Entry:
    """An slmkit model directory (PyTorch or ONNX) as an entry; anything else is a one-line UserError."""
    if not directory.is_dir():
        raise UserError(f"{directory}: model directory not found: pass the --out directory of slm train, distill, export or quantize")
    if (directory / artifacts.ONNX_MODEL).is_file():
        from slmkit.runtime import load_manifest

        manifest = load_manifest(directory)
        labels, precision, backend = list(manifest["labels"]), manifest.get("precision", "fp32"), "onnx"
    elif (directory / artifacts.WEIGHTS).is_file() or (directory / artifacts.HF_CONFIG).is_file():
        artifacts.check_model_dir(directory)
        labels = artifacts.model_labels(directory) if artifacts.model_task(directory) != "qa" else []  # QA: spans, no classes
        precision, backend = "fp32", "pytorch"
    else:
        artifacts.refuse_pickle(directory, artifacts.WEIGHTS)
        raise UserError(
            f"{directory}: neither an slmkit model (config.json + model.safetensors) nor an exported ONNX model "
            f"(model.onnx + manifest.json): pass the --out directory of slm train, distill, export or quantize"
        )
    entry = Entry(name, "model", backend, precision, directory, rss_opener="slmkit.measure:open_model")
    entry.open = lambda threads: measure.open_model(directory, threads=threads, batch_size=batch_size)
    entry.bytes, entry.parameters = measure.size_bytes(directory), measure.parameters(directory)
    entry.provenance = _provenance(directory, labels)
    entry.record["labels"] = labels
    return entry


def _check_labels(examples: list[Example], path: Path, known: list[str], who: str) -> None:
    """The data's labels must all be ones `who` knows; the error names every unknown label."""
    known_set = set(known)
    unknown: dict[str, list[int]] = {}
    for e in examples:
        if e.label not in known_set:
            unknown.setdefault(e.label, []).append(e.line)
    if unknown:
        shown = ", ".join(f"{label!r} ({len(lines)} row{'s' if len(lines) > 1 else ''}, first on line {lines[0]})" for label, lines in list(unknown.items())[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        first = next(iter(unknown))
        known_shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
        raise UserError(
            f"{path}: labels that {who} does not know: {shown}{more} (it knows {known_shown}): "
            f"map them with --label-map {first}=KNOWN_LABEL or fix the data"
        )


def _provenance(directory: Path, labels: list[str]) -> dict:
    """What a model card says about where a model came from: its task, data, base and lineage."""
    from slmkit.lineage import training_config

    root = training_config(directory)
    data = root.get("data") if isinstance(root.get("data"), dict) else {}
    model = root.get("model") if isinstance(root.get("model"), dict) else {}
    info: dict[str, Any] = {
        "task": artifacts.model_task(directory) if (directory / artifacts.CONFIG).is_file() else "classification",
        "n_labels": len(labels),
        "train_data": data.get("train"),
        "eval_data": data.get("eval"),
        "base": model.get("base"),
        "teacher": root.get("teacher"),
        "student": root.get("student"),
        "max_length": None,
        "derived_from": None,
    }
    manifest = directory / artifacts.MANIFEST
    if manifest.is_file():
        m = artifacts.read_json(manifest)
        info["max_length"], info["derived_from"] = m.get("max_length"), m.get("source")
        info["quantization"] = m.get("quantization")
    elif (directory / artifacts.TOKENIZER_CONFIG).is_file():
        info["max_length"] = artifacts.read_json(directory / artifacts.TOKENIZER_CONFIG).get("model_max_length")
    if (directory / artifacts.METRICS).is_file():
        stage = artifacts.read_json(directory / artifacts.METRICS)
        info["n_train"] = stage.get("n_train") if isinstance(stage, dict) else None
    return info


# ---------------------------------------------------------------------------------------------- baselines

_BASELINE_BACKENDS = {"tfidf": "sklearn", "fasttext": "fasttext", "teacher-torch": "hf-pipeline", "teacher-int8": "onnx"}


def _prepare_baseline(entry: Entry, cfg: BenchConfig, train: list[Example] | None, teacher: Path | None, work: Path) -> None:
    """Train (tfidf, fasttext), load (teacher-torch) or build (teacher-int8) a baseline, and weigh it."""
    from slmkit import baselines

    started = time.perf_counter()
    if entry.name in ("tfidf", "fasttext"):
        cls = baselines.TfidfBaseline if entry.name == "tfidf" else baselines.FastTextBaseline
        directory = work / entry.name
        cls.train([e.text for e in train], [e.label for e in train], directory, seed=cfg.seed)
        entry.path, entry.rss_opener = directory, "slmkit.baselines:open_baseline"
        entry.open = lambda threads: cls(directory, threads=threads)
        entry.bytes, entry.parameters = baselines.saved_bytes(directory), cls(directory).parameters
        entry.record["train_data"] = str(cfg.train)
    elif entry.name == "teacher-torch" and artifacts.model_task(teacher) != "classification":  # PyTorch, run directly
        entry.path = teacher
        entry.open = lambda threads: measure.TaskModel(teacher, threads=threads, batch_size=cfg.batch_size)
        entry.bytes, entry.parameters = measure.size_bytes(teacher), measure.parameters(teacher)
    elif entry.name == "teacher-torch":
        entry.path, entry.rss_opener = teacher, "slmkit.baselines:open_pipeline"
        entry.open = lambda threads: baselines.PipelineBaseline(teacher, threads=threads, batch_size=cfg.batch_size)
        entry.bytes, entry.parameters = measure.size_bytes(teacher), measure.parameters(teacher)
    else:  # teacher-int8: slm export, then slm quantize --method dynamic
        from slmkit.export import export
        from slmkit.quantize import quantize

        exported = export(ExportConfig(model=str(teacher), out=str(work / "teacher-onnx"), probe_data=cfg.data, text_col=cfg.text_col)).out
        int8 = quantize(QuantizeConfig(model=str(exported), out=str(work / "teacher-int8"), method="dynamic"), progress=False).out
        entry.path, entry.precision = int8, "int8"
        entry.open = lambda threads: measure.open_model(int8, threads=threads, batch_size=cfg.batch_size)
        entry.bytes, entry.parameters = measure.size_bytes(int8), measure.parameters(int8)
    entry.record["prepare_seconds"] = time.perf_counter() - started


def _guard(entry: Entry, step: Callable[[], Any]) -> None:
    """Run one step of `entry`: a baseline that fails is marked failed with its reason (a model's failure is
    raised: that is a bug or bad input, not a result). A failed entry skips its later steps."""
    if entry.error is not None:
        return
    try:
        step()
    except Exception as e:
        if entry.kind == "model":
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        entry.error = f"{type(e).__name__}: {reason}" if not isinstance(e, UserError) else reason


def _pair_int8(entries: list[Entry], teacher: Path | None) -> None:
    """Each int8 entry's fp32 counterpart among the entries: the ONNX model it was quantized from, else its
    PyTorch source; teacher-int8's is teacher-torch (or the teacher given among the models)."""
    by_path = {e.path.resolve(): e.name for e in entries if e.path is not None and e.precision == "fp32" and e.error is None}
    for entry in entries:
        if entry.precision != "int8" or entry.error is not None or entry.path is None:
            continue
        if entry.name == "teacher-int8":
            names = {e.name for e in entries if e.error is None}
            entry.fp32_reference = "teacher-torch" if "teacher-torch" in names else by_path.get(teacher.resolve()) if teacher else None
            if entry.fp32_reference is not None:
                continue  # else (slm run's own teacher-int8 candidate): the ONNX model it was quantized from, below
        candidates = []
        config = entry.path / artifacts.CONFIG
        if config.is_file():
            import yaml

            candidates.append((yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("model"))
        candidates.append(artifacts.read_json(entry.path / artifacts.MANIFEST).get("source"))
        for candidate in filter(None, candidates):
            if Path(candidate).resolve() in by_path:
                entry.fp32_reference = by_path[Path(candidate).resolve()]
                break


# ---------------------------------------------------------------------------------------- measurements


def _score(entry: Entry, scorer_threads: tuple[Any, int], examples: list, cfg: BenchConfig, task: str = "classification") -> None:
    """Task metrics on the whole test set, with the entry's own label order (NER/QA: the task's full report)."""
    scorer, threads = scorer_threads
    if task != "classification":
        with _threads(threads):
            entry.record["metrics"] = scorer.score(examples, n_resamples=cfg.bootstrap, seed=cfg.seed)
        return
    labels = list(scorer.labels)
    missing = sorted({e.label for e in examples} - set(labels))
    if missing:  # only baselines get here: models were checked before anything ran
        raise UserError(f"test labels that its training data lacks: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    index = {label: i for i, label in enumerate(labels)}
    y_true = np.array([index[e.label] for e in examples])
    with _threads(threads):
        probs = np.asarray(scorer.predict_proba([e.text for e in examples]), dtype=np.float64)
    entry.record["metrics"] = classification_report(y_true, probs, labels, n_resamples=cfg.bootstrap, seed=cfg.seed)


def time_rounds(entries: list[Entry], scorers: dict, settings: dict[str, int], texts: list[str], cfg: BenchConfig, bar: TaskProgress | None = None) -> dict:
    """Per (entry name, thread setting), one record per round: batch-1 latency percentiles (ms, after
    `cfg.warmup` untimed calls) and batch throughput (texts/s). Rounds are interleaved over all entries."""
    runs: dict[tuple[str, str], list[dict]] = {key: [] for key in scorers}
    for round_ in range(cfg.rounds):
        for entry in entries:
            for setting in settings:
                if bar is not None:
                    bar.step(f"timing round {round_ + 1}/{cfg.rounds}: {entry.name} @ {setting} thread(s)")
                if entry.error is None:
                    scorer, threads = scorers[(entry.name, setting)]
                    _guard(entry, lambda: runs[(entry.name, setting)].append(_time_once(scorer.predict_proba, threads, texts, cfg)))
                if bar is not None:
                    bar.advance()
    return runs


def _time_once(call: Callable[[list[str]], Any], threads: int, texts: list[str], cfg: BenchConfig) -> dict:
    with _threads(threads):
        latency = measure.latency_ms(call, texts, n=cfg.latency_calls, warmup=cfg.warmup)
        return {**latency, "throughput_per_s": measure.throughput(call, texts, batch=cfg.batch_size)}


def _summarize(rounds: list[dict]) -> dict:
    """Median, min and max over rounds of each figure, and the rounds themselves."""
    summary = {key: {"median": float(np.median(v)), "min": float(np.min(v)), "max": float(np.max(v))} for key, v in ((k, [r[k] for r in rounds]) for k in rounds[0])}
    return {**summary, "rounds": rounds}


def _rss(entry: Entry) -> dict:
    """Peak RSS of a fresh process that loads the entry with the runtime's default threads and serves batch 1.
    A probe that crashes costs only this figure (`rss_error` says why; the report warns), not the run."""
    try:
        rss = measure.peak_rss(entry.path, threads=None, opener=entry.rss_opener)
    except Exception as e:  # the child's last stderr line says why
        tail = (getattr(e, "stderr", "") or str(e)).strip()
        return {"peak_rss_mb": None, "rss_torch_imported": None, "rss_error": tail.splitlines()[-1] if tail else type(e).__name__}
    return {"peak_rss_mb": rss["peak_rss_mb"], "rss_torch_imported": rss["torch_imported"]}


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _set_torch_threads(n: int | None) -> None:
    torch = sys.modules.get("torch")
    if torch is not None and n:
        torch.set_num_threads(n)


@contextlib.contextmanager
def _threads(n: int):
    """torch's thread count is global to the process: set it for the measurement, restore it after. ONNX
    Runtime sessions carry their own (each entry is opened once per setting); scikit-learn's sparse products
    and fastText's predict run on one thread whatever is set."""
    before = _torch_threads()
    _set_torch_threads(n)
    try:
        yield
    finally:
        _set_torch_threads(before)


# -------------------------------------------------------------------------------------------- results


def _results(
    cfg: BenchConfig, entries: list[Entry], examples: list, label_map: dict, settings: dict, n_speed: int, seconds: float, task: str = "classification", notes: list[str] = ()
) -> dict:
    pareto_setting = "1" if "1" in settings else next(iter(settings))
    key = METRIC_COLUMNS[task][0][0]
    front = pareto_front([(e.name, e.record["metrics"][key], e.record["speed"][pareto_setting]["p50_ms"]["median"]) for e in entries if e.error is None])
    records = []
    for e in entries:
        record = {
            "name": e.name,
            "kind": e.kind,
            "backend": e.backend,
            "precision": e.precision,
            "path": str(e.path) if e.path is not None else None,
            "status": "ok" if e.error is None else "failed",
            "error": e.error,
            "metrics": e.record.get("metrics") if e.error is None else None,
            "speed": e.record.get("speed") if e.error is None else None,
            "bytes": e.bytes,
            "parameters": e.parameters,
            "peak_rss_mb": e.record.get("peak_rss_mb"),
            "rss_torch_imported": e.record.get("rss_torch_imported"),
            "rss_error": e.record.get("rss_error"),
            "pareto": e.name in front,
            "fp32_reference": e.fp32_reference,
            "prepare_seconds": e.record.get("prepare_seconds"),
            "provenance": e.provenance,
        }
        records.append(record)
    hardware = fingerprint(None)
    hardware["versions"] = {name: _version(name) for name in VERSIONS if _version(name)}
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": {
            "path": str(cfg.data),
            "n_examples": len(examples),
            "labels": _data_labels(examples, task),
            "label_map": label_map,
            "text_col": cfg.text_col,
            "label_col": cfg.label_col,
        },
        "task": task,
        "metric_columns": [list(c) for c in METRIC_COLUMNS[task]],
        "unit": UNITS[task],
        "train_data": cfg.train,
        "teacher": cfg.teacher,
        "timing": {
            "rounds": cfg.rounds,
            "latency_calls": cfg.latency_calls,
            "warmup": cfg.warmup,
            "speed_texts": n_speed,
            "batch_size": cfg.batch_size,
            "threads": settings,
            "pareto_threads": pareto_setting,
            "spread_warning": SPREAD_WARNING,
        },
        "bootstrap": {"resamples": cfg.bootstrap, "confidence": 0.95, "seed": cfg.seed},
        "hardware": hardware,
        "entries": records,
        "pareto_front": [name for name, *_ in sorted(((e.name, e.record["speed"][pareto_setting]["p50_ms"]["median"]) for e in entries if e.name in front), key=lambda x: x[1])],
        "warnings": list(notes) + timing_warnings(records, settings) + [f"peak RSS of {r['name']} not measured: {r['rss_error']}" for r in records if r["rss_error"]],
        "seconds": seconds,
    }


def _data_labels(examples: list, task: str) -> list[str]:
    """The test set's classes (classification), entity types (NER), or none (QA)."""
    if task == "classification":
        return sorted({e.label for e in examples})
    if task == "ner":
        return sorted({t[2:] for s in examples for t in s.tags if t != "O"})
    return []


def pareto_front(points: list[tuple[str, float, float]]) -> set[str]:
    """Names of the (name, accuracy, latency) points that no other point beats on both axes: at least as
    accurate and at least as fast, and strictly better on one."""
    front = set()
    for name, acc, lat in points:
        dominated = any(a >= acc and l <= lat and (a > acc or l < lat) for n, a, l in points if n != name)
        if not dominated:
            front.add(name)
    return front


def timing_warnings(records: list[dict], settings: dict[str, int]) -> list[str]:
    """Noisy figures (spread over SPREAD_WARNING of the median) and int8 models slower than their fp32 source."""
    lines = []
    by_name = {r["name"]: r for r in records if r["status"] == "ok"}
    for r in by_name.values():
        for setting in settings:
            speed = r["speed"][setting]
            for key, what, unit in (("p50_ms", "batch-1 p50 latency", "{:.3g} ms"), ("throughput_per_s", "throughput", "{:,.0f}/s")):
                s = speed[key]
                spread = (s["max"] - s["min"]) / s["median"] if s["median"] > 0 else 0.0
                if spread > SPREAD_WARNING:
                    lines.append(
                        f"{r['name']} at {_thread_words(setting, settings)}: {what} varied {100 * spread:.0f}% across rounds "
                        f"({unit.format(s['min'])} to {unit.format(s['max'])}): compare ratios within this run, not absolute numbers"
                    )
    for r in by_name.values():
        ref = by_name.get(r.get("fp32_reference") or "")
        if r["precision"] != "int8" or ref is None:
            continue
        for setting in settings:
            mine, theirs = r["speed"][setting], ref["speed"][setting]
            slower = []
            if mine["p50_ms"]["median"] > theirs["p50_ms"]["median"]:
                slower.append(f"batch-1 p50 {mine['p50_ms']['median']:.3g} ms vs {theirs['p50_ms']['median']:.3g} ms")
            if mine["throughput_per_s"]["median"] < theirs["throughput_per_s"]["median"]:
                slower.append(f"throughput {mine['throughput_per_s']['median']:,.0f}/s vs {theirs['throughput_per_s']['median']:,.0f}/s")
            if slower:
                why = "" if int8_speedup_expected() else " (this CPU has no VNNI/AMX int8 instructions)"
                lines.append(f"{r['name']} (int8) is slower than its fp32 source {ref['name']} at {_thread_words(setting, settings)} on this CPU{why}: {'; '.join(slower)}")
    return lines


def _thread_words(setting: str, settings: dict[str, int]) -> str:
    n = settings[setting]
    return f"{n} thread" + ("s" if n > 1 else "") + (" (all)" if setting == "all" else "")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
