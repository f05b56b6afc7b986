"""The `slm` command: thin typer functions that build a stage config, call the stage, and say where outputs went.

Bad input raises `UserError` anywhere below; here it becomes one line on stderr and exit code 2.
Option help comes from the config dataclasses' field docs, so `--help` and `config.yaml` agree.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from slmkit.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig, help_of, load_config
from slmkit.errors import UserError

DEMO_EPOCHS = 8  # the demo's 752 training messages: more passes than the default 5 give a more confident model
app = typer.Typer(add_completion=False, no_args_is_help=True, help="slmkit: small, fast language models from labeled text.")
out = Console()
err = Console(stderr=True)


def _user_errors(fn):
    """Turn a UserError into `error: ...` on stderr and exit code 2; Ctrl-C into a resume hint."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted: the last finished epoch is kept; continue with the same command and --resume")
            raise typer.Exit(130) from None

    return wrapper


def _h(cls, name: str) -> str:
    return help_of(cls, name)


# -------------------------------------------------------------------------------------------- train

Data = Annotated[Optional[str], typer.Option("--data", help=_h(DataConfig, "train"))]
Eval = Annotated[Optional[str], typer.Option("--eval", help=_h(DataConfig, "eval"))]
TextCol = Annotated[Optional[str], typer.Option("--text-col", help=_h(DataConfig, "text_col"))]
LabelCol = Annotated[Optional[str], typer.Option("--label-col", help=_h(DataConfig, "label_col"))]
DropEmpty = Annotated[Optional[bool], typer.Option("--drop-empty", help=_h(DataConfig, "drop_empty"))]
Encoding = Annotated[Optional[str], typer.Option("--encoding", help=_h(DataConfig, "encoding"))]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override any setting: --set train.lr=3e-5 (repeatable).")]


