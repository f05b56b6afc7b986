"""`slm distill`: train a small student to imitate a fine-tuned teacher: a classifier, an NER tagger or a QA model.

Read top to bottom: `distill(cfg)` checks everything it can before writing anything (the teacher is a trained
model of a task it takes, the data's labels are the teacher's, the student spec builds for that task, the
loss settings fit the two shapes, the unlabeled file has texts), generates augmented texts (`slmkit.augment`),
asks the teacher for its outputs on every training text — once: they are cached on disk — then trims the teacher's vocabulary to the
texts the student will see, builds the student from the trimmed teacher (`slmkit.students`), and trains it
with slmkit's one training loop (`train.run_epochs`) and the losses of `slmkit.losses`, keeping the best
epoch on the eval set. The output is an ordinary model directory: `slm export` and `slm quantize` take it.

What differs between tasks goes through the task seam (`slmkit.tasks`): reading, features and batches, the
output terms of the loss (`task.kd_loss`, `task.hard_loss`, `task.logit_mse`), scoring and agreement. The
teacher's outputs are the task's `outputs`: one row of logits per text (classification), a row per token (NER:
the KL and cross-entropy read each word's first piece, the position decoding reads), or a start and an end
logit per token of each window (QA: one distribution per window for each, padding masked out). NER and QA
students keep the teacher's vocabulary (see TRIM_REASON) and take no augmented texts; a QA student takes
unlabeled questions (`task.read_unlabeled`), an NER student no unlabeled sentences.

Training rows are the labeled texts plus unlabeled and augmented texts. All get the teacher's soft targets;
only labeled rows get the cross-entropy (the others carry label −1, which `losses.ce_loss` and QA's
`hard_loss` skip):

    loss = kd · KL(teacher/T ‖ student/T)·T² + ce · CE + mse · MSE(logits)
           + hidden · mean over layer pairs of MSE(W·h_student, h_teacher)
           + attention · mean over layer pairs of MSE(A_student, A_teacher)

The teacher cache (`<teacher>/distill-cache/<key>.safetensors`, or `cache_dir`) holds the teacher's outputs
(float32; per-token ones concatenated over texts) for the training rows and, when their loss weights are
positive, the hidden states and attention maps of the mapped teacher layers only (float16, unpadded, flattened
over texts). A classifier's training texts are labeled by its int8 ONNX graph by default (`teacher_int8`: 2.4x
faster than fp32, used only when it agrees with the fp32 graph on a probe sample; the eval texts always get fp32
logits, so the teacher's reported score is its own). The key hashes the teacher's weights file, its tokenizer, the
maximum length, the cached layers, int8 and the exact texts (NER and QA: the token ids of each sentence or window, stride included), so a second run with the same teacher and data never runs the teacher's forward pass for its
targets. Running the teacher inside the loop instead would make each step several times slower on a CPU; the
price of caching is disk and memory, so a run whose hidden states and attention maps would exceed
`CACHE_LIMIT_BYTES` is refused up front with the settings that shrink it. The eval texts' teacher logits are
cached the same way (the teacher's own score and the agreement need them); for NER and QA the teacher runs once
over the eval set instead, and the task scores its outputs.

Vocabulary: the student reuses the teacher's tokenizer. With `trim_vocab` it is first trimmed
(`slmkit.trim.trim_vocab`, into a work directory inside the staging directory) to the tokens of the training,
unlabeled and augmented texts, so the student's embedding matrix holds only rows it can use — exact on all of
those texts (same token ids up to renumbering, same sequence lengths), and honest about on-disk size.
trim-vocab proves its parity on the eval texts (it runs the teacher and the trimmed teacher over a seeded sample
of `TRIM_PARITY_TEXTS` of them); that proof goes into metrics.json under `vocab`.

Under `torchrun` the student trains data-parallel (`slmkit.distributed`). Rank 0 fills the teacher cache and
trims the vocabulary first, and the other processes then read its files; only rank 0 evaluates, logs and writes
the model directory.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from slmkit import artifacts, augment, distributed, losses, students
from slmkit.config import DistillConfig, ExportConfig, LossConfig, TrimConfig, save_config
from slmkit.data import Example
from slmkit.encoding import make_encoder, sorted_order, uses_token_types
from slmkit.errors import UserError
from slmkit.export import trace_graph
from slmkit.lineage import recorded_train_config
from slmkit.progress import StepProgress, stderr
from slmkit.tasks import get_task
from slmkit.train import Step, make_optimizer, run_epochs, track_epoch

CACHE_FORMAT = "slmkit-teacher-cache-1"  # part of the key: a new layout never reads an old file
CACHE_LIMIT_BYTES = 2 * 2**30  # hidden states + attention maps of one cache file (float16)
WORK_DIR = "work"  # inside the staging directory: the trimmed teacher and its inputs; removed before commit
TRIMMED_TEACHER = "teacher"  # inside WORK_DIR
TRIM_PARITY_TEXTS = 512  # eval texts on which the trimmed teacher proves its parity with the teacher


@dataclass
class DistillResult:
    out: Path
    metrics: dict  # the metrics.json written into `out`


# ------------------------------------------------------------------------------------------ the stage


EpochHook = Callable[[int, dict, dict], None]  # (epoch, the student's eval scores, the teacher's): may raise to stop


def distill(cfg: DistillConfig, overwrite: bool = False, progress: bool = True, on_epoch: EpochHook | None = None) -> DistillResult:
    """Distill the teacher `cfg.teacher` into the student `cfg.student` and write the model directory `cfg.out`.

    `on_epoch(epoch, scores, teacher_scores)` is called after every epoch is scored on the eval set (a search
    prunes bad trials there); an exception it raises stops the stage, leaving nothing behind."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()
    cfg.validate()
    teacher_dir, out = Path(cfg.teacher), Path(cfg.out)
    artifacts.check_output(out, overwrite)
    task_name = _check_teacher(teacher_dir)
    if out.resolve() == teacher_dir.resolve():
        raise UserError(f"{out}: --out is the --teacher directory: write the student to a new directory")
    if cfg.task is not None and cfg.task != task_name:
        raise UserError(f"setting task: the teacher {teacher_dir} is a {task_name} model, not {cfg.task}: leave task unset (it is read from the teacher)")
    task = _teacher_task(task_name, teacher_dir, cfg)
    cfg = replace(cfg, train=replace(cfg.train, metric=cfg.train.metric or task.metric_names[0]))  # accuracy, or f1 (ner, qa)
    o, d = cfg.train, cfg.data
    if o.metric not in task.metric_names:
        raise UserError(f"setting train.metric: {o.metric!r} is not a {task_name} metric: use one of {', '.join(task.metric_names)}")
    if cfg.unlabeled and not hasattr(task, "read_unlabeled"):
        raise UserError(f"setting unlabeled: unlabeled texts are for classification and QA teachers only: drop it for a {task_name} teacher")
    if task_name != "classification" and cfg.augment > 0:
        raise UserError(f"setting augment: augmented texts are for classification teachers only: drop it for a {task_name} teacher")
    if o.threads:
        torch.set_num_threads(o.threads)
    distributed.init("cpu")  # under torchrun: join the other processes (the student trains on the CPU)
    main = distributed.is_main()  # rank 0 alone writes the model directory and logs
    progress = progress and main
    kind, _ = students.parse_student(cfg.student)
    students.check_task(cfg.student, kind, task_name)
    labels = artifacts.model_labels(teacher_dir) if task_name != "qa" else []  # QA: spans, not classes
    label2id = {label: i for i, label in enumerate(labels)}

    # data: labeled training and eval examples (the teacher's label set), unlabeled texts
    train_path = Path(d.train)
    train_ex = task.read(train_path, d)
    _check_task_labels(task, train_ex, train_path, labels)
    if d.eval:
        eval_path = Path(d.eval)
        eval_ex = task.read(eval_path, d)
        _check_task_labels(task, eval_ex, eval_path, labels)
    else:
        eval_path = train_path
        train_ex, eval_ex = task.split(train_ex, d.eval_split, o.seed)
    unlabeled_ex = task.read_unlabeled(Path(cfg.unlabeled), d) if cfg.unlabeled else []  # texts, or QA's questions

    # the teacher, and a first build of the student: its shape decides which losses can apply
    teacher, hf_tokenizer = artifacts.load_model(teacher_dir)
    teacher.requires_grad_(False)
    head_labels = labels or [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]  # QA: the start and end outputs
    # vocabulary trimming keeps only the training texts' pieces; for NER and QA the full vocabulary is kept (TRIM_REASON)
    trim = cfg.trim_vocab and task_name == "classification"
    if trim:
        _check_wordpiece(teacher_dir)
    elif cfg.trim_vocab and progress:
        stderr.print(f"note: the vocabulary is not trimmed: {TRIM_REASON}", highlight=False)
    shape = students.build_student(cfg.student, teacher, head_labels, task_name).config
    hidden_pairs, attention_pairs = _layer_pairs(cfg.loss, teacher.config, shape, kind)
    max_length = min(int(hf_tokenizer.model_max_length), int(getattr(teacher.config, "max_position_embeddings", 512) or 512))

    # augmentation: new texts from embedding-neighbour replacements, word dropout and local shuffles
    augment_started = time.perf_counter()
    augmented_ex: list[Example] = []
    if cfg.augment > 0:
        texts = [e.text for e in train_ex]
        vocab = hf_tokenizer.get_vocab()  # token -> id
        embeddings = teacher.get_input_embeddings().weight.detach().float().numpy()  # (vocab, width)
        neighbours = augment.build_neighbours(vocab, embeddings, (w for t in texts for w in t.split()))
        augmented_ex = [Example(text, None, 0) for _, text in augment.augment_texts(texts, cfg.augment, neighbours, o.seed)]
    augment_seconds = time.perf_counter() - augment_started

    # the teacher's outputs on every training row (and, for classification, eval text): from the cache, or computed once and cached
    rows = train_ex + unlabeled_ex + augmented_ex  # labeled first; the others carry label -1
    teacher_encoder = make_encoder(hf_tokenizer, max_length)
    teacher_feats = task.encode(rows, teacher_encoder, label2id)
    teacher_eval_feats = task.encode(eval_ex, teacher_encoder, label2id)
    hidden_layers = sorted({t for _, t in hidden_pairs})
    attention_layers = sorted({t for _, t in attention_pairs})
    _check_cache_size(teacher_feats, teacher.config, hidden_layers, attention_layers)
    teacher_collate = partial(task.collate, pad_id=hf_tokenizer.pad_token_id or 0, token_types=uses_token_types(teacher, hf_tokenizer))
    if attention_layers:
        teacher.set_attn_implementation("eager")  # sdpa kernels do not return attention maps
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else teacher_dir / artifacts.DISTILL_CACHE
    weights_hash = artifacts.file_sha256(teacher_dir / artifacts.WEIGHTS)
    tokenizer_bytes = (teacher_dir / artifacts.TOKENIZER).read_bytes()
    cache_started = time.perf_counter()
    lookup = partial(
        _cached_teacher_outputs, teacher, teacher_collate, o.eval_batch_size, cache_dir, weights_hash, tokenizer_bytes, max_length,
        progress=progress, names=task.outputs, per_token=task.per_token,
    )
    with distributed.main_first():  # under torchrun the others find rank 0's fresh cache files
        train_outputs, train_hit, train_key = lookup(
            teacher_feats, _cache_texts(task, rows, teacher_feats), hidden_layers, attention_layers, int8=cfg.teacher_int8 and not task.per_token,
        )
        if task.per_token:  # scored through the task's own decoding: the teacher runs once over the eval set
            eval_hit, eval_key = False, None
            teacher_eval_outputs = task.predict_logits(teacher, teacher_eval_feats, teacher_collate, o.eval_batch_size)
        else:
            eval_outputs, eval_hit, eval_key = lookup(teacher_eval_feats, [e.text for e in eval_ex], [], [])
            teacher_eval_outputs = eval_outputs["logits"]
    cache_seconds = time.perf_counter() - cache_started

    # only now is anything written: bad input above leaves nothing behind, and a failure below removes the staging.
    # Under torchrun only rank 0 writes it; the others read the trimmed teacher there
    with artifacts.staged(out, overwrite, writer=main) as staging:
        # the vocabulary: trimmed to the student's training texts, then the student built over it
        work = staging / WORK_DIR
        if main:
            work.mkdir()
        vocab_before = len(hf_tokenizer)
        trim_metrics = None
        source = teacher
        if trim:
            with distributed.main_first():  # rank 0 trims; the others then load its trimmed teacher
                trimmed_dir = _trim(teacher_dir, work, rows, eval_ex) if main else work / TRIMMED_TEACHER
            trim_metrics = artifacts.read_json(trimmed_dir / artifacts.METRICS)
            source, hf_tokenizer = artifacts.load_model(trimmed_dir)
        torch.manual_seed(o.seed)  # the student's and the projections' initialization
        student = students.build_student(cfg.student, source, head_labels, task_name)
        del source
        if attention_pairs:
            student.set_attn_implementation("eager")
        hf_tokenizer.model_max_length = max_length  # predict, export and transformers.pipeline truncate here
        if trim:
            encoder = make_encoder(hf_tokenizer, max_length)
            train_feats = task.encode(rows, encoder, label2id)
            eval_feats = task.encode(eval_ex, encoder, label2id)
            if [len(f["input_ids"]) for f in train_feats] != [len(f["input_ids"]) for f in teacher_feats]:  # a bug, not bad input
                raise RuntimeError("the trimmed tokenizer segments a training text differently from the teacher's tokenizer")
        else:  # the teacher's tokenizer: the same features
            train_feats, eval_feats = teacher_feats, teacher_eval_feats
        train_feats = _with_teacher_outputs(train_feats, train_outputs, hidden_layers, attention_layers, teacher.config, task.outputs, task.per_token)
        collate = partial(task.collate, pad_id=hf_tokenizer.pad_token_id or 0, token_types=uses_token_types(student, hf_tokenizer))
        model = _with_projections(student, len(hidden_pairs), getattr(student.config, "hidden_size", 0), teacher.config.hidden_size)

        # training: the one loop, our loss, the best epoch on the eval set kept
        steps_per_epoch = math.ceil(len(train_feats) / o.batch_size)
        optimizer, scheduler = make_optimizer(model, o, steps_per_epoch * o.epochs)
        loss_fn = partial(_loss, task=task, weights=cfg.loss, hidden_pairs=hidden_pairs, attention_pairs=attention_pairs)
        batches = partial(collate_with_teacher, collate=collate, outputs=task.outputs, per_token=task.per_token)
        eval_outputs_of = partial(task.predict_logits, student, eval_feats, collate, o.eval_batch_size)
        teacher_scores = task.score(eval_ex, teacher_eval_feats, teacher_eval_outputs, labels, False, seed=o.seed)
        state = {"best": -1.0, "best_epoch": 0, "bad_epochs": 0, "epoch": 0, "history": [], "train_seconds": 0.0}
        stopped_early = False
        with StepProgress(progress) as bar:
            bar.start(f"epoch 1/{o.epochs}", steps_per_epoch)
            for record in run_epochs(model, optimizer, scheduler, train_feats, batches, loss_fn, o, random_order=not getattr(task, "buckets", True)):
                if isinstance(record, Step):
                    bar.advance(record.loss, record.examples_per_s)
                    continue
                # rank 0 scores the epoch; every process takes the same best/stop decisions from its scores
                scores = distributed.from_main(lambda: task.score(eval_ex, eval_feats, eval_outputs_of(), labels, False, seed=o.seed))
                is_best, stop, line = track_epoch(state, record, scores, o)
                if is_best and main:
                    artifacts.save_model(student, hf_tokenizer, staging)
                bar.log(line)
                if on_epoch is not None:
                    on_epoch(record.epoch, scores, teacher_scores)
                if stop:
                    stopped_early = True
                    break
                if record.epoch < o.epochs:
                    bar.start(f"epoch {record.epoch + 1}/{o.epochs}", steps_per_epoch)

        if not main:  # rank 0 scores, writes and commits; the others return its metrics once it has
            return DistillResult(out, distributed.broadcast(None))

        # the best epoch's weights, scored against the labels and the teacher
        artifacts.load_weights(student, staging)
        student_outputs = eval_outputs_of()
        student_scores = task.score(eval_ex, eval_feats, student_outputs, labels, False, seed=o.seed)
        agreement = task.agreement(eval_ex, eval_feats, student_outputs, teacher_eval_outputs, labels)
        shutil.rmtree(work)
        recorded = replace(d, train=str(train_path.resolve()), eval=str(Path(d.eval).resolve()) if d.eval else None)  # absolute: the lineage
        save_config(
            replace(
                cfg, teacher=str(teacher_dir.resolve()), data=recorded, unlabeled=str(Path(cfg.unlabeled).resolve()) if cfg.unlabeled else None,
                cache_dir=str(cache_dir.resolve()) if cfg.cache_dir else None, task=task_name, stride=getattr(task, "stride", None),
            ),
            staging / artifacts.CONFIG,
        )
        trained = sum(h["examples_per_s"] * h["seconds"] for h in state["history"])
        metric = task.metric_names[0]  # accuracy (classification), entity F1 (ner), SQuAD F1 (qa)
        vocab = {
            "trimmed": trim,
            "before": vocab_before,
            "after": len(hf_tokenizer),
            # eval tokens (special ones excluded) that became [UNK] by trimming: the student never saw them
            "eval_oov_token_rate": trim_metrics["oov_token_rate"] if trim_metrics else 0.0,
            # trim-vocab's proof on the eval set: the trimmed teacher predicts as the teacher does
            "trimmed_teacher_parity": {k: trim_metrics[k] for k in ("n_eval", "identical_predictions", "max_prob_diff_kept_texts")} if trim_metrics else None,
        }
        if cfg.trim_vocab and not trim:
            vocab["not_trimmed_because"] = TRIM_REASON
        result = {
            "task": task.name,
            "teacher": str(teacher_dir),
            "student": cfg.student,
            "student_kind": kind,
            "labels": labels,
            "n_train": len(train_ex),
            "n_unlabeled": len(unlabeled_ex),
            "n_augmented": len(augmented_ex),
            "n_eval": len(eval_ex),
            "eval_source": str(eval_path) if d.eval else f"{d.eval_split:.0%} {'stratified ' if task_name == 'classification' else ''}split of {train_path}",
            "max_length": max_length,
            "loss": {
                **{k: getattr(cfg.loss, k) for k in ("kd", "ce", "mse", "hidden", "attention", "temperature")},
                "hidden_pairs": [list(p) for p in hidden_pairs],  # (student layer, teacher layer); 0 = embeddings
                "attention_pairs": [list(p) for p in attention_pairs],
            },
            "teacher_eval": teacher_scores,  # the teacher's quick metrics on the eval set (accuracy and macro-F1; entity or SQuAD F1, ...)
            "student_eval": student_scores,
            "retention_metric": metric,
            "retention": student_scores[metric] / max(teacher_scores[metric], 1e-12),  # student / teacher
            # the fraction of eval texts (classification), words (ner) or questions (qa) where the student predicts as the teacher
            "agreement": agreement,
            "parameters": {"teacher": _count(teacher), "student": _count(student)},
            "processes": distributed.world_size(),  # under torchrun: each took a share of every batch
            "bytes": {"teacher": (teacher_dir / artifacts.WEIGHTS).stat().st_size, "student": (staging / artifacts.WEIGHTS).stat().st_size},
            "vocab": vocab,
            "teacher_cache": {
                "hit": train_hit and (eval_hit or task.per_token),
                # int8: the int8 graph labeled the training texts (teacher_int8, and it agreed with the fp32 one)
                "train": {"key": train_key, "hit": train_hit, "int8": bool(train_outputs.get("int8", np.zeros(1))[0]),
                          **{k: float(train_outputs[k][0]) for k in ("int8_agreement", "int8_prob_diff") if k in train_outputs}},
                "eval": {"key": eval_key, "hit": eval_hit},
                "dir": str(cache_dir),
                "layers": {"hidden": hidden_layers, "attention": attention_layers},
                "seconds": cache_seconds,
            },
            "augment_seconds": augment_seconds,
            "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"],
            "stopped_early": stopped_early,
            "train_seconds": state["train_seconds"],
            "train_examples_per_s": trained / max(state["train_seconds"], 1e-9),
            "eval": task.score(eval_ex, eval_feats, student_outputs, labels, True, seed=o.seed),  # the student's full report
            "history": state["history"],
            "seconds": time.perf_counter() - started,
        }
        artifacts.write_json(staging / artifacts.METRICS, result)
    return DistillResult(out, distributed.broadcast(result))


