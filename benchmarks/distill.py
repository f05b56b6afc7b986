"""Distillation benchmark: students of a few million parameters against their fine-tuned MiniLM teacher.

For each dataset, one run fine-tunes the teacher (the packaged MiniLM, with `benchmarks/teacher.py`'s recipe and
split), then distills each student spec (`slm distill`, with augmentation) and trains the same student on the hard labels alone (no
teacher), exports both to ONNX and quantizes them to int8, scores everything on the reporting split
(SST-2 dev, banking77 test) and times everything in interleaved rounds (`slmkit.measure.compare`), the
teacher in PyTorch fp32 included. It writes benchmarks/results/distill.md and .json (or `--out`) with the command,
the distillation targets for the best student of each size class, and what the students trained on.
Training wall times are whole calls in this run: the teacher's `train()` (reading, tokenizing, its epochs, its
eval and saving) against each student's `distill()` (the same, plus augmentation and the teacher's outputs).
`--models DIR` reuses teachers that `benchmarks/teacher.py --keep DIR` saved, with their recorded training-loop
time instead (an earlier run's).

The committed results/distill.md (every target met on both datasets):

    python benchmarks/distill.py --datasets sst2 banking77 \
        --students 'bilstm:hidden=300,embed=128 batch_size=128 lr=3e-3 bf16=1 sst2.epochs=3 banking77.augment=5 banking77.epochs=6' \
                   'bilstm:hidden=150,embed=60 banking77.augment=5 banking77.epochs=6' \
        --augment 2 --epochs 4 --lr 2e-3 --batch-size 64 --limit 30000 --rounds 3 --latency-calls 100 --speed-texts 256
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from teacher import DATA, DATASETS, RESULTS, SEED, previous_rows, run_slmkit, write_csv, write_texts  # noqa: E402  the teacher's data layout, held-out rule and recipe

from slmkit.config import DataConfig, DistillConfig, ExportConfig, LossConfig, OptimConfig, QuantizeConfig, load_config  # noqa: E402
from slmkit.data import read_examples, stratified_split  # noqa: E402
from slmkit.distill import distill  # noqa: E402
from slmkit.export import export  # noqa: E402
from slmkit.hardware import fingerprint  # noqa: E402
from slmkit.measure import compare, open_model  # noqa: E402
from slmkit.quantize import quantize  # noqa: E402

# in-domain text without labels, given to the distilled students as --unlabeled: SST-2's unlabeled test
# sentences (full sentences, where its training set is mostly phrases; never the dev set that is reported)
UNLABELED = {"sst2": (DATA / "sst2" / "test_unlabeled.tsv", "sentence")}

# ≤ 1.5M and ≤ 5M parameters with the trimmed vocabularies of both datasets (results/distill-*.md)
STUDENTS = ["bilstm:hidden=150,embed=60", "bilstm:hidden=300,embed=128"]


def unlabeled_file(name: str, workdir: Path) -> str | None:
    """The dataset's unlabeled in-domain texts as a .txt file (one per line), or None."""
    return str(write_texts(workdir / "unlabeled.txt", *UNLABELED[name])) if name in UNLABELED else None


def split(spec: dict, workdir: Path, limit: int | None) -> tuple[Path, Path, list]:
    """Train (minus the teacher's held-out slice), the held-out slice (epoch selection), the reporting split."""
    examples = read_examples(spec["train"], spec["text"], spec["label"])
    train, held = stratified_split(examples, spec["holdout"], SEED)
    if limit:
        keep = np.random.default_rng(SEED).permutation(len(train))[:limit]
        train = [train[i] for i in sorted(keep)]
    report = read_examples(spec["report"], spec["text"], spec["label"])
    return write_csv(workdir / "train.csv", train), write_csv(workdir / "held.csv", held), report


