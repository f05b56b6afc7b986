"""The task seam: what differs between tasks, behind one small interface.

A task supplies the model head (`build_model`), turns examples into features (`encode`) and features into
padded tensors (`collate`), defines the training loss (`loss`), turns model outputs into predictions
(`decode`) and scores them (`metrics`). The stages (train, evaluate, predict, and later distill, export,
bench) are written once against this interface; token classification, QA and generation plug in here.
"""

from __future__ import annotations

from slmkit.errors import UserError
from slmkit.tasks.classification import ClassificationTask

TASKS = {"classification": ClassificationTask}


def get_task(name: str) -> ClassificationTask:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}: valid tasks are {', '.join(TASKS)}")
    return TASKS[name]()