# ------------------------------------------------------------------------------------------ checks


HEADS = {"classification": "ForSequenceClassification", "ner": "ForTokenClassification", "qa": "ForQuestionAnswering"}  # config.json architectures


def _check_teacher(directory: Path) -> str:
    """A fine-tuned model of a task slm distill takes: weights, tokenizer, and a config.json naming that task's
    head (and labels). Returns the task."""
    artifacts.check_model_dir(directory)
    task = artifacts.model_task(directory)
    if task not in HEADS:
        raise UserError(f"{directory}: a {task} model: slm distill distills {', '.join(HEADS)} models")
    config = artifacts.read_json(directory / artifacts.HF_CONFIG)
    heads = [a for a in config.get("architectures") or [] if a.endswith(HEADS[task])]
    if not heads or (task != "qa" and not config.get("id2label")):
        what = "classifier (config.json names no classification head and labels)" if task == "classification" else f"{task} model (config.json names no {HEADS[task][3:]} head)"
        raise UserError(f"{directory}: not a fine-tuned {what}: pass --teacher, the --out directory of slm train")
    return task


def _teacher_task(name: str, teacher_dir: Path, cfg: DistillConfig) -> Any:
    """The teacher's task, reading the data with the distill settings (NER scheme, strictness) and windowing
    QA contexts with `cfg.stride`, else the stride the teacher was trained with."""
    if name == "ner":
        return get_task(name, scheme=cfg.data.scheme, strict=cfg.data.strict)
    if name == "qa":
        return get_task(name, stride=cfg.stride if cfg.stride is not None else recorded_train_config(teacher_dir).model.stride)
    return get_task(name)


