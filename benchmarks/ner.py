"""Benchmark: NER with slmkit's loop and with the Hugging Face Trainer, same model, data and hyperparameters.

For each dataset both trainers fine-tune the packaged MiniLM for token classification on the same sentences
(read once by `slmkit`'s NER reader, tags converted to BIO), with the same epochs, learning rate, batch size,
warmup, weight decay, clipping and maximum length, and both are scored on the reporting split with the same
decoding (each word's tag read at its first sub-token, an I- that starts an entity read as B-) and the same
seqeval strict entity F1 with 95% bootstrap intervals:
- slmkit: `slmkit.train.train` with `task=ner` (length-bucketed batches), picking its best epoch on the
  dev split, then `slmkit.evaluate` on the reporting split;
- reference: `transformers.Trainer` with `DataCollatorForTokenClassification` (dynamic padding, random
  batches, fp32), scored after its last epoch.
Each run is a fresh subprocess. Results go to benchmarks/results/ner.md and .json.

    python benchmarks/ner.py                                   # CoNLL-2003 and SNIPS, settings below
    python benchmarks/ner.py --datasets snips --limit 500 --epochs 1   # a quick smoke run

Needs ../shared/data (read in place) and `pip install -e .[bench,ner]`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

from teacher import fingerprint, hardware_line  # noqa: E402 - the same hardware line as the teacher benchmark

# dataset: train, dev (best-epoch selection) and reporting files, their tag scheme, per-dataset settings
DATASETS = {
    "conll2003": {
        "train": DATA / "conll2003" / "eng.train", "dev": DATA / "conll2003" / "eng.testa", "report": DATA / "conll2003" / "eng.testb",
        "scheme": "iob1", "split": "testb", "epochs": 3, "lr": 1e-4,
    },
    "snips": {
        "train": DATA / "snips" / "train", "dev": DATA / "snips" / "valid", "report": DATA / "snips" / "test",
        "scheme": "bio", "split": "test", "epochs": 3, "lr": 1e-4,
    },
    "atis": {
        "train": DATA / "atis" / "train", "dev": DATA / "atis" / "valid", "report": DATA / "atis" / "test",
        "scheme": "bio", "split": "test", "epochs": 3, "lr": 1e-4,
    },
}
BATCH_SIZE, WEIGHT_DECAY, WARMUP, GRAD_CLIP, SEED = 32, 0.01, 0.1, 1.0, 42


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def read(path: Path, scheme: str) -> list:
    """Sentences of a CoNLL file or seq.in/seq.out folder, tags in BIO (repairs are counted on stderr)."""
    from slmkit.config import DataConfig
    from slmkit.tasks import get_task

    return get_task("ner", scheme=scheme).read(path, DataConfig(scheme=scheme))


def write_conll(path: Path, sentences: list) -> Path:
    """Sentences as `word tag` lines in BIO (what both workers read), a blank line between sentences."""
    with open(path, "w", encoding="utf-8") as f:
        for s in sentences:
            f.writelines(f"{w} {t}\n" for w, t in zip(s.words, s.tags))
            f.write("\n")
    return path


def prepare(spec: dict, limit: int | None, workdir: Path) -> None:
    """train/dev/report as BIO CoNLL files in `workdir` (a seeded subset of train with `limit`)."""
    import numpy as np

    train = read(spec["train"], spec["scheme"])
    if limit:
        keep = np.random.default_rng(SEED).permutation(len(train))[:limit]
        train = [train[i] for i in sorted(keep)]
    dev = read(spec["dev"], spec["scheme"])
    kinds = {t[2:] for s in train for t in s.tags if t != "O"}
    dev = [s for s in dev if all(t == "O" or t[2:] in kinds for t in s.tags)]  # a subset may lack rare slot types
    write_conll(workdir / "train.conll", train)
    write_conll(workdir / "dev.conll", dev[: max(200, limit // 5)] if limit else dev)
    write_conll(workdir / "report.conll", read(spec["report"], spec["scheme"]))


# ------------------------------------------------------------------------------------------ workers


def run_slmkit(spec: dict, workdir: Path, epochs: int, seed: int, device: str = "cpu", fp32: bool = False) -> dict:
    from slmkit.config import DataConfig, EvalConfig, OptimConfig, TrainConfig
    from slmkit.evaluate import evaluate
    from slmkit.hardware import native_bf16
    from slmkit.train import train

    cfg = TrainConfig(
        task="ner", out=str(workdir / "slmkit-model"),
        data=DataConfig(train=str(workdir / "train.conll"), eval=str(workdir / "dev.conll"), scheme="bio"),
        train=OptimConfig(
            epochs=epochs, batch_size=BATCH_SIZE, lr=spec["lr"], weight_decay=WEIGHT_DECAY, warmup=WARMUP,
            grad_clip=GRAD_CLIP, seed=seed, bf16=device == "cpu" and native_bf16() and not fp32, patience=0, device=device,
        ),
    )
    started = time.perf_counter()
    result = train(cfg, progress=False)
    wall = time.perf_counter() - started
    report = evaluate(EvalConfig(model=str(result.out), data=DataConfig(eval=str(workdir / "report.conll"), scheme="bio"))).metrics
    m = result.metrics
    return {
        "trainer": "slmkit", **_scores(report), "wall_s": wall, "loop_s": m["train_seconds"],
        "train_sentences_per_s": m["n_train"] * m["epochs_run"] / wall, "best_epoch": m["best_epoch"], "batches": m["batches"], "dtype": "bf16" if cfg.train.bf16 else "fp32",
        "max_length": m["max_length"], "n_train": m["n_train"], "peak_rss_mb": peak_rss_mb(),
    }


def _scores(report: dict) -> dict:
    return {k: report[k] for k in ("f1", "f1_ci95", "precision", "recall", "token_accuracy", "per_class")}


def run_trainer(spec: dict, workdir: Path, epochs: int, max_length: int, seed: int, device: str = "cpu") -> dict:
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification, Trainer, TrainingArguments

    from slmkit import ner
    from slmkit.base import packaged_minilm_dir

    transformers.logging.set_verbosity_error()
    base = packaged_minilm_dir()
    train_s, report_s = read(workdir / "train.conll", "bio"), read(workdir / "report.conll", "bio")
    kinds = sorted({t[2:] for s in train_s for t in s.tags if t != "O"})
    labels = ["O"] + [f"{p}-{k}" for k in kinds for p in "BI"]  # the same label order as slmkit's
    label2id = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(base)

    class Rows(torch.utils.data.Dataset):
        """Word-piece features with the word's label on its first piece (-100 elsewhere), the usual recipe."""

        def __init__(self, sentences, with_labels: bool):
            enc = tokenizer([s.words for s in sentences], is_split_into_words=True, truncation=True, max_length=max_length)
            self.rows, self.starts = [], []
            for i, s in enumerate(sentences):
                word_ids, labels_, starts, seen = enc.word_ids(i), [], [-1] * len(s.words), set()
                for pos, w in enumerate(word_ids):
                    first = w is not None and w not in seen
                    labels_.append(label2id.get(s.tags[w], 0) if first and with_labels else -100)
                    if first:
                        seen.add(w)
                        starts[w] = pos
                self.rows.append({**{k: enc[k][i] for k in enc}, "labels": labels_})
                self.starts.append(starts)

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]

    torch.manual_seed(seed)
    model = AutoModelForTokenClassification.from_pretrained(base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)
    args = TrainingArguments(
        output_dir=str(workdir / "trainer"), per_device_train_batch_size=BATCH_SIZE, per_device_eval_batch_size=64,
        learning_rate=spec["lr"], weight_decay=WEIGHT_DECAY, num_train_epochs=epochs, warmup_steps=WARMUP,
        lr_scheduler_type="linear", max_grad_norm=GRAD_CLIP, seed=seed, eval_strategy="no", save_strategy="no",
        report_to=[], logging_strategy="no", use_cpu=device == "cpu", dataloader_num_workers=0, disable_tqdm=True,
    )
    collator = DataCollatorForTokenClassification(tokenizer)
    trainer = Trainer(model=model, args=args, train_dataset=Rows(train_s, True), data_collator=collator, processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    rows = Rows(report_s, False)
    logits = trainer.predict(rows).predictions  # (n, padded width, n_labels)
    pred = [ner.decode_tags(ner.word_probs(logits[i], rows.starts[i]), labels)[0] for i in range(len(report_s))]
    report = ner.ner_report([s.tags for s in report_s], pred, seed=0)
    return {
        "trainer": "hf-trainer", **_scores(report), "wall_s": wall, "loop_s": wall, "train_sentences_per_s": len(train_s) * epochs / wall,
        "best_epoch": epochs, "max_length": max_length, "n_train": len(train_s), "peak_rss_mb": peak_rss_mb(),
    }


def worker(args) -> None:
    spec = dict(DATASETS[args.dataset], **({"lr": args.lr} if args.lr else {}))
    workdir = Path(args.workdir)
    if args.worker == "slmkit":
        result = run_slmkit(spec, workdir, args.epochs, args.seed, args.device, args.fp32)
    else:
        result = run_trainer(spec, workdir, args.epochs, args.max_length, args.seed, args.device)
    (workdir / f"{args.worker}.json").write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------ driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["conll2003", "snips"], choices=list(DATASETS))
    parser.add_argument("--limit", type=int, default=None, help="Train on a seeded random subset of N sentences.")
    parser.add_argument("--trainers", nargs="+", default=["slmkit", "trainer"], choices=["slmkit", "trainer"])
    parser.add_argument("--epochs", type=int, default=None, help="Override the per-dataset epochs.")
    parser.add_argument("--lr", type=float, default=None, help="Override the per-dataset learning rate.")
    parser.add_argument("--seed", type=int, default=SEED, help="Both trainers' seed (head initialization, batch order, dropout); rows of other seeds are kept.")
    parser.add_argument("--keep", default=None, help="Copy each slmkit model to KEEP/<dataset> for later stages.")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where PyTorch sees a GPU (both trainers).")
    parser.add_argument("--fp32", action="store_true", help="slmkit trains in fp32 even where the CPU has native bf16 (its default there: bf16 autocast).")
    parser.add_argument("--out", default=str(RESULTS / "ner"), help="Results path without extension.")
    parser.add_argument("--note", default="", help="A sentence about the run's setup, written into the results.")
    parser.add_argument("--worker", choices=["slmkit", "trainer"], help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--max-length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not DATA.is_dir():
        sys.exit(f"{DATA}: benchmark data not found (the shared data folder must sit beside the project)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = "python benchmarks/ner.py " + " ".join(sys.argv[1:])
    previous = Path(args.out).with_suffix(".json")
    rows = [r for r in json.loads(previous.read_text())["rows"] if (r["dataset"], r.get("seed", SEED)) not in {(d, args.seed) for d in args.datasets}] if previous.is_file() else []
    for name in args.datasets:
        spec = dict(DATASETS[name], **({"lr": args.lr} if args.lr else {}))
        epochs = args.epochs or spec["epochs"]
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            prepare(spec, args.limit, Path(tmp))
            results = {}
            for trainer in args.trainers:  # slmkit first: the Trainer reuses its derived max length
                extra = ["--max-length", str(results["slmkit"]["max_length"] if "slmkit" in results else 128)] if trainer == "trainer" else []
                cmd = [sys.executable, __file__, "--worker", trainer, "--dataset", name, "--workdir", tmp, "--epochs", str(epochs), "--seed", str(args.seed), "--device", args.device, *(["--fp32"] if args.fp32 else []), *extra]
                cmd += ["--lr", str(args.lr)] if args.lr else []
                print(f"[{name}] {trainer}: training {epochs} epoch(s)...", flush=True)
                subprocess.run(cmd, check=True)
                results[trainer] = json.loads((Path(tmp) / f"{trainer}.json").read_text())
                print(f"[{name}] {trainer}: f1 {results[trainer]['f1']:.4f} in {results[trainer]['wall_s']:.0f} s", flush=True)
            if args.keep and "slmkit" in results:
                shutil.copytree(Path(tmp) / "slmkit-model", Path(args.keep) / name, dirs_exist_ok=True)
        rows.append({"dataset": name, "split": spec["split"], "seed": args.seed, "epochs": epochs, "lr": spec["lr"], "limit": args.limit, "command": command, "note": args.note, **results})
    write_results(Path(args.out), rows, args.device)


def _name(row: dict) -> str:
    """The dataset, and the seed where it is not the default."""
    seed = row.get("seed", SEED)
    return row["dataset"] if seed == SEED else f"{row['dataset']}, seed {seed}"


def write_results(out: Path, rows: list[dict], device: str = "cpu") -> None:
    """ner.md and ner.json: every dataset's row, each with the command (and note) of the run that measured it."""
    info = fingerprint(device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"hardware": info, "rows": rows}, indent=2) + "\n")
    subsets = [f"{r['dataset']}: a seeded random subset of {r['limit']:,} training sentences" for r in rows if r["limit"]]
    commands: dict[str, list[dict]] = {}
    for r in rows:
        commands.setdefault(r.get("command", ""), []).append(r)
    lines = [
        "# NER: slmkit vs the Hugging Face Trainer",
        "",
        "Commands (from the project root; data read in place from `../shared/data`):",
        "",
        *[f"- {', '.join(_name(r) for r in rs)}: `{c}`{' ' + rs[0]['note'] if rs[0].get('note') else ''}" for c, rs in commands.items()],
        "",
        hardware_line(info),
        "",
        "Both trainers fine-tune the packaged all-MiniLM-L6-v2 (22.7M parameters) for token classification on the same "
        "sentences (tags converted to BIO), with the same hyperparameters: AdamW, batch "
        f"{BATCH_SIZE}, weight decay {WEIGHT_DECAY}, {WARMUP:.0%} linear warmup then linear decay, gradient clipping {GRAD_CLIP}, "
        "the same maximum length; a word's label sits on its first sub-token. slmkit packs the sentences of random batches "
        "into shared rows by default (`train.pack`; the table says which batches it trained on) and keeps its best epoch on the dev split; the Trainer uses random batches with dynamic padding and is scored after "
        "its last epoch. Both are decoded and scored the same way: seqeval strict IOB2 entity F1 (micro), 95% bootstrap "
        "interval over sentences. Wall time is the whole `slmkit.train.train()` call (per-epoch dev scoring and checkpoints "
        "included) and the `Trainer.train()` call. Anchors (larger models, published): CoNLL-2003 test F1 "
        "BERT-base ≈ 92.4 (Sanh et al. 2019, Table 1), DistilBERT ≈ 88.5; SNIPS slot F1 BERT 96.9, DistilBERT 96.1.",
        "",
        *([f"Subsets: {'; '.join(subsets)}.", ""] if subsets else []),
        "| dataset (split) | trainer | sentences × epochs | entity F1 (95% CI) | precision | recall | token acc. | wall time | sentences/s | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for key in ("slmkit", "trainer"):
            if key in row:
                r = row[key]
                lo, hi = r["f1_ci95"]
                lines.append(
                    f"| {_name(row)} ({row['split']}) | {r['trainer']}{' (' + r['batches'] + ' batches, ' + r['dtype'] + ')' if 'dtype' in r else ''} | {r['n_train']:,} × {row['epochs']} | {100 * r['f1']:.2f} "
                    f"({100 * lo:.1f}–{100 * hi:.1f}) | {100 * r['precision']:.2f} | {100 * r['recall']:.2f} | {100 * r['token_accuracy']:.2f} | "
                    f"{r['wall_s'] / 60:.1f} min | {r['train_sentences_per_s']:.0f} | {r['peak_rss_mb']:,.0f} MB |"
                )
    pairs = [r for r in rows if "slmkit" in r and "trainer" in r]
    if pairs:
        lines += ["", "| dataset | F1 slmkit − Trainer (points) | wall time slmkit / Trainer |", "|---|---|---|"]
    for row in pairs:
        s, t = row["slmkit"], row["trainer"]
        lines.append(f"| {_name(row)} | {100 * (s['f1'] - t['f1']):+.2f} | {s['wall_s'] / t['wall_s']:.2f}× |")
    for dataset in dict.fromkeys(r["dataset"] for r in pairs):
        seeded = [r for r in pairs if r["dataset"] == dataset]
        if len(seeded) > 1:
            f1 = {k: statistics.mean(r[k]["f1"] for r in seeded) for k in ("slmkit", "trainer")}
            wall = {k: statistics.mean(r[k]["wall_s"] for r in seeded) for k in ("slmkit", "trainer")}
            lines.append(f"| {dataset}, mean of {len(seeded)} seeds | {100 * (f1['slmkit'] - f1['trainer']):+.2f} (slmkit {100 * f1['slmkit']:.2f}, "
                         f"Trainer {100 * f1['trainer']:.2f}) | {wall['slmkit'] / wall['trainer']:.2f}× |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
