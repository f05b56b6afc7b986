"""Benchmark: extractive QA with slmkit's loop and with the Hugging Face Trainer, few-shot SQuAD, XQuAD-en.

Training data: the few-shot SQuAD v1.1 subsets of `../shared/data/squad_fewshot` (16…1,024 questions × 5
seeds, MRQA JSONL). Evaluation: XQuAD-en (1,190 SQuAD v1.1 dev questions), official SQuAD answer
normalization, EM and F1 with 95% bootstrap intervals over questions.

- slmkit: `slmkit.train.train` with `task=qa` on the subset, picking its best epoch on a validation set of
  questions drawn from the union of all subsets on paragraphs the subset does not contain (the subset is
  never held out from itself), then `slmkit.evaluate` on XQuAD-en.
- reference: `transformers.Trainer` on exactly the same windows (slmkit's windowing, the same question and
  context tokens, stride and start/end positions) with the same hyperparameters, scored after its last epoch
  with the same answer decoding and metric. On a CPU with native bf16 both train under bf16 autocast (slmkit's
  default there), elsewhere both in fp32.

Modes (each a list of runs, every run a fresh subprocess):
    python benchmarks/qa.py --seeds 42 43 44 45 46          # 1,024 questions per seed, slmkit and the Trainer
    python benchmarks/qa.py --curve 16 32 64 128 256 512    # slmkit's learning curve (seed 42)
    python benchmarks/qa.py --union                         # slmkit on the union of all subsets (8,105 questions)
    python benchmarks/qa.py --distill drop:every=2          # the seed-42 teacher, then a student distilled from it
    python benchmarks/qa.py --distill drop:every=2 --student-set loss.hidden=1    # ... with hidden-state transfer
    python benchmarks/qa.py --distill drop:every=2 --transfer --student-epochs 3  # ... also on the teacher's answers to
                                                                                  # the union's other questions
    python benchmarks/qa.py --distill drop:every=2 --teacher-dir runs/qa-teacher  # trains the teacher there once;
                                                                                  # later student runs reuse it

Results go to benchmarks/results/qa.md and .json (rows of earlier runs are kept). Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FEWSHOT = DATA / "squad_fewshot"
XQUAD = DATA / "squad_xquad_en" / "xquad.en.json"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

from teacher import fingerprint, hardware_line  # noqa: E402 - the same hardware line as the teacher benchmark

BATCH_SIZE, LR, WEIGHT_DECAY, WARMUP, GRAD_CLIP, SEED = 16, 1e-4, 0.01, 0.1, 1.0, 42
MAX_LENGTH, STRIDE = 256, 128
MIN_STEPS, MIN_EPOCHS, MAX_EPOCHS = 200, 3, 30  # small subsets train for at least MIN_STEPS optimizer steps
STUDENT_EPOCHS = 8  # of a --distill student; a run with other epochs says so in its name


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def subset_path(seed: int, size: int) -> Path:
    return FEWSHOT / f"squad-train-seed-{seed}-num-examples-{size}.jsonl"


def read(path: Path) -> list:
    from slmkit.qa import read_qa

    return read_qa(path)


def union() -> list:
    """Every distinct question of the 35 subsets (by id), in a fixed order."""
    seen: dict[str, object] = {}
    for path in sorted(FEWSHOT.glob("squad-train-seed-*-num-examples-*.jsonl")):
        for e in read(path):
            seen.setdefault(e.id, e)
    return list(seen.values())


def write_squad(path: Path, examples: list) -> Path:
    """Questions as SQuAD v1.1 JSON (paragraphs grouped by context), what both workers read."""
    paragraphs: dict[str, list] = {}
    for e in examples:
        paragraphs.setdefault(e.context, []).append(
            {"id": e.id, "question": e.question, "answers": [{"text": t, "answer_start": s} for t, s in e.answers]}
        )
    data = [{"title": "benchmark", "paragraphs": [{"context": c, "qas": q} for c, q in paragraphs.items()]}]
    path.write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    return path


def prepare(train: list, pool: list, workdir: Path, dev_size: int, transfer: bool = False) -> int:
    """train.json, dev.json (questions of `pool` on paragraphs `train` lacks, seeded) in `workdir`; with `transfer`,
    transfer.jsonl too: every other question of `pool` off the dev paragraphs, as a question and its context only
    (what a distillation student takes as unlabeled questions). The number of transfer questions."""
    import numpy as np

    contexts = {e.context for e in train}
    candidates = [e for e in pool if e.context not in contexts]
    pick = np.random.default_rng(SEED).permutation(len(candidates))[:dev_size]
    dev = [candidates[i] for i in sorted(pick)]
    write_squad(workdir / "train.json", train)
    write_squad(workdir / "dev.json", dev)
    if not transfer:
        return 0
    taken, held = {e.id for e in train}, {e.context for e in dev}
    others = [e for e in pool if e.id not in taken and e.context not in held]
    (workdir / "transfer.jsonl").write_text("".join(json.dumps({"id": e.id, "question": e.question, "context": e.context}) + "\n" for e in others), encoding="utf-8")
    return len(others)


def epochs_for(n_questions: int, requested: int | None) -> int:
    if requested:
        return requested
    steps_per_epoch = math.ceil(1.1 * n_questions / BATCH_SIZE)  # about 1.1 windows per question at 256 tokens
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch))))


# ------------------------------------------------------------------------------------------ workers


def _optim(epochs: int, lr: float, device: str):
    """The benchmark's optimizer settings (both slmkit stages; the Trainer gets the same in its own terms)."""
    from slmkit.config import OptimConfig
    from slmkit.hardware import native_bf16

    return OptimConfig(epochs=epochs, batch_size=BATCH_SIZE, lr=lr, weight_decay=WEIGHT_DECAY, warmup=WARMUP, grad_clip=GRAD_CLIP,
                       seed=SEED, bf16=device == "cpu" and native_bf16(), patience=0, device=device)


