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
from rich import box
from rich.console import Console
from rich.table import Table

from slmkit import distributed
from slmkit.config import (
    BenchConfig, BudgetConfig, DataConfig, DistillConfig, EvalConfig, ExportConfig, ExportWebConfig, ModelConfig, OptimConfig, PruneConfig,
    QuantizeConfig, RunConfig, SearchConfig, ServeConfig, TrainConfig, TrimConfig, help_of, load_config,
)
from slmkit.config import LMDistillConfig
from slmkit.errors import UserError
from slmkit.selection import describe

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
    task: Annotated[Optional[str], typer.Option(help=_h(TrainConfig, "task"))] = None,
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
    scheme: Annotated[Optional[str], typer.Option(help=_h(DataConfig, "scheme"))] = None,
    tag_col: Annotated[Optional[int], typer.Option(help=_h(DataConfig, "tag_col"))] = None,
    strict: Annotated[Optional[bool], typer.Option("--strict", help=_h(DataConfig, "strict"))] = None,
    stride: Annotated[Optional[int], typer.Option(help=_h(ModelConfig, "stride"))] = None,
    shape: Annotated[Optional[str], typer.Option(help=_h(ModelConfig, "shape"))] = None,
    vocab_size: Annotated[Optional[int], typer.Option(help=_h(ModelConfig, "vocab_size"))] = None,
    grad_checkpoint: Annotated[Optional[bool], typer.Option("--grad-checkpoint", help=_h(OptimConfig, "grad_checkpoint"))] = None,
    lora: Annotated[Optional[str], typer.Option(help=_h(ModelConfig, "lora"))] = None,
    merge: Annotated[Optional[bool], typer.Option("--merge/--keep-adapter", help=_h(ModelConfig, "merge"))] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file of settings (sections data, model, train); flags and --set override it.")] = None,
    set_: Sets = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out even if it is not a previous slmkit run.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run in --out from its last finished epoch.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Fine-tune a small encoder for text classification, NER or extractive QA and save a Hugging Face-loadable model.

    Examples: slm train --data train.csv --eval dev.csv --out runs/x;
    slm train --task ner --data train.conll --eval dev.conll --out runs/ner;
    slm train --task qa --data train.json --eval dev.json --out runs/qa;
    slm train --task lm --data corpus.txt --out runs/lm --shape layers=4,hidden=256,heads=4,ffn=1024,context=128;
    slm train --task lm --base my-llm --data chat.jsonl --lora r=16,alpha=32,targets=q_proj,v_proj --merge --out runs/my-llm-chat
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
            "train.seed": seed, "train.bf16": bf16, "train.threads": threads, "task": task, "data.scheme": scheme,
            "data.tag_col": tag_col, "data.strict": strict, "model.stride": stride,
            "model.shape": shape, "model.vocab_size": vocab_size, "train.grad_checkpoint": grad_checkpoint,
            "model.lora": lora, "model.merge": merge,
        }
        cfg = load_config(TrainConfig, config, set_, **flags)
    result = run_train(cfg, overwrite=overwrite, resume=resume, progress=not quiet)
    if not distributed.is_main():  # under torchrun, rank 0 reports
        return
    print_report(result.metrics["eval"], f"eval ({result.metrics['eval_source']})")
    out.print(f"model saved to [bold]{result.out}[/bold]")


# ----------------------------------------------------------------------------------------- evaluate


