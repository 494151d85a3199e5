"""The explicit table of tasks: task name -> the class that implements it.

A new task is one row here, one task module (a :class:`~nlpseq.tasks.base.Task` subclass with
its ``ModelConfig``) and one model file.
"""

from __future__ import annotations

import importlib

from nlpseq.tasks.base import Task

#: task name -> "module:Class" (imported on first use so the CLI starts fast) or the class
TASKS: dict[str, str | type[Task]] = {
    "sentiment": "nlpseq.tasks.sentiment:SentimentTask",
    "ner": "nlpseq.tasks.ner:NerTask",
    "chargen": "nlpseq.tasks.chargen:ChargenTask",
    "translate": "nlpseq.tasks.translate:TranslateTask",
    "forecast": "nlpseq.tasks.forecast:ForecastTask",
}


def task_class(name: str) -> type[Task]:
    """The :class:`Task` subclass registered for ``name``."""
    if name not in TASKS:
        raise KeyError(f"task {name!r} is not implemented (available: {', '.join(TASKS)})")
    entry = TASKS[name]
    if not isinstance(entry, str):
        return entry
    module, _, cls = entry.partition(":")
    return getattr(importlib.import_module(module), cls)