def _on_xquad(stage, cfg) -> tuple[object, dict, float]:
    """Run the slmkit stage (train or distill) on `cfg`: its result, its XQuAD-en report and its wall time."""
    from slmkit.config import DataConfig, EvalConfig
    from slmkit.evaluate import evaluate

    started = time.perf_counter()
    result = stage(cfg, progress=False)
    wall = time.perf_counter() - started
    return result, evaluate(EvalConfig(model=str(result.out), data=DataConfig(eval=str(XQUAD)))).metrics, wall


def run_slmkit(workdir: Path, epochs: int, device: str = "cpu") -> dict:
    from slmkit.config import DataConfig, ModelConfig, TrainConfig
    from slmkit.train import train

    cfg = TrainConfig(
        task="qa", out=str(workdir / "slmkit-model"),
        data=DataConfig(train=str(workdir / "train.json"), eval=str(workdir / "dev.json")),
        model=ModelConfig(max_length=MAX_LENGTH, stride=STRIDE), train=_optim(epochs, LR, device),
    )
    result, report, wall = _on_xquad(train, cfg)
    m = result.metrics
    return {
        "trainer": "slmkit", **_scores(report), "wall_s": wall, "best_epoch": m["best_epoch"], "n_train": m["n_train"],
        "dev_f1": m["eval"]["f1"], "dtype": "bf16" if cfg.train.bf16 else "fp32", "peak_rss_mb": peak_rss_mb(),
    }


