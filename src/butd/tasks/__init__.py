"""The task layer: where extraction, the store and the models meet for one task.

``TASKS`` maps a task name to its module. Every task module exposes the same functions:

* ``train(model, options, out, *, resume, echo)`` -> summary (options: the task's data paths and overrides)
* ``load_run(run, device)`` -> the run's model and what it needs
* ``evaluate(run, split, *, device, echo, **data overrides)`` -> metrics (also written into the run)
* ``predict(run, images / question, *, device, ...)`` -> outputs for new images (extractor, then model)
* ``report_items(run, split, n, images_root, **data overrides)`` -> items for the HTML report
* ``featurize(record, ...)`` -> model input; the same function the task's Dataset uses

``butd train --model M`` finds the task from the model registry (``butd.models.registry.MODELS``).
"""

from __future__ import annotations

from types import ModuleType

from butd.registry import Entry, Registry

__all__ = ["TASKS", "task_module"]

TASKS = Registry("task", {
    "caption": Entry(None, "butd.tasks.caption", "image captioning on Karpathy splits (COCO metrics)"),
    "vqa": Entry(None, "butd.tasks.vqa", "VQA v2 with soft scores (official accuracy)"),
})


def task_module(name: str) -> ModuleType:
    """The module implementing task ``name`` (imported on first use)."""
    return TASKS.builder(name)
