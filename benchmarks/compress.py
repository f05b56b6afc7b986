"""Compression benchmark: accuracy, agreement, latency, throughput, size and memory of every compressed variant.

For each dataset, starting from the packaged MiniLM fine-tuned on it (the models `benchmarks/teacher.py --keep`
saves), one run builds with slmkit's own stages:

    fp32 PyTorch → fp32 ONNX (slm export) → dynamic int8 (per channel, per tensor) and static int8 (slm quantize)
    pruned 30% heads + 30% FFN (slm prune, distilled recovery) → ONNX → dynamic int8 (per channel, per tensor)
    vocabulary-trimmed to the training texts plus the 3,000 most frequent pieces (and, for SST-2, the pieces of its
    unlabeled test sentences, the `--extra-text` margin), removed pieces aliased to their nearest kept piece
    (slm trim-vocab) → ONNX → dynamic int8

then scores each on the reporting split (SST-2 dev, banking77 test) and measures all of them in interleaved
rounds with `slmkit.measure.compare` (these VMs drift between fast and slow states, so only ratios within one
run are compared). It writes benchmarks/results/compress.md and .json with the exact command.

    python benchmarks/compress.py --models runs/bench-models
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from teacher import DATA, DATASETS, RESULTS, SEED, previous_rows, write_csv, write_texts  # noqa: E402  the same data layout and held-out rule

from slmkit.config import ExportConfig, PruneConfig, QuantizeConfig, TrimConfig  # noqa: E402
from slmkit.data import read_examples, stratified_split  # noqa: E402
from slmkit.export import export  # noqa: E402
from slmkit.hardware import fingerprint  # noqa: E402
from slmkit.measure import compare, open_model, runtime_overhead  # noqa: E402
from slmkit.prune import prune  # noqa: E402
from slmkit.quantize import quantize  # noqa: E402
from slmkit.trim import trim_vocab  # noqa: E402

RECOVERY_LIMIT = {"sst2": 12000, "banking77": 0}  # examples per recovery pass (0: the whole training set)
TRIM_KEEP_TOP = 3000  # a margin of frequent pieces for words the training texts lack
# in-domain text without labels, a coverage margin for trim-vocab: SST-2's unlabeled test sentences (never the dev set)
TRIM_EXTRA = {"sst2": (DATA / "sst2" / "test_unlabeled.tsv", "sentence")}
TRIM_TARGETS = "banking77"  # the trim targets (identical predictions, accuracy, size) are set on banking77


def write_csvs(name: str, spec: dict, workdir: Path) -> tuple[Path, Path, list, list[str]]:
    """The training examples the teacher saw (train minus the held-out slice) and the reporting split, as CSV,
    and the trim margin's text file (none for banking77)."""
    examples = read_examples(spec["train"], spec["text"], spec["label"])
    train, _ = stratified_split(examples, spec["holdout"], SEED)
    report = read_examples(spec["report"], spec["text"], spec["label"])
    extra = [str(write_texts(workdir / "extra.txt", *TRIM_EXTRA[name]))] if name in TRIM_EXTRA else []
    return write_csv(workdir / "train.csv", train), write_csv(workdir / "eval.csv", report), report, extra