@app.command()
@_user_errors
def train(
    data: Data = None,
    eval: Eval = None,
    out_dir: Annotated[Optional[str], typer.Option("--out", help=_h(TrainConfig, "out"))] = None,
    text_col: TextCol = None,
    label_col: LabelCol = None,
    eval_split: Annotated[Optional[float], typer.Option(help=_h(DataConfig, "eval_split"))] = None,
    drop_empty: DropEmpty = None,
    encoding: Encoding = None,
    base: Annotated[Optional[str], typer.Option(help=_h(ModelConfig, "base"))] = None,
    max_length: Annotated[Optional[int], typer.Option(help=_h(ModelConfig, "max_length"))] = None,
    epochs: Annotated[Optional[int], typer.Option(help=_h(OptimConfig, "epochs"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=_h(OptimConfig, "batch_size"))] = None,
    lr: Annotated[Optional[float], typer.Option(help=_h(OptimConfig, "lr"))] = None,
    seed: Annotated[Optional[int], typer.Option(help=_h(OptimConfig, "seed"))] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16", help=_h(OptimConfig, "bf16"))] = None,
    threads: Annotated[Optional[int], typer.Option(help=_h(OptimConfig, "threads"))] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file of settings (sections data, model, train); flags and --set override it.")] = None,
    set_: Sets = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out even if it is not a previous slmkit run.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run in --out from its last finished epoch.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Fine-tune a small encoder for text classification and save a Hugging Face-loadable model.

    Example: slm train --data train.csv --eval dev.csv --out runs/x
    """
    from slmkit import artifacts
    from slmkit.train import train as run_train

    if resume:
        if not out_dir:
            raise UserError("--resume needs --out: the directory of the interrupted run")
        saved = artifacts.staging_dir(Path(out_dir)) / artifacts.CONFIG
        if not saved.is_file():
            raise UserError(f"{out_dir}: nothing to resume (no interrupted run found): run without --resume")
        cfg = load_config(TrainConfig, saved, set_)
    else:
        flags = {
            "out": out_dir, "data.train": data, "data.eval": eval, "data.text_col": text_col, "data.label_col": label_col,
            "data.eval_split": eval_split, "data.drop_empty": drop_empty, "data.encoding": encoding, "model.base": base,
            "model.max_length": max_length, "train.epochs": epochs, "train.batch_size": batch_size, "train.lr": lr,
            "train.seed": seed, "train.bf16": bf16, "train.threads": threads,
        }
        cfg = load_config(TrainConfig, config, set_, **flags)
    result = run_train(cfg, overwrite=overwrite, resume=resume, progress=not quiet)
    print_report(result.metrics["eval"], f"eval ({result.metrics['eval_source']})")
    out.print(f"model saved to [bold]{result.out}[/bold]")


# ----------------------------------------------------------------------------------------- evaluate


@app.command()
@_user_errors
def evaluate(
    model: Annotated[str, typer.Option(help=_h(EvalConfig, "model"))],
    data: Annotated[str, typer.Option(help="Labeled file to score: .csv, .tsv or .jsonl.")],
    out_dir: Annotated[Optional[str], typer.Option("--out", help=_h(EvalConfig, "out"))] = None,
    text_col: TextCol = None,
    label_col: LabelCol = None,
    drop_empty: DropEmpty = None,
    encoding: Encoding = None,
    batch_size: Annotated[Optional[int], typer.Option(help=_h(EvalConfig, "batch_size"))] = None,
    bootstrap: Annotated[Optional[int], typer.Option(help=_h(EvalConfig, "bootstrap"))] = None,
):
    """Score a trained model: accuracy and macro-F1 with 95% bootstrap intervals, per-class table,
    confusion matrix and calibration error, printed and written to metrics.json."""
    from slmkit.evaluate import evaluate as run_evaluate

    flags = {
        "model": model, "out": out_dir, "data.eval": data, "data.text_col": text_col, "data.label_col": label_col,
        "data.drop_empty": drop_empty, "data.encoding": encoding, "batch_size": batch_size, "bootstrap": bootstrap,
    }
    result = run_evaluate(load_config(EvalConfig, None, None, **flags))
    print_report(result.metrics, f"{result.metrics['data']}")
    out.print(f"metrics written to [bold]{result.out}[/bold]")


# ------------------------------------------------------------------------------------------ predict


@app.command()
@_user_errors
def predict(
    texts: Annotated[Optional[list[str]], typer.Argument(help="Texts to classify (or use --input).")] = None,
    model: Annotated[str, typer.Option(help="Trained model directory (the output of slm train).")] = "",
    input: Annotated[Optional[Path], typer.Option(help="File of texts: .jsonl/.csv/.tsv (column --text-col) or .txt (one per line).")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Write JSONL predictions here instead of printing them.")] = None,
    text_col: Annotated[str, typer.Option(help=_h(DataConfig, "text_col"))] = "text",
    encoding: Annotated[str, typer.Option(help=_h(DataConfig, "encoding"))] = "utf-8",
    batch_size: Annotated[int, typer.Option(help="Texts per batch.")] = 64,
):
    """Predict the label and class probabilities of each text, as JSON lines.

    Example: slm predict --model runs/x "where is my order?"
    """
    from slmkit.data import read_texts
    from slmkit.predict import predict as run_predict

    if not model:
        raise UserError("no model: pass --model DIR (the output of slm train)")
    if bool(texts) == bool(input):
        raise UserError("give texts as arguments or --input FILE (one of the two)")
    items = list(texts) if texts else read_texts(input, text_col, encoding)
    lines = [json.dumps(p.__dict__, ensure_ascii=False) for p in run_predict(model, items, batch_size)]
    if output is None:
        sys.stdout.write("".join(line + "\n" for line in lines))
        return
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(output)
    err.print(f"{len(lines)} predictions written to {output}")


# --------------------------------------------------------------------------------------------- demo


@app.command()
@_user_errors
def demo(
    out_dir: Annotated[str, typer.Option("--out", help="Output directory for the demo model.")] = "runs/demo",
    epochs: Annotated[Optional[int], typer.Option(help=f"Passes over the demo's training messages (default {DEMO_EPOCHS}).")] = None,
    base: Annotated[Optional[str], typer.Option(help=_h(ModelConfig, "base"))] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """The main job on the embedded default: fine-tune the packaged MiniLM on the bundled customer-support
    demo (8 intents), evaluate it on the demo's held-out test split, print the results and the model path."""
    from slmkit.data import DEMO_TEST, DEMO_TRAIN
    from slmkit.evaluate import evaluate as run_evaluate
    from slmkit.train import train as run_train

    flags = {"out": out_dir, "data.train": str(DEMO_TRAIN), "model.base": base, "train.epochs": epochs or DEMO_EPOCHS}
    result = run_train(load_config(TrainConfig, None, None, **flags), progress=not quiet)
    evaluation = run_evaluate(load_config(EvalConfig, None, None, model=str(result.out), **{"data.eval": str(DEMO_TEST)}))
    print_report(evaluation.metrics, "demo test split")
    m = result.metrics
    out.print(f"trained {m['parameters'] / 1e6:.1f}M parameters on {m['n_train']} examples in {m['train_seconds']:.0f} s "
              f"({m['train_examples_per_s']:.0f} examples/s), best epoch {m['best_epoch']}")
    out.print(f"model saved to [bold]{result.out}[/bold]; test metrics in {evaluation.out}")


# ------------------------------------------------------------------------------------------- output


def print_report(report: dict, title: str) -> None:
    """The headline metrics with their intervals, then the per-class table."""
    lo, hi = report["accuracy_ci95"]
    flo, fhi = report["macro_f1_ci95"]
    head = Table(title=f"{title}: {report['n_examples']} examples", show_header=True)
    for column in ("metric", "value", "95% CI"):
        head.add_column(column, justify="right" if column != "metric" else "left")
    head.add_row("accuracy", f"{report['accuracy']:.4f}", f"{lo:.4f} – {hi:.4f}")
    head.add_row("macro-F1", f"{report['macro_f1']:.4f}", f"{flo:.4f} – {fhi:.4f}")
    head.add_row("ECE", f"{report['ece']:.4f}", "")
    out.print(head)
    per_class = Table(show_header=True)
    for column in ("label", "precision", "recall", "F1", "support"):
        per_class.add_column(column, justify="left" if column == "label" else "right")
    for label, row in report["per_class"].items():
        per_class.add_row(label, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    out.print(per_class)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
