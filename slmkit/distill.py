"""`slm distill`: train a small student to imitate a fine-tuned teacher classifier.

Read top to bottom: `distill(cfg)` checks everything it can before writing anything (the teacher is a trained
classifier, the data's labels are the teacher's, the student spec builds, the loss settings fit the two
shapes, the unlabeled file has texts), generates augmented texts (`slmkit.augment`), asks the teacher for its
outputs on every training text — once: they are cached on disk — then trims the teacher's vocabulary to the
texts the student will see, builds the student from the trimmed teacher (`slmkit.students`), and trains it
with slmkit's one training loop (`train.run_epochs`) and the losses of `slmkit.losses`, keeping the best
epoch on the eval set. The output is an ordinary model directory: `slm export` and `slm quantize` take it.

Training rows are the labeled texts plus unlabeled and augmented texts. All get the teacher's soft targets;
only labeled rows get the cross-entropy (the others carry label −1, which `losses.ce_loss` skips):

    loss = kd · KL(teacher/T ‖ student/T)·T² + ce · CE + mse · MSE(logits)
           + hidden · mean over layer pairs of MSE(W·h_student, h_teacher)
           + attention · mean over layer pairs of MSE(A_student, A_teacher)

The teacher cache (`<teacher>/distill-cache/<key>.safetensors`, or `cache_dir`) holds the teacher's logits
(float32) for the training texts and, when their loss weights are positive, the hidden states and attention
maps of the mapped teacher layers only (float16, unpadded, flattened over texts). The key hashes the teacher's
weights file, its tokenizer, the maximum length, the cached layers and the exact texts, so a second run with
the same teacher and data never runs the teacher's forward pass for its targets. Running the teacher inside the loop instead would make each
step several times slower on a CPU; the price of caching is disk and memory, so a run whose hidden states and
attention maps would exceed `CACHE_LIMIT_BYTES` is refused up front with the settings that shrink it.
The eval texts' teacher logits are cached the same way (the teacher's own score and the agreement need them).

Vocabulary: the student reuses the teacher's tokenizer. With `trim_vocab` it is first trimmed
(`slmkit.trim.trim_vocab`, into a work directory inside the staging directory) to the tokens of the training,
unlabeled and augmented texts, so the student's embedding matrix holds only rows it can use — exact on all of
those texts (same token ids up to renumbering, same sequence lengths), and honest about on-disk size.
trim-vocab proves its parity on the eval texts (it runs the teacher and the trimmed teacher over them); that
proof goes into metrics.json under `vocab`.

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
from slmkit.config import DistillConfig, LossConfig, TrimConfig, save_config
from slmkit.data import Example, read_examples, read_texts, stratified_split
from slmkit.encoding import make_encoder, sorted_order, uses_token_types
from slmkit.errors import UserError
from slmkit.progress import StepProgress, stderr
from slmkit.tasks import get_task
from slmkit.train import Step, make_optimizer, run_epochs, track_epoch

CACHE_FORMAT = "slmkit-teacher-cache-1"  # part of the key: a new layout never reads an old file
CACHE_LIMIT_BYTES = 2 * 2**30  # hidden states + attention maps of one cache file (float16)
WORK_DIR = "work"  # inside the staging directory: the trimmed teacher and its inputs; removed before commit
TRIMMED_TEACHER = "teacher"  # inside WORK_DIR


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
    cfg = replace(cfg, train=replace(cfg.train, metric=cfg.train.metric or "accuracy"))
    o, d = cfg.train, cfg.data
    teacher_dir, out = Path(cfg.teacher), Path(cfg.out)
    artifacts.check_output(out, overwrite)
    _check_teacher(teacher_dir)
    if out.resolve() == teacher_dir.resolve():
        raise UserError(f"{out}: --out is the --teacher directory: write the student to a new directory")
    if o.threads:
        torch.set_num_threads(o.threads)
    distributed.init("cpu")  # under torchrun: join the other processes (the student trains on the CPU)
    main = distributed.is_main()  # rank 0 alone writes the model directory and logs
    progress = progress and main
    task = get_task("classification")
    labels = artifacts.model_labels(teacher_dir)
    label2id = {label: i for i, label in enumerate(labels)}

    # data: labeled training and eval examples (the teacher's label set), unlabeled texts
    train_path = Path(d.train)
    train_ex = read_examples(train_path, d.text_col, d.label_col, d.encoding, d.drop_empty)
    _check_labels(train_ex, train_path, labels)
    if d.eval:
        eval_path = Path(d.eval)
        eval_ex = read_examples(eval_path, d.text_col, d.label_col, d.encoding, d.drop_empty)
        _check_labels(eval_ex, eval_path, labels)
    else:
        eval_path = train_path
        train_ex, eval_ex = stratified_split(train_ex, d.eval_split, o.seed)
    unlabeled_ex = [Example(t, None, i) for i, t in enumerate(read_texts(cfg.unlabeled, d.text_col, d.encoding), start=1)] if cfg.unlabeled else []

    # the teacher, and a first build of the student: its shape decides which losses can apply
    kind, _ = students.parse_student(cfg.student)
    teacher, hf_tokenizer = artifacts.load_model(teacher_dir)
    teacher.requires_grad_(False)
    if cfg.trim_vocab:
        _check_wordpiece(teacher_dir)
    shape = students.build_student(cfg.student, teacher, labels).config
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

    # the teacher's outputs on every training row and eval text: from the cache, or computed once and cached
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
        _cached_teacher_outputs, teacher, teacher_collate, o.eval_batch_size, cache_dir, weights_hash, tokenizer_bytes, max_length, progress=progress
    )
    with distributed.main_first():  # under torchrun the others find rank 0's fresh cache files
        train_outputs, train_hit, train_key = lookup(teacher_feats, [e.text for e in rows], hidden_layers, attention_layers)
        eval_outputs, eval_hit, eval_key = lookup(teacher_eval_feats, [e.text for e in eval_ex], [], [])
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
        if cfg.trim_vocab:
            with distributed.main_first():  # rank 0 trims; the others then load its trimmed teacher
                trimmed_dir = _trim(teacher_dir, work, rows, eval_ex) if main else work / TRIMMED_TEACHER
            trim_metrics = artifacts.read_json(trimmed_dir / artifacts.METRICS)
            source, hf_tokenizer = artifacts.load_model(trimmed_dir)
        torch.manual_seed(o.seed)  # the student's and the projections' initialization
        student = students.build_student(cfg.student, source, labels)
        del source
        if attention_pairs:
            student.set_attn_implementation("eager")
        hf_tokenizer.model_max_length = max_length  # predict, export and transformers.pipeline truncate here
        encoder = make_encoder(hf_tokenizer, max_length)
        train_feats = task.encode(rows, encoder, label2id)
        eval_feats = task.encode(eval_ex, encoder, label2id)
        if [len(f["input_ids"]) for f in train_feats] != [len(f["input_ids"]) for f in teacher_feats]:  # a bug, not bad input
            raise RuntimeError("the trimmed tokenizer segments a training text differently from the teacher's tokenizer")
        train_feats = _with_teacher_outputs(train_feats, train_outputs, hidden_layers, attention_layers, teacher.config)
        collate = partial(task.collate, pad_id=hf_tokenizer.pad_token_id or 0, token_types=uses_token_types(student, hf_tokenizer))
        model = _with_projections(student, len(hidden_pairs), getattr(student.config, "hidden_size", 0), teacher.config.hidden_size)

        # training: the one loop, our loss, the best epoch on the eval set kept
        steps_per_epoch = math.ceil(len(train_feats) / o.batch_size)
        optimizer, scheduler = make_optimizer(model, o, steps_per_epoch * o.epochs)
        loss_fn = partial(_loss, weights=cfg.loss, hidden_pairs=hidden_pairs, attention_pairs=attention_pairs)
        eval_y = np.array([f["label"] for f in eval_feats])
        eval_probs = partial(task.predict_probs, student, eval_feats, collate, o.eval_batch_size)
        teacher_probs = task.decode(eval_outputs["logits"])
        teacher_scores = task.quick_metrics(eval_y, teacher_probs)
        state = {"best": -1.0, "best_epoch": 0, "bad_epochs": 0, "epoch": 0, "history": [], "train_seconds": 0.0}
        stopped_early = False
        with StepProgress(progress) as bar:
            bar.start(f"epoch 1/{o.epochs}", steps_per_epoch)
            for record in run_epochs(model, optimizer, scheduler, train_feats, partial(collate_with_teacher, collate=collate), loss_fn, o):
                if isinstance(record, Step):
                    bar.advance(record.loss, record.examples_per_s)
                    continue
                # rank 0 scores the epoch; every process takes the same best/stop decisions from its scores
                scores = distributed.from_main(lambda: task.quick_metrics(eval_y, eval_probs()))
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
        probs = eval_probs()
        student_scores = task.quick_metrics(eval_y, probs)
        agreement = float(np.mean(probs.argmax(axis=1) == teacher_probs.argmax(axis=1)))
        shutil.rmtree(work)
        recorded = replace(d, train=str(train_path.resolve()), eval=str(Path(d.eval).resolve()) if d.eval else None)  # absolute: the lineage
        save_config(
            replace(
                cfg, teacher=str(teacher_dir.resolve()), data=recorded, unlabeled=str(Path(cfg.unlabeled).resolve()) if cfg.unlabeled else None,
                cache_dir=str(cache_dir.resolve()) if cfg.cache_dir else None,
            ),
            staging / artifacts.CONFIG,
        )
        trained = sum(h["examples_per_s"] * h["seconds"] for h in state["history"])
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
            "eval_source": str(eval_path) if d.eval else f"{d.eval_split:.0%} stratified split of {train_path}",
            "max_length": max_length,
            "loss": {
                **{k: getattr(cfg.loss, k) for k in ("kd", "ce", "mse", "hidden", "attention", "temperature")},
                "hidden_pairs": [list(p) for p in hidden_pairs],  # (student layer, teacher layer); 0 = embeddings
                "attention_pairs": [list(p) for p in attention_pairs],
            },
            "teacher_eval": teacher_scores,  # accuracy and macro-F1 of the teacher on the eval set
            "student_eval": student_scores,
            "retention": student_scores["accuracy"] / max(teacher_scores["accuracy"], 1e-12),  # student / teacher accuracy
            "agreement": agreement,  # fraction of eval texts where the student's argmax is the teacher's
            "parameters": {"teacher": _count(teacher), "student": _count(student)},
            "processes": distributed.world_size(),  # under torchrun: each took a share of every batch
            "bytes": {"teacher": (teacher_dir / artifacts.WEIGHTS).stat().st_size, "student": (staging / artifacts.WEIGHTS).stat().st_size},
            "vocab": {
                "trimmed": cfg.trim_vocab,
                "before": vocab_before,
                "after": len(hf_tokenizer),
                # eval tokens (special ones excluded) that became [UNK] by trimming: the student never saw them
                "eval_oov_token_rate": trim_metrics["oov_token_rate"] if trim_metrics else 0.0,
                # trim-vocab's proof on the eval set: the trimmed teacher predicts as the teacher does
                "trimmed_teacher_parity": {k: trim_metrics[k] for k in ("identical_predictions", "max_prob_diff_kept_texts")} if trim_metrics else None,
            },
            "teacher_cache": {
                "hit": train_hit and eval_hit,
                "train": {"key": train_key, "hit": train_hit},
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
            "eval": task.metrics(eval_y, probs, labels, seed=o.seed),  # the student's full report
            "history": state["history"],
            "seconds": time.perf_counter() - started,
        }
        artifacts.write_json(staging / artifacts.METRICS, result)
    return DistillResult(out, distributed.broadcast(result))


# ------------------------------------------------------------------------------------------ checks


def _check_teacher(directory: Path) -> None:
    """A trained classifier: weights, tokenizer, and a config.json with a classification head and its labels."""
    artifacts.check_model_dir(directory)
    config = artifacts.read_json(directory / artifacts.HF_CONFIG)
    heads = [a for a in config.get("architectures") or [] if a.endswith("ForSequenceClassification")]
    if not config.get("id2label") or not heads:
        raise UserError(
            f"{directory}: not a fine-tuned classifier (config.json names no classification head and labels): "
            "pass --teacher, the --out directory of slm train"
        )
    if artifacts.model_task(directory) != "classification":
        raise UserError(f"{directory}: a {artifacts.model_task(directory)} model: slm distill distills classifiers only")


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
    """The teacher with its vocabulary trimmed to the tokens of `rows`, in `work/TRIMMED_TEACHER`; its parity checked on `eval_ex`."""
    from slmkit.trim import trim_vocab

    texts, labeled = work / "texts.jsonl", work / "eval.jsonl"
    _write_jsonl(texts, [{"text": e.text} for e in rows])  # JSONL: texts may hold newlines and commas
    _write_jsonl(labeled, [{"text": e.text, "label": e.label} for e in eval_ex])
    # a plain vocabulary (no aliases): the student trains on these texts' pieces alone and reads others as [UNK]
    config = TrimConfig(model=str(teacher_dir), out=str(work / TRIMMED_TEACHER), data=[str(texts)], eval=str(labeled), fallback="none")
    return trim_vocab(config).out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    import json

    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


# ------------------------------------------------------------------------------------------ teacher cache


def cache_key(weights_hash: str, tokenizer_json: bytes, max_length: int, texts: list[str], hidden_layers: list[int], attention_layers: list[int]) -> str:
    """The cache file's name: a hash of everything the teacher's outputs depend on."""
    digest = hashlib.sha256()
    header = f"{CACHE_FORMAT}|{weights_hash}|{max_length}|hidden={hidden_layers}|attention={attention_layers}|{len(texts)}|"
    digest.update(header.encode())
    digest.update(hashlib.sha256(tokenizer_json).digest())
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))  # length-prefixed: ["ab", "c"] and ["a", "bc"] differ
        digest.update(encoded)
    return digest.hexdigest()[:32]


def _cached_teacher_outputs(
    teacher, collate, batch_size: int, cache_dir: Path, weights_hash: str, tokenizer_json: bytes, max_length: int,
    features: list[dict], texts: list[str], hidden_layers: list[int], attention_layers: list[int], progress: bool = False,
) -> tuple[dict[str, np.ndarray], bool, str]:
    """The teacher's outputs for `features` (see `_teacher_forward`), whether they came from the cache, and the key."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file, save_file

    key = cache_key(weights_hash, tokenizer_json, max_length, texts, hidden_layers, attention_layers)
    path = cache_dir / f"{key}.safetensors"
    lengths = np.array([len(f["input_ids"]) for f in features], dtype=np.int64)
    if path.is_file():
        try:
            outputs = load_file(str(path))
            if np.array_equal(outputs.get("lengths"), lengths):
                return outputs, True, key
        except (SafetensorError, OSError, ValueError):
            pass  # a damaged file is recomputed and replaced
    if progress:
        stderr.print(f"teacher outputs: computing for {len(features)} texts (cached for later runs in {cache_dir})")
    outputs = _teacher_forward(teacher, features, collate, batch_size, hidden_layers, attention_layers)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: concurrent writers never share a file
        save_file(outputs, str(tmp), metadata={"format": CACHE_FORMAT, "texts": str(len(texts))})
        tmp.replace(path)
    except OSError as e:  # a read-only teacher directory: the run goes on, the next one recomputes
        stderr.print(f"warning: could not write the teacher cache {path} ({e.strerror}): pass cache_dir to keep it elsewhere")
    return outputs, False, key