@app.command()
@_user_errors
def evaluate(
    model: Annotated[str, typer.Option(help=_h(EvalConfig, "model"))],
    data: Annotated[str, typer.Option(help="Labeled file to score: .csv, .tsv or .jsonl; for a language model, held-out text (.txt, .jsonl or .csv).")],
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
    texts: Annotated[Optional[list[str]], typer.Argument(help="Texts to classify or tag (or use --input).")] = None,
    model: Annotated[str, typer.Option(help="Model directory: the output of slm train, or of slm export / quantize (served without torch).")] = "",
    input: Annotated[Optional[Path], typer.Option(help="File of texts: .jsonl/.csv/.tsv (column --text-col) or .txt (one per line). "
                                                       "NER also reads .conll files and seq.in folders; QA reads JSONL rows {question, context}.")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Write JSONL predictions here instead of printing them; NER: a .conll name writes CoNLL (see --scheme).")] = None,
    text_col: Annotated[str, typer.Option(help=_h(DataConfig, "text_col"))] = "text",
    encoding: Annotated[str, typer.Option(help=_h(DataConfig, "encoding"))] = "utf-8",
    batch_size: Annotated[int, typer.Option(help="Texts per batch.")] = 64,
    scheme: Annotated[str, typer.Option(help="NER: the tag scheme of a .conll --output: bio, iob1 or bioes.")] = "bio",
):
    """Predict with a model of any task, as JSON lines: classification gives each text's label and class
    probabilities; NER each text's entities {label, score, start, end, text} (or CoNLL tags with --output x.conll);
    QA the answer {answer, score, start, end} to each question of a JSONL --input of {question, context} rows.

    Example: slm predict --model runs/x "where is my order?"
    """
    from slmkit import artifacts
    from slmkit.data import read_texts

    if not model:
        raise UserError("no model: pass --model DIR (the output of slm train)")
    if bool(texts) == bool(input):
        raise UserError("give texts as arguments or --input FILE (one of the two)")
    if not Path(model).is_dir():
        raise UserError(f"{model}: model directory not found: pass the --out directory of slm train, slm export or slm quantize")
    task = artifacts.model_task(Path(model))
    if task == "lm":
        raise UserError(f"{model}: a language model continues text rather than labeling it: use slm generate --model {model} \"prompt\"")
    if task == "qa":
        if texts:
            raise UserError("a QA model answers questions: pass --input FILE.jsonl of {\"question\": \"...\", \"context\": \"...\"} rows")
        rows = _predict_answers(model, input, encoding, batch_size)
    else:
        if task == "ner":
            rows = _predict_entities(model, texts, input, output, text_col, encoding, batch_size, scheme)
            if rows is None:
                return
        else:
            from slmkit.predict import predict as run_predict

            items = list(texts) if texts else read_texts(input, text_col, encoding)
            rows = [p.__dict__ for p in run_predict(model, items, batch_size)]
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    if output is None:
        sys.stdout.write("".join(line + "\n" for line in lines))
        return
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(output)
    err.print(f"{len(lines)} predictions written to {output}")


NER_FILE_SUFFIXES = (".conll", ".iob", ".bio", ".bioes")  # read as words (one per line), not as texts


def _predict_entities(model: str, texts, input: Path | None, output: Path | None, text_col: str, encoding: str, batch_size: int, scheme: str) -> list[dict] | None:
    """Entity rows {text, entities} of each text or sentence; None when CoNLL was written to --output instead."""
    from slmkit import ner
    from slmkit.data import read_texts
    from slmkit.tasks.ner import open_ner_model, sentence_entities, sentence_tags

    if scheme not in ("bio", "iob1", "bioes"):
        raise UserError(f"--scheme {scheme!r}: write bio, iob1 or bioes")
    if texts:
        sentences = [ner.text_sentence(t, i) for i, t in enumerate(texts)]
    elif input.is_dir() or input.name == ner.PARALLEL_IN or input.suffix.lower() in NER_FILE_SUFFIXES:
        sentences = ner.read_sentences(input, encoding=encoding)
    else:
        sentences = [ner.text_sentence(t, i) for i, t in enumerate(read_texts(input, text_col, encoding))]
    runner = open_ner_model(model, batch_size=batch_size)
    if output is not None and output.suffix.lower() == ".conll":
        ner.write_conll(output, sentences, sentence_tags(runner, sentences), scheme)
        err.print(f"{len(sentences)} sentences tagged ({scheme.upper()}) to {output}")
        return None
    return [{"text": s.text, "entities": found} for s, found in zip(sentences, sentence_entities(runner, sentences))]


def _predict_answers(model: str, input: Path, encoding: str, batch_size: int) -> list[dict]:
    """Answer rows {id, question, answer, score, start, end} of a JSONL file of questions and contexts."""
    from slmkit.qa import read_pairs
    from slmkit.tasks.qa import open_qa_model, pair_answers

    rows = read_pairs(input, encoding)
    found = pair_answers(open_qa_model(model, batch_size=batch_size), [(q, c) for _, q, c in rows])
    return [
        {"id": i, "question": q, **({"answer": a[0].text, "score": a[0].score, "start": a[0].start, "end": a[0].end} if a else
                                     {"answer": "", "score": 0.0, "start": 0, "end": 0})}
        for (i, q, _), a in zip(rows, found)
    ]


# ------------------------------------------------------------------------------------------- distill


@app.command()
@_user_errors
def distill(
    teacher: Annotated[Optional[str], typer.Option(help=_h(DistillConfig, "teacher"))] = None,
    student: Annotated[Optional[str], typer.Option(help=_h(DistillConfig, "student"))] = None,
    data: Data = None,
    eval: Eval = None,
    out_dir: Annotated[Optional[str], typer.Option("--out", help=_h(DistillConfig, "out"))] = None,
    text_col: TextCol = None,
    label_col: LabelCol = None,
    unlabeled: Annotated[Optional[str], typer.Option(help=_h(DistillConfig, "unlabeled"))] = None,
    augment: Annotated[Optional[str], typer.Option(help=_h(DistillConfig, "augment") + " Written 10 or 10x.")] = None,
    trim_vocab: Annotated[Optional[bool], typer.Option("--trim-vocab/--no-trim-vocab", help=_h(DistillConfig, "trim_vocab"))] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help=_h(DistillConfig, "cache_dir"))] = None,
    epochs: Annotated[Optional[int], typer.Option(help=_h(OptimConfig, "epochs"))] = None,
    lr: Annotated[Optional[float], typer.Option(help=_h(OptimConfig, "lr"))] = None,
    threads: Annotated[Optional[int], typer.Option(help=_h(OptimConfig, "threads"))] = None,
    task: Annotated[Optional[str], typer.Option(help="lm: distill a causal language model from its continuations of --prompts (the other tasks are read from the teacher).")] = None,
    prompts: Annotated[Optional[str], typer.Option(help=_h(LMDistillConfig, "prompts"))] = None,
    shape: Annotated[Optional[str], typer.Option(help=_h(LMDistillConfig, "shape"))] = None,
    samples: Annotated[Optional[int], typer.Option(help=_h(LMDistillConfig, "samples"))] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help=_h(LMDistillConfig, "max_new_tokens"))] = None,
    temperature: Annotated[Optional[float], typer.Option(help=_h(LMDistillConfig, "temperature"))] = None,
    kd: Annotated[Optional[float], typer.Option(help=_h(LMDistillConfig, "kd"))] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file of settings (teacher, student, data, loss, train, ...); flags and --set override it.")] = None,
    set_: Sets = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out even if it is not a previous slmkit output.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Distill a fine-tuned teacher (classifier, NER or QA) into a small student (layer-dropped, small transformer, BiLSTM or CNN),
    or (--task lm) a causal LM into a small one trained on its continuations of your prompts.

    Examples: slm distill --teacher runs/x --data train.csv --student transformer:layers=2,hidden=128 --out runs/s;
    slm distill --task lm --teacher models/big-lm --prompts prompts.txt --out runs/student
    """
    from slmkit.distill import distill as run_distill

    if task == "lm":
        _distill_lm(locals())
        return

    if augment is not None:
        try:
            augment_value: float | None = float(augment.lower().removesuffix("x"))
        except ValueError:
            raise UserError(f"--augment {augment!r}: expected a number of new texts per training text, e.g. 10 or 10x") from None
    else:
        augment_value = None
    flags = {
        "teacher": teacher, "student": student, "out": out_dir, "data.train": data, "data.eval": eval,
        "data.text_col": text_col, "data.label_col": label_col, "unlabeled": unlabeled, "augment": augment_value,
        "trim_vocab": trim_vocab, "cache_dir": cache_dir, "train.epochs": epochs, "train.lr": lr, "train.threads": threads,
    }
    result = run_distill(load_config(DistillConfig, config, set_, **flags), overwrite=overwrite, progress=not quiet)
    if not distributed.is_main():  # under torchrun, rank 0 reports
        return
    m = result.metrics
    print_report(m["eval"], f"student ({m['student']}) on {m['eval_source']}")
    out.print(
        f"teacher {m['retention_metric']} {m['teacher_eval'][m['retention_metric']]:.4f}, student {m['student_eval'][m['retention_metric']]:.4f} "
        f"(retention {100 * m['retention']:.1f}%, agreement {100 * m['agreement']:.1f}%); parameters "
        f"{m['parameters']['teacher'] / 1e6:.2f}M → {m['parameters']['student'] / 1e6:.2f}M; teacher cache "
        f"{'hit' if m['teacher_cache']['hit'] else 'miss'}"
    )
    out.print(f"student saved to [bold]{result.out}[/bold]")


def _distill_lm(a: dict) -> None:
    """`slm distill --task lm`: the flags of the distill command that apply to language models."""
    from slmkit.distill_lm import distill_lm

    ignored = [flag for flag, name in (("--student", "student"), ("--data", "data"), ("--label-col", "label_col"), ("--unlabeled", "unlabeled"), ("--augment", "augment")) if a[name] is not None]
    if ignored:
        raise UserError(f"{', '.join(ignored)}: not used by --task lm: pass --prompts (what the teacher continues) and --shape (the student)")
    flags = {
        "teacher": a["teacher"], "prompts": a["prompts"], "out": a["out_dir"], "eval": a["eval"], "text_col": a["text_col"],
        "shape": a["shape"], "samples": a["samples"], "max_new_tokens": a["max_tokens"], "temperature": a["temperature"], "kd": a["kd"],
        "cache_dir": a["cache_dir"], "train.epochs": a["epochs"], "train.lr": a["lr"], "train.threads": a["threads"],
    }
    result = distill_lm(load_config(LMDistillConfig, a["config"], a["set_"], **flags), overwrite=a["overwrite"], progress=not a["quiet"])
    m = result.metrics
    print_report(m["eval"], f"student on {m['eval_source']}")
    d = m["distill"]
    made = "cached" if d["continuations_cache"]["hit"] else f"{d['generation_seconds']:.1f} s"
    out.print(
        f"{d['continuations']} teacher continuations ({made}); "
        f"token-level KD {d['token_kd']}; student {m['parameters'] / 1e6:.2f}M parameters"
    )
    out.print(f"student saved to [bold]{result.out}[/bold]")


# ------------------------------------------------------------------------------------------ compress

ModelDir = Annotated[str, typer.Option("--model", help="Input model directory.")]
OutDir = Annotated[str, typer.Option("--out", help="Output directory.")]
Overwrite = Annotated[bool, typer.Option(help="Replace --out even if it is not a previous slmkit output.")]


@app.command()
@_user_errors
def export(
    model: ModelDir,
    out_dir: OutDir,
    opset: Annotated[Optional[int], typer.Option(help=_h(ExportConfig, "opset"))] = None,
    probe_size: Annotated[Optional[int], typer.Option(help=_h(ExportConfig, "probe_size"))] = None,
    probe_data: Annotated[Optional[str], typer.Option(help=_h(ExportConfig, "probe_data"))] = None,
    text_col: Annotated[Optional[str], typer.Option(help=_h(ExportConfig, "text_col"))] = None,
    tolerance: Annotated[Optional[float], typer.Option(help=_h(ExportConfig, "tolerance"))] = None,
    overwrite: Overwrite = False,
):
    """Export a trained model to ONNX (dynamic batch and sequence axes) with its tokenizer and labels, and
    prove parity with PyTorch on a probe batch: max |logit difference| and argmax, written to metrics.json.
    A causal LM becomes one graph with a KV cache (past/present key/values per layer), proven on prompts, cached
    steps and greedy continuations (docs/lm-export.md).

    Example: slm export --model runs/x --out runs/x-onnx
    """
    from slmkit.export import export as run_export

    flags = {"model": model, "out": out_dir, "opset": opset, "probe_size": probe_size, "probe_data": probe_data, "text_col": text_col, "tolerance": tolerance}
    result = run_export(load_config(ExportConfig, None, None, **flags), overwrite=overwrite)
    p, m = result.metrics["parity"], result.metrics
    if "greedy_identical" in p:  # a causal LM, with its KV cache
        out.print(f"parity on {m['probe']['prompts']} probe prompts and {m['probe']['steps']} cached steps each: max |logit difference| "
                  f"{p['max_abs_logit_diff']:.2e} (allowed {p['tolerance']:.0e}), greedy continuations identical; {m['onnx_bytes'] / 1e6:.1f} MB")
    else:
        out.print(f"parity on {m['probe']['size']} probe texts: max |logit difference| {p['max_abs_logit_diff']:.2e} "
                  f"(allowed {p['tolerance']:.0e}), argmax identical; {m['onnx_bytes'] / 1e6:.1f} MB")
    out.print(f"ONNX model saved to [bold]{result.out}[/bold]")


@app.command()
@_user_errors
def quantize(
    model: ModelDir,
    out_dir: OutDir,
    method: Annotated[Optional[str], typer.Option(help=_h(QuantizeConfig, "method"))] = None,
    per_channel: Annotated[Optional[bool], typer.Option("--per-channel/--per-tensor", help=_h(QuantizeConfig, "per_channel"))] = None,
    reduce_range: Annotated[Optional[bool], typer.Option("--reduce-range/--full-range", help=_h(QuantizeConfig, "reduce_range"))] = None,
    calib_size: Annotated[Optional[int], typer.Option(help=_h(QuantizeConfig, "calib_size"))] = None,
    calib_data: Annotated[Optional[str], typer.Option(help=_h(QuantizeConfig, "calib_data"))] = None,
    calib_method: Annotated[Optional[str], typer.Option(help=_h(QuantizeConfig, "calib_method"))] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(help=_h(QuantizeConfig, "exclude") + " Repeatable.")] = None,
    max_drop: Annotated[Optional[float], typer.Option(help=_h(QuantizeConfig, "max_drop"))] = None,
    eval_data: Annotated[Optional[str], typer.Option(help=_h(QuantizeConfig, "eval_data"))] = None,
    text_col: Annotated[Optional[str], typer.Option(help=_h(QuantizeConfig, "text_col"))] = None,
    label_col: Annotated[Optional[str], typer.Option(help=_h(QuantizeConfig, "label_col"))] = None,
    qat_epochs: Annotated[Optional[int], typer.Option(help=_h(QuantizeConfig, "qat_epochs"))] = None,
    qat_limit: Annotated[Optional[int], typer.Option(help=_h(QuantizeConfig, "qat_limit"))] = None,
    eval_text: Annotated[Optional[str], typer.Option("--eval", help="Causal LM (int8-weight, int4-weight): held-out text file, one text per line, for perplexity and KL.")] = None,
    group_size: Annotated[Optional[int], typer.Option(help=_h(QuantizeConfig, "group_size"))] = None,
    set_: Sets = None,
    overwrite: Overwrite = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Quantize an exported ONNX model to int8 (dynamic, static or QAT), optionally within an accuracy budget.

    Example: slm quantize --model runs/x-onnx --method static --max-drop 0.5 --out runs/x-int8

    A PyTorch causal-LM directory is quantized weight-only (int8-weight, int4-weight) and measured against its fp32
    self on held-out text (perplexity, mean KL, size, tokens/s): slm quantize --model my-llm --method int4-weight --eval heldout.txt --out my-llm-q4
    """
    from slmkit.quantize import quantize as run_quantize

    flags = {
        "model": model, "out": out_dir, "method": method, "per_channel": per_channel, "reduce_range": reduce_range, "calib_size": calib_size,
        "calib_data": calib_data, "calib_method": calib_method, "exclude": exclude, "max_drop": max_drop,
        "eval_data": eval_data or eval_text, "qat_epochs": qat_epochs, "qat_limit": qat_limit, "text_col": text_col, "label_col": label_col,
        "group_size": group_size,
    }
    result = run_quantize(load_config(QuantizeConfig, None, set_, **flags), overwrite=overwrite, progress=not quiet)
    m = result.metrics
    if "report" in m:  # a causal LM, weight-only: the quality-per-quant table
        _print_lm_quant_report(m)
        out.print(f"quantized model saved to [bold]{result.out}[/bold]")
        return
    if m["fp32_metric"] is not None:
        table = Table(title="accuracy-aware steps" if m["max_drop"] is not None else "int8 vs fp32", show_header=True)
        for column in ("step", m["metric_name"], "drop (points)", "agreement"):
            table.add_column(column, justify="left" if column == "step" else "right")
        table.add_row("fp32", f"{m['fp32_metric']:.4f}", "", "")
        for row in m["tried"]:
            table.add_row(row["step"], f"{row['metric']:.4f}", f"{row['drop_points']:.2f}", f"{row['agreement']:.4f}")
        out.print(table)
    if "perplexity" in m:  # a causal LM: held-out perplexity and greedy agreement instead of accuracy
        ppl, g = m["perplexity"], m["greedy"]
        out.print(f"held-out perplexity {ppl['fp32']:.3f} fp32 -> {ppl['int8']:.3f} int8 ({ppl['change_pct']:+.2f}%) on {m['eval']['tokens']} tokens of {m['eval']['source']}; "
                  f"greedy agreement {100 * g['agreement']:.1f}% ({g['identical_continuations']}/{g['prompts']} continuations identical)")
    out.print(f"{m['chosen']['method']} int8: {m['bytes'] / 1e6:.1f} MB ({m['size_ratio']:.2f}x the fp32 file)"
              + (" — no int8 variant held the budget: the output is the fp32 model" if m["fell_back_to_fp32"] else ""))
    if m["note"]:
        err.print(f"note: {m['note']}")
    out.print(f"quantized model saved to [bold]{result.out}[/bold]")