def run_student(workdir: Path, epochs: int, device: str, spec: str, lr: float, sets: list[str]) -> dict:
    """`slm distill` of the teacher the slmkit worker left in `workdir` into `spec`, on the same questions (soft
    start/end targets and the answers, then `sets`: `--set`-style overrides such as loss.hidden=1) and, when
    `workdir` holds transfer.jsonl, on those unlabeled questions (soft targets only); best epoch on the same
    validation questions; scored on XQuAD-en."""
    from slmkit.config import DistillConfig, load_config, to_dict
    from slmkit.distill import distill

    optim = {f"train.{k}": v for k, v in to_dict(_optim(epochs, lr, device)).items()}
    transfer = workdir / "transfer.jsonl"
    unlabeled = {"unlabeled": str(transfer)} if transfer.is_file() else {}
    cfg = load_config(
        DistillConfig, None, sets, teacher=str(workdir / "slmkit-model"), student=spec, out=str(workdir / "student"),
        **{"data.train": str(workdir / "train.json"), "data.eval": str(workdir / "dev.json")}, **optim, **unlabeled,
    )
    result, report, wall = _on_xquad(distill, cfg)
    m = result.metrics
    return {
        "trainer": " ".join([f"slmkit student {spec}", *sets]), **_scores(report), "wall_s": wall, "best_epoch": m.get("best_epoch"), "epochs": epochs,
        "lr": lr, "sets": sets, "parameters": m["parameters"]["student"], "teacher_parameters": m["parameters"]["teacher"],
        "dev_retention": m["retention"], "dev_f1_by_epoch": [h.get("f1") for h in m["history"]], "n_unlabeled": m["n_unlabeled"],
        "peak_rss_mb": peak_rss_mb(),
    }


def _scores(report: dict) -> dict:
    return {k: report[k] for k in ("f1", "f1_ci95", "exact_match", "exact_match_ci95")}


def run_trainer(workdir: Path, epochs: int, device: str = "cpu") -> dict:
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from slmkit import qa
    from slmkit.base import packaged_minilm_dir
    from slmkit.encoding import make_encoder

    transformers.logging.set_verbosity_error()
    base = packaged_minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoder = make_encoder(tokenizer, MAX_LENGTH)
    train_ex, test_ex = read(workdir / "train.json"), read(XQUAD)

    class Windows(torch.utils.data.Dataset):
        """slmkit's windows as Trainer rows: ids, mask, segments and (for training) the answer's token positions."""

        def __init__(self, features, with_answers: bool):
            self.rows = [
                {
                    "input_ids": f["input_ids"], "attention_mask": [1] * len(f["input_ids"]), "token_type_ids": f["token_type_ids"],
                    **({"start_positions": f["start_position"], "end_positions": f["end_position"]} if with_answers else {}),
                }
                for f in features
            ]

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]

    train_feats = qa.encode_windows(train_ex, encoder, MAX_LENGTH, STRIDE, with_answers=True)
    test_feats = qa.encode_windows(test_ex, encoder, MAX_LENGTH, STRIDE, with_answers=False)
    torch.manual_seed(SEED)
    model = AutoModelForQuestionAnswering.from_pretrained(base)
    bf16 = _optim(epochs, LR, device).bf16  # the precision slmkit trains in here
    args = TrainingArguments(
        bf16=bf16,
        output_dir=str(workdir / "trainer"), per_device_train_batch_size=BATCH_SIZE, per_device_eval_batch_size=32,
        learning_rate=LR, weight_decay=WEIGHT_DECAY, num_train_epochs=epochs, warmup_steps=WARMUP,
        lr_scheduler_type="linear", max_grad_norm=GRAD_CLIP, seed=SEED, eval_strategy="no", save_strategy="no",
        report_to=[], logging_strategy="no", use_cpu=device == "cpu", dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Windows(train_feats, True), data_collator=DataCollatorWithPadding(tokenizer))
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    start_logits, end_logits = trainer.predict(Windows(test_feats, False)).predictions
    outputs = [(np.asarray(start_logits[i, : len(f["input_ids"])]), np.asarray(end_logits[i, : len(f["input_ids"])])) for i, f in enumerate(test_feats)]
    predictions = [a[0].text if a else "" for a in qa.decode_answers(test_ex, test_feats, outputs)]
    report = qa.qa_report(predictions, [[t for t, _ in e.answers] for e in test_ex], [e.question for e in test_ex])
    return {"trainer": "hf-trainer", **_scores(report), "wall_s": wall, "best_epoch": epochs, "n_train": len(train_ex), "dtype": "bf16" if bf16 else "fp32",
            "peak_rss_mb": peak_rss_mb()}


