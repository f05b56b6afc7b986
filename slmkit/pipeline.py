"""`slm run`: the whole job — fine-tune a teacher, distill a ladder of students, compress them, benchmark
everything, pick the model that meets the budgets and write a bundle ready to ship.

Read top to bottom: `run(cfg)` checks every input before it writes anything (the settings, the data files and
their splits, a given teacher, whether the run directory was made from this dataset), then plans the stages and
runs them in order:

    data              the data as JSONL train / eval / test splits (held out from --data, seeded and
                      stratified, when --eval / --test are not given)
    teacher           slm train on the splits (or the --teacher given)
    per student       distill (which also trims the student's vocabulary), export to ONNX, quantize to int8
    teacher           export, quantize: the teacher is a candidate too, and the accuracy reference
    bench             slm bench on the test split: every candidate (fp32 and int8) and the baselines
    select            `selection.select` over the measured candidates and the budgets (a pure function)
    deploy            the chosen ONNX model, tokenizer, labels, model card and bench report, with checksums

A student whose parameters besides its word embedding exceed the size budget even at one byte each (int8) can
never be chosen, so it is not distilled (`too_big`); the summary and `run.json` say which and why.

Caching: a stage's output lives in `stages/<stage>-<key>/`, where the key hashes everything the output depends
on — the data files' contents, the stage's own settings and the keys of the stages it reads. Rerunning reuses
every stage whose inputs are unchanged ("cached"); a changed setting reruns only the stages downstream of it.
Every stage module writes into a staging directory and renames it into place when complete, so an interrupted
or failed stage never looks finished: the same command resumes with it (an interrupted teacher continues from
its last finished epoch). `run.json` records the dataset's hashes, each stage's key, status and time, and the
selection.

With `--search N` a stage `search` runs between the ladder and the benchmark (`search_students`, the study in
`slmkit.search`): each trial is one more distill → export → quantize chain planned by `student_stages`, measured
by a one-model `bench_stage` on the eval split; the Pareto front's int8 models join the benchmark and the same
`select`. Workers sharing the run directory take turns (a file lock) on everything but the trials.

`--task ner|qa` runs the same stages in the task's terms: the splits are the task's examples (NER sentences
written as BIO CoNLL, QA questions as SQuAD JSON; QA holds out whole paragraphs), the teacher is trained for the
task, export and quantize use its features, the benchmark scores entity F1 / SQuAD F1, and the selection ranks
(and the max-drop budget counts points of) that F1. The students are the ladder's kinds the task takes (`task_ladder`:
transformer and layer-dropped students for both, a BiLSTM tagger for NER), with the teacher's vocabulary and no
text augmentation. `--task lm`'s students are `lm:` decoders (`LM_DEFAULT_STUDENTS` unless listed) that learn the
training split from the teacher's next-token distributions (`lm_student_stages`); the benchmark adds kn4, and the
selection ships the fastest candidate within the budgets, its quality budget a perplexity increase.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from slmkit import artifacts, search
from slmkit.config import (
    DEFAULT_STUDENTS, LM_DEFAULT_STUDENTS, NER_DEFAULT_STUDENTS, PIPELINE_BASELINES, BenchConfig, DataConfig, DistillConfig, ExportConfig, LMDistillConfig, OptimConfig, QuantizeConfig,
    RunConfig, TrainConfig, ladder_entry, save_config, to_dict,
)
from slmkit.data import Example, check_known_labels, check_labels, read_examples, stratified_split
from slmkit.errors import UserError
from slmkit.progress import stderr
from slmkit.selection import Budgets, Candidate, Selection, bytes_text, describe, parse_latency, parse_size, select, violations
from slmkit.students import TASK_KINDS, check_task, parse_student

PIPELINE_FORMAT = "slmkit-run-1"  # part of every key: a new layout never reuses an old stage
KEY_LENGTH = 12  # hex digits of a stage key in its directory name
TEACHER = "teacher"  # the teacher's candidate names: "teacher" (fp32 ONNX) and "teacher-int8"
INT8_SUFFIX = "-int8"
LOCK_FILE = ".lock"  # with a search: workers sharing the run directory take turns on its shared stages
DISTILL_TASKS = ("classification", "ner", "qa", "lm")  # the tasks slm distill trains students for
LM_STUDENT_CONTEXT = 512  # an lm student's context: the teacher's, at most this (a large --teacher's may be 32k)
SPLIT_FILES = {  # the data stage's files per task, in a format the task's reader takes back
    "ner": {"train": "train.conll", "eval": "eval.conll", "test": "test.conll"},
    "qa": {"train": "train.json", "eval": "eval.json", "test": "test.json"},
}
ABBREVIATIONS = {"layers": "L", "hidden": "H", "heads": "A", "ffn": "F", "embed": "E", "filters": "F", "widths": "W"}


@dataclass
class Splits:
    """The examples every stage trains, selects epochs and is tested on, and where they came from."""

    train: list  # Examples; NER Sentences; QA questions
    eval: list
    test: list
    labels: list[str]
    sources: dict[str, str]  # split -> the file it is, or the split it was held out as
    sha256: dict[str, str]  # given file -> content hash ("train", and "eval" / "test" when given)


@dataclass
class Stage:
    """One step of the plan: `make(progress)` writes `out` (staged, renamed into place when complete)."""

    name: str  # what the progress line shows: "distill bilstm-H128-E64"
    kind: str  # data, teacher, distill, export, quantize or bench
    key: str  # hash of every input: the same key means the same output
    out: Path
    make: Callable[[bool], Any] | None  # None: given by the user (--teacher), never made here


@dataclass
class RunResult:
    out: Path
    stages: list[dict]  # per stage: name, kind, key, dir, status (ran / cached / given), seconds
    selection: Selection
    teacher: Candidate  # the teacher's fp32 ONNX model: the accuracy and speed reference
    baselines: list[dict]  # per baseline: name, accuracy, latency_ms, bytes (or error)
    budgets: Budgets
    n_test: int  # test examples every figure is measured on
    latency_threads: int  # threads of the latency figure the budget reads
    report: Path  # the bench report (report.html) of this run
    bundle: Path | None  # deploy/, when a candidate met every budget
    stale_bundle: Path | None  # an earlier run's deploy/ left in place when none met this run's budgets
    search: Any = None  # slmkit.search.SearchResult with --search: the study's counts and Pareto front
    metric: str = "accuracy"  # what `accuracy` and `drop_points` of the candidates measure (NER/QA: f1)
    skipped: list[dict] = field(default_factory=list)  # ladder students the size budget ruled out before training


# ------------------------------------------------------------------------------------------ the stage


def run(cfg: RunConfig, fresh: bool = False, progress: bool = True) -> RunResult:
    """Run (or resume) the pipeline into `cfg.out` and return what was chosen and measured."""
    cfg.validate()
    out = Path(cfg.out)
    budgets = Budgets(parse_size(cfg.budget.size, "--budget-size"), parse_latency(cfg.budget.latency, "--budget-latency"), cfg.budget.max_drop,
                      "perplexity" if cfg.task == "lm" else "accuracy")
    splits = read_splits(cfg)
    teacher_given = Path(cfg.teacher) if cfg.teacher else None
    if teacher_given is not None:
        _check_teacher(teacher_given, splits, cfg.task)
    _check_run_dir(out, splits, fresh)
    searching = cfg.search.trials > 0
    p = plan(cfg, out, splits, teacher_given, budgets.max_bytes)
    total = len(p.stages) + 2 + searching  # + select, deploy (+ search)
    if searching and cfg.search.storage:
        search.open_storage(cfg.search.storage)  # an unreachable --storage fails here, before any training

    # only now is anything written: bad input above leaves the run directory as it was
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out, searching):  # another worker of the same search waits until these stages are done
        if fresh:
            for name in (artifacts.STAGES_DIR, artifacts.DEPLOY_DIR, artifacts.DISTILL_CACHE):
                shutil.rmtree(out / name, ignore_errors=True)
            (out / artifacts.RUN_RECORD).unlink(missing_ok=True)
            if not cfg.search.storage:
                (out / search.DEFAULT_DB).unlink(missing_ok=True)
        record = {"format": PIPELINE_FORMAT, "dataset": {k: {"path": splits.sources[k], "sha256": v} for k, v in splits.sha256.items()},
                  "stages": [], "skipped": p.skipped, "finished": False}
        for s in p.skipped:
            _say(progress, f"skipping {s['student']}: {s['why']}")
        artifacts.write_json(out / artifacts.RUN_RECORD, record)  # first: from now on this is a run directory of this dataset
        save_config(cfg, out / artifacts.CONFIG)
        for i, stage in enumerate(p.stages[:-1], start=1):  # every stage but the benchmark
            _record(record, out, stage, run_stage(stage, progress, f"stage {i} of {total}"))

    bench = p.stages[-1]
    found = None
    if searching:  # trials run outside the lock: workers sharing this run directory search side by side
        _say(progress, f"[bold]stage {total - 3} of {total}[/bold]: search ({cfg.search.trials} trials)")
        found = search_students(p.up, budgets, progress)
        extra = []
        for row in found.pareto:  # every Pareto trial: its stages are cached here, or (another machine's) made now
            distilled, exported, quantized = student_stages(p.up, row["entry"], row["name"])
            for stage in (distilled, exported, quantized):
                _record(record, out, stage, run_stage(stage, progress, f"search {row['name']}"), write=False)
            extra.append((row["name"] + INT8_SUFFIX, quantized))
        p.candidates += extra
        bench = bench_stage(p.up, p.candidates)
        record["search"] = found.to_dict()

    with _exclusive(out, searching):
        _record(record, out, bench, run_stage(bench, progress, f"stage {total - 2} of {total}"))
        results = artifacts.read_json(bench.out / artifacts.BENCH_RESULTS)
        if found is not None:  # the Pareto front in the run's report (results.json, report.md, report.html)
            from slmkit.report import add_search

            add_search(bench.out, found.to_dict())
            results = artifacts.read_json(bench.out / artifacts.BENCH_RESULTS)

        # select: the most accurate candidate within every budget, from the benchmark's figures
        _say(progress, f"[bold]stage {total - 1} of {total}[/bold]: select ({describe(budgets)})")
        candidates, teacher, baselines = candidates_from_bench(results)
        selection = select(candidates, budgets, prefer="speed" if cfg.task == "lm" else "accuracy")
        record["selection"] = {"chosen": selection.chosen.name if selection.chosen else None, "explanation": selection.explanation,
                               "budgets": describe(budgets), "teacher_accuracy": teacher.accuracy, "metric": metric_key(results)}

        # deploy: the chosen model as a bundle, rebuilt only when the choice or its measurements changed
        deploy = out / artifacts.DEPLOY_DIR
        bundle = stale = None
        if selection.chosen is None:
            _say(progress, f"[bold]stage {total} of {total}[/bold]: deploy: skipped (no candidate meets every budget)")
            stale = deploy if deploy.is_dir() else None
        else:
            chosen_stage = dict(p.candidates)[selection.chosen.name]
            key = _key("deploy", chosen_stage.key, bench.key, describe(budgets), (found.counts, found.pareto) if found else None)
            cached = (deploy / artifacts.MANIFEST).is_file() and artifacts.read_json(deploy / artifacts.MANIFEST).get("bundle", {}).get("key") == key
            _say(progress, f"[bold]stage {total} of {total}[/bold]: deploy {selection.chosen.name}" + (": cached" if cached else ""))
            started = time.perf_counter()
            if not cached:
                with artifacts.staged(deploy, overwrite=True) as staging:
                    write_bundle(staging, key, selection, teacher, results, bench.out, splits, cfg, budgets)
            bundle = deploy
            record["stages"].append({"name": f"deploy {selection.chosen.name}", "kind": "deploy", "key": key, "dir": str(deploy),
                                     "status": "cached" if cached else "ran", "seconds": round(time.perf_counter() - started, 3)})
        record.update(finished=True, bundle=str(bundle) if bundle else None, report=str(bench.out / artifacts.BENCH_HTML))
        artifacts.write_json(out / artifacts.RUN_RECORD, record)
    return RunResult(
        out, record["stages"], selection, teacher, baselines, budgets, len(splits.test), int(results["timing"]["threads"][results["timing"]["pareto_threads"]]),
        bench.out / artifacts.BENCH_HTML, bundle, stale, found, metric_key(results), p.skipped,
    )


def run_stage(stage: Stage, progress: bool, where: str) -> dict:
    """Make `stage` unless it is given or already finished (cached); returns its record for run.json."""
    started = time.perf_counter()
    if stage.make is None:
        status = "given"
    elif artifacts.is_run_dir(stage.out):
        status = "cached"
    else:
        _say(progress, f"[bold]{where}[/bold]: {stage.name}")
        stage.make(progress)
        status = "ran"
    if status != "ran":
        _say(progress, f"[bold]{where}[/bold]: {stage.name}: {status}")
    return {"name": stage.name, "kind": stage.kind, "key": stage.key, "dir": str(stage.out), "status": status,
            "seconds": round(time.perf_counter() - started, 3)}


def _record(record: dict, out: Path, stage: Stage, entry: dict, write: bool = True) -> None:
    record["stages"].append(entry)
    if write:  # after every stage: an interrupted run shows how far it got
        artifacts.write_json(out / artifacts.RUN_RECORD, record)


@contextlib.contextmanager
def _exclusive(out: Path, on: bool) -> Iterator[None]:
    """With a search, workers may share the run directory (same --out on shared storage): one at a time makes
    or reads the shared stages (data, teacher, ladder, benchmark, bundle); trials run in parallel. An advisory
    lock (flock) on `<out>/.lock`, held by this process only while inside the block."""
    if not on:
        yield
        return
    import fcntl

    with open(out / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _say(progress: bool, line: str) -> None:
    if progress:
        stderr.print(line, highlight=False)


# ------------------------------------------------------------------------------------------ inputs


def read_splits(cfg: RunConfig) -> Splits:
    """Read --data (and --eval / --test), holding out what is not given, with one-line errors for bad data."""
    if cfg.task != "classification":
        return read_task_splits(cfg)
    d = cfg.data
    read = lambda path: read_examples(path, d.text_col, d.label_col, d.encoding, d.drop_empty)  # noqa: E731
    train_path = Path(d.train)
    examples = read(train_path)
    check_labels(examples, train_path)
    sha256, sources = {"train": artifacts.file_sha256(train_path)}, {"train": str(train_path)}
    held_out = [name for name, given in (("eval", d.eval), ("test", cfg.test)) if not given]
    _check_size(examples, train_path, held_out)
    if cfg.test:
        test_path = Path(cfg.test)
        test = read(test_path)
        sha256["test"], sources["test"] = artifacts.file_sha256(test_path), str(test_path)
    else:
        examples, test = stratified_split(examples, cfg.test_split, cfg.seed)
        sources["test"] = f"{cfg.test_split:.0%} stratified split of {train_path}"
    if d.eval:
        eval_path = Path(d.eval)
        eval_ = read(eval_path)
        sha256["eval"], sources["eval"] = artifacts.file_sha256(eval_path), str(eval_path)
    else:
        eval_path = train_path
        examples, eval_ = stratified_split(examples, d.eval_split, cfg.seed)
        sources["eval"] = f"{d.eval_split:.0%} stratified split of the rest of {train_path}"
    labels = check_labels(examples, train_path, eval_, eval_path)
    check_known_labels(test, Path(cfg.test) if cfg.test else train_path, labels, "does not occur in the training data", "fix the label or add training examples of it")
    return Splits(examples, eval_, test, labels, sources, sha256)


def run_task(cfg: RunConfig):
    """The task of the run with its settings (NER scheme and strictness, QA stride)."""
    from slmkit.tasks import get_task, task_options

    return get_task(cfg.task, **task_options(TrainConfig(task=cfg.task, data=cfg.data, model=cfg.model)))


def read_task_splits(cfg: RunConfig) -> Splits:
    """NER / QA: the task reads the files and holds out the test and eval sets it is not given (its own split:
    sentences at random, QA whole paragraphs)."""
    task, d = run_task(cfg), cfg.data
    train_path = Path(d.train)
    examples = task.read(train_path, d)
    sha256, sources = {"train": artifacts.file_sha256(train_path)}, {"train": str(train_path)}
    held_out = [name for name, given in (("eval", d.eval), ("test", cfg.test)) if not given]
    if len(examples) < 1 + 2 * len(held_out):
        flags = " and ".join(f"--{name}" for name in held_out)
        raise UserError(f"{train_path}: too small to hold out {' and '.join(held_out)} sets: {len(examples)} examples, and at least {1 + 2 * len(held_out)} are needed: add examples or pass {flags} FILE")
    if cfg.test:
        test_path = Path(cfg.test)
        test = task.read(test_path, d)
        sha256["test"], sources["test"] = artifacts.file_sha256(test_path), str(test_path)
    else:
        examples, test = task.split(examples, cfg.test_split, cfg.seed)
        sources["test"] = f"{cfg.test_split:.0%} split of {train_path}"
    if d.eval:
        eval_path = Path(d.eval)
        eval_ = task.read(eval_path, d)
        sha256["eval"], sources["eval"] = artifacts.file_sha256(eval_path), str(eval_path)
    else:
        eval_path = train_path
        examples, eval_ = task.split(examples, d.eval_split, cfg.seed)
        sources["eval"] = f"{d.eval_split:.0%} split of the rest of {train_path}"
    labels = task.labels(examples, train_path, eval_, eval_path)
    return Splits(examples, eval_, test, labels, sources, sha256)


def _check_size(examples: list[Example], path: Path, held_out: list[str]) -> None:
    """Each label needs one example to train on plus one per held-out split, or some split lacks it entirely."""
    if not held_out:
        return
    need = 1 + len(held_out)
    counts: dict[str, int] = {}
    for e in examples:
        counts[e.label] = counts.get(e.label, 0) + 1
    label, n = min(counts.items(), key=lambda item: (item[1], item[0]))
    if n < need:
        flags = " and ".join(f"--{name}" for name in held_out)
        raise UserError(
            f"{path}: too small to hold out {' and '.join(held_out)} set{'s' if len(held_out) > 1 else ''}: label {label!r} has {n} example{'s' if n != 1 else ''} "
            f"and each label needs at least {need} (1 to train on, 1 per held-out set): add examples or pass {flags} FILE"
        )


def _check_teacher(teacher: Path, splits: Splits, task: str = "classification") -> None:
    if task == "lm":  # any local causal LM (slm train --task lm, or a Hugging Face *ForCausalLM directory)
        from slmkit.lm import check_causal_lm_dir

        check_causal_lm_dir(teacher, "--teacher")
        return
    artifacts.check_model_dir(teacher)
    if artifacts.model_task(teacher) != task:
        raise UserError(f"{teacher}: a {artifacts.model_task(teacher)} model, not a {task} one: pass a teacher trained with slm train --task {task}, or leave out --teacher")
    if task != "classification":
        return
    id2label = artifacts.read_json(teacher / artifacts.HF_CONFIG).get("id2label")
    if not id2label:
        raise UserError(f"{teacher}: not a fine-tuned classifier (its config.json has no labels): pass --teacher, the --out directory of slm train")
    missing = sorted(set(splits.labels) - set(artifacts.model_labels(teacher)))
    if missing:
        raise UserError(
            f"{teacher}: the teacher does not know the label(s) {', '.join(map(repr, missing[:5]))} of {splits.sources['train']}: "
            "pass a teacher trained on these labels, or leave out --teacher to train one"
        )


def _check_run_dir(out: Path, splits: Splits, fresh: bool) -> None:
    """The run directory is new, or a previous `slm run` on the same training data (unless --fresh)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is a file: choose another --out")
    record_path = out / artifacts.RUN_RECORD
    if out.is_dir() and any(out.iterdir()) and not record_path.is_file():
        raise UserError(f"{out}: exists and is not a slm run directory (no {artifacts.RUN_RECORD}): choose another --out")
    if record_path.is_file() and not fresh:
        recorded = (artifacts.read_json(record_path).get("dataset") or {}).get("train") or {}
        if recorded.get("sha256") != splits.sha256["train"]:
            raise UserError(
                f"{out}: made from a different dataset ({recorded.get('path', 'unknown')} then, {splits.sources['train']} now, "
                "with other contents): pass --fresh to start this run directory over, or choose another --out"
            )


