"""The students of `slm distill`: parse a `--student` spec and build the untrained student from the teacher.

    drop:layers=0,2,4 | drop:every=2          the teacher's width and some of its layers, copied (DistilBERT)
    transformer:layers=4,hidden=312[,heads=12][,ffn=1200]   a small BERT (TinyBERT-4 / BERT-tiny shapes)
    bilstm[:hidden=300][,embed=128][,layers=1]              a BiLSTM classifier (Tang et al. 2019)
    cnn[:filters=256][,embed=128][,widths=2-3-4]            a CNN classifier (Kim 2014)
    lm:layers=2,hidden=128[,heads=2][,kv_heads][,ffn][,context]  a small Llama-style decoder (`slm run --task lm`)

The head is the teacher's task's: a text classifier, a per-token tagger (NER: `BertForTokenClassification`,
`BiLSTMForTokenClassification`) or a span head (QA: `BertForQuestionAnswering`). `TASK_KINDS` lists the kinds each
task takes: a CNN pools a text into one vector (no per-token states worth tagging), and the BiLSTM and CNN do not
read a question-context pair, so QA takes the transformer kinds only.

(bilstm: `hidden` LSTM units per direction, then a ReLU layer of `hidden` units; cnn: `filters` per width, in
word pieces. `embed` defaults to 128, ALBERT's factorized-embedding width: with a 30k vocabulary the embedding is
already 3.9M of a BiLSTM student's parameters, and vocabulary trimming shrinks it further.)

Every student reads the teacher's tokenizer unchanged, so its embedding matrix has the teacher's (possibly
trimmed) vocabulary. None starts from random word embeddings:

- `drop` copies the embeddings, the kept layers, the pooler and the classifier. `every=k` keeps every k-th layer
  counted down from the top (12 layers, every=2: 1,3,5,7,9,11), so the top layer, whose output the copied pooler
  and classifier were trained on, is always kept.
- `transformer`, `bilstm` and `cnn` start from a PCA projection of the teacher's word-embedding matrix W
  (vocab, H): with μ the mean row and the SVD W - μ = U S Vᵀ, the top d right-singular vectors P (H, d) are the
  directions along which the teacher's words differ most, and row i of the student's matrix is (W_i - μ) P · α.
  Dot products (and so similarities) are those of the teacher's vectors restricted to the kept directions; a
  per-dimension rescaling (whitening) would inflate the minor directions and distort them, so the one scalar α
  only sets the overall size. A transformer student's per-dimension RMS is the teacher's (its LayerNorm follows,
  and the optimizer's steps then have the size relative to the weights that they had for the teacher); its
  position and token-type embeddings go through the same P and α, so the sum it feeds its LayerNorm is the
  projection of the teacher's sum. A BiLSTM or CNN has no LayerNorm after its embedding, so the scale sets its
  first pre-activations: its vectors get unit per-dimension RMS, the scale of torch's default embedding init
  (on the tiny test task, of 6 short BiLSTM runs 3 reached 90% accuracy at the teacher's 0.04 RMS, 5 at unit RMS).
  A student wider than the teacher (d > H) keeps all H directions and starts the remaining dimensions at zero.

Transformer students (drop and transformer) are built with eager attention: transformers' sdpa attention returns
no attention maps, which attention transfer needs. Saved and loaded again they get transformers' default (sdpa);
`model.set_attn_implementation("sdpa")` switches a built one. The teacher needs eager attention for the same reason.

Heads default to hidden // 64 (at least 1), lowered to a divisor of hidden; ffn defaults to 4 * hidden. The BiLSTM
and CNN classes live in `slmkit.student_models`. `parse_student` raises one-line `UserError`s that name the fix.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from slmkit.errors import UserError

EXAMPLE = "transformer:layers=2,hidden=128"
# per kind: its keys, which of them are lists (`-` separated, or commas), and an example for error messages
KINDS: dict[str, dict[str, Any]] = {
    "drop": {"keys": ("layers", "every"), "lists": ("layers",), "example": "drop:every=2 or drop:layers=0,2,4"},
    "transformer": {"keys": ("layers", "hidden", "heads", "ffn"), "lists": (), "example": "transformer:layers=4,hidden=312,heads=12,ffn=1200"},
    "bilstm": {"keys": ("hidden", "embed", "layers"), "lists": (), "example": "bilstm:hidden=300,embed=128"},
    "cnn": {"keys": ("filters", "embed", "widths"), "lists": ("widths",), "example": "cnn:filters=256,widths=2-3-4"},
    "lm": {"keys": ("layers", "hidden", "heads", "kv_heads", "ffn", "context"), "lists": (), "example": "lm:layers=2,hidden=128,heads=2,ffn=512"},
}
MINIMUM = {"hidden": 8, "embed": 8}  # the least value of these keys; of the others 1 (drop layer indices: 0)
HEAD_WIDTH = 64  # default heads = hidden // HEAD_WIDTH (BERT's head size)
BILSTM_DEFAULTS = {"hidden": 300, "embed": 128, "layers": 1}
CNN_DEFAULTS = {"filters": 256, "embed": 128, "widths": [2, 3, 4]}
LSTM_CNN_EMBEDDING_RMS = 1.0  # BiLSTM / CNN students' per-dimension embedding RMS (see the module docstring)
BERT_TYPES = ("bert", "slm_pruned_bert")  # teachers whose position / token-type embeddings are projected too


# ------------------------------------------------------------------------------------------ the spec


def parse_student(spec: str) -> tuple[str, dict]:
    """`"transformer:layers=2,hidden=128"` -> `("transformer", {"layers": 2, "hidden": 128})`: the kind and the
    keys given (defaults are filled in by `build_student`). List values (`drop` layers, `cnn` widths) are lists
    of ints, written `0-2-4` or `0,2,4`."""
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip()
    if kind not in KINDS:
        raise UserError(f"--student {spec}: unknown kind {kind!r}: use one of {', '.join(KINDS)}, e.g. {EXAMPLE}")
    schema = KINDS[kind]
    fix = f"e.g. {schema['example']}"
    params: dict[str, Any] = {}
    key = None
    for part in (p.strip() for p in rest.split(",")):
        if not part:
            continue
        if "=" not in part:  # a comma-separated list continues: drop:layers=0,2,4
            if key not in schema["lists"]:
                raise UserError(f"--student {spec}: bad part {part!r}: write key=value, {fix}")
            params[key] += _ints(spec, key, part, fix)
            continue
        key, _, value = (s.strip() for s in part.partition("="))
        if key not in schema["keys"]:
            raise UserError(f"--student {spec}: {kind} takes {', '.join(schema['keys'])}, not {key!r}: {fix}")
        if key in params:
            raise UserError(f"--student {spec}: {key} is given twice: give it once, {fix}")
        params[key] = _ints(spec, key, value, fix) if key in schema["lists"] else _ints(spec, key, value, fix, single=True)
    _check(spec, kind, params, fix)
    return kind, params


def _ints(spec: str, key: str, text: str, fix: str, single: bool = False) -> Any:
    parts = [text] if single else text.split("-")
    if not all(p.strip().isdigit() for p in parts):
        what = "an integer" if single else "integers (0-2-4 or 0,2,4)"
        raise UserError(f"--student {spec}: {key} must be {what} (got {text!r}): {fix}")
    values = [int(p) for p in parts]
    return values[0] if single else values


def _check(spec: str, kind: str, params: dict, fix: str) -> None:
    for key, value in params.items():
        least = 0 if (kind, key) == ("drop", "layers") else MINIMUM.get(key, 1)
        if min(value if isinstance(value, list) else [value]) < least:
            raise UserError(f"--student {spec}: {key} must be at least {least}: {fix}")
    if kind == "drop":
        if len(params) != 1:
            raise UserError(f"--student {spec}: drop takes either layers=... (teacher layer indices) or every=k: {fix}")
        layers = params.get("layers")
        if layers is not None and layers != sorted(set(layers)):
            raise UserError(f"--student {spec}: drop layers must be distinct and increasing (teacher order): {fix}")
    if kind in ("transformer", "lm"):
        missing = [k for k in ("layers", "hidden") if k not in params]
        if missing:
            raise UserError(f"--student {spec}: missing {', '.join(missing)}: {fix}")
        hidden, heads = params["hidden"], params.get("heads")
        if heads is not None and hidden % heads:
            near = max(heads, round(hidden / heads) * heads)
            raise UserError(
                f"--student {spec}: student hidden {hidden} is not divisible by heads {heads}: "
                f"use hidden={near} or heads={_default_heads(hidden)}"
            )
    if kind == "lm":
        heads, kv = params.get("heads", _default_heads(params["hidden"])), params.get("kv_heads")
        if kv is not None and heads % kv:
            raise UserError(f"--student {spec}: heads ({heads}) must be a multiple of kv_heads ({kv}): {fix}")
        if not 8 <= params.get("context", 8) <= 4096:
            raise UserError(f"--student {spec}: context must be in [8, 4096] tokens: {fix}")


def lm_shape(params: dict, context: int) -> str:
    """An `lm` student's `--shape` (slm train --task lm's): heads default to hidden // 64, ffn to 4 x hidden and
    the context to `context` (the teacher's)."""
    hidden = params["hidden"]
    shape = {"layers": params["layers"], "hidden": hidden, "heads": params.get("heads", _default_heads(hidden)), "ffn": params.get("ffn", 4 * hidden),
             "context": params.get("context", context)}
    if "kv_heads" in params:
        shape["kv_heads"] = params["kv_heads"]
    return ",".join(f"{k}={v}" for k, v in shape.items())


def _default_heads(hidden: int) -> int:
    """hidden // 64 heads (at least 1), lowered until it divides hidden."""
    heads = max(1, hidden // HEAD_WIDTH)
    while hidden % heads:
        heads -= 1
    return heads


def kept_layers(params: dict, n_layers: int) -> list[int]:
    """The teacher layers (0-based) a `drop` student keeps, in order: its layer i is the teacher's kept[i]."""
    if "layers" in params:
        return list(params["layers"])
    every = params["every"]
    return list(range(n_layers - 1, -1, -every))[::-1]  # counted down from the top: the top layer is kept


# ------------------------------------------------------------------------------------------ building


# the student kinds each task can take, and the transformers head class of the transformer kinds
TASK_KINDS = {"classification": ("drop", "transformer", "bilstm", "cnn"), "ner": ("drop", "transformer", "bilstm"), "qa": ("drop", "transformer"), "lm": ("lm",)}
BERT_HEADS = {"classification": "BertForSequenceClassification", "ner": "BertForTokenClassification", "qa": "BertForQuestionAnswering"}


def check_task(spec: str, kind: str, task: str) -> None:
    """Refuse a student kind that has no head for `task` (a CNN pools the text away; QA needs a span head over
    a question-context pair, which the BiLSTM and CNN do not read), naming the kinds that work."""
    kinds = TASK_KINDS[task]
    if kind not in kinds:
        example = EXAMPLE if EXAMPLE.split(":")[0] in kinds else KINDS[kinds[0]]["example"]
        raise UserError(f"--student {spec}: a {kind} student cannot do {task}: use one of {', '.join(kinds)}, e.g. {example}")


def build_student(spec: str, teacher: Any, labels: list[str], task: str = "classification") -> Any:
    """An untrained student for `teacher` (a transformers classifier, token classifier or span model: `task`)
    over `labels`, initialized from the teacher as the module docstring says. Validates `spec` (UserError)
    before building anything."""
    import torch

    kind, params = parse_student(spec)
    check_task(spec, kind, task)
    teacher_labels = [teacher.config.id2label[i] for i in range(len(teacher.config.id2label))]
    if teacher_labels != list(labels):
        raise UserError(f"student labels {labels} differ from the teacher's {teacher_labels}: distill with the teacher's labels, in its order")
    with torch.no_grad():
        student = _skeleton(spec, kind, params, teacher.config, teacher.get_input_embeddings().num_embeddings, labels, task)
        return INITIALIZERS[kind](student, teacher, params).eval()


def parameters_besides_words(spec: str, teacher_config: Any, task: str = "classification") -> int:
    """How many parameters the student `spec` of a teacher configured as `teacher_config` has besides its
    word-embedding rows: the least it keeps whatever vocabulary trimming leaves, and with any number of labels
    (counted with two). Built on the meta device: no memory, no initialization, milliseconds."""
    import torch

    kind, params = parse_student(spec)
    check_task(spec, kind, task)
    with torch.device("meta"):
        student = _skeleton(spec, kind, params, teacher_config, teacher_config.vocab_size, ["0", "1"], task)
    return sum(p.numel() for p in student.parameters()) - student.get_input_embeddings().weight.numel()


def _skeleton(spec: str, kind: str, params: dict, t: Any, vocab_size: int, labels: list[str], task: str) -> Any:
    """The student's model as its constructor makes it (random weights) for a teacher configured as `t`, with a
    `vocab_size`-row word embedding; the `INITIALIZERS` then fill it from the teacher."""
    from transformers import BertConfig

    if kind == "drop":
        if t.model_type == "slm_pruned_bert":
            raise UserError(
                f"--student {spec}: the teacher is a pruned model, whose layers differ in shape: "
                "distill from the unpruned teacher (the slm train output)"
            )
        if t.model_type != "bert":
            raise UserError(f"--student {spec}: drop copies BERT layers and the teacher is {t.model_type!r}: use a transformer, bilstm or cnn student")
        kept = kept_layers(params, t.num_hidden_layers)
        if kept[-1] >= t.num_hidden_layers:
            raise UserError(f"--student {spec}: the teacher has {t.num_hidden_layers} layers (0-{t.num_hidden_layers - 1}): keep only layers in that range, e.g. drop:every=2")
        config = copy.deepcopy(t)
        config.num_hidden_layers, config.vocab_size = len(kept), vocab_size
        config.update(_label_maps(labels))
        return _bert_head(task)(config)  # the teacher's head class: every non-layer weight has the same name
    if kind == "transformer":
        hidden = params["hidden"]
        bert_teacher = t.model_type in BERT_TYPES
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=params["layers"],
            num_attention_heads=params.get("heads", _default_heads(hidden)),
            intermediate_size=params.get("ffn", 4 * hidden),
            max_position_embeddings=t.max_position_embeddings if bert_teacher else 512,
            type_vocab_size=t.type_vocab_size if bert_teacher else 2,
            pad_token_id=t.pad_token_id,
            hidden_act=getattr(t, "hidden_act", "gelu"),
            hidden_dropout_prob=getattr(t, "hidden_dropout_prob", 0.1),
            attention_probs_dropout_prob=getattr(t, "attention_probs_dropout_prob", 0.1),
            layer_norm_eps=getattr(t, "layer_norm_eps", 1e-12),
            attn_implementation="eager",  # sdpa returns no attention maps (see the module docstring)
            **_label_maps(labels),
        )
        return _bert_head(task)(config)
    from slmkit.student_models import BiLSTMConfig, BiLSTMForSequenceClassification, BiLSTMForTokenClassification, CNNConfig, CNNForSequenceClassification

    if kind == "bilstm":
        p = {**BILSTM_DEFAULTS, **params}
        config = BiLSTMConfig(vocab_size=vocab_size, embed_size=p["embed"], hidden_size=p["hidden"], lstm_layers=p["layers"],
                              pad_token_id=t.pad_token_id, **_label_maps(labels))
        return (BiLSTMForTokenClassification if task == "ner" else BiLSTMForSequenceClassification)(config)
    p = {**CNN_DEFAULTS, **params}
    config = CNNConfig(vocab_size=vocab_size, embed_size=p["embed"], hidden_size=p["filters"], widths=list(p["widths"]),
                       pad_token_id=t.pad_token_id, **_label_maps(labels))
    return CNNForSequenceClassification(config)


def _label_maps(labels: list[str]) -> dict:
    return {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}


def _bert_head(task: str) -> Any:
    import transformers

    return getattr(transformers, BERT_HEADS[task])


def _copy_layers(student: Any, teacher: Any, params: dict) -> Any:
    """drop: every weight from the teacher, layer i from the teacher's kept[i]."""
    kept = kept_layers(params, teacher.config.num_hidden_layers)
    prefix = "bert.encoder.layer."
    source = teacher.state_dict()
    weights = {}
    for name in student.state_dict():
        if name.startswith(prefix):  # bert.encoder.layer.{i}.… <- the teacher's layer kept[i]
            index, rest = name[len(prefix):].split(".", 1)
            weights[name] = source[f"{prefix}{kept[int(index)]}.{rest}"]
        else:
            weights[name] = source[name]
    student.load_state_dict(weights, strict=True)
    student.set_attn_implementation("eager")  # sdpa returns no attention maps (see the module docstring)
    return student


def _projected_bert_embeddings(student: Any, teacher: Any, params: dict) -> Any:
    """transformer: the teacher's word embeddings projected on their top principal directions (and its position
    and token-type embeddings through the same map, for a BERT teacher)."""
    import torch

    words = teacher.get_input_embeddings().weight.detach().float().numpy()
    mean, projection = pca_projection(words, student.config.hidden_size)
    embeddings = student.bert.embeddings
    embeddings.word_embeddings.weight.copy_(torch.from_numpy((words - mean) @ projection))
    if teacher.config.model_type in BERT_TYPES:  # the same linear map, without the word mean: the projected sum is the teacher's sum, projected
        source = teacher.base_model.embeddings
        for name in ("position_embeddings", "token_type_embeddings"):
            rows = getattr(source, name).weight.detach().float().numpy()
            getattr(embeddings, name).weight.copy_(torch.from_numpy(rows @ projection))
    return student


def _projected_words(student: Any, teacher: Any, params: dict) -> Any:
    """bilstm, cnn: the teacher's word embeddings projected, at unit per-dimension RMS."""
    import torch

    words = teacher.get_input_embeddings().weight.detach().float().numpy()
    mean, projection = pca_projection(words, student.config.embed_size, rms=LSTM_CNN_EMBEDDING_RMS)
    student.get_input_embeddings().weight.copy_(torch.from_numpy((words - mean) @ projection))
    return student


INITIALIZERS = {"drop": _copy_layers, "transformer": _projected_bert_embeddings, "bilstm": _projected_words, "cnn": _projected_words}


# ------------------------------------------------------------------------------------------ PCA


def pca_projection(words: np.ndarray, dims: int, rms: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The mean row (H,) and the scaled projection (H, dims) that map the teacher's word embeddings `words`
    (vocab, H) to `dims` principal-component coordinates: student row = (row - mean) @ projection.

    The projection is the top right-singular vectors of the centered matrix, times one scalar so that the
    projected rows have per-dimension RMS `rms` (default: the teacher's centered per-dimension RMS); beyond H
    (or the matrix's rank) the columns are zero."""
    words = words.astype(np.float64)
    mean = words.mean(axis=0)
    centered = words - mean  # (vocab, H)
    _, singular, vt = np.linalg.svd(centered, full_matrices=False)  # vt (min(vocab, H), H), rows by variance
    kept = min(dims, len(singular))
    projection = np.zeros((words.shape[1], dims))
    projection[:, :kept] = vt[:kept].T
    # per-dimension RMS: of the teacher over its H dims, of the projection over the student's `dims` dims
    teacher_rms = np.sqrt((singular**2).sum() / (words.shape[0] * words.shape[1]))
    student_rms = np.sqrt((singular[:kept] ** 2).sum() / (words.shape[0] * dims))
    target = teacher_rms if rms is None else rms
    scale = target / student_rms if student_rms > 0 else 1.0
    return mean.astype(np.float32), (projection * scale).astype(np.float32)