def _check_task_labels(task: Any, examples: list, path: Path, labels: list[str]) -> None:
    """Refuse data with classes (classification) or entity types (ner) the teacher lacks; QA has none."""
    if task.name == "classification":
        _check_labels(examples, path, labels)
    elif task.name == "ner":
        known = {label[2:] for label in labels if label != "O"}
        for s in examples:
            unknown = sorted({t[2:] for t in s.tags if t != "O"} - known)
            if unknown:
                raise UserError(
                    f"{path} line {s.line}: entity type(s) {', '.join(map(repr, unknown))} are not the teacher's ({', '.join(sorted(known))}): "
                    "distill on data with the teacher's entity types, or retrain the teacher with these"
                )


def _check_labels(examples: list[Example], path: Path, labels: list[str]) -> None:
    """Refuse data with labels the teacher lacks, naming all of them and the first line holding one."""
    unknown = sorted({e.label for e in examples} - set(labels))
    if unknown:
        line = next(e.line for e in examples if e.label in unknown)
        shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
        raise UserError(
            f"{path} line {line}: label(s) {', '.join(map(repr, unknown))} are not the teacher's ({shown}): "
            "distill on data with the teacher's labels, or retrain the teacher with these"
        )


# Why NER and QA students keep the teacher's vocabulary: trim-vocab proves its parity with classification
# predictions only, and a vocabulary cut to the training sentences or contexts turns every unseen word of new text
# into a whole-word [UNK] — and new entities and answers (names, numbers, rare words) are exactly such words
TRIM_REASON = "NER and QA students keep the teacher's vocabulary: new entities and answers are often words the training text lacks, which a trimmed vocabulary reads as [UNK]"