def _print_lm_quant_report(m: dict) -> None:
    from slmkit.wquant import report_table

    header, *rows = report_table(m["report"])
    table = Table(title=f"weight-only quantization on {m['eval_data']} ({m['report'][0]['eval_tokens']} tokens)", show_header=True)
    for column in header:
        table.add_column(column, justify="left" if column == "precision" else "right")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    out.print(f"{m['method']}: {m['bytes'] / 1e6:.2f} MB ({m['size_ratio']:.2f}x fp32), perplexity {m['perplexity']:.3f}, mean KL {m['mean_kl']:.2e} nats")


@app.command("export-web")
@_user_errors
def export_web(
    model: Annotated[str, typer.Argument(help=_h(ExportWebConfig, "model"))],
    out_dir: Annotated[str, typer.Option("--out", help=_h(ExportWebConfig, "out"))],
    npm_cache: Annotated[Optional[str], typer.Option(help=_h(ExportWebConfig, "npm_cache"))] = None,
    registry: Annotated[Optional[str], typer.Option(help=_h(ExportWebConfig, "registry"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=_h(ExportWebConfig, "batch_size"))] = None,
    overwrite: Overwrite = False,
):
    """Write a static web page that runs the model entirely in the browser: a text box with live predictions
    and latency (an NER model's page highlights entities; a QA model's answers a question from a context; a
    causal LM's page shows its greedy completion as ghost text while you type, Tab accepts it). ONNX Runtime Web and tokenizers.js are downloaded once from the npm registry (pinned, integrity
    checked, cached) and copied into the site; nothing is fetched from a CDN. Serve the folder with any static
    server: python -m http.server -d site 8000.

    Example: slm export-web runs/x-int8 --out site
    """
    from slmkit.export_web import export_web as run_export_web

    flags = {"model": model, "out": out_dir, "npm_cache": npm_cache, "registry": registry, "batch_size": batch_size}
    result = run_export_web(load_config(ExportWebConfig, None, None, **flags), overwrite=overwrite, notify=lambda line: err.print(line, highlight=False, soft_wrap=True))
    m = result.metrics
    what = f"autocomplete ({m['suggest_tokens']} tokens per suggestion)" if m.get("task") == "lm" else f"{m['labels']} labels"
    out.print(f"{what}; {m['total_bytes'] / 1e6:.1f} MB in all (model {m['bytes']['model/model.onnx'] / 1e6:.1f} MB, "
              f"ONNX Runtime Web {m['vendored']['onnxruntime-web']} {m['bytes']['vendor/ort-wasm-simd-threaded.wasm'] / 1e6:.1f} MB)")
    out.print(f"site written to [bold]{result.out}[/bold]; serve it with any static server (file:// URLs do not run it):")
    out.print(f"  python -m http.server -d {result.out} 8000   # then open http://localhost:8000", soft_wrap=True, highlight=False)


@app.command()
@_user_errors
def prune(
    model: ModelDir,
    out_dir: OutDir,
    heads: Annotated[Optional[float], typer.Option(help=_h(PruneConfig, "heads"))] = None,
    ffn: Annotated[Optional[float], typer.Option(help=_h(PruneConfig, "ffn"))] = None,
    data: Annotated[Optional[str], typer.Option(help=_h(PruneConfig, "data"))] = None,
    eval: Annotated[Optional[str], typer.Option(help=_h(PruneConfig, "eval"))] = None,
    text_col: Annotated[Optional[str], typer.Option(help=_h(PruneConfig, "text_col"))] = None,
    label_col: Annotated[Optional[str], typer.Option(help=_h(PruneConfig, "label_col"))] = None,
    recovery_epochs: Annotated[Optional[int], typer.Option(help=_h(PruneConfig, "recovery_epochs"))] = None,
    recovery_limit: Annotated[Optional[int], typer.Option(help=_h(PruneConfig, "recovery_limit"))] = None,
    distill: Annotated[Optional[bool], typer.Option("--distill/--no-distill", help=_h(PruneConfig, "distill"))] = None,
    set_: Sets = None,
    overwrite: Overwrite = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Remove the least important attention heads and FFN neurons (gradient importance), then recover with a
    short fine-tune distilled from the unpruned model. The result is a smaller dense model.

    Example: slm prune --model runs/x --heads 0.3 --ffn 0.3 --out runs/x-pruned
    """
    from slmkit.prune import prune as run_prune

    flags = {
        "model": model, "out": out_dir, "heads": heads, "ffn": ffn, "data": data, "eval": eval,
        "recovery_epochs": recovery_epochs, "recovery_limit": recovery_limit, "distill": distill,
        "text_col": text_col, "label_col": label_col,
    }
    result = run_prune(load_config(PruneConfig, None, set_, **flags), overwrite=overwrite, progress=not quiet)
    _print_flat("pruning", result.metrics)
    out.print(f"pruned model saved to [bold]{result.out}[/bold]")


@app.command("trim-vocab")
@_user_errors
def trim_vocab(
    model: ModelDir,
    out_dir: OutDir,
    data: Annotated[Optional[list[str]], typer.Option(help=_h(TrimConfig, "data") + " Repeatable.")] = None,
    text_col: Annotated[Optional[str], typer.Option(help=_h(TrimConfig, "text_col"))] = None,
    label_col: Annotated[Optional[str], typer.Option(help=_h(TrimConfig, "label_col"))] = None,
    extra_text: Annotated[Optional[list[str]], typer.Option(help=_h(TrimConfig, "extra_text") + " Repeatable.")] = None,
    min_count: Annotated[Optional[int], typer.Option(help=_h(TrimConfig, "min_count"))] = None,
    keep_top: Annotated[Optional[int], typer.Option(help=_h(TrimConfig, "keep_top"))] = None,
    eval: Annotated[Optional[str], typer.Option(help=_h(TrimConfig, "eval"))] = None,
    fallback: Annotated[Optional[str], typer.Option(help=_h(TrimConfig, "fallback"))] = None,
    overwrite: Overwrite = False,
):
    """Keep only the vocabulary your data uses: rewrites tokenizer.json and the embedding matrix together, so
    kept text tokenizes and predicts exactly as before; reports the eval set's out-of-vocabulary rate.

    Example: slm trim-vocab --model runs/x --data train.csv --out runs/x-trimmed
    """
    from slmkit.trim import trim_vocab as run_trim

    flags = {"model": model, "out": out_dir, "data": data, "text_col": text_col, "label_col": label_col, "extra_text": extra_text, "min_count": min_count, "keep_top": keep_top, "eval": eval, "fallback": fallback}
    result = run_trim(load_config(TrimConfig, None, None, **flags), overwrite=overwrite)
    _print_flat("vocabulary trimming", result.metrics)
    out.print(f"trimmed model saved to [bold]{result.out}[/bold]")


def _print_flat(title: str, metrics: dict) -> None:
    """The scalar entries of a stage's metrics as a two-column table."""
    table = Table(title=title, show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                    table.add_row(f"{key}.{sub}", f"{v:.4g}" if isinstance(v, float) else str(v))
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    out.print(table)


# -------------------------------------------------------------------------------------------- bench


@app.command()
@_user_errors
def bench(
    more_models: Annotated[Optional[list[str]], typer.Argument(help="More model directories, so that --models a b c works.", show_default=False)] = None,
    models: Annotated[Optional[list[str]], typer.Option("--models", help=_h(BenchConfig, "models") + " Repeatable, or space-separated after one --models.")] = None,
    data: Annotated[Optional[str], typer.Option(help=_h(BenchConfig, "data"))] = None,
    out_dir: Annotated[Optional[str], typer.Option("--out", help=_h(BenchConfig, "out"))] = None,
    baselines: Annotated[Optional[str], typer.Option(help=_h(BenchConfig, "baselines") + " Comma-separated.")] = None,
    train: Annotated[Optional[str], typer.Option(help=_h(BenchConfig, "train"))] = None,
    teacher: Annotated[Optional[str], typer.Option(help=_h(BenchConfig, "teacher"))] = None,
    names: Annotated[Optional[str], typer.Option(help=_h(BenchConfig, "names") + " Comma-separated.")] = None,
    text_col: Annotated[Optional[str], typer.Option(help=_h(BenchConfig, "text_col"))] = None,
    label_col: Annotated[Optional[str], typer.Option(help=_h(BenchConfig, "label_col"))] = None,
    label_map: Annotated[Optional[str], typer.Option(help=_h(BenchConfig, "label_map"))] = None,
    drop_empty: Annotated[Optional[bool], typer.Option("--drop-empty", help=_h(BenchConfig, "drop_empty"))] = None,
    threads: Annotated[Optional[str], typer.Option(help=_h(BenchConfig, "threads") + " Comma-separated, e.g. 1,all.")] = None,
    rounds: Annotated[Optional[int], typer.Option(help=_h(BenchConfig, "rounds"))] = None,
    latency_calls: Annotated[Optional[int], typer.Option(help=_h(BenchConfig, "latency_calls"))] = None,
    speed_texts: Annotated[Optional[int], typer.Option(help=_h(BenchConfig, "speed_texts"))] = None,
    bootstrap: Annotated[Optional[int], typer.Option(help=_h(BenchConfig, "bootstrap"))] = None,
    rss: Annotated[Optional[bool], typer.Option("--rss/--no-rss", help=_h(BenchConfig, "rss"))] = None,
    sample: Annotated[Optional[int], typer.Option(help=_h(BenchConfig, "sample"))] = None,
    new_tokens: Annotated[Optional[int], typer.Option(help=_h(BenchConfig, "new_tokens"))] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file of bench settings; flags and --set override it.")] = None,
    set_: Sets = None,
    overwrite: Overwrite = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Benchmark models and baselines on one test set: accuracy and macro-F1 with 95% intervals, batch-1
    latency p50/p95/p99 and batch throughput at 1 and all threads, size, parameters and peak RSS; writes
    results.json, report.md, a self-contained report.html with charts, and a model card per slmkit model.

    Example: slm bench --models runs/a runs/a-int8 --data test.csv --baselines tfidf,teacher-torch --train train.csv --teacher runs/t --out reports/x

    Causal LMs (slm train --task lm outputs, Hugging Face causal LMs, their ONNX exports): held-out perplexity per token and per
    word, next-word accuracy@3 and keystroke savings, ms per token, tokens/s and time to first token with the KV cache:
    slm bench --models runs/lm runs/lm-onnx runs/lm-int8 --data heldout.txt --baselines kn4 --train corpus.txt --out reports/lm
    """
    from slmkit.bench import bench as run_bench

    listed = [m for item in [*(models or []), *(more_models or [])] for m in item.split(",") if m.strip()]
    flags = {
        "models": listed or None, "data": data, "out": out_dir, "baselines": baselines, "train": train, "teacher": teacher,
        "names": names, "text_col": text_col, "label_col": label_col, "label_map": label_map, "drop_empty": drop_empty,
        "threads": threads, "rounds": rounds, "latency_calls": latency_calls, "speed_texts": speed_texts,
        "bootstrap": bootstrap, "rss": rss, "sample": sample, "new_tokens": new_tokens,
    }
    result = run_bench(load_config(BenchConfig, config, set_, **flags), overwrite=overwrite, progress=not quiet)
    r = result.results
    first, last = r["timing"]["pareto_threads"], list(r["timing"]["threads"])[-1]
    key, metric = (r.get("metric_columns") or [["accuracy", "accuracy"]])[0]  # NER: entity F1; QA: F1
    unit = r.get("unit", "texts")
    shown = "examples" if unit == "texts" else "texts" if unit == "tokens" else unit
    table = Table(title=f"{r['data']['n_examples']} {shown} of {r['data']['path']}", show_header=True)
    for column in ("entry", f"{metric} (95% CI)", f"p50 ms @{first}", f"{unit}/s @{last}", "MB", "Pareto"):
        table.add_column(column, justify="left" if column == "entry" else "right")
    for e in r["entries"]:
        if e["status"] != "ok":
            table.add_row(e["name"], f"[red]failed[/red]: {e['error']}", "", "", "", "")
            continue
        m, speed = e["metrics"], e["speed"]
        table.add_row(
            e["name"], f"{100 * m[key]:.1f} ({100 * m[f'{key}_ci95'][0]:.1f}–{100 * m[f'{key}_ci95'][1]:.1f})",
            f"{speed[first]['p50_ms']['median']:.3g}" if speed else "—", f"{speed[last]['throughput_per_s']['median']:,.0f}" if speed else "—",
            f"{(e['bytes'] or 0) / 1e6:.1f}", "✓" if e["pareto"] else "",
        )
    out.print(table)
    for line in r["warnings"]:
        err.print(f"[yellow]warning:[/yellow] {line}", highlight=False, soft_wrap=True)
    out.print(f"report written to [bold]{result.out}[/bold] (report.html, report.md, results.json)")


# -------------------------------------------------------------------------------------------- serve


@app.command()
@_user_errors
def serve(
    model: Annotated[str, typer.Argument(help=_h(ServeConfig, "model"), show_default=False)],
    host: Annotated[Optional[str], typer.Option(help=_h(ServeConfig, "host"))] = None,
    port: Annotated[Optional[int], typer.Option(help=_h(ServeConfig, "port"))] = None,
    workers: Annotated[Optional[int], typer.Option(help=_h(ServeConfig, "workers"))] = None,
    api_key_file: Annotated[Optional[str], typer.Option(help=_h(ServeConfig, "api_key_file"))] = None,
    max_batch: Annotated[Optional[int], typer.Option(help=_h(ServeConfig, "max_batch"))] = None,
    max_wait_ms: Annotated[Optional[float], typer.Option(help=_h(ServeConfig, "max_wait_ms"))] = None,
    max_body_bytes: Annotated[Optional[int], typer.Option(help=_h(ServeConfig, "max_body_bytes"))] = None,
    max_texts: Annotated[Optional[int], typer.Option(help=_h(ServeConfig, "max_texts"))] = None,
    max_chars: Annotated[Optional[int], typer.Option(help=_h(ServeConfig, "max_chars"))] = None,
    truncate: Annotated[Optional[bool], typer.Option("--truncate/--no-truncate", help=_h(ServeConfig, "truncate"))] = None,
    queue_size: Annotated[Optional[int], typer.Option(help=_h(ServeConfig, "queue_size"))] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help=_h(ServeConfig, "timeout_s"))] = None,
    threads: Annotated[Optional[int], typer.Option(help=_h(ServeConfig, "threads"))] = None,
    access_log: Annotated[Optional[bool], typer.Option("--access-log/--no-access-log", help=_h(ServeConfig, "access_log"))] = None,
    max_sequences: Annotated[Optional[int], typer.Option(help=_h(ServeConfig, "max_sequences"))] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help=_h(ServeConfig, "max_tokens"))] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file of serve settings; flags and --set override it.")] = None,
    set_: Sets = None,
):
    """Serve a model over HTTP: POST /v1/classify, /v1/entities (NER) or /v1/answer (QA), whichever the model's task
    is (micro-batched), /v1/models, /health/live, /health/ready, Prometheus /metrics and OpenAPI docs at /docs.
    A causal LM gets OpenAI's /v1/completions and /v1/chat/completions instead (streamed or not).
    SIGTERM drains: admitted requests finish, new ones get 503.

    Example: slm serve runs/x-int8 --port 8000 --workers 2
    Example: slm serve runs/lm --max-sequences 4 --max-tokens 256
    """
    from slmkit.serve import serve as run_serve

    flags = {
        "model": model, "host": host, "port": port, "workers": workers, "api_key_file": api_key_file, "max_batch": max_batch,
        "max_wait_ms": max_wait_ms, "max_body_bytes": max_body_bytes, "max_texts": max_texts, "max_chars": max_chars,
        "truncate": truncate, "queue_size": queue_size, "timeout_s": timeout, "threads": threads, "access_log": access_log,
        "max_sequences": max_sequences, "max_tokens": max_tokens,
    }
    run_serve(load_config(ServeConfig, config, set_, **flags))  # uvicorn logs the address; the model logs "ready"


# ---------------------------------------------------------------------------------------------- run


@app.command("run")
@_user_errors
def run_pipeline(
    data: Data = None,
    eval: Eval = None,
    test: Annotated[Optional[str], typer.Option(help=_h(RunConfig, "test"))] = None,
    out_dir: Annotated[Optional[str], typer.Option("--out", help=_h(RunConfig, "out"))] = None,
    task: Annotated[Optional[str], typer.Option(help=_h(RunConfig, "task"))] = None,
    budget_size: Annotated[Optional[str], typer.Option("--budget-size", help=_h(BudgetConfig, "size") + " Default 5MB; none: no budget.")] = None,
    budget_latency: Annotated[Optional[str], typer.Option("--budget-latency", help=_h(BudgetConfig, "latency") + " Default 1ms; none: no budget.")] = None,
    max_drop: Annotated[Optional[str], typer.Option("--max-drop", help=_h(BudgetConfig, "max_drop") + " Default 3.0; none: no budget.")] = None,
    teacher: Annotated[Optional[str], typer.Option(help=_h(RunConfig, "teacher"))] = None,
    student: Annotated[Optional[list[str]], typer.Option("--student", help="A student of the ladder (slm distill --student spec, optionally followed by overrides: 'drop:every=2 lr=1e-4'). Repeatable; replaces the default ladder.")] = None,
    base: Annotated[Optional[str], typer.Option(help=_h(ModelConfig, "base"))] = None,
    text_col: TextCol = None,
    label_col: LabelCol = None,
    drop_empty: DropEmpty = None,
    encoding: Encoding = None,
    fresh: Annotated[bool, typer.Option(help="Ignore the cache: rerun every stage (also in a run directory made from another dataset).")] = False,
    strict: Annotated[Optional[bool], typer.Option("--strict", help=_h(RunConfig, "strict"))] = None,
    search: Annotated[Optional[int], typer.Option("--search", metavar="N", help="Also search students with Optuna: " + _h(SearchConfig, "trials"))] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", metavar="URL", help=_h(SearchConfig, "storage"))] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file of settings (data, model, train, students, distill, quantize, bench, budget); flags and --set override it.")] = None,
    set_: Sets = None,
    quiet: Annotated[bool, typer.Option(help="No progress lines or bars.")] = False,
):
    """The whole job: fine-tune a teacher, distill a ladder of students, export and quantize them, benchmark
    everything, pick the most accurate model within the budgets and write a deployable bundle (deploy/).
    Finished stages are cached: rerunning reuses them, and an interrupted run continues where it stopped.

    Example: slm run --data train.csv --test test.csv --out runs/project --budget-size 5MB --budget-latency 1ms --max-drop 1.0
    """
    from slmkit.pipeline import run as run_stages

    overrides = list(set_ or [])
    if max_drop is not None and max_drop.strip().lower() in ("none", "off"):
        overrides.insert(0, "budget.max_drop=")  # before the user's --set, which still wins
        max_drop = None
    elif max_drop is not None:
        try:
            float(max_drop)
        except ValueError:
            raise UserError(f"--max-drop {max_drop!r}: not a number of accuracy points: write it like 1.0 or 0.5, or none for no budget") from None
    flags = {
        "out": out_dir, "task": task, "data.train": data, "data.eval": eval, "test": test, "data.text_col": text_col, "data.label_col": label_col,
        "data.drop_empty": drop_empty, "data.encoding": encoding, "model.base": base, "teacher": teacher, "students": student or None,
        "budget.size": budget_size, "budget.latency": budget_latency, "budget.max_drop": float(max_drop) if max_drop is not None else None,
        "strict": strict, "search.trials": search, "search.storage": storage,
    }
    cfg = load_config(RunConfig, config, overrides, **flags)
    try:
        result = run_stages(cfg, fresh=fresh, progress=not quiet)
    except KeyboardInterrupt:
        err.print("interrupted: finished stages are kept; run the same command again to continue where it stopped")
        raise typer.Exit(130) from None
    _print_run(result)
    if result.selection.chosen is None and cfg.strict:
        raise typer.Exit(1)


@app.command()
@_user_errors
def verify(bundle: Annotated[Path, typer.Argument(help="A bundle: the deploy/ directory of slm run.")]):
    """Check a bundle's files against the SHA-256 sums in its manifest.json: prints ok, or each file that is
    missing, extra or changed (exit code 1)."""
    from slmkit.pipeline import bundle_differences

    n, differences = bundle_differences(bundle)
    for line in differences:
        out.print(line, soft_wrap=True, highlight=False)
    if differences:
        out.print(f"[red]{len(differences)} difference{'s' if len(differences) > 1 else ''}[/red] from {bundle / 'manifest.json'}: rebuild the bundle with slm run", soft_wrap=True)
        raise typer.Exit(1)
    out.print(f"ok: {n} files match {bundle / 'manifest.json'}", soft_wrap=True, highlight=False)


def _print_run(result) -> None:
    """One row per candidate (the chosen one marked), the baselines, then the verdict and where things are."""
    s, teacher, threads = result.selection, result.teacher, result.latency_threads
    table = Table(
        title=f"{result.n_test} test examples · budgets: {describe(result.budgets)}",
        caption=f"p50: ms per generated token at {threads} thread{'s' if threads != 1 else ''} · drop: per-word perplexity increase vs the teacher, %"
        if result.metric == "next_word_accuracy" else f"p50: batch-1 latency at {threads} thread{'s' if threads != 1 else ''} · drop: {result.metric} points below the teacher",
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, title_justify="left", caption_justify="left",
    )
    table.add_column("candidate", no_wrap=True)
    for column in ("params", "acc %" if result.metric == "accuracy" else f"{result.metric} %", "drop", "p50 ms", "MB", "budgets"):
        table.add_column(column, justify="left" if column == "budgets" else "right", no_wrap=column != "budgets")
    for check in s.checks:
        c = check.candidate
        verdict = "[green]met[/green]" if check.meets else "misses " + ", ".join(check.missed)
        name = f"[bold green]→ {c.name}[/bold green]" if s.chosen is not None and c.name == s.chosen.name else f"  {c.name}"
        table.add_row(name, f"{(c.parameters or 0) / 1e6:.2f}M", f"{100 * c.accuracy:.2f}", f"{c.drop_points:+.2f}", f"{c.latency_ms:.3g}", f"{c.bytes / 1e6:.2f}", verdict)
    for b in result.baselines:
        if b["error"]:
            table.add_row(f"[dim]  {b['name']} (baseline)[/dim]", "", "", "", "", "", f"[red]failed[/red]: {b['error']}")
            continue
        table.add_row(f"[dim]  {b['name']} (baseline)[/dim]", "", f"{100 * b['accuracy']:.2f}", f"{100 * (teacher.accuracy - b['accuracy']):+.2f}" if result.metric != "next_word_accuracy" else "",
                      f"{b['latency_ms']:.3g}" if b["latency_ms"] is not None else "—", f"{(b['bytes'] or 0) / 1e6:.2f}", "[dim]not deployable[/dim]")
    out.print(table)
    for skipped in result.skipped:
        out.print(f"  {skipped['student']}: {skipped['why']}", soft_wrap=True, highlight=False)
    ran = sum(r["status"] == "ran" for r in result.stages)
    cached = sum(r["status"] == "cached" for r in result.stages)
    out.print(f"{ran} stage{'s' if ran != 1 else ''} ran, {cached} cached (run directory {result.out})")
    c = s.chosen
    if c is None:
        out.print(f"[yellow]no candidate meets every budget[/yellow]: {s.explanation}", soft_wrap=True)
        if result.stale_bundle is not None:
            out.print(f"{result.stale_bundle} still holds an earlier run's bundle, chosen under that run's budgets")
    else:
        out.print(
            f"chosen: [bold]{c.name}[/bold]: {result.metric} {100 * c.accuracy:.2f}% vs the teacher's {100 * teacher.accuracy:.2f}% "
            f"({-c.drop_points:+.2f} {'% perplexity' if result.metric == 'next_word_accuracy' else 'points'}), {teacher.latency_ms / c.latency_ms:.1f}× faster ({c.latency_ms:.3g} ms vs "
            f"{teacher.latency_ms:.3g} ms batch-1 p50 at {threads} thread{'s' if threads != 1 else ''}), {c.bytes / 1e6:.2f} MB "
            f"({teacher.bytes / c.bytes:.0f}× smaller than the teacher's {teacher.bytes / 1e6:.1f} MB)", soft_wrap=True,
        )
        loader = {"accuracy": "slmkit.runtime.Predictor", "next_word_accuracy": "slmkit.runtime.LMGenerator, or slm serve"}.get(result.metric, "slmkit.runtime.TaskSession, or slmkit.predict.open_task_model")
        out.print(f"bundle: [bold]{result.bundle}[/bold] (load it with {loader})", soft_wrap=True)
    if result.search is not None:
        found = result.search
        counts = ", ".join(f"{n} {state}" for state, n in sorted(found.counts.items()))
        front = ", ".join(f"{r['name']} ({100 * r['accuracy']:.1f}%, {r['latency_ms']:.3g} ms)" for r in found.pareto) or "empty"
        out.print(f"search: study {found.study_name} in {found.storage}: {counts} trials ({found.ran} ran here); "
                  f"Pareto front on the eval split: {front}", soft_wrap=True, highlight=False)
    out.print(f"report: [bold]{result.report}[/bold]" + (f" (a copy is in {result.bundle}/report)" if result.bundle else ""), soft_wrap=True)


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


# -------------------------------------------------------------------------------------------- label

label_app = typer.Typer(no_args_is_help=True, help="The labeling app: projects, annotation, agreement, review, active learning.")
app.add_typer(label_app, name="label")
LabelDb = Annotated[str, typer.Option("--db", help="SQLite file (created if missing) or a SQLAlchemy URL such as postgresql+psycopg://user@host/labels.")]


def _ask_password() -> str:
    first = typer.prompt("password", hide_input=True)
    if typer.prompt("repeat it", hide_input=True) != first:
        raise UserError("the two passwords differ: run the command again")
    return first


@label_app.command("init")
@_user_errors
def label_init(
    db: LabelDb = "labels.db",
    admin: Annotated[str, typer.Option(help="Name of the first admin.")] = "admin",
    password_prompt: Annotated[bool, typer.Option("--password-prompt", help="Read the admin's password from a prompt instead of generating one.")] = False,
):
    """Create the labeling database and its first admin (there are no default credentials).

    Example: slm label init --db labels.db --admin alice
    """
    from slmkit.label import admin as label_admin

    password = label_admin.init(db, admin, _ask_password() if password_prompt else None)
    _print_new_user(f"created {db} with admin [bold]{admin}[/bold]", None if password_prompt else password)


@label_app.command("add-user")
@_user_errors
def label_add_user(
    username: Annotated[str, typer.Argument(help="The new user's name.", show_default=False)],
    db: LabelDb = "labels.db",
    role: Annotated[str, typer.Option(help="admin, reviewer or annotator (project roles are set per project in the app).")] = "annotator",
    password_prompt: Annotated[bool, typer.Option("--password-prompt", help="Read the password from a prompt instead of generating one.")] = False,
):
    """Add a user to the labeling database; prints a one-time random password unless --password-prompt."""
    from slmkit.label import admin as label_admin

    password = label_admin.add_user(db, username, role, _ask_password() if password_prompt else None)
    _print_new_user(f"added {role} [bold]{username}[/bold]", None if password_prompt else password)


def _print_new_user(what: str, generated_password: str | None) -> None:
    out.print(what)
    if generated_password is not None:
        out.print(f"one-time password (shown only now): {generated_password}", highlight=False)


@label_app.command("serve")
@_user_errors
def label_serve(
    db: LabelDb = "labels.db",
    host: Annotated[str, typer.Option(help="Interface to listen on; keep 127.0.0.1 unless behind an HTTPS proxy.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8100,
    secure_cookies: Annotated[bool, typer.Option("--secure-cookies", help="Mark the session cookie Secure (when served over HTTPS).")] = False,
    retrain_epochs: Annotated[Optional[int], typer.Option(help="Epochs of each background retraining (default: slm train's).")] = None,
):
    """Serve the labeling app (page and API) over HTTP.

    Example: slm label serve --db labels.db --port 8100
    """
    import uvicorn

    from slmkit.label import db as label_db
    from slmkit.label.app import create_app

    path = label_db.sqlite_path(db)
    if path is not None and not path.is_file():
        raise UserError(f"--db {db}: no such database: create it with `slm label init --db {db}`")
    settings = {"train.epochs": retrain_epochs} if retrain_epochs else {}
    uvicorn.run(create_app(db, secure_cookies=secure_cookies, train_settings=settings), host=host, port=port, log_level="warning")


@label_app.command("backup")
@_user_errors
def label_backup(
    db: LabelDb = "labels.db",
    out_file: Annotated[str, typer.Option("--out", help="Backup file to write.", show_default=False)] = ...,
):
    """Copy the live SQLite database to a file (consistent even while the server writes)."""
    from slmkit.label import admin as label_admin

    out.print(f"backup written to [bold]{label_admin.backup(db, out_file)}[/bold]")


@label_app.command("restore")
@_user_errors
def label_restore(
    backup_file: Annotated[str, typer.Argument(help="A file written by slm label backup.", show_default=False)],
    db: LabelDb = "labels.db",
):
    """Replace the database's contents with a backup (stop the server first)."""
    from slmkit.label import admin as label_admin

    out.print(f"restored {backup_file} into [bold]{label_admin.restore(db, backup_file)}[/bold]")


@label_app.command("import")
@_user_errors
def label_import(
    project: Annotated[int, typer.Argument(help="Project id.", show_default=False)],
    file: Annotated[Path, typer.Argument(help="CSV or JSONL file of items.", show_default=False)],
    db: LabelDb = "labels.db",
):
    """Import items (with or without labels and predictions) into a project, and assign them to its annotators."""
    from slmkit.label import admin as label_admin

    n = label_admin.import_file(db, project, file)
    out.print(f"imported {n} items into project {project}")


# ----------------------------------------------------------------------------------------- generate


@app.command()
@_user_errors
def generate(
    prompt: Annotated[str, typer.Argument(help="The text to continue.")],
    model: Annotated[str, typer.Option(help="A causal-LM directory: slm train --task lm output, any local Hugging Face causal LM, or its ONNX export.")],
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 32,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens; 0 turns it off.")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling: the fewest tokens whose probabilities sum to top-p; 1 turns it off.")] = 1.0,
    repetition_penalty: Annotated[float, typer.Option(help="Above 1 discourages tokens already in the prompt or output.")] = 1.0,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop before this text (repeatable).")] = None,
    beams: Annotated[int, typer.Option(help="Beam search with this many beams (deterministic; printed at the end).")] = 1,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the sampling: the same seed gives the same text.")] = None,
    greedy: Annotated[bool, typer.Option("--greedy", help="Always the most likely token (same as --temperature 0).")] = False,
    chat: Annotated[bool, typer.Option("--chat", help="Apply the model's chat template to the prompt as a user message.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse a prompt longer than the context window instead of cutting it from the left.")] = False,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads; default: the runtime's own choice.")] = None,
):
    """Continue a prompt with a causal language model, streaming the text to the terminal as it is produced.

    Examples: slm generate --model runs/lm "my card was" --greedy;
    slm generate --model runs/lm "refund" --temperature 0.8 --top-p 0.9 --seed 1 --stop "."
    """
    from slmkit.generate import GenerationConfig, generate_text, open_lm, truncate_prompt

    cfg = GenerationConfig(
        max_new_tokens=max_tokens, temperature=0.0 if greedy else temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty, stop=tuple(stop or ()), num_beams=beams, seed=seed,
    )
    cfg.validate()
    lm = open_lm(model, threads)
    ids = lm.encode(prompt, chat=chat)
    ids, dropped = truncate_prompt(ids, lm.context_length, cfg.max_new_tokens, strict)
    if dropped:
        err.print(f"warning: the prompt is longer than the {lm.context_length}-token context window: its first {dropped} tokens were cut (--strict refuses instead)")
    info: dict = {}
    for piece in generate_text(lm.stepper, lm.tokenizer, ids, cfg, eos_ids=lm.eos_ids, bos_id=lm.bos_id, info=info):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    err.print(f"[dim]{info['completion_tokens']} tokens ({info['finish_reason']}, {lm.backend})[/dim]")


# ------------------------------------------------------------------------------------------- output


def print_report(report: dict, title: str) -> None:
    """The headline metrics with their intervals (every `x` with an `x_ci95`), then the per-class (per entity
    type) table when the task has one."""
    head = Table(title=f"{title}: {report['n_examples']} examples", show_header=True)
    for column in ("metric", "value", "95% CI"):
        head.add_column(column, justify="right" if column != "metric" else "left")
    for name, value in report.items():
        if f"{name}_ci95" in report:
            lo, hi = report[f"{name}_ci95"]
            head.add_row(name.replace("macro_f1", "macro-F1").replace("_", " "), f"{value:.4f}", f"{lo:.4f} – {hi:.4f}")
    if "ece" in report:
        head.add_row("ECE", f"{report['ece']:.4f}", "")
    out.print(head)
    if not report.get("per_class"):
        return
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