def worker(args) -> None:
    workdir = Path(args.workdir)
    if args.worker == "student":
        result = run_student(workdir, args.epochs, args.device, args.distill, args.student_lr, args.student_set)
    else:
        result = run_slmkit(workdir, args.epochs, args.device) if args.worker == "slmkit" else run_trainer(workdir, args.epochs, args.device)
    (workdir / f"{args.worker}.json").write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------ driver


def run_one(name: str, train: list, pool: list, trainers: list[str], epochs: int | None, dev_size: int, device: str = "cpu",
            student: tuple[str, int, float, list[str]] | None = None, transfer: bool = False, teacher_dir: Path | None = None) -> dict:
    """Each trainer in a fresh subprocess on the same files; with `student` (spec, epochs, learning rate, overrides), a
    "student" trainer after "slmkit" distills the teacher slmkit trained (with `transfer`, also on the pool's other
    questions, unlabeled). With `teacher_dir`, slmkit's model is kept there and a later run on the same questions,
    epochs and device reuses it (training is seeded, so it is the same teacher), along with the teacher outputs that
    distill cached in it."""
    n_epochs = epochs_for(len(train), epochs)
    key = {"questions": sorted(e.id for e in train), "epochs": n_epochs, "dev_size": dev_size, "device": device}
    with tempfile.TemporaryDirectory(prefix="bench-qa-") as tmp:
        n_transfer = prepare(train, pool, Path(tmp), dev_size, transfer)
        row = {"run": name, "questions": len(train), "epochs": n_epochs, **({"transfer_questions": n_transfer} if transfer else {})}
        for trainer in trainers:
            epochs_here = student[1] if trainer == "student" else n_epochs
            kept = _reuse_teacher(teacher_dir, key, Path(tmp)) if trainer == "slmkit" and teacher_dir else None
            if kept:
                row[trainer] = kept
                print(f"[{name}] {trainer}: reused the teacher in {teacher_dir} (F1 {100 * row[trainer]['f1']:.2f})", flush=True)
                continue
            print(f"[{name}] {trainer}: {len(train)} questions × {epochs_here} epoch(s)...", flush=True)
            cmd = [sys.executable, __file__, "--worker", trainer, "--workdir", tmp, "--epochs", str(epochs_here), "--device", device]
            if trainer == "student":
                cmd += ["--distill", student[0], "--student-lr", str(student[2]), *(f"--student-set={kv}" for kv in student[3])]
            subprocess.run(cmd, check=True)
            row[trainer] = json.loads((Path(tmp) / f"{trainer}.json").read_text())
            if trainer == "slmkit" and teacher_dir:
                _keep_teacher(teacher_dir, key, Path(tmp))
            print(f"[{name}] {trainer}: F1 {100 * row[trainer]['f1']:.2f} in {row[trainer]['wall_s']:.0f} s", flush=True)
    return row


def _reuse_teacher(teacher_dir: Path, key: dict, workdir: Path) -> dict | None:
    """Link the teacher kept in `teacher_dir` into `workdir` when it was trained on `key` and return its result;
    None when there is none."""
    kept = teacher_dir / "slmkit.json"
    result = json.loads(kept.read_text()) if kept.is_file() else {}
    if result.pop("key", None) != key:
        return None
    (workdir / "slmkit-model").symlink_to((teacher_dir / "slmkit-model").resolve(), target_is_directory=True)
    return dict(result, reused=True)