def build_variants(name: str, model: Path, work: Path, train_csv: Path, eval_csv: Path, extra: list[str], recovery_limit: int, log) -> tuple[dict, dict]:
    """Every variant's directory, and the stage metrics that prove what each transformation kept."""
    stages, dirs = {}, {"fp32 PyTorch": model}

    def step(label, fn):
        started = time.perf_counter()
        result = fn()
        log(f"[{name}] {label}: {time.perf_counter() - started:.0f} s")
        stages[label] = result.metrics
        return result.out

    onnx = step("export", lambda: export(ExportConfig(model=str(model), out=str(work / "onnx"), probe_data=str(train_csv))))
    dirs["fp32 ONNX"] = onnx
    q = dict(eval_data=str(eval_csv))
    dirs["dynamic int8"] = step("dynamic int8", lambda: quantize(QuantizeConfig(model=str(onnx), out=str(work / "dyn"), **q), progress=False))
    dirs["dynamic int8 per-tensor"] = step("dynamic int8 per-tensor", lambda: quantize(QuantizeConfig(model=str(onnx), out=str(work / "dyn-pt"), per_channel=False, **q), progress=False))
    dirs["static int8"] = step("static int8", lambda: quantize(QuantizeConfig(model=str(onnx), out=str(work / "static"), method="static", calib_data=str(train_csv), calib_size=256, **q), progress=False))

    pruned = step("prune", lambda: prune(PruneConfig(model=str(model), out=str(work / "pruned"), heads=0.3, ffn=0.3, data=str(train_csv), eval=str(eval_csv), recovery_limit=recovery_limit), progress=False))
    pruned_onnx = step("pruned export", lambda: export(ExportConfig(model=str(pruned), out=str(work / "pruned-onnx"), probe_data=str(train_csv))))
    dirs["pruned fp32 ONNX"] = pruned_onnx
    dirs["pruned + int8"] = step("pruned int8", lambda: quantize(QuantizeConfig(model=str(pruned_onnx), out=str(work / "pruned-int8"), **q), progress=False))
    dirs["pruned + int8 per-tensor"] = step("pruned int8 per-tensor", lambda: quantize(QuantizeConfig(model=str(pruned_onnx), out=str(work / "pruned-int8-pt"), per_channel=False, **q), progress=False))

    trimmed = step("trim-vocab", lambda: trim_vocab(TrimConfig(model=str(model), out=str(work / "trimmed"), data=[str(train_csv)], eval=str(eval_csv), keep_top=TRIM_KEEP_TOP, extra_text=extra)))
    trimmed_onnx = step("trimmed export", lambda: export(ExportConfig(model=str(trimmed), out=str(work / "trimmed-onnx"), probe_data=str(train_csv))))
    dirs["trimmed fp32 ONNX"] = trimmed_onnx
    dirs["trimmed + int8"] = step("trimmed int8", lambda: quantize(QuantizeConfig(model=str(trimmed_onnx), out=str(work / "trimmed-int8"), **q), progress=False))
    return dirs, stages


def score(dirs: dict, report: list) -> dict:
    """Accuracy on the reporting split and agreement with the fp32 PyTorch model, per variant."""
    texts = [e.text for e in report]
    scores, reference = {}, None
    for variant, directory in dirs.items():
        model = open_model(directory, batch_size=64)
        y = np.array([model.labels.index(e.label) for e in report])
        pred = model.predict_proba(texts).argmax(1)
        reference = pred if reference is None else reference
        scores[variant] = {"accuracy": float((pred == y).mean()), "agreement": float((pred == reference).mean())}
        del model
    return scores


def run_dataset(name: str, model: Path, args, log) -> dict:
    spec = DATASETS[name]
    with tempfile.TemporaryDirectory(prefix=f"compress-{name}-", dir=args.workdir) as tmp:
        work = Path(tmp)
        train_csv, eval_csv, report, extra = write_csvs(name, spec, work)
        limit = RECOVERY_LIMIT[name] if args.recovery_limit is None else args.recovery_limit
        dirs, stages = build_variants(name, model, work, train_csv, eval_csv, extra, limit, log)
        log(f"[{name}] scoring {len(report)} {spec['split']} examples")
        scores = score(dirs, report)
        texts = [e.text for e in report]
        sample = [texts[i] for i in np.random.default_rng(SEED).permutation(len(texts))[: args.speed_texts]]
        log(f"[{name}] timing {len(dirs)} variants, {args.rounds} interleaved rounds")
        speed = compare(dirs, sample, rounds=args.rounds, latency_calls=args.latency_calls)
        overhead = runtime_overhead(open_model(dirs["fp32 ONNX"]), sample)
        overhead_int8 = runtime_overhead(open_model(dirs["dynamic int8"]), sample)
    variants = {v: {**scores[v], **speed[v]} for v in dirs}
    return {"dataset": name, "split": spec["split"], "n_eval": len(report), "variants": variants, "stages": stages,
            "runtime_overhead": {"fp32 ONNX": overhead, "dynamic int8": overhead_int8}}


# ------------------------------------------------------------------------------------------- report