def _teacher_forward(teacher, features: list[dict], collate, batch_size: int, hidden_layers: list[int], attention_layers: list[int]) -> dict[str, np.ndarray]:
    """Run the teacher over `features`, batched by length. Returns, with n texts of lengths l_i:

        logits            (n, classes) float32
        lengths           (n,) int64
        hidden.{t}        (Σ l_i, width) float16: layer t's hidden states (0 = embeddings), texts concatenated
        attention.{t}     (Σ heads·l_i²,) float16: layer t's attention maps (heads, l_i, l_i), flattened
    """
    import torch

    lengths = np.array([len(f["input_ids"]) for f in features], dtype=np.int64)
    token_at = np.concatenate([[0], np.cumsum(lengths)])  # text i's rows in hidden.{t}
    heads = {t: _heads(teacher.config, t) for t in attention_layers}
    map_at = {t: np.concatenate([[0], np.cumsum(heads[t] * lengths**2)]) for t in attention_layers}
    n_classes = teacher.config.num_labels
    outputs = {"logits": np.empty((len(features), n_classes), dtype=np.float32), "lengths": lengths}
    for t in hidden_layers:
        outputs[f"hidden.{t}"] = np.empty((int(token_at[-1]), teacher.config.hidden_size), dtype=np.float16)
    for t in attention_layers:
        outputs[f"attention.{t}"] = np.empty(int(map_at[t][-1]), dtype=np.float16)
    teacher.eval()
    with torch.inference_mode():
        for idx in sorted_order(lengths, batch_size):
            batch = collate([features[i] for i in idx])
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            result = teacher(**inputs, output_hidden_states=bool(hidden_layers), output_attentions=bool(attention_layers))
            outputs["logits"][idx] = result.logits.float().numpy()
            for row, i in enumerate(idx):
                n = lengths[i]
                for t in hidden_layers:
                    outputs[f"hidden.{t}"][token_at[i] : token_at[i + 1]] = result.hidden_states[t][row, :n].numpy()
                for t in attention_layers:
                    outputs[f"attention.{t}"][map_at[t][i] : map_at[t][i + 1]] = result.attentions[t - 1][row, :, :n, :n].reshape(-1).numpy()
    return outputs


