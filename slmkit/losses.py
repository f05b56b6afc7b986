"""Distillation losses: pure torch functions of student and teacher outputs (no models, no state).

Shapes: logits (batch, classes); hidden states (batch, seq, width); attention maps (batch, heads, seq, seq);
`mask` is the attention mask (batch, seq) with 1 on real tokens. Every function returns a scalar tensor.

    kd_loss         KL(softmax(t/T) || softmax(s/T)) · T²        soft targets (Hinton et al. 2015)
    ce_loss         cross-entropy on the rows that have a label  hard targets
    logit_mse       mean (s - t)²                                 logit matching (Tang et al. 2019)
    hidden_loss     mean over real tokens of (W·h_s - h_t)²       hidden-state transfer (TinyBERT)
    attention_loss  mean over real query rows of (A_s - A_t)²     attention transfer (TinyBERT)

`uniform_layer_map` and `parse_layer_map` say which student layer imitates which teacher layer.
"""

from __future__ import annotations

from slmkit.errors import UserError

UNLABELED = -1  # the label of augmented and unlabeled texts: they have soft targets only


def kd_loss(student_logits, teacher_logits, temperature: float):
    """Soft-target loss: KL(p_t || p_s) · T², averaged over the batch rows.

        p_t = softmax(teacher_logits / T),  p_s = softmax(student_logits / T)
        loss = T² / batch · Σ_rows Σ_classes p_t · (log p_t − log p_s)

    T² keeps the soft-target gradients on the scale of the hard-label ones as T grows (Hinton et al. 2015)."""
    import torch.nn.functional as F

    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (batch, classes)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2


def ce_loss(student_logits, labels):
    """Cross-entropy −log p_s[label], averaged over the rows whose label is not `UNLABELED` (−1).

    A batch without labeled rows gives 0 (still connected to the graph, so backward works)."""
    import torch.nn.functional as F

    labeled = labels != UNLABELED  # (batch,)
    if not bool(labeled.any()):
        return student_logits.float().sum() * 0.0
    return F.cross_entropy(student_logits.float()[labeled], labels[labeled])


def logit_mse(student_logits, teacher_logits):
    """Mean squared error between the raw logits: mean over rows and classes of (s − t)²."""
    return (student_logits.float() - teacher_logits.float()).pow(2).mean()


def hidden_loss(student_hidden, teacher_hidden, projection=None, mask=None):
    """Hidden-state transfer: mean over real tokens and teacher width of (projection(h_s) − h_t)².

    `projection` maps the student width to the teacher's (a learned `torch.nn.Linear`, trained with the student
    and discarded after) or is None when the widths are equal. Padded positions (mask 0) do not count."""
    import torch

    student = student_hidden.float()  # (batch, seq, student width)
    if projection is not None:
        student = projection(student).float()  # (batch, seq, teacher width)
    if mask is None:
        mask = torch.ones(student.shape[:2], device=student.device)
    weights = mask.to(student.dtype).unsqueeze(-1)  # (batch, seq, 1)
    squared = (student - teacher_hidden.float()).pow(2) * weights
    return squared.sum() / (weights.sum() * student.shape[-1]).clamp_min(1.0)


def attention_loss(student_attention, teacher_attention, mask=None):
    """Attention transfer: mean over heads, real query rows and keys of (A_s − A_t)² (A: softmax attention maps).

    Needs equal head counts. Rows of padded query positions (mask 0) do not count; padded keys hold 0 in both."""
    import torch

    student, teacher = student_attention.float(), teacher_attention.float()  # (batch, heads, seq, seq)
    if student.shape != teacher.shape:
        raise ValueError(f"attention maps differ in shape: student {tuple(student.shape)}, teacher {tuple(teacher.shape)}")
    if mask is None:
        mask = torch.ones((student.shape[0], student.shape[2]), device=student.device)
    rows = mask.to(student.dtype)[:, None, :, None]  # (batch, 1, seq, 1): real query rows
    squared = (student - teacher).pow(2) * rows
    return squared.sum() / (rows.sum() * student.shape[1] * student.shape[-1]).clamp_min(1.0)


# ------------------------------------------------------------------------------------------ layer maps


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Student layer i (1-based) imitates teacher layer ⌊i · T / S⌋: spread evenly, the last onto the last."""
    return [(i, i * teacher_layers // student_layers) for i in range(1, student_layers + 1)]


def parse_layer_map(pairs: list[str], student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """`["1:2", "2:4"]` → [(1, 2), (2, 4)]; layer 0 is the embedding output (hidden-state transfer only)."""
    parsed = []
    for pair in pairs:
        s, sep, t = pair.partition(":")
        if not sep or not s.strip().isdigit() or not t.strip().isdigit():
            raise UserError(f"setting loss.layer_map: bad pair {pair!r}: use student:teacher layer numbers, e.g. 1:2,2:4")
        s_layer, t_layer = int(s), int(t)
        if s_layer > student_layers or t_layer > teacher_layers:
            raise UserError(
                f"setting loss.layer_map: pair {pair!r} is out of range: the student has {student_layers} layers and the teacher {teacher_layers}"
            )
        parsed.append((s_layer, t_layer))
    if len({s for s, _ in parsed}) != len(parsed):
        raise UserError("setting loss.layer_map: a student layer appears twice: map each student layer once")
    return parsed