def student_runs(name: str, teacher: Path, work: Path, train_csv: Path, held_csv: Path, unlabeled: str | None, args, log) -> dict:
    """Each student spec distilled and trained on hard labels, each exported and quantized: name → directories.

    The teacher's outputs are cached in the run's own directory: the first distilled student's wall time includes
    computing them, and the later students reuse them (as `slm distill` does for every run after the first)."""
    runs = {}
    for i, spec in enumerate(args.students):
        student, options = student_options(spec, args, name)
        # the row's name: the spec and the settings it trained with on this dataset
        label = " ".join([student, *(f"{k}={v:g}" for k, v in options.items() if k != "bf16"), *(["bf16"] if options["bf16"] else [])])
        for mode in ("distilled", "hard labels"):
            loss = LossConfig(kd=0.5, ce=0.5) if mode == "distilled" else LossConfig(kd=0.0, ce=1.0)
            cfg = DistillConfig(
                teacher=str(teacher), student=student, out=str(work / f"s{i}-{mode[:4]}"), cache_dir=str(work / "teacher-cache"),
                data=DataConfig(train=str(train_csv), eval=str(held_csv)),
                augment=options["augment"] if mode == "distilled" else 0.0, unlabeled=unlabeled if mode == "distilled" else None, loss=loss,
                train=load_config(OptimConfig, None, None, epochs=options["epochs"], lr=options["lr"], batch_size=options["batch_size"], bf16=bool(options["bf16"]),
                                  patience=3, seed=SEED),
            )
            started = time.perf_counter()
            result = distill(cfg, progress=False)
            wall = time.perf_counter() - started
            onnx = export(ExportConfig(model=str(result.out), out=str(work / f"s{i}-{mode[:4]}-onnx"), probe_data=str(train_csv))).out
            int8 = quantize(QuantizeConfig(model=str(onnx), out=str(work / f"s{i}-{mode[:4]}-int8"), eval_data=str(held_csv)), progress=False).out
            m = result.metrics
            log(f"[{name}] {label} {mode}: held-out accuracy {m['student_eval']['accuracy']:.4f} (teacher {m['teacher_eval']['accuracy']:.4f}), "
                f"{m['parameters']['student'] / 1e6:.2f}M parameters, {wall:.0f} s")
            runs[f"{label} {mode}"] = {"fp32": onnx, "int8": int8, "wall_s": wall, "metrics": m}
    return runs


