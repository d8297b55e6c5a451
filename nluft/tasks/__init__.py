"""Task registry: the YAML's `task:` value is a key of TASKS."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from nluft.config import Config
from nluft.errors import NluftError
from nluft.tasks.base import MODEL_KINDS, Task
from nluft.tasks.classification import ClassificationTask
from nluft.tasks.ner import NerTask
from nluft.tasks.qa import QATask
from nluft.tasks.relation import RelationTask

TASKS: dict[str, Callable[[Config], Task]] = {
    "classification": ClassificationTask,
    "qa": QATask,
    "relation": RelationTask,
    "ner": NerTask,
}


def build_task(cfg: Config) -> Task:
    """The task named by `cfg.task`, configured from `cfg`."""
    factory = TASKS.get(cfg.task)
    if factory is None:
        close = difflib.get_close_matches(cfg.task, TASKS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise NluftError(f"task: unknown task {cfg.task!r}{hint} (known: {', '.join(TASKS)})")
    return factory(cfg)


__all__ = ["MODEL_KINDS", "TASKS", "Task", "build_task"]