def _keep_teacher(teacher_dir: Path, key: dict, workdir: Path) -> None:
    """Copy slmkit's freshly trained model out of `workdir` (replacing an older one), its result last."""
    import shutil

    teacher_dir.mkdir(parents=True, exist_ok=True)
    (teacher_dir / "slmkit.json").unlink(missing_ok=True)
    shutil.rmtree(teacher_dir / "slmkit-model", ignore_errors=True)
    shutil.copytree(workdir / "slmkit-model", teacher_dir / "slmkit-model")
    result = dict(json.loads((workdir / "slmkit.json").read_text()), key=key)
    (teacher_dir / "slmkit.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="*", type=int, default=[], help="1,024-question subsets to run (slmkit and the Trainer).")
    parser.add_argument("--curve", nargs="*", type=int, default=[], help="Subset sizes (seed 42) for slmkit's learning curve.")
    parser.add_argument("--union", action="store_true", help="slmkit on the union of all subsets.")
    parser.add_argument("--trainers", nargs="+", default=["slmkit", "trainer"], choices=["slmkit", "trainer"], help="Trainers of the --seeds runs.")
    parser.add_argument("--epochs", type=int, default=None, help="Epochs of every run; default: enough for 200 steps, 3 to 30.")
    parser.add_argument("--dev-size", type=int, default=200, help="Validation questions (best-epoch selection by slmkit).")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where PyTorch sees a GPU (both trainers).")
    parser.add_argument("--out", default=str(RESULTS / "qa"), help="Results path without extension.")
    parser.add_argument("--note", default="", help="A sentence about the run's setup, written into the results.")
    parser.add_argument("--distill", help="Student spec (e.g. drop:every=2): the seed-42 1,024-question teacher, then this student distilled from it.")
    parser.add_argument("--student-epochs", type=int, default=STUDENT_EPOCHS, help="Epochs of the --distill student.")
    parser.add_argument("--student-lr", type=float, default=LR, help="Learning rate of the --distill student.")
    parser.add_argument("--student-set", action="append", default=[], metavar="KEY=VALUE", help="A distillation setting of the --distill student (repeatable), e.g. loss.hidden=1.")
    parser.add_argument("--transfer", action="store_true", help="The --distill student also learns the teacher's answers to the union's other questions (their answers unused; the validation paragraphs left out).")
    parser.add_argument("--teacher-dir", help="Keep the --distill teacher here and reuse it in later runs with the same questions, epochs and device (delete it after changing the training code).")
    parser.add_argument("--worker", choices=["slmkit", "trainer", "student"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not DATA.is_dir():
        sys.exit(f"{DATA}: benchmark data not found (the shared data folder must sit beside the project)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = "python benchmarks/qa.py " + " ".join(sys.argv[1:])
    pool = union()
    previous = Path(args.out).with_suffix(".json")
    rows = json.loads(previous.read_text())["rows"] if previous.is_file() else []
    new = []
    for seed in args.seeds:
        new.append(run_one(f"seed {seed}, 1024", read(subset_path(seed, 1024)), pool, args.trainers, args.epochs, args.dev_size, args.device))
    for size in args.curve:
        new.append(run_one(f"curve {size}", read(subset_path(42, size)), pool, ["slmkit"], args.epochs, min(args.dev_size, max(32, size // 4)), args.device))
    if args.union:
        import numpy as np

        contexts = sorted({e.context for e in pool})
        held = {contexts[i] for i in np.random.default_rng(SEED).permutation(len(contexts))[: len(contexts) // 20]}
        new.append(run_one("union", [e for e in pool if e.context not in held], [e for e in pool if e.context in held], ["slmkit"], args.epochs, args.dev_size, args.device))
    if args.distill:
        name = " ".join([f"distill {args.distill}", *args.student_set, *(["transfer"] if args.transfer else []),
                         *([f"{args.student_epochs} epochs"] if args.student_epochs != STUDENT_EPOCHS else []),
                         *([f"lr {args.student_lr:g}"] if args.student_lr != LR else [])])
        new.append(run_one(name, read(subset_path(42, 1024)), pool, ["slmkit", "student"], args.epochs, args.dev_size, args.device,
                           (args.distill, args.student_epochs, args.student_lr, args.student_set), args.transfer,
                           Path(args.teacher_dir) if args.teacher_dir else None))
    names = {r["run"] for r in new}
    rows = [r for r in rows if r["run"] not in names] + [dict(r, command=command) for r in new]
    write_results(Path(args.out), rows, args.note, args.device)


def write_results(out: Path, rows: list[dict], note: str = "", device: str = "cpu") -> None:
    info = fingerprint(device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"hardware": info, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Extractive QA: few-shot SQuAD, evaluated on XQuAD-en",
        "",
        f"{hardware_line(info)} Data read in place from `../shared/data`.",
        *([note] if note else []),
        "",
        f"The packaged all-MiniLM-L6-v2 with a fresh span head; windows of {MAX_LENGTH} tokens, stride {STRIDE}; AdamW, batch "
        f"{BATCH_SIZE}, learning rate {LR}, weight decay {WEIGHT_DECAY}, {WARMUP:.0%} warmup then linear decay, clipping {GRAD_CLIP}; "
        f"epochs: enough for {MIN_STEPS} optimizer steps ({MIN_EPOCHS} to {MAX_EPOCHS}). The Trainer reference trains on slmkit's "
        "own windows and is decoded and scored the same way. Scores: SQuAD v1.1 EM/F1 (official normalization) on XQuAD-en's "
        "1,190 questions, 95% bootstrap intervals. Published anchors at 1,024 SQuAD questions (SQuAD dev): RoBERTa-base 73.8 F1, "
        "Splinter 82.8 F1 (Ram et al. 2021, Table 1).",
        "",
        "| run | trainer | questions × epochs | F1 (95% CI) | EM (95% CI) | wall time | command |",
        "|---|---|---|---|---|---|---|",
    ]
    curve = sorted((r for r in rows if r["run"].startswith("curve ")), key=lambda r: r["questions"])  # the curve in size order
    for row in [r for r in rows if not r["run"].startswith("curve ")] + curve:
        for key in ("slmkit", "trainer", "student"):
            if key in row:
                r = row[key]
                (flo, fhi), (elo, ehi) = r["f1_ci95"], r["exact_match_ci95"]
                who = f"{r['trainer']} ({r['dtype']})" if "dtype" in r else r["trainer"]  # older rows lack the dtype
                lines.append(
                    f"| {row['run']} | {who} | {row['questions']:,} × {r.get('epochs', row['epochs'])} | {100 * r['f1']:.2f} ({100 * flo:.1f}–{100 * fhi:.1f}) | "
                    f"{100 * r['exact_match']:.2f} ({100 * elo:.1f}–{100 * ehi:.1f}) | {r['wall_s'] / 60:.1f} min | `{row['command']}` |"
                )
    seeds = [r for r in rows if r["run"].startswith("seed ") and "slmkit" in r and "trainer" in r]
    if seeds:
        import statistics

        s, t = (statistics.mean(r[k]["f1"] for r in seeds) for k in ("slmkit", "trainer"))
        lines += ["", f"Mean over {len(seeds)} seed(s) at 1,024 questions: slmkit F1 {100 * s:.2f}, Trainer F1 {100 * t:.2f} ({100 * (s - t):+.2f} points)."]
    for row in rows:
        if "student" in row:
            t, st = row["slmkit"], row["student"]
            more = f" It also learned the teacher's answers to {st['n_unlabeled']:,} unlabeled questions." if st.get("n_unlabeled") else ""
            lines += ["", f"{row['run']}: the student ({st['parameters']:,} parameters) keeps {100 * st['f1'] / t['f1']:.1f}% of the teacher's F1 "
                      f"({100 * st['f1']:.2f} vs {100 * t['f1']:.2f}); distillation took {st['wall_s'] / 60:.1f} min, the teacher's training {t['wall_s'] / 60:.1f} min{' (in an earlier run: reused)' if t.get('reused') else ''}.{more}"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