def targets(row: dict) -> list[tuple[str, str, bool | None]]:
    """The compression targets for one dataset: (what, measured, met); met is None for a figure reported beside a
    target set on the other dataset (the trim targets are banking77's)."""
    v = row["variants"]
    base = v["fp32 ONNX"]
    int8 = max(("dynamic int8", "dynamic int8 per-tensor", "static int8"), key=lambda k: v[k]["throughput_per_s"])
    best_acc = max(("dynamic int8", "dynamic int8 per-tensor", "static int8"), key=lambda k: v[k]["accuracy"])
    out = []
    drop = 100 * (base["accuracy"] - v[best_acc]["accuracy"])
    out.append((f"int8 accuracy drop ≤ 0.5 ({best_acc})", f"{drop:+.2f}", drop <= 0.5))
    tp = v[int8]["throughput_per_s"] / base["throughput_per_s"]
    out.append((f"int8 batch-32 throughput ≥ 1.8× ({int8})", f"{tp:.2f}×", tp >= 1.8))
    lat = base["p50_ms"] / min(v[k]["p50_ms"] for k in ("dynamic int8", "dynamic int8 per-tensor", "static int8"))
    out.append(("int8 batch-1 latency ≥ 1.5× faster (best p50)", f"{lat:.2f}×", lat >= 1.5))
    size = min(v[k]["bytes"] for k in ("dynamic int8", "dynamic int8 per-tensor", "static int8")) / base["bytes"]
    out.append(("int8 file size ≤ 0.3×", f"{size:.2f}×", size <= 0.3))
    # the faster pruned int8 variant that keeps the accuracy budget (per-channel when neither does)
    pruned = [k for k in ("pruned + int8", "pruned + int8 per-tensor") if k in v]
    within = [k for k in pruned if 100 * (base["accuracy"] - v[k]["accuracy"]) <= 1.0] or pruned[:1]
    best_pruned = max(within, key=lambda k: v[k]["throughput_per_s"])
    ptp = v[best_pruned]["throughput_per_s"] / base["throughput_per_s"]
    pdrop = 100 * (base["accuracy"] - v[best_pruned]["accuracy"])
    out.append((f"pruned + int8 throughput ≥ 2.5× ({best_pruned})", f"{ptp:.2f}×", ptp >= 2.5))
    out.append((f"pruned + int8 accuracy loss ≤ 1.0 ({best_pruned})", f"{pdrop:+.2f}", pdrop <= 1.0))
    same = v["trimmed fp32 ONNX"]["agreement"]
    tdrop = 100 * abs(base["accuracy"] - v["trimmed fp32 ONNX"]["accuracy"])
    tsize = v["trimmed fp32 ONNX"]["bytes"] / base["bytes"]
    trim_target = row["dataset"] == TRIM_TARGETS
    out.append(("trimmed: identical predictions ≥ 99.5%", f"{100 * same:.2f}%", same >= 0.995 if trim_target else None))
    out.append(("trimmed: accuracy within 0.2", f"{tdrop:.2f}", tdrop <= 0.2 if trim_target else None))
    out.append(("trimmed fp32 size ≤ 0.6×", f"{tsize:.2f}×", tsize <= 0.6 if trim_target else None))
    ratio = row["runtime_overhead"]["fp32 ONNX"]["ratio"]
    out.append(("runtime throughput within 10% of tokenizer + bare session", f"{ratio:.2f}", ratio >= 0.9))
    return out


MET = {True: "yes", False: "**no**", None: f"reported (the target is set on {TRIM_TARGETS})"}


def slim(record):
    """Stage metrics without their bulkiest parts (full eval reports, confusion matrices, importance scores)."""
    if isinstance(record, dict):
        return {k: slim(v) for k, v in record.items() if k not in ("eval", "confusion_matrix", "per_class", "importance")}
    return [slim(v) for v in record] if isinstance(record, list) else record


def extra_sentence(trim: dict) -> str:
    return f" and those of {trim['n_extra_texts']:,} unlabeled in-domain texts" if trim.get("n_extra_texts") else ""