def student_options(spec: str, args, dataset: str) -> tuple[str, dict]:
    """`"bilstm:hidden=150 augment=2 sst2.epochs=4"` -> the student spec and its settings on `dataset`: those
    after the spec override --augment, --epochs, --lr and --batch-size for this student alone (`name.key=` on
    dataset `name` alone); `bf16=1` trains it under bf16 autocast (as the teacher does where the CPU has native bf16)."""
    student, *rest = spec.split()
    options = {"augment": args.augment, "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "bf16": 0}
    for part in rest:
        key, _, value = part.partition("=")
        name, _, plain = key.rpartition(".")
        if name not in ("", *DATASETS):
            sys.exit(f"--students {spec!r}: {part!r} names no dataset: use one of {', '.join(DATASETS)}")
        try:
            parsed = type(options[plain])(value)
        except (KeyError, ValueError):
            sys.exit(f"--students {spec!r}: {part!r} is not one of {', '.join(f'[dataset.]{k}=<number>' for k in options)}")
        if name in ("", dataset):
            options[plain] = parsed
    return student, options


def accuracy(directory: Path, report: list) -> float:
    model = open_model(directory, batch_size=64)
    y = np.array([model.labels.index(e.label) for e in report])
    return float((model.predict_proba([e.text for e in report]).argmax(1) == y).mean())


def run_dataset(name: str, stored: Path | None, args, log) -> dict:
    spec = DATASETS[name]
    with tempfile.TemporaryDirectory(prefix=f"distill-{name}-", dir=args.workdir) as tmp:
        work = Path(tmp)
        train_csv, held_csv, report = split(spec, work, args.limit)
        if stored:
            teacher, teacher_seconds = stored, json.loads((stored / "metrics.json").read_text())["train_seconds"]
        else:
            log(f"[{name}] fine-tuning the teacher ({spec['epochs']} epoch(s))")
            result = run_slmkit(spec, train_csv, held_csv, spec["epochs"], work, "cpu", SEED)
            teacher, teacher_seconds = work / "slmkit-model", result["wall_s"]
            log(f"[{name}] teacher: {teacher_seconds:.0f} s")
        unlabeled = unlabeled_file(name, work) if args.unlabeled else None
        runs = student_runs(name, teacher, work, train_csv, held_csv, unlabeled, args, log)
        log(f"[{name}] scoring on {len(report)} {spec['split']} examples")
        dirs = {"teacher (PyTorch fp32)": teacher}
        for run, r in runs.items():
            dirs[f"{run} fp32"], dirs[f"{run} int8"] = r["fp32"], r["int8"]
        scores = {k: accuracy(d, report) for k, d in dirs.items()}
        texts = [e.text for e in report]
        sample = [texts[i] for i in np.random.default_rng(SEED).permutation(len(texts))[: args.speed_texts]]
        log(f"[{name}] timing {len(dirs)} models, {args.rounds} interleaved rounds")
        speed = compare(dirs, sample, rounds=args.rounds, latency_calls=args.latency_calls)
    return {
        "dataset": name, "split": spec["split"], "n_eval": len(report), "n_train": runs[next(iter(runs))]["metrics"]["n_train"],
        "teacher_train_seconds": teacher_seconds, "teacher_trained": "in this run (whole train() call)" if not stored else f"{stored} (its training loop, an earlier run)",
        "models": {k: {"accuracy": scores[k], **speed[k]} for k in dirs},
        "runs": {k: {"wall_s": r["wall_s"], "metrics": r["metrics"]} for k, r in runs.items()},
    }


def slim(record):
    """Stage metrics without their bulkiest parts (full eval reports, confusion matrices, importance scores)."""
    if isinstance(record, dict):
        return {k: slim(v) for k, v in record.items() if k not in ("eval", "confusion_matrix", "per_class", "importance")}
    return [slim(v) for v in record] if isinstance(record, list) else record


def write_results(out: Path, rows: list[dict], env: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(slim({"hardware": env, "rows": rows}), indent=2) + "\n")
    lines = ["# Distillation benchmark", "", "Commands: " + "; ".join(sorted({f"`{r['command']}`" for r in rows})), "",
             f"Hardware: {env['cpu']}, ISA {', '.join(env['isa']) or 'baseline'}, {env['cpus']} CPUs, onnxruntime {env.get('onnxruntime')}.",
             "", "Retention = student accuracy / teacher accuracy on the reporting split. Throughput: texts/s at batch 32 "
             "(torch-free runtime for students, PyTorch for the teacher), medians of interleaved rounds in this run."]
    for row in rows:
        t = row["models"]["teacher (PyTorch fp32)"]
        lines += ["", f"## {row['dataset']} ({row['split']}, {row['n_eval']} examples; {row['n_train']} training examples)", "",
                  "| model | accuracy | retention | parameters | size MB | texts/s (b32) | × teacher | p50 ms | training wall s |", "|---|---|---|---|---|---|---|---|---|"]
        for k, v in row["models"].items():
            run = row["runs"].get(k.rsplit(" ", 1)[0])
            wall = f"{run['wall_s']:.0f}" if run and k.endswith("fp32") else ("" if run else f"{row['teacher_train_seconds']:.0f}")
            lines.append(f"| {k} | {100 * v['accuracy']:.2f} | {100 * v['accuracy'] / t['accuracy']:.1f}% | {v['parameters'] / 1e6:.2f}M "
                         f"| {v['bytes'] / 1e6:.1f} | {v['throughput_per_s']:.0f} | {v['throughput_per_s'] / t['throughput_per_s']:.1f}× | {v['p50_ms']:.2f} | {wall} |")
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {what} | {measured} | {'yes' if met else '**no**'} |" for what, measured, met in targets(row)]
        lines += ["", data_sentence(row)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def targets(row: dict) -> list[tuple[str, str, bool]]:
    """The distillation targets for one dataset: (what, measured, met), for the best student of each size class."""
    models, runs = row["models"], row["runs"]
    teacher = models["teacher (PyTorch fp32)"]
    out = []
    distilled = [r.rsplit(" ", 1)[0] for r in runs if r.endswith(" distilled")]
    for limit, keep, keep_int8 in ((5e6, 0.98, 0.975), (1.5e6, 0.96, None)):
        fits = [s for s in distilled if models[f"{s} distilled fp32"]["parameters"] <= limit]
        if not fits:
            out.append((f"a student ≤ {limit / 1e6:g}M parameters keeps ≥ {100 * keep:g}%", "no student of that size", False))
            continue
        best = max(fits, key=lambda s: models[f"{s} distilled fp32"]["accuracy"])
        kept = models[f"{best} distilled fp32"]["accuracy"] / teacher["accuracy"]
        out.append((f"≤ {limit / 1e6:g}M keeps ≥ {100 * keep:g}% ({best})", f"{100 * kept:.1f}%", kept >= keep))
        if keep_int8:
            kept8 = models[f"{best} distilled int8"]["accuracy"] / teacher["accuracy"]
            out.append((f"≤ {limit / 1e6:g}M int8 keeps ≥ {100 * keep_int8:g}%", f"{100 * kept8:.1f}%", kept8 >= keep_int8))
            speed = models[f"{best} distilled int8"]["throughput_per_s"] / teacher["throughput_per_s"]
            out.append(("≤ 5M int8 batch-32 throughput ≥ 20× the teacher's PyTorch fp32", f"{speed:.1f}×", speed >= 20))
    for s in distilled:
        margin = 100 * (models[f"{s} distilled fp32"]["accuracy"] - models[f"{s} hard labels fp32"]["accuracy"])
        out.append((f"distilled beats hard labels ({s})", f"{margin:+.2f} points", margin > 0))
    for s in distilled:
        wall = runs[f"{s} distilled"]["wall_s"]
        cached = runs[f"{s} distilled"]["metrics"]["teacher_cache"]["hit"]
        note = ", teacher outputs reused" if cached else ", teacher outputs computed"
        out.append((f"distillation wall time ≤ the teacher's fine-tuning ({s}{note})", f"{wall:.0f} s vs {row['teacher_train_seconds']:.0f} s", wall <= row["teacher_train_seconds"]))
    return out


def data_sentence(row: dict) -> str:
    """What the distilled students trained on, from their metrics."""
    distilled = {k.rsplit(" ", 1)[0]: r["metrics"] for k, r in row["runs"].items() if k.endswith(" distilled")}
    first = next(iter(distilled.values()))
    extra = "; ".join(f"{s}: {m['n_augmented']:,} augmented and {m['n_unlabeled']:,} unlabeled in-domain texts" for s, m in distilled.items())
    return (f"Distilled students: {first['n_train']:,} labeled training texts plus ({extra}), all with the teacher's soft "
            f"targets (labeled ones also with their labels); the hard-label students train on the labeled texts alone. The "
            f"teacher's outputs for a set of texts are computed once, inside the wall time of the first distilled student that "
            f"trains on them, and reused by later ones. The teacher's training wall time: "
            f"{row.get('teacher_trained', 'its training loop, an earlier run')}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--models", default=None, help="Reuse one fine-tuned teacher per dataset from this directory (teacher.py --keep) instead of fine-tuning it in the run.")
    parser.add_argument("--students", nargs="+", default=STUDENTS,
                        help="Student specs (slm distill --student), each optionally followed by its own augment=, epochs=, lr=, batch_size=, bf16=1, for one dataset as sst2.epochs= "
                             "(one argument: 'bilstm:hidden=150 augment=2 epochs=4').")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32, help="The students' batch size.")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--augment", type=float, default=2.0, help="Augmented texts per training text for the distilled students.")
    parser.add_argument("--limit", type=int, default=None, help="Train on a seeded subset of N examples.")
    parser.add_argument("--unlabeled", action="store_true", help="Give the distilled students the dataset's unlabeled texts (SST-2: its test sentences).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--speed-texts", type=int, default=512)
    parser.add_argument("--latency-calls", type=int, default=200)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=str(RESULTS / "distill"))
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA}: benchmark data not found (the shared data folder must sit beside the project)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = "python benchmarks/distill.py " + shlex.join(sys.argv[1:])  # quoted: a student spec with its options is one argument
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"{time.perf_counter() - started:6.0f} s  {message}", flush=True)

    rows = previous_rows(args.out, args.datasets)
    for name in args.datasets:
        stored = Path(args.models) / name if args.models else None
        if stored and not (stored / "model.safetensors").is_file():
            sys.exit(f"{stored}: no fine-tuned teacher: run python benchmarks/teacher.py --datasets {name} --trainers slmkit --keep {args.models}")
        rows.append({**run_dataset(name, stored, args, log), "command": command})
        write_results(Path(args.out), rows, fingerprint())
    log("done")


if __name__ == "__main__":
    main()
