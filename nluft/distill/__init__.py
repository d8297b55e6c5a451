"""Knowledge distillation as a loss around any task: the task still encodes, decodes and scores.

The training loop takes its loss from `run.loss_fn(outputs, inputs, labels, indices)`: the task's
own loss (`TaskLoss`), or `DistillLoss` when `distill.teacher` names a finished run:

    alpha * task loss + (1 - alpha) * T^2 * KL(teacher at T || student at T)
                      [+ hidden_weight * MSE(student layer i, teacher layer layer_map[i])]

Soft targets come from a per-feature cache on disk (computed once by rank 0, reused by later
student runs and resumes) or from the teacher run online on every rank; either way the teacher is
a plain frozen module beside the strategy's model, so ddp, ZeRO and FSDP are all the same here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from nluft.config import Config
from nluft.data import TaskData
from nluft.distill.loss import hidden_mse, soft_target_kl
from nluft.distill.student import (
    build_student_dir,
    check_same_tokenizer,
    check_teacher_labels,
    kept_layers,
    load_teacher,
    teacher_export_dir,
    teacher_num_layers,
)
from nluft.distill.teacher import TeacherSource, cached_teacher_logits
from nluft.errors import NluftError
from nluft.evaluate import head_output
from nluft.tasks import Task


class LossFn(Protocol):
    """What the loop minimises for one micro-batch; `forward_kwargs` go to the model call."""

    forward_kwargs: dict[str, Any]

    def __call__(
        self,
        outputs: Any,
        inputs: dict[str, torch.Tensor],
        labels: torch.Tensor,
        indices: Sequence[int],
    ) -> torch.Tensor: ...


class TaskLoss:
    """The task's own loss (no teacher)."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.forward_kwargs: dict[str, Any] = {}

    def __call__(
        self,
        outputs: Any,
        inputs: dict[str, torch.Tensor],
        labels: torch.Tensor,
        indices: Sequence[int],
    ) -> torch.Tensor:
        return self.task.loss(head_output(outputs, inputs["attention_mask"]), labels)


def head_kind(task: Task) -> str:
    if task.model_kind == "token_classification":
        return "token"
    if task.model_kind == "question_answering":
        return "span"
    return "multi_label" if getattr(task, "multi_label", False) else "single"


class DistillLoss:
    """Task loss on gold labels blended with the teacher's soft targets (see module doc)."""

    def __init__(
        self, cfg: Config, task: Task, source: TeacherSource, layer_map: list[int] | None
    ) -> None:
        self.task, self.source, self.options = task, source, cfg.distill
        self.kind = head_kind(task)
        self.layer_map = layer_map if self.options.hidden_weight > 0 else None
        self.forward_kwargs = {"output_hidden_states": True} if self.layer_map else {}

    def __call__(
        self,
        outputs: Any,
        inputs: dict[str, torch.Tensor],
        labels: torch.Tensor,
        indices: Sequence[int],
    ) -> torch.Tensor:
        mask = inputs["attention_mask"]
        student = head_output(outputs, mask)
        teacher, teacher_states = self.source(inputs, indices, self.layer_map is not None)
        alpha, temperature = self.options.alpha, self.options.temperature
        loss = alpha * self.task.loss(student, labels) + (1 - alpha) * temperature**2 * (
            soft_target_kl(self.kind, student, teacher, temperature, labels, mask)
        )
        if self.layer_map is not None:
            assert teacher_states is not None
            states = hidden_mse(outputs.hidden_states, teacher_states, self.layer_map, mask)
            loss = loss + self.options.hidden_weight * states
        return loss


def check_distill(cfg: Config, task: Task) -> Config:
    """Refuse a bad distillation setup up front (also on --dry-run), before anything is built.

    A student initialised from the teacher reads text with the teacher's tokenizer; any other
    student must already share it (compared by vocabulary).
    """
    if cfg.distill.teacher is None:
        return cfg
    if cfg.distill.augment.copies and task.name != "classification":
        raise NluftError(
            f"distill.augment: word-level variants keep the gold label of a whole text, so they "
            f"are for classification only (task: {task.name}); set distill.augment.copies=0"
        )
    export = teacher_export_dir(cfg)
    keep = kept_layers(cfg, teacher_num_layers(export))
    if keep is None:
        check_same_tokenizer(cfg, task, export)
        return cfg
    model = cfg.model.model_copy(update={"tokenizer_name_or_path": str(export)})
    return cfg.model_copy(update={"model": model})


def prepare_distill(
    cfg: Config,
    task: Task,
    tokenizer: Any,
    data: TaskData,
    strategy: Any,
) -> tuple[Config, LossFn]:
    """The loss the loop minimises; with a teacher, also the student's checkpoint in the config.

    Call after `check_distill` and `build_data`, before the model is built (its
    `model.name_or_path` becomes the student built from the teacher, when one is asked for).
    """
    if cfg.distill.teacher is None:
        return cfg, TaskLoss(task)
    export = teacher_export_dir(cfg)
    num_layers = teacher_num_layers(export)
    keep = kept_layers(cfg, num_layers)
    env, barrier = strategy.env, strategy.barrier
    if keep is not None:
        if env.is_main:
            build_student_dir(cfg, task, export, keep)
        barrier()
        student_dir = build_student_dir(cfg, task, export, keep)  # exists: only its path
        model = cfg.model.model_copy(update={"name_or_path": str(student_dir)})
        cfg = cfg.model_copy(update={"model": model})
    check_teacher_labels(task, export)
    layer_map = build_layer_map(cfg, keep, num_layers)
    if not cfg.distill.cache:
        return cfg, DistillLoss(
            cfg, task, TeacherSource(None, load_teacher(export, task), strategy.device), layer_map
        )
    cached, hit = cached_teacher_logits(
        export,
        lambda: load_teacher(export, task),
        data.features["train"],
        (cfg.data.cache_dir, data.cache_path.name),
        (cfg.train.per_device_eval_batch_size, int(tokenizer.pad_token_id or 0), strategy.device),
        env.is_main,
        barrier,
    )
    if env.is_main:
        print(f"distill: teacher logits {'reused from' if hit else 'cached at'} {cached.path}")
    return cfg, DistillLoss(cfg, task, TeacherSource(cached, None, strategy.device), layer_map)


def build_layer_map(cfg: Config, keep: list[int] | None, num_layers: int) -> list[int] | None:
    """Teacher hidden-state index (1-based: 0 is the embeddings) for each student layer."""
    if cfg.distill.hidden_weight == 0:
        return None
    if cfg.distill.layer_map is not None:
        if max(cfg.distill.layer_map) > num_layers or min(cfg.distill.layer_map) < 0:
            raise NluftError(
                f"distill.layer_map: {cfg.distill.layer_map} names a layer outside the "
                f"teacher's 1..{num_layers}"
            )
        return list(cfg.distill.layer_map)
    if keep is not None:
        return [i + 1 for i in keep]
    raise NluftError(
        "distill.layer_map: hidden-state matching of a student not built from the teacher needs "
        "distill.layer_map (the teacher layer, 1-based, matched by each student layer)"
    )
