"""Benchmark: fine-tune the packaged MiniLM with slmkit's loop and with the Hugging Face Trainer, same data.

For each dataset (SST-2: report dev accuracy; banking77: report test accuracy) both trainers see the same
training examples, hyperparameters and epochs:
- slmkit: `slmkit.train.train` (random batches packed into shared rows by default, `--batches`; bf16 autocast
  only where the CPU has native bf16), selecting its best
  epoch on a seeded held-out slice of the training file, then `slmkit.evaluate` on the reporting split;
- reference: `transformers.Trainer` with `DataCollatorWithPadding` (dynamic padding, fp32, its defaults),
  trained on the same examples (the training file minus the same held-out slice), scored after its last epoch.
Each run is a fresh subprocess, so peak RSS is per run. Results go to benchmarks/results/teacher.md and .json.

    python benchmarks/teacher.py                       # both datasets, settings below
    python benchmarks/teacher.py --datasets banking77 --limit 500 --epochs 1   # a quick smoke run

Needs ../shared/data (read in place) and `pip install -e .[bench]` (accelerate, for the Trainer).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"

# dataset: train file, report file, text column, label column, reporting split name, per-dataset settings
DATASETS = {
    "sst2": {
        "train": DATA / "sst2" / "train.tsv", "report": DATA / "sst2" / "dev.tsv", "text": "sentence", "label": "label",
        "split": "dev", "epochs": 1, "lr": 1e-4, "holdout": 0.03, "limit": 30000,
    },
    "banking77": {
        "train": DATA / "banking77" / "train.csv", "report": DATA / "banking77" / "test.csv", "text": "text", "label": "category",
        "split": "test", "epochs": 5, "lr": 1e-4, "holdout": 0.05, "limit": None,
    },
}
BATCH_SIZE, WEIGHT_DECAY, WARMUP, GRAD_CLIP, SEED = 32, 0.01, 0.1, 1.0, 42


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def split_files(spec: dict, limit: int | None, workdir: Path) -> tuple[Path, Path]:
    """The common training examples (train minus the held-out slice, optionally the first `limit`) as CSV,
    and the held-out slice, so that both trainers see exactly the same data."""
    from slmkit.data import read_examples, stratified_split

    examples = read_examples(spec["train"], spec["text"], spec["label"])
    train, held = stratified_split(examples, spec["holdout"], SEED)
    if limit:  # a seeded random subset, for smoke runs
        import numpy as np

        keep = np.random.default_rng(SEED).permutation(len(train))[:limit]
        train = [train[i] for i in sorted(keep)]
        known = {e.label for e in train}
        held = [e for e in held if e.label in known][: max(50, limit // 10)]
    return write_csv(workdir / "train.csv", train), write_csv(workdir / "held.csv", held)


def previous_rows(out: str | Path, rerun: list[str]) -> list[dict]:
    """Rows of a results file for the datasets not run again now (each dataset is measured in its own run)."""
    previous = Path(out).with_suffix(".json")
    return [r for r in json.loads(previous.read_text())["rows"] if r["dataset"] not in rerun] if previous.is_file() else []


def write_texts(path: Path, source: Path, column: str) -> Path:
    """The `column` texts of a data file as a .txt file, one text per line (slmkit's unlabeled/extra-text input)."""
    from slmkit.data import read_texts

    path.write_text("".join(t.replace("\n", " ") + "\n" for t in read_texts(source, column)))
    return path


def write_csv(path: Path, examples) -> Path:
    """Examples as a text,label CSV (what the workers and later benchmarks read)."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((e.text, e.label) for e in examples)
    return path


# ------------------------------------------------------------------------------------------ workers


def run_slmkit(spec: dict, train_csv: Path, held_csv: Path, epochs: int, workdir: Path, device: str, seed: int = 42, batches: str = "packed", pool: int = 50) -> dict:
    from slmkit.config import DataConfig, EvalConfig, OptimConfig, TrainConfig
    from slmkit.evaluate import evaluate
    from slmkit.hardware import native_bf16
    from slmkit.train import train

    cfg = TrainConfig(
        out=str(workdir / "slmkit-model"),
        data=DataConfig(train=str(train_csv), eval=str(held_csv)),
        train=OptimConfig(
            epochs=epochs, batch_size=BATCH_SIZE, lr=spec["lr"], weight_decay=WEIGHT_DECAY, warmup=WARMUP,
            grad_clip=GRAD_CLIP, seed=seed, pack=batches == "packed", bucket=batches != "random", bucket_pool=pool, bf16=device == "cpu" and native_bf16(), patience=0, device=device,
        ),
    )
    started = time.perf_counter()
    result = train(cfg, progress=False)
    wall = time.perf_counter() - started
    report = evaluate(EvalConfig(model=str(result.out), data=DataConfig(eval=str(spec["report"]), text_col=spec["text"], label_col=spec["label"])))
    m = result.metrics
    return {
        "trainer": "slmkit", "accuracy": report.metrics["accuracy"], "accuracy_ci95": report.metrics["accuracy_ci95"],
        "macro_f1": report.metrics["macro_f1"], "wall_s": wall, "loop_s": m["train_seconds"],
        "train_examples_per_s": m["n_train"] * m["epochs_run"] / wall, "best_epoch": m["best_epoch"],
        "max_length": m["max_length"], "n_train": m["n_train"], "peak_rss_mb": peak_rss_mb(), "batches": m["batches"],
    }


def run_trainer(spec: dict, train_csv: Path, held_csv: Path, epochs: int, workdir: Path, max_length: int, device: str, seed: int = SEED) -> dict:
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    from slmkit.base import packaged_minilm_dir
    from slmkit.data import check_labels, read_examples

    transformers.logging.set_verbosity_error()
    base = packaged_minilm_dir()
    train_ex = read_examples(train_csv)
    report_ex = read_examples(spec["report"], spec["text"], spec["label"])
    labels = check_labels(train_ex, train_csv)
    label2id = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(base)

    class Rows(torch.utils.data.Dataset):
        def __init__(self, examples):
            enc = tokenizer([e.text for e in examples], truncation=True, max_length=max_length)
            self.rows = [{**{k: enc[k][i] for k in enc}, "labels": label2id[e.label]} for i, e in enumerate(examples)]

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id
    )
    args = TrainingArguments(
        output_dir=str(workdir / "trainer"), per_device_train_batch_size=BATCH_SIZE, per_device_eval_batch_size=64,
        learning_rate=spec["lr"], weight_decay=WEIGHT_DECAY, num_train_epochs=epochs, warmup_steps=WARMUP,
        lr_scheduler_type="linear", max_grad_norm=GRAD_CLIP, seed=seed, eval_strategy="no", save_strategy="no",
        report_to=[], logging_strategy="no", use_cpu=device == "cpu", dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Rows(train_ex), processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    logits = trainer.predict(Rows(report_ex)).predictions
    y = np.array([label2id[e.label] for e in report_ex])
    from slmkit.metrics import accuracy, bootstrap_ci, macro_f1

    pred = logits.argmax(axis=1)
    return {
        "trainer": "hf-trainer", "accuracy": accuracy(y, pred), "accuracy_ci95": bootstrap_ci(accuracy, y, pred),
        "macro_f1": macro_f1(y, pred, len(labels)), "wall_s": wall, "loop_s": wall,
        "train_examples_per_s": len(train_ex) * epochs / wall, "best_epoch": epochs, "max_length": max_length,
        "n_train": len(train_ex), "peak_rss_mb": peak_rss_mb(),
    }


def worker(args) -> None:
    spec = dict(DATASETS[args.dataset], **({"lr": args.lr} if args.lr else {}))
    workdir = Path(args.workdir)
    train_csv, held_csv = workdir / "train.csv", workdir / "held.csv"
    if args.worker == "slmkit":
        result = run_slmkit(spec, train_csv, held_csv, args.epochs, workdir, args.device, args.seed, args.batches, args.bucket_pool)
    else:
        result = run_trainer(spec, train_csv, held_csv, args.epochs, workdir, args.max_length, args.device, args.seed)
    (workdir / f"{args.worker}.json").write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------ driver


def fingerprint(device: str = "cpu") -> dict:
    import torch
    import transformers

    from slmkit.hardware import cpu_flags, cpu_name

    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in cpu_flags()]
    gpu = {"gpu": torch.cuda.get_device_name(torch.device(device))} if device != "cpu" else {}
    return {"cpu": cpu_name(), "isa": isa, "threads": torch.get_num_threads(), **gpu, "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def hardware_line(info: dict) -> str:
    """The results' hardware sentence for a `fingerprint` (the benchmarks of ner.py and qa.py write it too)."""
    return (
        f"Hardware: {'both trainers on the GPU, ' + info['gpu'] + ', ' if 'gpu' in info else ''}"
        f"{info['cpu']}, ISA {', '.join(info['isa'])}, {info['threads']} torch threads; "
        f"Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--limit", type=int, default=None, help="Train on a seeded random subset of N examples; 0 = the whole set.")
    parser.add_argument("--trainers", nargs="+", default=["slmkit", "trainer"], choices=["slmkit", "trainer"], help="Which trainers to run.")
    parser.add_argument("--epochs", type=int, default=None, help="Override the per-dataset epochs.")
    parser.add_argument("--lr", type=float, default=None, help="Override the per-dataset learning rate.")
    parser.add_argument("--keep", default=None, help="Copy each slmkit model to KEEP/<dataset> for later stages.")
    parser.add_argument("--out", default=str(RESULTS / "teacher"), help="Results path without extension.")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where PyTorch sees a GPU (both trainers).")
    parser.add_argument("--seed", type=int, default=SEED, help="Both trainers' training seed (the held-out split keeps 42).")
    parser.add_argument("--batches", choices=["packed", "bucketed", "random"], default="packed", help="slmkit's batches: random ones packed into shared rows (train.pack, the default), length-bucketed, or random and padded.")
    parser.add_argument("--random-batches", dest="batches", action="store_const", const="random", help="The same as --batches random.")
    parser.add_argument("--bucket-pool", type=int, default=50, help="slmkit's length-bucketing pool, in batches (train.bucket_pool).")
    parser.add_argument("--note", default="", help="A sentence about the run's setup, written into the results.")
    parser.add_argument("--worker", choices=["slmkit", "trainer"], help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--max-length", type=int, default=None, help="The Trainer's maximum length when slmkit does not run first to derive it (default 128).")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not DATA.is_dir():
        sys.exit(f"{DATA}: benchmark data not found (the shared data folder must sit beside the project)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = "python benchmarks/teacher.py " + " ".join(sys.argv[1:])
    rows = []
    for name in args.datasets:
        spec = dict(DATASETS[name], **({"lr": args.lr} if args.lr else {}))
        epochs = args.epochs or spec["epochs"]
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            workdir = Path(tmp)
            limit = spec["limit"] if args.limit is None else (args.limit or None)
            split_files(spec, limit, workdir)
            results = {}
            for trainer in args.trainers:  # slmkit first: the Trainer reuses its derived max length
                extra = ["--max-length", str(results["slmkit"]["max_length"] if "slmkit" in results else args.max_length or 128)] if trainer == "trainer" else []
                cmd = [sys.executable, __file__, "--worker", trainer, "--dataset", name, "--workdir", tmp, "--epochs", str(epochs), "--device", args.device, "--seed", str(args.seed), *extra]
                cmd += ["--batches", args.batches, "--bucket-pool", str(args.bucket_pool)]
                cmd += ["--lr", str(args.lr)] if args.lr else []
                print(f"[{name}] {trainer}: training {epochs} epoch(s)...", flush=True)
                subprocess.run(cmd, check=True)
                results[trainer] = json.loads((workdir / f"{trainer}.json").read_text())
                print(f"[{name}] {trainer}: {json.dumps(results[trainer])}", flush=True)
            if args.keep and "slmkit" in results:
                shutil.copytree(workdir / "slmkit-model", Path(args.keep) / name, dirs_exist_ok=True)
        rows.append({"dataset": name, "split": spec["split"], "epochs": epochs, "lr": spec["lr"], "limit": limit, **results})
    write_results(Path(args.out), rows, command, args.device, args.note, args.seed)


BATCHES = {
    "packed": "random, packed (texts sharing rows under a block-diagonal attention mask, `train.pack`)",
    "bucketed": "length-bucketed",
    "random": "random, padded",
}


def batches_text(rows: list[dict]) -> str:
    """How slmkit's batches were made in these runs."""
    return " / ".join(BATCHES[k] for k in sorted({r["slmkit"]["batches"] for r in rows if "slmkit" in r})) or "no"


def write_results(out: Path, rows: list[dict], command: str, device: str = "cpu", note: str = "", seed: int = SEED) -> None:
    from slmkit.hardware import native_bf16

    info, native = fingerprint(device), device == "cpu" and native_bf16()
    subsets = [f"{r['dataset']}: a seeded random subset of {r['limit']:,} training examples" for r in rows if r["limit"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "hardware": info, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Teacher fine-tuning: slmkit vs the Hugging Face Trainer",
        "",
        f"Command: `{command}` (from the project root; data read in place from `../shared/data`).",
        hardware_line(info),
        *([note] if note else []),
        "",
        "Both trainers fine-tune the packaged all-MiniLM-L6-v2 on the same examples (the training file minus a seeded, "
        "stratified held-out slice that slmkit uses to pick its best epoch) with the same hyperparameters: AdamW, "
        f"batch {BATCH_SIZE}, weight decay {WEIGHT_DECAY}, {WARMUP:.0%} linear warmup then linear decay, gradient clipping "
        f"{GRAD_CLIP}, seed {seed}, the same maximum length, fused AdamW (the Trainer's default). slmkit uses {batches_text(rows)} "
        f"batches{' and bf16 autocast' if native else ' in fp32' if device != 'cpu' else ' in fp32 (this CPU has no native bf16, where autocast is far slower)'}; "
        "the Trainer uses `DataCollatorWithPadding` (dynamic padding, random batches) in fp32, its default. Wall time is the "
        "whole `slmkit.train.train()` call (data reading, per-epoch evaluation and checkpoints included) and the "
        "`Trainer.train()` call. Peak RSS is that of the run's own process.",
        "",
        *([f"Subsets (to fit the session's CPU time): {'; '.join(subsets)}.", ""] if subsets else []),
        "| dataset (split) | trainer | examples × epochs | accuracy (95% CI) | macro-F1 | wall time | train examples/s | peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for key in ("slmkit", "trainer"):
            if key not in row:
                continue
            r = row[key]
            lo, hi = r["accuracy_ci95"]
            lines.append(
                f"| {row['dataset']} ({row['split']}) | {r['trainer']} | {r['n_train']:,} × {row['epochs']} | "
                f"{100 * r['accuracy']:.2f} ({100 * lo:.1f}–{100 * hi:.1f}) | {100 * r['macro_f1']:.2f} | "
                f"{r['wall_s'] / 60:.1f} min | {r['train_examples_per_s']:.0f} | {r['peak_rss_mb']:,.0f} MB |"
            )
    pairs = [r for r in rows if "slmkit" in r and "trainer" in r]
    if pairs:
        lines += ["", "| dataset | accuracy slmkit − Trainer (points) | wall time slmkit / Trainer |", "|---|---|---|"]
    for row in pairs:
        s, t = row["slmkit"], row["trainer"]
        lines.append(f"| {row['dataset']} | {100 * (s['accuracy'] - t['accuracy']):+.2f} | {s['wall_s'] / t['wall_s']:.2f}× |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
