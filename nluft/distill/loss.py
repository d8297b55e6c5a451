"""Distillation losses: soft-target KL per kind of head, and hidden-state matching (pure torch).

Every function returns the KL at temperature T *without* the T^2 factor; `DistillLoss` applies
it (Hinton et al.: gradients of soft targets scale as 1/T^2, so T^2 keeps both terms comparable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softmax_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, mask: torch.Tensor | None
) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) over the last axis, mean over unmasked rows.

    `mask` (the shape of the logits without the class axis) leaves rows out: NER's unscored
    tokens, or QA's padding positions when the class axis is the sequence.
    """
    log_q = F.log_softmax(student.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher.float() / temperature, dim=-1)
    terms = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    if mask is None:
        return terms.mean()
    keep = mask.bool()
    return torch.where(keep, terms, torch.zeros_like(terms)).sum() / keep.sum().clamp(min=1)


def sigmoid_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Binary KL per label, sigmoid(teacher/T) || sigmoid(student/T), mean over labels and rows.

    Equal to BCE with the teacher's soft targets minus the teacher's own entropy: same gradient,
    and zero when the student matches the teacher.
    """
    s, t = student.float() / temperature, teacher.float() / temperature
    p = torch.sigmoid(t)
    # log sigmoid(x) and log(1 - sigmoid(x)) = log sigmoid(-x), stable for large |x|
    terms = p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (
        F.logsigmoid(-t) - F.logsigmoid(-s)
    )
    return terms.mean()


def span_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, attention_mask: torch.Tensor
) -> torch.Tensor:
    """QA: KL of the start and of the end distributions over positions, averaged.

    Logits are (batch, seq, 2); padding positions (attention mask 0) are out of both softmaxes.
    """
    pad = attention_mask[..., None] == 0
    low = torch.finfo(torch.float32).min
    s = student.float().masked_fill(pad, low).transpose(1, 2)  # (batch, 2, seq)
    t = teacher.float().masked_fill(pad, low).transpose(1, 2)
    log_q = F.log_softmax(s / temperature, dim=-1)
    log_p = F.log_softmax(t / temperature, dim=-1)
    valid = ~pad.transpose(1, 2).expand_as(log_p)
    terms = torch.where(valid, log_p.exp() * (log_p - log_q), torch.zeros_like(log_p))
    return terms.sum(dim=-1).mean()


def soft_target_kl(
    kind: str,
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float,
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """The KD term for a task's kind of head: single-label, multi-label, per token, or spans."""
    if kind == "multi_label":
        return sigmoid_kl(student, teacher, temperature)
    if kind == "token":
        return softmax_kl(student, teacher, temperature, labels != -100)
    if kind == "span":
        return span_kl(student, teacher, temperature, attention_mask)
    return softmax_kl(student, teacher, temperature, None)


def hidden_mse(
    student: tuple[torch.Tensor, ...],
    teacher: tuple[torch.Tensor, ...],
    layer_map: list[int],
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Mean squared error between student layer i+1 and teacher layer layer_map[i], real tokens."""
    mask = attention_mask[..., None].float()
    total = torch.zeros((), device=attention_mask.device)
    for i, j in enumerate(layer_map):
        diff = (student[i + 1].float() - teacher[j].float()) ** 2 * mask
        total = total + diff.sum() / (mask.sum() * diff.size(-1)).clamp(min=1)
    return total / max(1, len(layer_map))
