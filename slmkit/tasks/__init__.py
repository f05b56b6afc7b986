"""The task seam: what differs between tasks, behind one small interface.

A task reads its own data format (`read`, `split`, `labels`), supplies the model head (`build_model`,
`auto_class`), turns examples into features (`encode`) and features into padded tensors (`collate`), defines
the training loss (`loss`), runs a model over features (`predict_logits`) and scores the outputs against the
examples (`score`: quick per-epoch metrics, or the full report with intervals). A task whose loss reads only
the head's output and the labels says so (`packs`), and its training batches may be packed (slmkit.packing); one
whose examples must not be batched by length says `buckets = False`. `slmkit.train` is written once
against this interface; classification, token classification (ner), extractive QA and causal language
modelling (lm) plug in here.
"""

from __future__ import annotations

from typing import Any

from slmkit.config import TASK_METRICS
from slmkit.errors import UserError


def task_classes() -> dict[str, type]:
    from slmkit.tasks.classification import ClassificationTask
    from slmkit.tasks.lm import LMTask
    from slmkit.tasks.ner import NERTask
    from slmkit.tasks.qa import QATask

    classes: dict[str, type] = {"classification": ClassificationTask, "ner": NERTask, "qa": QATask, "lm": LMTask}
    return classes


def get_task(name: str, **options: Any) -> Any:
    """The task called `name`; `options` are its settings (ner: scheme, strict; qa: stride)."""
    classes = task_classes()
    if name not in classes:
        raise UserError(f"unknown task {name!r}: valid tasks are {', '.join(TASK_METRICS)}")
    return classes[name](**options)


def task_options(cfg: Any) -> dict:
    """The task settings of a `TrainConfig`, for `get_task(cfg.task, **task_options(cfg))`."""
    if cfg.task == "ner":
        return {"scheme": cfg.data.scheme, "strict": cfg.data.strict}
    if cfg.task == "qa":
        return {"stride": cfg.model.stride}
    if cfg.task == "lm":
        return {"shape": cfg.model.shape, "vocab_size": cfg.model.vocab_size, "base": cfg.model.base, "lora": cfg.model.lora, "merge": cfg.model.merge}
    return {}