def _check_wordpiece(teacher_dir: Path) -> None:
    kind = (artifacts.read_json(teacher_dir / artifacts.TOKENIZER).get("model") or {}).get("type")
    if kind != "WordPiece":
        raise UserError(f"{teacher_dir}: a {kind or 'unknown'} tokenizer: vocabulary trimming needs WordPiece: set trim_vocab=false")


def _layer_pairs(loss: LossConfig, teacher_config: Any, student_config: Any, kind: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(student layer, teacher layer) pairs for hidden-state and for attention transfer; empty when off."""
    if loss.hidden <= 0 and loss.attention <= 0:
        return [], []
    which = "loss.hidden" if loss.hidden > 0 else "loss.attention"
    n_student, n_teacher = int(getattr(student_config, "num_hidden_layers", 0) or 0), int(teacher_config.num_hidden_layers)
    if n_student == 0:
        raise UserError(
            f"setting {which}: a {kind} student has no transformer layers to match the teacher's: set {which}=0 or use a drop or transformer student"
        )
    pairs = losses.parse_layer_map(loss.layer_map, n_student, n_teacher) if loss.layer_map else losses.uniform_layer_map(n_student, n_teacher)
    hidden = pairs if loss.hidden > 0 else []
    attention = [(s, t) for s, t in pairs if s >= 1 and t >= 1] if loss.attention > 0 else []  # layer 0 is the embeddings
    if loss.attention > 0:
        if not attention:
            raise UserError("setting loss.layer_map: attention transfer needs a pair of transformer layers (1 or more), not only 0 (the embeddings)")
        for s, t in attention:
            s_heads, t_heads = _heads(student_config, s), _heads(teacher_config, t)
            if s_heads != t_heads:
                raise UserError(
                    f"setting loss.attention: student layer {s} has {s_heads} attention heads and teacher layer {t} has {t_heads}: "
                    f"attention transfer needs equal head counts: give the student heads={t_heads} or set loss.attention=0"
                )
    return hidden, attention


def _heads(config: Any, layer: int) -> int:
    """Attention heads of transformer layer `layer` (1-based); pruned teachers have their own count per layer."""
    per_layer = getattr(config, "layer_heads", None)
    return int(per_layer[layer - 1]) if per_layer else int(config.num_attention_heads)


def _check_cache_size(features: list[dict], config: Any, hidden_layers: list[int], attention_layers: list[int]) -> None:
    lengths = np.array([len(f["input_ids"]) for f in features], dtype=np.int64)
    size = 2 * int(lengths.sum()) * config.hidden_size * len(hidden_layers)  # float16 bytes
    size += 2 * int((lengths**2).sum()) * sum(_heads(config, t) for t in attention_layers)
    if size > CACHE_LIMIT_BYTES:
        raise UserError(
            f"setting loss.hidden/loss.attention: the teacher's hidden states and attention maps for {len(features)} texts need "
            f"{size / 1e9:.1f} GB of cache (limit {CACHE_LIMIT_BYTES / 1e9:.1f} GB): lower augment, map fewer layers with loss.layer_map, "
            "or set loss.hidden=0 and loss.attention=0"
        )


# ------------------------------------------------------------------------------------------ vocabulary


def _trim(teacher_dir: Path, work: Path, rows: list[Example], eval_ex: list[Example]) -> Path:
    """The teacher with its vocabulary trimmed to the tokens of `rows`, in `work/TRIMMED_TEACHER`; its parity
    checked on `eval_ex` (a seeded sample of `TRIM_PARITY_TEXTS` of them: the check runs both teachers in PyTorch)."""
    from slmkit.trim import trim_vocab

    texts, labeled = work / "texts.jsonl", work / "eval.jsonl"
    _write_jsonl(texts, [{"text": e.text} for e in rows])  # JSONL: texts may hold newlines and commas
    sample = sorted(np.random.default_rng(0).permutation(len(eval_ex))[:TRIM_PARITY_TEXTS])
    _write_jsonl(labeled, [{"text": eval_ex[i].text, "label": eval_ex[i].label} for i in sample])
    # a plain vocabulary (no aliases): the student trains on these texts' pieces alone and reads others as [UNK]
    config = TrimConfig(model=str(teacher_dir), out=str(work / TRIMMED_TEACHER), data=[str(texts)], eval=str(labeled), fallback="none")
    return trim_vocab(config).out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    import json

    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


# ------------------------------------------------------------------------------------------ teacher cache


def cache_key(
    weights_hash: str, tokenizer_json: bytes, max_length: int, texts: list[str], hidden_layers: list[int], attention_layers: list[int],
    int8: bool = False,
) -> str:
    """The cache file's name: a hash of everything the teacher's outputs depend on (int8: asked of the int8 graph)."""
    digest = hashlib.sha256()
    header = f"{CACHE_FORMAT}|{weights_hash}|{max_length}|hidden={hidden_layers}|attention={attention_layers}|{len(texts)}|"
    header += "int8|" if int8 else ""
    digest.update(header.encode())
    digest.update(hashlib.sha256(tokenizer_json).digest())
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))  # length-prefixed: ["ab", "c"] and ["a", "bc"] differ
        digest.update(encoded)
    return digest.hexdigest()[:32]


def _cache_texts(task: Any, examples: list, features: list[dict]) -> list[str]:
    """What the cache key hashes per row: the text (classification), else each feature's token ids and token
    types — a sentence's words or a question's windows exactly as the teacher reads them (stride included)."""
    if task.name == "classification":
        return [e.text for e in examples]
    return [f"{f['input_ids']}|{f.get('type_ids', '')}" for f in features]


def _cached_teacher_outputs(
    teacher, collate, batch_size: int, cache_dir: Path, weights_hash: str, tokenizer_json: bytes, max_length: int,
    features: list[dict], texts: list[str], hidden_layers: list[int], attention_layers: list[int], progress: bool = False,
    names: tuple[str, ...] = ("logits",), per_token: bool = False, int8: bool = False,
) -> tuple[dict[str, np.ndarray], bool, str]:
    """The teacher's outputs for `features` (see `_teacher_forward`), whether they came from the cache, and the key."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file, save_file

    key = cache_key(weights_hash, tokenizer_json, max_length, texts, hidden_layers, attention_layers, int8)
    path = cache_dir / f"{key}.safetensors"
    lengths = np.array([len(f["input_ids"]) for f in features], dtype=np.int64)
    if path.is_file():
        try:
            cached = load_file(str(path))
            if np.array_equal(cached.get("lengths"), lengths) and all(name in cached for name in names):
                return cached, True, key
        except (SafetensorError, OSError, ValueError):
            pass  # a damaged file is recomputed and replaced
    if progress:
        stderr.print(f"teacher outputs: computing for {len(features)} texts (cached for later runs in {cache_dir})")
    outputs = _teacher_forward(teacher, features, collate, batch_size, hidden_layers, attention_layers, names, per_token, int8)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: concurrent writers never share a file
        save_file(outputs, str(tmp), metadata={"format": CACHE_FORMAT, "texts": str(len(texts))})
        tmp.replace(path)
    except OSError as e:  # a read-only teacher directory: the run goes on, the next one recomputes
        stderr.print(f"warning: could not write the teacher cache {path} ({e.strerror}): pass cache_dir to keep it elsewhere")
    return outputs, False, key


def _teacher_forward(
    teacher, features: list[dict], collate, batch_size: int, hidden_layers: list[int], attention_layers: list[int],
    names: tuple[str, ...] = ("logits",), per_token: bool = False, int8: bool = False,
) -> dict[str, np.ndarray]:
    """Run the teacher over `features`, batched by length (a classifier's logits alone, in one process: through
    its ONNX graph, `_onnx_teacher_logits`, int8 when `int8` and it agrees). Returns, with n texts of lengths l_i:

        logits            (n, classes) float32 (classification); the task's outputs `names` per token when
                          `per_token`, texts concatenated: NER logits (Σ l_i, tags), QA start_logits and
                          end_logits (Σ l_i,)
        lengths           (n,) int64
        int8              (1,) int8: 1 when the int8 graph gave the logits
        int8_agreement,   (1,) float32 each, when the int8 graph was asked for: the share of the probe texts where
        int8_prob_diff    it picks the fp32 graph's class, and the mean |Δ probability| there
        hidden.{t}        (Σ l_i, width) float16: layer t's hidden states (0 = embeddings), texts concatenated
        attention.{t}     (Σ heads·l_i²,) float16: layer t's attention maps (heads, l_i, l_i), flattened
    """
    import torch

    lengths = np.array([len(f["input_ids"]) for f in features], dtype=np.int64)
    # under torchrun PyTorch labels, as before: the ONNX labeling is tested in one process only
    if not (hidden_layers or attention_layers or per_token) and distributed.world_size() == 1:
        labeled = _onnx_teacher_logits(teacher, features, collate, batch_size, lengths, int8)
        if labeled is not None:
            logits, used_int8, check = labeled
            return {"lengths": lengths, "logits": logits, "int8": np.array([used_int8], dtype=np.int8), **check}
    token_at = np.concatenate([[0], np.cumsum(lengths)])  # text i's rows in hidden.{t}
    heads = {t: _heads(teacher.config, t) for t in attention_layers}
    map_at = {t: np.concatenate([[0], np.cumsum(heads[t] * lengths**2)]) for t in attention_layers}
    outputs: dict[str, np.ndarray] = {"lengths": lengths, "int8": np.zeros(1, dtype=np.int8)}
    for t in hidden_layers:
        outputs[f"hidden.{t}"] = np.empty((int(token_at[-1]), teacher.config.hidden_size), dtype=np.float16)
    for t in attention_layers:
        outputs[f"attention.{t}"] = np.empty(int(map_at[t][-1]), dtype=np.float16)
    teacher.eval()
    with torch.inference_mode():
        for idx in sorted_order(lengths, batch_size):
            batch = collate([features[i] for i in idx])
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            result = teacher(**inputs, output_hidden_states=bool(hidden_layers), output_attentions=bool(attention_layers))
            for name in names:
                value = getattr(result, name).float().numpy()  # (batch, classes) or (batch, seq[, tags])
                if name not in outputs:  # the trailing shape is known from the first batch
                    rows = int(token_at[-1]) if per_token else len(features)
                    outputs[name] = np.empty((rows, *value.shape[2 if per_token else 1 :]), dtype=np.float32)
                if not per_token:
                    outputs[name][idx] = value
            for row, i in enumerate(idx):
                n = lengths[i]
                if per_token:
                    for name in names:
                        outputs[name][token_at[i] : token_at[i + 1]] = getattr(result, name)[row, :n].float().numpy()
                for t in hidden_layers:
                    outputs[f"hidden.{t}"][token_at[i] : token_at[i + 1]] = result.hidden_states[t][row, :n].numpy()
                for t in attention_layers:
                    outputs[f"attention.{t}"][map_at[t][i] : map_at[t][i + 1]] = result.attentions[t - 1][row, :, :n, :n].reshape(-1).numpy()
    return outputs


INT8_LABEL_PROBE = 256  # texts on which the int8 graph must agree with the fp32 one before it labels
INT8_LABEL_AGREEMENT = 0.95  # least share of the probe texts whose top class is the fp32 graph's
INT8_LABEL_PROB_DIFF = 0.05  # most mean |Δ probability| over the probe texts and classes


def _onnx_teacher_logits(
    teacher, features: list[dict], collate, batch_size: int, lengths: np.ndarray, int8: bool = False,
) -> tuple[np.ndarray, bool, dict] | None:
    """A classifier teacher's logits (n, classes) from its traced ONNX graph, which ONNX Runtime runs about twice
    as fast as PyTorch here (fp32 ONNX against fp32 PyTorch in benchmarks/results/compress.md), whether the
    int8 graph gave them, and its check when asked for (`int8_agreement`, `int8_prob_diff`: (1,) arrays). The
    graph is proven on a batch of these texts (max |logit difference| ≤ 1e-4, the export's tolerance) and on one
    text alone; None, and PyTorch labels the texts, when that fails or the model cannot be traced.

    With `int8` the traced graph is quantized by `slm quantize`'s quantizer (dynamic int8, per-tensor full-range
    weights: another 2.4x on SST-2's training phrases) and labels the texts when, on `INT8_LABEL_PROBE` seeded texts, its top class is
    the fp32 graph's for at least `INT8_LABEL_AGREEMENT` of them and its probabilities differ by at most
    `INT8_LABEL_PROB_DIFF` on average; else the fp32 graph labels them."""
    import tempfile

    import torch

    from slmkit.config import QuantizeConfig
    from slmkit.quantize import quantize_file
    from slmkit.runtime import open_session, softmax

    order = sorted_order(lengths, batch_size)
    probe_batch = collate([features[i] for i in order[len(order) // 2]])  # a batch of middling length
    inputs = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in probe_batch]
    probe = {k: probe_batch[k].numpy() for k in inputs}
    teacher.eval()
    with torch.inference_mode():
        reference = {"logits": teacher(**{k: probe_batch[k] for k in inputs}).logits.float().numpy()}
    def run(session, indices) -> np.ndarray:
        out = np.empty((len(indices), reference["logits"].shape[1]), dtype=np.float32)
        for idx in sorted_order(lengths[indices], batch_size):
            batch = collate([features[indices[j]] for j in idx])
            out[idx] = session.run(["logits"], {k: batch[k].numpy() for k in inputs})[0]
        return out

    with tempfile.TemporaryDirectory(prefix="slm-teacher-") as tmp:
        fp32_dir, int8_dir = Path(tmp) / "fp32", Path(tmp) / "int8"  # open_session reads <dir>/model.onnx
        fp32_dir.mkdir()
        try:
            trace_graph(teacher, probe, reference, fp32_dir / artifacts.ONNX_MODEL, inputs, ("logits",), ExportConfig(), False)
        except Exception:  # noqa: BLE001  a teacher the tracer cannot reproduce is run in PyTorch
            return None
        session = open_session(fp32_dir, torch.get_num_threads())
        used_int8, check = False, {}
        if int8:
            int8_dir.mkdir()
            quantize_file(QuantizeConfig(per_channel=False, reduce_range=False), fp32_dir / artifacts.ONNX_MODEL, int8_dir / artifacts.ONNX_MODEL, [], None)
            int8_session = open_session(int8_dir, torch.get_num_threads())
            sample = np.random.default_rng(0).permutation(len(features))[:INT8_LABEL_PROBE]
            exact, approx = run(session, sample), run(int8_session, sample)
            agreement = float(np.mean(exact.argmax(1) == approx.argmax(1)))
            prob_diff = float(np.abs(softmax(exact) - softmax(approx)).mean())
            check = {"int8_agreement": np.array([agreement], dtype=np.float32), "int8_prob_diff": np.array([prob_diff], dtype=np.float32)}
            if agreement >= INT8_LABEL_AGREEMENT and prob_diff <= INT8_LABEL_PROB_DIFF:
                session, used_int8 = int8_session, True
        logits = run(session, np.arange(len(features)))
    return logits, used_int8, check


def _with_teacher_outputs(
    features: list[dict], outputs: dict, hidden_layers: list[int], attention_layers: list[int], config: Any,
    names: tuple[str, ...] = ("logits",), per_token: bool = False,
) -> list[dict]:
    """Each feature plus its teacher outputs `teacher_{name}` — logits (classes,), or per token (l, tags) / (l,) —
    and, when cached, hidden states [(l, width)] and attention maps [(heads, l, l)] per mapped teacher layer:
    views into the cached arrays, not copies."""
    lengths = outputs["lengths"]
    token_at = np.concatenate([[0], np.cumsum(lengths)])
    map_at = {t: np.concatenate([[0], np.cumsum(_heads(config, t) * lengths**2)]) for t in attention_layers}
    rows = []
    for i, f in enumerate(features):
        n = int(lengths[i])
        row = dict(f)
        for name in names:
            row[f"teacher_{name}"] = outputs[name][token_at[i] : token_at[i + 1]] if per_token else outputs[name][i]
        if hidden_layers:
            row["teacher_hidden"] = [outputs[f"hidden.{t}"][token_at[i] : token_at[i + 1]] for t in hidden_layers]
        if attention_layers:
            row["teacher_attention"] = [outputs[f"attention.{t}"][map_at[t][i] : map_at[t][i + 1]].reshape(-1, n, n) for t in attention_layers]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ training


def _with_projections(student, n_hidden_pairs: int, student_width: int, teacher_width: int):
    """One module holding the student and the projections of hidden-state transfer, so the loop trains both.

    `projections[str(k)]` maps the student width to the teacher's for the k-th hidden pair when they differ
    (TinyBERT's W_h, no bias); only `student` is saved."""
    import torch

    model = torch.nn.Module()
    model.student = student
    model.projections = torch.nn.ModuleDict()
    if student_width != teacher_width:
        for k in range(n_hidden_pairs):
            model.projections[str(k)] = torch.nn.Linear(student_width, teacher_width, bias=False)
    return model


def collate_with_teacher(
    features: list[dict], collate: Callable[[list[dict]], dict], outputs: tuple[str, ...] = ("logits",), per_token: bool = False
) -> dict:
    """The task's batch plus the teacher's outputs `teacher_{name}`: logits (batch, classes), or per token
    (batch, seq[, tags]) zero-padded; and when cached, per mapped layer, hidden states (batch, seq, width) and
    attention maps (batch, heads, seq, seq), zero-padded like the batch."""
    import torch

    batch = collate(features)
    seq = batch["input_ids"].shape[1]
    for name in outputs:
        key = f"teacher_{name}"
        if not per_token:
            batch[key] = torch.from_numpy(np.stack([f[key] for f in features]))
            continue
        padded = torch.zeros((len(features), seq, *features[0][key].shape[1:]), dtype=torch.float32)
        for row, f in enumerate(features):
            padded[row, : len(f[key])] = torch.from_numpy(f[key])
        batch[key] = padded
    if "teacher_hidden" in features[0]:
        batch["teacher_hidden"] = []
        for k in range(len(features[0]["teacher_hidden"])):
            padded = torch.zeros((len(features), seq, features[0]["teacher_hidden"][k].shape[-1]), dtype=torch.float16)
            for row, f in enumerate(features):
                h = f["teacher_hidden"][k]
                padded[row, : len(h)] = torch.from_numpy(h)
            batch["teacher_hidden"].append(padded)
    if "teacher_attention" in features[0]:
        batch["teacher_attention"] = []
        for k in range(len(features[0]["teacher_attention"])):
            padded = torch.zeros((len(features), features[0]["teacher_attention"][k].shape[0], seq, seq), dtype=torch.float16)
            for row, f in enumerate(features):
                a = f["teacher_attention"][k]
                padded[row, :, : a.shape[1], : a.shape[2]] = torch.from_numpy(a)
            batch["teacher_attention"].append(padded)
    return batch


def _loss(model, batch: dict, task: Any, weights: LossConfig, hidden_pairs: list[tuple[int, int]], attention_pairs: list[tuple[int, int]]):
    """The weighted sum of the losses (module docstring); each transfer term is averaged over its layer pairs.
    The output terms are the task's (`task.kd_loss`, `hard_loss`, `logit_mse`: per text, per word, per window)."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    out = model.student(**inputs, output_hidden_states=bool(hidden_pairs), output_attentions=bool(attention_pairs))
    mask = batch["attention_mask"]  # (batch, seq)
    terms = []  # at least one: validate() and _layer_pairs refuse settings that leave none
    if weights.kd > 0:
        terms.append(weights.kd * task.kd_loss(out, batch, weights.temperature))
    if weights.ce > 0:
        terms.append(weights.ce * task.hard_loss(out, batch))
    if weights.mse > 0:
        terms.append(weights.mse * task.logit_mse(out, batch))
    for k, (s, _) in enumerate(hidden_pairs):  # hidden_states[0] is the embedding output, [s] layer s's
        projection = model.projections[str(k)] if str(k) in model.projections else None
        term = losses.hidden_loss(out.hidden_states[s], batch["teacher_hidden"][k], projection, mask)
        terms.append(weights.hidden / len(hidden_pairs) * term)
    for k, (s, _) in enumerate(attention_pairs):  # attentions[s - 1] is layer s's
        term = losses.attention_loss(out.attentions[s - 1], batch["teacher_attention"][k], mask)
        terms.append(weights.attention / len(attention_pairs) * term)
    return sum(terms)


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())