# ------------------------------------------------------------------------------------------ the plan


def _key(*parts: Any) -> str:
    blob = json.dumps([PIPELINE_FORMAT, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]


def _settings(cfg: Any, *paths: str) -> dict:
    """The config as a dict without its path-valued fields (`paths`, dotted): a key hashes what those paths
    hold (file contents, upstream keys), not where they are."""
    values = to_dict(cfg)
    for path in paths:
        *parents, leaf = path.split(".")
        node = values
        for part in parents:
            node = node[part]
        node.pop(leaf)
    return values


def student_name(entry: str) -> str:
    """A ladder entry as a short, path-safe name: 'transformer:layers=2,hidden=128 lr=1e-4' -> 'transformer-L2-H128-lr1e-4'."""
    spec, *overrides = entry.split()
    kind, params = parse_student(spec)
    parts = [kind] + [f"{ABBREVIATIONS.get(k, k)}{'-'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in params.items()]
    return "-".join(parts + [o.replace("=", "") for o in overrides])


@dataclass
class Upstream:
    """What the candidate stages read: the run, the data splits and the teacher, each with its key."""

    cfg: RunConfig
    out: Path
    data_key: str
    split_files: dict[str, Path]  # train / eval / test JSONL (columns text and label)
    teacher_key: str
    teacher_dir: Path


@dataclass
class Plan:
    stages: list[Stage]  # in order; the last is the benchmark
    candidates: list[tuple[str, Stage]]  # (candidate name, the stage that made its model), in benchmark order
    up: Upstream
    skipped: list[dict]  # ladder students not distilled: {"student", "entry", "why"}


def plan(cfg: RunConfig, out: Path, splits: Splits, teacher_given: Path | None, max_bytes: int | None = None) -> Plan:
    """Every stage in order, keyed by its inputs, and each candidate's producing stage.

    A ladder student that cannot meet the size budget `max_bytes` is not planned: `too_big` proves it before
    any training. A search over students (Optuna, `search_students`) reuses the pieces: `student_stages` per
    trial, then `bench_stage` over the ladder's candidates and the best trials', and `selection.select`."""
    stages, up = base_stages(cfg, out, splits, teacher_given)
    candidates: list[tuple[str, Stage]] = []
    seen: dict[str, str] = {}
    skipped: list[dict] = []
    ladder = task_ladder(cfg)
    teacher_config = _teacher_config(cfg.model.base, teacher_given) if ladder and max_bytes is not None and cfg.task != "lm" else None
    for entry in ladder:
        name = student_name(entry)
        if name in seen:
            raise UserError(f"setting students: {seen[name]!r} and {entry!r} are the same student: list it once")
        seen[name] = entry
        why = too_big(entry, teacher_config, cfg.task, max_bytes)
        if why:
            skipped.append({"student": name, "entry": entry, "why": why})
            continue
        distilled, exported, quantized = student_stages(up, entry)
        stages += [distilled, exported, quantized]
        candidates += [(name, exported), (name + INT8_SUFFIX, quantized)]
    # the teacher as a candidate too, and the reference every accuracy drop is measured against
    exported, quantized = compress_stages(up, TEACHER, stages[1])
    stages += [exported, quantized]
    candidates = [(TEACHER, exported), (TEACHER + INT8_SUFFIX, quantized)] + candidates
    return Plan(stages + [bench_stage(up, candidates)], candidates, up, skipped)


def too_big(entry: str, teacher_config: Any, task: str, max_bytes: int | None) -> str | None:
    """Why the ladder entry `entry` cannot meet the size budget `max_bytes`, or None when it may. Its smallest
    model is int8, one byte per weight at least, and vocabulary trimming shrinks only the word embedding: the
    parameters besides the word embedding, counted from the teacher's configuration, are a floor on its size."""
    if max_bytes is None or task == "lm":  # a decoder student is measured, not predicted
        return None
    from slmkit.students import parameters_besides_words

    floor = parameters_besides_words(entry.split()[0], teacher_config, task)
    if floor <= max_bytes:
        return None
    return (f"its {floor:,} parameters besides the word embedding need {bytes_text(floor)} even at one byte each (int8), "
            f"over the size budget of {bytes_text(max_bytes)}: not distilled (a larger --budget-size brings it back)")


def _teacher_config(base: str, teacher_given: Path | None) -> Any:
    """The transformers config of the teacher: the given one's, or that of the base model it is fine-tuned from."""
    if teacher_given is not None:
        from transformers import AutoConfig

        artifacts.register_model_type(teacher_given)  # a pruned teacher's config class
        return AutoConfig.from_pretrained(teacher_given)
    from slmkit.base import base_config

    return base_config(base)


def task_ladder(cfg: RunConfig) -> list[str]:
    """The students to distill: every entry for classification. For NER and QA, the default ladder's entries of
    the kinds the task takes (a CNN pools the text away; QA needs a question-context reader), NER's after
    `NER_DEFAULT_STUDENTS`, while an entry the user listed of a kind the task cannot take is refused in one line.
    For an LM, `LM_DEFAULT_STUDENTS` in place of the default ladder, or the `lm:` entries listed."""
    if cfg.task not in DISTILL_TASKS:
        return []
    if cfg.task == "classification":
        return list(cfg.students)
    default, kept = list(cfg.students) == list(DEFAULT_STUDENTS), []
    entries = LM_DEFAULT_STUDENTS if default and cfg.task == "lm" else NER_DEFAULT_STUDENTS + list(cfg.students) if default and cfg.task == "ner" else cfg.students
    for entry in entries:
        spec = entry.split()[0]
        kind = parse_student(spec)[0]
        if kind in TASK_KINDS[cfg.task]:
            kept.append(entry)
        elif not default:
            check_task(spec, kind, cfg.task)  # refuses
    return kept


def base_stages(cfg: RunConfig, out: Path, splits: Splits, teacher_given: Path | None) -> tuple[list[Stage], Upstream]:
    """The data splits, and the teacher fine-tuned on them (or the one given)."""
    from slmkit.train import train

    data_key = _key("data", splits.sha256, _settings(cfg.data, "train", "eval"), cfg.test_split, cfg.seed)
    data_dir = artifacts.stage_dir(out, "data", data_key)
    split_files = {name: data_dir / filename for name, filename in SPLIT_FILES.get(cfg.task, artifacts.SPLITS).items()}
    data = Stage("data", "data", data_key, data_dir, lambda progress: _write_splits(splits, cfg, data_dir))
    if teacher_given is not None:
        key = _key("teacher-given", *(artifacts.file_sha256(teacher_given / n) for n in (artifacts.WEIGHTS, artifacts.TOKENIZER, artifacts.HF_CONFIG)))
        teacher = Stage(f"teacher {teacher_given}", "teacher", key, teacher_given, None)
    else:
        key = _key("teacher", data_key, to_dict(cfg.model), to_dict(cfg.train), cfg.task)
        teacher_dir = artifacts.stage_dir(out, "teacher", key)
        train_cfg = TrainConfig(task=cfg.task, out=str(teacher_dir), data=_data(split_files, cfg.task, cfg.data), model=cfg.model, train=cfg.train)
        teacher = Stage("teacher: fine-tune", "teacher", key, teacher_dir,
                        lambda progress: train(train_cfg, resume=_interrupted_training(teacher_dir), progress=progress))
    return [data, teacher], Upstream(cfg, out, data_key, split_files, teacher.key, teacher.out)


def student_stages(up: Upstream, entry: str, name: str | None = None, on_epoch: Callable | None = None) -> tuple[Stage, Stage, Stage]:
    """Distill, export and quantize the ladder entry `entry` (a student spec with optional training and loss
    overrides), named `name` (default: `student_name(entry)`); `on_epoch` goes to distill (a search's pruning)."""
    from slmkit.distill import distill

    name = name or student_name(entry)
    spec, optim, augment, loss = ladder_entry(entry, up.cfg.distill)
    if up.cfg.task == "lm":
        return lm_student_stages(up, spec, optim, loss, name)
    if up.cfg.task != "classification":
        augment = 0.0  # augmented texts are whole-text paraphrases: classification only
    d = up.cfg.distill
    distill_cfg = DistillConfig(teacher=str(up.teacher_dir), student=spec, out="", data=_data(up.split_files, up.cfg.task, up.cfg.data), augment=augment,
                                trim_vocab=d.trim_vocab and up.cfg.task == "classification",  # slm trim-vocab is for classification
                                cache_dir=str(up.out / artifacts.DISTILL_CACHE), loss=loss, train=optim)
    key = _key("distill", up.teacher_key, up.data_key, _settings(distill_cfg, "teacher", "out", "data.train", "data.eval", "cache_dir"))
    distill_cfg = replace(distill_cfg, out=str(artifacts.stage_dir(up.out, f"distill-{name}", key)))
    distilled = Stage(f"distill {name}", "distill", key, Path(distill_cfg.out), lambda progress: distill(distill_cfg, progress=progress, on_epoch=on_epoch))
    return (distilled, *compress_stages(up, name, distilled))


def lm_student_stages(up: Upstream, spec: str, optim: OptimConfig, loss: Any, name: str) -> tuple[Stage, Stage, Stage]:
    """An `lm:` student: `slm distill --task lm` with no continuations, so the decoder learns the training split
    itself from the teacher's next-token distributions (its tokenizer, `distill.loss.kd` and `.temperature`),
    holding out the eval split; then export with the KV cache and int8, as for the teacher."""
    key = _key("distill-lm", up.teacher_key, up.data_key, spec, to_dict(optim), loss.kd, loss.temperature)
    out = artifacts.stage_dir(up.out, f"distill-{name}", key)

    def make(progress: bool) -> Any:  # the student's context is the teacher's, read once the teacher exists
        from transformers import AutoConfig

        from slmkit.distill_lm import distill_lm
        from slmkit.lm import context_length
        from slmkit.students import lm_shape

        context = min(context_length(AutoConfig.from_pretrained(up.teacher_dir)) or LM_STUDENT_CONTEXT, LM_STUDENT_CONTEXT)
        cfg = LMDistillConfig(teacher=str(up.teacher_dir), prompts=str(up.split_files["train"]), out=str(out), eval=str(up.split_files["eval"]),
                              max_new_tokens=0, shape=lm_shape(parse_student(spec)[1], context), kd=loss.kd, kd_temperature=loss.temperature,
                              cache_dir=str(up.out / artifacts.DISTILL_CACHE), train=optim)
        return distill_lm(cfg, progress=progress)

    distilled = Stage(f"distill {name}", "distill", key, out, make)
    return (distilled, *compress_stages(up, name, distilled))


def compress_stages(up: Upstream, name: str, source: Stage) -> tuple[Stage, Stage]:
    """Export `source`'s model to ONNX, then quantize it: the candidates `name` (fp32) and `name`-int8."""
    from slmkit.export import export
    from slmkit.quantize import quantize

    export_cfg = ExportConfig(model=str(source.out), out="", probe_data=str(up.split_files["train"]))
    export_key = _key("export", source.key, up.data_key, _settings(export_cfg, "model", "out", "probe_data"))
    export_cfg = replace(export_cfg, out=str(artifacts.stage_dir(up.out, f"export-{name}", export_key)))
    exported = Stage(f"export {name} to ONNX", "export", export_key, Path(export_cfg.out), lambda progress: export(export_cfg))
    q = up.cfg.quantize
    quantize_cfg = QuantizeConfig(model=export_cfg.out, out="", method=q.method, per_channel=q.per_channel, max_drop=q.max_drop if up.cfg.task != "lm" else None,
                                  eval_data=str(up.split_files["eval"]), calib_data=str(up.split_files["train"]))
    quantize_key = _key("quantize", export_key, up.data_key, _settings(quantize_cfg, "model", "out", "eval_data", "calib_data"))
    quantize_cfg = replace(quantize_cfg, out=str(artifacts.stage_dir(up.out, f"quantize-{name}", quantize_key)))
    quantized = Stage(f"quantize {name} to int8", "quantize", quantize_key, Path(quantize_cfg.out), lambda progress: quantize(quantize_cfg, progress=progress))
    return exported, quantized


def bench_stage(up: Upstream, candidates: list[tuple[str, Stage]], name: str = "bench", split: str = "test", trial: bool = False) -> Stage:
    """slm bench over the candidates (name, producing stage) and the baselines, on the test split.

    `trial`: a search trial's measurement instead — on `split` (eval), no baselines, timed only at the thread
    setting the latency budget reads, no RSS probe."""
    from slmkit.bench import bench

    b = up.cfg.bench
    baselines, threads, rss = list(b.baselines), list(b.threads), b.rss
    if up.cfg.task == "lm":  # the word n-gram baseline (the classifiers' baselines do not apply); by default
        baselines = [x for x in baselines if x == "kn4"] or (["kn4"] if baselines == list(PIPELINE_BASELINES) else [])
    if trial:
        baselines, threads, rss = [], ["1" if "1" in b.threads else b.threads[0]], False
    bench_cfg = BenchConfig(
        models=[str(s.out) for _, s in candidates], names=[n for n, _ in candidates], data=str(up.split_files[split]), out="",
        baselines=baselines, train=str(up.split_files["train"]), teacher=str(up.teacher_dir), threads=threads, rounds=b.rounds,
        latency_calls=b.latency_calls, speed_texts=b.speed_texts, rss=rss, bootstrap=b.bootstrap, sample=b.sample,
    )
    key = _key("bench", [s.key for _, s in candidates], up.teacher_key, up.data_key, split, _settings(bench_cfg, "models", "data", "out", "train", "teacher"))
    bench_cfg = replace(bench_cfg, out=str(artifacts.stage_dir(up.out, name, key)))
    what = f"{len(candidates)} candidate{'s' if len(candidates) > 1 else ''}" + (f" and {len(baselines)} baseline{'s' if len(baselines) > 1 else ''}" if baselines else "")
    return Stage(f"benchmark {what}" + (f" on the {split} split" if split != "test" else ""), "bench", key, Path(bench_cfg.out),
                 lambda progress: bench(bench_cfg, progress=progress))


# ------------------------------------------------------------------------------------------ search


def search_students(up: Upstream, budgets: Budgets, progress: bool) -> "search.SearchResult":
    """The Optuna study of `slmkit.search`: each trial a ladder entry run through `student_stages` and a one-model
    `bench_stage` on the eval split, here in the run's stage cache. Returns the study's counts and Pareto front."""
    import optuna

    s = up.cfg.search
    url = search.storage_url(s, up.out)
    storage = search.open_storage(url)
    space = {k: v for k, v in to_dict(s).items() if k not in ("trials", "storage", "study_name", "timeout", "seed")}
    # one study per run: the same data, teacher, space, stage settings and size budget (the constraint)
    name = s.study_name or "slm-run-" + _key("search", up.data_key, up.teacher_key, space, _settings(up.cfg.distill), to_dict(up.cfg.quantize),
                                             to_dict(up.cfg.bench), budgets.max_bytes)
    study = search.open_study(storage, name, s.seed)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        entry = search.trial_entry(search.suggest(trial, s))
        label = f"trial-{trial.number}"
        trial.set_user_attr("name", label)
        trial.set_user_attr("entry", entry)
        _say(progress, f"[bold]search[/bold]: {label}: {entry}")
        epochs = ladder_entry(entry, up.cfg.distill)[1].epochs
        history: list[float] = []

        def prune_bad(epoch: int, scores: dict, teacher_scores: dict) -> None:
            history.append(scores["accuracy"])
            trial.set_user_attr("eval_accuracy_by_epoch", history)
            if search.should_prune(epoch, epochs, scores["accuracy"], teacher_scores["accuracy"], s.prune_drop):
                _say(progress, f"[bold]search[/bold]: {label}: pruned after epoch {epoch} (eval accuracy {100 * scores['accuracy']:.1f}% vs the teacher's "
                               f"{100 * teacher_scores['accuracy']:.1f}%)")
                raise optuna.TrialPruned(f"eval accuracy {scores['accuracy']:.4f} after epoch {epoch}")

        stages = student_stages(up, entry, label, on_epoch=prune_bad)
        measured = bench_stage(up, [(label + INT8_SUFFIX, stages[2])], name=f"bench-{label}", split="eval", trial=True)
        try:
            for stage in (*stages, measured):
                run_stage(stage, progress, f"search {label}")
            figures = search.trial_figures(artifacts.read_json(measured.out / artifacts.BENCH_RESULTS))
        except (UserError, optuna.TrialPruned):
            raise
        except Exception as e:  # not the user's doing: this trial fails (with the reason), the search goes on
            reason = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            trial.set_user_attr("error", reason)
            _say(progress, f"[bold]search[/bold]: {label}: [red]failed[/red] ({reason})")
            raise search.TrialFailed(reason) from e
        for k, v in figures.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("dirs", [str(stage.out) for stage in (*stages, measured)])
        if budgets.max_bytes is not None:  # feasible when <= 0: the size budget is a constraint, not an objective
            trial.set_constraint("size", violations(Candidate(label, 0.0, 0.0, 0.0, figures["bytes"]), Budgets(max_bytes=budgets.max_bytes))["size"])
        _say(progress, f"[bold]search[/bold]: {label}: eval accuracy {100 * figures['accuracy']:.2f}%, {figures['latency_ms']:.3g} ms, "
                       f"{figures['bytes'] / 1e6:.2f} MB")
        return figures["accuracy"], figures["latency_ms"]

    ran = search.work(study, objective, s.trials, s.timeout)
    return search.summarize(study, search.shown_url(url), ran)


def _data(split_files: dict[str, Path], task: str = "classification", given: DataConfig | None = None) -> DataConfig:
    """How the stages read the split files: JSONL columns text and label; NER's BIO CoNLL (word and tag); QA's SQuAD JSON."""
    data = DataConfig(train=str(split_files["train"]), eval=str(split_files["eval"]))
    if task == "ner":
        data = replace(data, scheme="bio", tag_col=-1, strict=given.strict if given else False)
    if task == "qa" and given is not None:
        data = replace(data, strict=given.strict)
    return data


def _interrupted_training(out: Path) -> bool:
    """A teacher whose training was interrupted left its last finished epoch in the staging directory."""
    return (artifacts.staging_dir(out) / artifacts.CHECKPOINT / artifacts.CHECKPOINT_STATE).is_file()


def _write_splits(splits: Splits, cfg: RunConfig, out: Path) -> None:
    with artifacts.staged(out, overwrite=False) as staging:
        for name, filename in SPLIT_FILES.get(cfg.task, artifacts.SPLITS).items():
            rows = getattr(splits, name)
            if cfg.task == "ner":  # BIO tags (the reader converted every scheme to BIO)
                from slmkit.ner import write_conll

                write_conll(staging / filename, rows, [s.tags for s in rows], "bio")
            elif cfg.task == "qa":
                artifacts.write_json(staging / filename, squad_json(rows))
            elif cfg.task == "lm":  # documents, read back by the LM task's JSONL reader
                (staging / filename).write_text("".join(json.dumps({"text": doc}, ensure_ascii=False) + "\n" for doc in rows), encoding="utf-8")
            else:
                (staging / filename).write_text("".join(json.dumps({"text": e.text, "label": e.label}, ensure_ascii=False) + "\n" for e in rows), encoding="utf-8")
        settings = {"data": to_dict(cfg.data), "test": cfg.test, "test_split": cfg.test_split, "seed": cfg.seed}
        (staging / artifacts.CONFIG).write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
        artifacts.write_json(staging / artifacts.METRICS, {
            "examples": {name: len(getattr(splits, name)) for name in artifacts.SPLITS},
            "labels": splits.labels, "sources": splits.sources, "sha256": splits.sha256,
        })


def squad_json(examples: list) -> dict:
    """QA examples as a SQuAD v1.1 file: one paragraph per distinct context, its questions in order."""
    paragraphs: dict[str, list] = {}
    for e in examples:
        paragraphs.setdefault(e.context, []).append({"id": e.id, "question": e.question, "answers": [{"text": t, "answer_start": a} for t, a in e.answers]})
    return {"version": "1.1", "data": [{"title": "slm run split", "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs.items()]}]}


# ------------------------------------------------------------------------------------------ selection


def candidates_from_bench(results: dict) -> tuple[list[Candidate], Candidate, list[dict]]:
    """The deployable candidates (slmkit ONNX models) as measured, the teacher's fp32 entry, and the baselines."""
    threads = results["timing"]["pareto_threads"]  # 1 thread when measured: the budget's latency
    key = metric_key(results)  # accuracy; NER entity F1; QA F1: `Candidate.accuracy` holds it
    ok = [e for e in results["entries"] if e["status"] == "ok"]
    by_name = {e["name"]: e for e in ok}
    if TEACHER not in by_name:
        raise RuntimeError(f"the benchmark has no {TEACHER!r} entry")  # a bug: bench raises for failing models
    teacher_accuracy = by_name[TEACHER]["metrics"][key]
    lm = results.get("task") == "lm"

    def candidate(e: dict) -> Candidate:
        accuracy = e["metrics"][key]
        # a language model's quality budget: how much higher its per-word perplexity is than the teacher's, in percent
        drop = 100 * (e["metrics"]["perplexity_per_word"] / by_name[TEACHER]["metrics"]["perplexity_per_word"] - 1) if lm else 100 * (teacher_accuracy - accuracy)
        return Candidate(e["name"], accuracy, drop, e["speed"][threads]["p50_ms"]["median"], e["bytes"], e["parameters"], e["path"])

    candidates = [candidate(e) for e in ok if e["kind"] == "model"]
    baselines = [
        {"name": e["name"], "error": e["error"]} if e["status"] != "ok" else
        {"name": e["name"], "accuracy": e["metrics"][key], "latency_ms": e["speed"][threads]["p50_ms"]["median"] if e["speed"] else None, "bytes": e["bytes"], "error": None}
        for e in results["entries"] if e["kind"] == "baseline"
    ]
    return candidates, candidate(by_name[TEACHER]), baselines


def metric_key(results: dict) -> str:
    """The metric a bench report ranks by (its first metric column; classification's accuracy when absent)."""
    return (results.get("metric_columns") or [["accuracy"]])[0][0]


# ------------------------------------------------------------------------------------------ the bundle


def write_bundle(staging: Path, key: str, selection: Selection, teacher: Candidate, results: dict, report: Path, splits: Splits, cfg: RunConfig, budgets: Budgets) -> None:
    """The chosen ONNX model with what serving it needs, its model card, the bench report, and checksums."""
    chosen = selection.chosen
    source = Path(chosen.path)
    for name in (artifacts.ONNX_MODEL, artifacts.TOKENIZER):
        shutil.copy(source / name, staging / name)
    manifest = artifacts.read_json(source / artifacts.MANIFEST)
    if cfg.task == "lm":  # what slmkit.runtime.LMGenerator and slm serve read: configs, generation settings, chat template
        from slmkit.export_lm import LM_FILES

        artifacts.copy_serving_files(source, staging)
        for name in LM_FILES:
            if (source / name).is_file():
                shutil.copy(source / name, staging / name)
    else:
        (staging / artifacts.LABELS).write_text("".join(label + "\n" for label in manifest["labels"]), encoding="utf-8")
    shutil.copytree(report, staging / artifacts.BUNDLE_REPORT)
    entry = next(e for e in results["entries"] if e["name"] == chosen.name)
    (staging / artifacts.BUNDLE_README).write_text(model_card(chosen, entry, teacher, results, splits, cfg, budgets, selection), encoding="utf-8")
    files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    manifest["bundle"] = {
        "key": key,
        "model": chosen.name,
        "accuracy": chosen.accuracy,  # of `metric`
        "teacher_accuracy": teacher.accuracy,
        "metric": metric_key(results),
        "latency_ms": chosen.latency_ms,
        "bytes": chosen.bytes,
        "budgets": describe(budgets),
        "run": str(Path(cfg.out).resolve()),
        "files": {name: artifacts.file_sha256(staging / name) for name in files},  # every file but this manifest
    }
    artifacts.write_json(staging / artifacts.MANIFEST, manifest)


def bundle_differences(directory: str | Path) -> tuple[int, list[str]]:
    """A bundle's files against the SHA-256 sums in its manifest: (files listed, one line per difference)."""
    directory = Path(directory)
    manifest_path = directory / artifacts.MANIFEST
    manifest = artifacts.read_json(manifest_path) if manifest_path.is_file() else {}
    if not isinstance(manifest.get("bundle"), dict) or not isinstance(manifest["bundle"].get("files"), dict):
        raise UserError(f"{directory}: not a slm run bundle (no {artifacts.MANIFEST} with checksums): pass the deploy/ directory of slm run")
    files = manifest["bundle"]["files"]
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()} - {artifacts.MANIFEST}
    differences = []
    for name in sorted(set(files) | present):
        if name not in present:
            differences.append(f"{directory / name}: listed in {artifacts.MANIFEST} but missing")
        elif name not in files:
            differences.append(f"{directory / name}: not listed in {artifacts.MANIFEST}")
        elif artifacts.file_sha256(directory / name) != files[name]:
            differences.append(f"{directory / name}: SHA-256 differs from {artifacts.MANIFEST}: the file was changed")
    return len(files), differences


def verify_bundle(directory: str | Path) -> int:
    """Check a bundle's files against the SHA-256 sums in its manifest; returns how many were checked, or raises
    a UserError naming the first difference and the fix."""
    directory = Path(directory)
    n, differences = bundle_differences(directory)
    if differences:
        first = differences[0]
        fix = "remove it, or rebuild the bundle with slm run" if first.endswith(f"not listed in {artifacts.MANIFEST}") else "rebuild the bundle with slm run"
        raise UserError(f"{first}: {fix}")
    return n


def model_card(chosen: Candidate, entry: dict, teacher: Candidate, results: dict, splits: Splits, cfg: RunConfig, budgets: Budgets, selection: Selection) -> str:
    """The bundle's README.md: what the model does, its data, how it compares with the teacher, how to load it."""
    m, hw, t = entry["metrics"], results["hardware"], results["timing"]
    threads = results["timing"]["threads"][t["pareto_threads"]]
    key, metric = (results.get("metric_columns") or [["accuracy", "accuracy"]])[0]
    lo, hi = m[f"{key}_ci95"]
    task = results.get("task", "classification")
    shown = ", ".join(splits.labels[:10]) + (f", … ({len(splits.labels)} in all)" if len(splits.labels) > 10 else "")
    provenance = entry.get("provenance") or {}
    teacher_base = (next(e for e in results["entries"] if e["name"] == TEACHER).get("provenance") or {}).get("base")
    what = {"classification": "a text classifier", "ner": "a named-entity tagger", "qa": "an extractive question answerer", "lm": "a causal language model for autocomplete"}[task]
    classes = {"classification": f"{len(splits.labels)} labels: {shown}. ", "ner": f"{len(splits.labels)} BIO tags: {shown}. ", "qa": "Answers are spans of the context. ",
               "lm": f"Held-out perplexity per word {m['perplexity_per_word']:.2f}" + (f" (per token {m['perplexity_per_token']:.2f})" if m.get("perplexity_per_token") else "")
                     + f"; latency is per generated token with the KV cache, time to first token {entry['speed'][t['pareto_threads']]['ttft_ms']['median']:.3g} ms. " if task == "lm" else ""}[task]
    load = {
        "classification": ["from slmkit.runtime import Predictor", "", "predictor = Predictor(\"deploy\")  # this directory; onnxruntime + tokenizers, no torch",
                           "predictor.predict([\"some text\"])  # [Prediction(text, label, score, scores)]"],
        "ner": ["from slmkit.tasks.ner import predict_entities", "",
                "predict_entities(\"deploy\", [\"some text\"])  # per text: [{label, score, start, end, text}]; onnxruntime, no torch"],
        "qa": ["from slmkit.qa import QAExample", "from slmkit.runtime import TaskSession", "",
               "session = TaskSession(\"deploy\")  # onnxruntime + tokenizers, no torch; see docs/qa.md for answers from its outputs"],
        "lm": ["from slmkit.generate import GenerationConfig", "from slmkit.runtime import LMGenerator", "",
               "lm = LMGenerator(\"deploy\")  # onnxruntime + tokenizers with the KV cache, no torch; or: slm serve --model deploy",
               "lm.complete(\"my card\", GenerationConfig(max_new_tokens=8, temperature=0))"],
    }[task]
    lines = [
        f"# {chosen.name}: {what} chosen by `slm run`", "",
        f"{classes}ONNX Runtime, {entry['precision']}, {chosen.parameters or 0:,} parameters, "
        f"{chosen.bytes / 1e6:.2f} MB. Why this one: {selection.explanation}", "",
        "## Data", "",
        f"- Training: {splits.sources['train']} ({len(splits.train)} examples trained on)",
        f"- Eval (epoch selection, int8 checks): {splits.sources['eval']} ({len(splits.eval)} examples)",
        f"- Test (every figure below): {splits.sources['test']} ({len(splits.test)} examples)",
    ]
    if provenance.get("student"):
        lines.append(f"- Student architecture: `{provenance['student']}`, distilled from the teacher")
    lines += [
        "", "## Accuracy, speed and size", "",
        f"| | test {metric} (95% CI) | batch-1 p50 | size on disk |", "|---|---:|---:|---:|",
        f"| this model | {100 * chosen.accuracy:.2f}% ({100 * lo:.1f}–{100 * hi:.1f}) | {chosen.latency_ms:.3g} ms | {chosen.bytes / 1e6:.2f} MB |",
        f"| teacher ({teacher_base or 'fine-tuned'}, ONNX fp32) | {100 * teacher.accuracy:.2f}% | {teacher.latency_ms:.3g} ms | {teacher.bytes / 1e6:.2f} MB |",
        "",
        (f"per-word perplexity {abs(chosen.drop_points):.2f}% {'above' if chosen.drop_points > 0 else 'below'} the teacher's; " if task == "lm" else
         f"{abs(chosen.drop_points):.2f} points {'below' if chosen.drop_points > 0 else 'above'} the teacher's {metric}; ")
        + f"{teacher.latency_ms / chosen.latency_ms:.1f}× faster and "
        f"{teacher.bytes / chosen.bytes:.1f}× smaller. Latency: median over {t['rounds']} rounds of {t['latency_calls']} batch-1 calls at "
        f"{threads} thread{'s' if threads != 1 else ''} on {hw['cpu']} (tokenization included).", "",
        "## Budgets", "",
        f"{describe(budgets)}: met. The full benchmark (every candidate and baseline) is in `report/report.html`.", "",
        "## How to load it", "",
        "```python",
        *load,
        "```", "",
        "`manifest.json` lists every file's SHA-256 (`slm verify deploy` checks them); " + ("`labels.txt` holds the labels in class-id order; " if task != "lm" else "")
        + "`model.onnx` and `tokenizer.json` also run in plain onnxruntime (see the slmkit README).", "",
        "## Limitations", "",
        f"- The interval covers resampling these {len(splits.test)} test examples, not a shift in the texts the model will see: re-evaluate on your own traffic (`slm evaluate`).",
        "- It always answers one of its labels, so texts outside the domain get a confident-looking wrong answer." if task == "classification" else
        "- It always answers with a span of the context, even when the context holds no answer." if task == "qa" else
        "- It continues any prompt, on-domain or not; the `accuracy` figures above are next-word accuracy@3 on the test texts." if task == "lm" else
        "- Words beyond the maximum length are tagged O.",
        "- Timings are from the machine that ran `slm run`; measure again on the serving machine.",
    ]
    if entry["precision"] == "int8" and not hw["int8_instructions"]:
        lines.append("- The benchmarking CPU had no VNNI/AMX int8 instructions: on a CPU with them, int8 is typically faster still.")
    return "\n".join(lines) + "\n"