def _with_teacher_outputs(features: list[dict], outputs: dict, hidden_layers: list[int], attention_layers: list[int], config: Any) -> list[dict]:
    """Each feature plus its teacher logits (classes,) and, when cached, hidden states [(l, width)] and attention
    maps [(heads, l, l)] per mapped teacher layer: views into the cached arrays, not copies."""
    lengths = outputs["lengths"]
    token_at = np.concatenate([[0], np.cumsum(lengths)])
    map_at = {t: np.concatenate([[0], np.cumsum(_heads(config, t) * lengths**2)]) for t in attention_layers}
    rows = []
    for i, f in enumerate(features):
        n = int(lengths[i])
        row = {**f, "teacher_logits": outputs["logits"][i]}
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


def collate_with_teacher(features: list[dict], collate: Callable[[list[dict]], dict]) -> dict:
    """The task's batch plus the teacher's outputs: logits (batch, classes), and when cached, per mapped layer,
    hidden states (batch, seq, width) and attention maps (batch, heads, seq, seq), zero-padded like the batch."""
    import torch

    batch = collate(features)
    batch["teacher_logits"] = torch.from_numpy(np.stack([f["teacher_logits"] for f in features]))
    seq = batch["input_ids"].shape[1]
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


def _loss(model, batch: dict, weights: LossConfig, hidden_pairs: list[tuple[int, int]], attention_pairs: list[tuple[int, int]]):
    """The weighted sum of the losses (module docstring); each transfer term is averaged over its layer pairs."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    out = model.student(**inputs, output_hidden_states=bool(hidden_pairs), output_attentions=bool(attention_pairs))
    logits, mask = out.logits, batch["attention_mask"]  # (batch, classes), (batch, seq)
    terms = []  # at least one: validate() and _layer_pairs refuse settings that leave none
    if weights.kd > 0:
        terms.append(weights.kd * losses.kd_loss(logits, batch["teacher_logits"], weights.temperature))
    if weights.ce > 0:
        terms.append(weights.ce * losses.ce_loss(logits, batch["labels"]))
    if weights.mse > 0:
        terms.append(weights.mse * losses.logit_mse(logits, batch["teacher_logits"]))
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