def write_results(out: Path, rows: list[dict], command: str, env: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    for row in rows:
        row.setdefault("command", command)
    out.with_suffix(".json").write_text(json.dumps(slim({"hardware": env, "rows": rows}), indent=2) + "\n")
    lines = [
        "# Compression benchmark",
        "",
        "Commands: " + "; ".join(sorted({f"`{r['command']}`" for r in rows})) + " (each dataset is measured within its own run).",
        "",
        f"Hardware: {env['cpu']}, ISA {', '.join(env['isa']) or 'baseline'}, {env['cpus']} CPUs, onnxruntime {env.get('onnxruntime')}; "
        f"int8 instructions (VNNI/AMX): {'yes' if env['int8_instructions'] else '**no** — int8 kernels emulate the dot products with AVX2 here'}.",
        "",
        "Accuracy on the reporting split; agreement = fraction of predictions identical to the fp32 PyTorch model. "
        "Latency: batch 1, p50/p95/p99 over the calls. Throughput: texts/s at batch 32, tokenization included. "
        "Speed figures are medians of interleaved rounds within this run. RSS: a fresh process that loads the model "
        "and serves one request. Size: the weights file.",
    ]
    for row in rows:
        lines += ["", f"## {row['dataset']} ({row['split']}, {row['n_eval']} examples)", "",
                  "| variant | accuracy | agreement | p50 ms | p95 ms | p99 ms | texts/s (b32) | size MB | parameters | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for variant, v in row["variants"].items():
            lines.append(
                f"| {variant} | {100 * v['accuracy']:.2f} | {100 * v['agreement']:.2f} | {v['p50_ms']:.2f} | {v['p95_ms']:.2f} | {v['p99_ms']:.2f} "
                f"| {v['throughput_per_s']:.0f} | {v['bytes'] / 1e6:.1f} | {v['parameters'] / 1e6:.2f}M | {v['peak_rss_mb']:.0f} |"
            )
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {what} | {measured} | {MET[met]} |" for what, measured, met in targets(row)]
        s = row["stages"]
        pr = s["prune"]
        tr = s["trim-vocab"]
        vocabulary = (
            f"Vocabulary: {tr['vocab_before']} → {tr['vocab_after']} tokens (the training texts' pieces plus the {tr['keep_top']:,} most "
            f"frequent{extra_sentence(tr)}), {tr['aliases']:,} removed pieces kept as aliases of their nearest kept piece ({tr['fallback']}); "
            f"{100 * tr['aliased_token_rate']:.2f}% of the eval tokens ({100 * tr['aliased_text_rate']:.1f}% of texts) are such aliases, "
            f"{100 * tr['oov_token_rate']:.2f}% newly [UNK]."
            if "aliases" in tr else  # rows measured before trim-vocab kept aliases
            f"Vocabulary: {tr['vocab_before']} → {tr['vocab_after']} tokens (the training texts' pieces, no aliases), eval OOV "
            f"token rate {100 * tr['oov_token_rate']:.2f}% ({100 * tr['oov_text_rate']:.1f}% of texts)."
        )
        lines += [
            "",
            f"Export parity (max |logit difference| on the probe batch): {s['export']['parity']['max_abs_logit_diff']:.1e}. "
            f"Pruning: heads per layer {pr['heads']['after']} of {pr['heads']['before'][0]}, FFN {pr['ffn_neurons']['after'][0]}… of "
            f"{pr['ffn_neurons']['before'][0]}, parameters {pr['parameters']['before'] / 1e6:.1f}M → {pr['parameters']['after'] / 1e6:.1f}M; "
            f"accuracy unpruned {100 * pr['compare']['unpruned']['accuracy']:.2f}, after slicing {100 * pr['compare']['pruned']['accuracy']:.2f}, "
            f"after recovery ({pr['recovery']['n_examples']} examples × {pr['recovery']['epochs']} epoch, distilled) "
            f"{100 * pr['compare']['recovered']['accuracy']:.2f}. "
            + vocabulary,
        ]
        o = row["runtime_overhead"]
        lines += ["", "Runtime overhead (batch 32): " + "; ".join(
            f"{k}: Predictor {x['predictor_per_s']:.0f} texts/s vs tokenizer + bare session {x['parts_per_s']:.0f} ({x['ratio']:.2f})" for k, x in o.items())]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--models", default=str(ROOT / "runs" / "bench-models"), help="Directory with one fine-tuned model per dataset (teacher.py --keep).")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved timing rounds.")
    parser.add_argument("--speed-texts", type=int, default=512, help="Reporting-split texts used for the timings.")
    parser.add_argument("--latency-calls", type=int, default=200, help="Batch-1 calls per round.")
    parser.add_argument("--recovery-limit", type=int, default=None, help="Examples per pruning-recovery pass (default: per dataset).")
    parser.add_argument("--workdir", default=None, help="Where the variants are built (a temporary directory inside it).")
    parser.add_argument("--out", default=str(RESULTS / "compress"), help="Results path without extension.")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA}: benchmark data not found (the shared data folder must sit beside the project)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = "python benchmarks/compress.py " + " ".join(sys.argv[1:])
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"{time.perf_counter() - started:6.0f} s  {message}", flush=True)

    rows = previous_rows(args.out, args.datasets)
    for name in args.datasets:
        model = Path(args.models) / name
        if not (model / "model.safetensors").is_file():
            sys.exit(f"{model}: no fine-tuned model: run python benchmarks/teacher.py --datasets {name} --trainers slmkit --keep {args.models}")
        rows.append(run_dataset(name, model, args, log))
        write_results(Path(args.out), rows, command, fingerprint())
    log("done")


if __name__ == "__main__":
    main()
