"""Bench-report benchmark: `slm bench` on six variants of one banking77 model family, within 5 minutes on 2 vCPUs.

The six variants, all scored on banking77 test and timed in one interleaved run:

- the teacher (MiniLM fine-tuned by `benchmarks/teacher.py --keep`) through the Hugging Face pipeline, PyTorch fp32;
- the same teacher exported and dynamically quantized to ONNX int8 (by `slm bench` itself, with slm export/quantize);
- two students, any slmkit model directories (e.g. distilled with `slm distill`, exported and quantized);
- TF-IDF + logistic regression and fastText, trained in the run on the teacher's training examples (banking77
  train minus the teacher's seeded 5% held-out slice, as in benchmarks/teacher.py).

It writes benchmarks/results/bench_report.md (the report, the exact command, the wall time against the
5-minute target) and bench_report-pareto.png; the whole report (report.html, results.json, the other charts and
the model cards) stays in --workdir.

    python benchmarks/bench_report.py --teacher runs/bench-models/banking77 --students runs/s-int8 runs/s2-int8
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from teacher import DATASETS, RESULTS, SEED, write_csv  # noqa: E402  the teacher's data layout and held-out rule

from slmkit import artifacts  # noqa: E402
from slmkit.bench import bench  # noqa: E402
from slmkit.config import BenchConfig  # noqa: E402
from slmkit.data import read_examples, stratified_split  # noqa: E402
from slmkit.report import markdown  # noqa: E402

TARGET_SECONDS = 300  # the budget for the whole run on 2 vCPUs
NAME = "bench_report"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="The fine-tuned teacher directory (benchmarks/teacher.py --keep DIR writes DIR/banking77).")
    parser.add_argument("--students", nargs=2, required=True, help="Two student model directories (PyTorch or ONNX).")
    parser.add_argument("--dataset", default="banking77", choices=list(DATASETS))
    parser.add_argument("--data", default=None, help="Test file instead of the dataset's reporting split (needs --train too).")
    parser.add_argument("--train", default=None, help="Training file of the baselines instead of the teacher's training examples.")
    parser.add_argument("--text-col", default="text", help="Text column of --data and --train.")
    parser.add_argument("--label-col", default="label", help="Label column of --data and --train.")
    parser.add_argument("--baselines", default="tfidf,fasttext,teacher-torch,teacher-int8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-calls", type=int, default=200)
    parser.add_argument("--speed-texts", type=int, default=512)
    parser.add_argument("--threads", default="1,all")
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "bench-report"), help="Where the full report is written.")
    parser.add_argument("--results", default=str(RESULTS), help="Where bench_report.md and the Pareto chart go.")
    parser.add_argument("--note", action="append", default=[], help="A line for the report's 'How this was made' (e.g. a command that made a student); repeatable.")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if bool(args.data) != bool(args.train):
        parser.error("--data and --train go together (without them: the dataset's reporting split and the teacher's training examples)")

    started = time.perf_counter()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data, train, text_col, label_col = args.data, args.train, args.text_col, args.label_col
    if data is None:  # the reporting split, and the teacher's own training examples (train minus its held-out slice)
        spec = DATASETS[args.dataset]
        examples, _ = stratified_split(read_examples(spec["train"], spec["text"], spec["label"]), spec["holdout"], SEED)
        train = str(write_csv(workdir / f"{args.dataset}-train.csv", examples))
        data = str(write_csv(workdir / f"{args.dataset}-{spec['split']}.csv", read_examples(spec["report"], spec["text"], spec["label"])))
        text_col, label_col = "text", "label"  # write_csv's columns
    command = "python benchmarks/bench_report.py " + shlex.join(argv if argv is not None else sys.argv[1:])

    names = [Path(s).name for s in args.students]
    cfg = BenchConfig(
        models=args.students, names=names if len(set(names)) == 2 else [], data=data, train=train, teacher=args.teacher,
        out=str(workdir / "report"), baselines=[b for b in args.baselines.split(",") if b], text_col=text_col, label_col=label_col,
        rounds=args.rounds, latency_calls=args.latency_calls, speed_texts=args.speed_texts, threads=args.threads.split(","),
    )
    result = bench(cfg, overwrite=True, progress=not args.quiet)
    seconds = time.perf_counter() - started

    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    chart = results_dir / f"{NAME}-pareto.png"
    shutil.copy(result.out / artifacts.BENCH_CHARTS["pareto"], chart)
    met = "met" if seconds <= TARGET_SECONDS else "missed"
    footer = (
        f"\n## How this was made\n\n```\n{chr(10).join([*args.note, command])}\n```\n\n"
        f"Wall time {seconds:.0f} s for the whole run (training the baselines, exporting and quantizing the teacher, "
        f"scoring, timing, peak-RSS processes, the report): target ≤ {TARGET_SECONDS} s on 2 vCPUs, {met}. "
        f"The full report (report.html, results.json, all charts, model cards) was written to `{result.out}`.\n"
    )
    report = (markdown(result.results, {"pareto": chart.name}, cards=False) + footer).replace(f"{ROOT}/", "")  # paths from the project root
    (results_dir / f"{NAME}.md").write_text(report, encoding="utf-8")
    print(f"{results_dir / f'{NAME}.md'} written in {seconds:.0f} s ({met} the {TARGET_SECONDS} s target)")
    return results_dir / f"{NAME}.md"


if __name__ == "__main__":
    main()
