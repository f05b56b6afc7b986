"""Model work of the labeling app, off the request path: pre-labels, retraining and label-error detection.

Each job runs in a daemon thread with its own database session and writes its outcome to the project row
(`model_status`: idle | training | failed, `model_message`), which `GET .../model` reads; annotators' requests never
wait for it. Retraining calls slmkit's own `slmkit.train.train` on the project's resolved labels (gold, else the
annotators' majority), written as the CSV `slm train` reads (`io.export(..., "train")`).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from slmkit.errors import UserError
from slmkit.label import db, io
from slmkit.label.db import Item, LabelError, Project


class Jobs:
    def __init__(self, sessions: sessionmaker[Session], model_root: Path, train_settings: dict[str, Any]):
        self.sessions = sessions
        self.model_root = model_root
        self.train_settings = train_settings  # dotted TrainConfig overrides for retraining
        self.lock = threading.Lock()
        self.threads: dict[tuple[int, str], threading.Thread] = {}
        self.label_error_status: dict[int, str] = {}
        self.embeddings: dict[int, dict[int, Any]] = {}  # project -> item id -> embedding, for active learning's diversity
        self.rankings: dict[tuple, list[int]] = {}  # (project, user, model, strategy) -> item ids in active-learning order

    # -------------------------------------------------------------------------------- bookkeeping

    def _start(self, pid: int, kind: str, target) -> bool:
        """Run target(pid) in a thread unless the same job of the project is running; whether it started."""
        with self.lock:
            running = self.threads.get((pid, kind))
            if running is not None and running.is_alive():
                return False
            thread = threading.Thread(target=target, args=(pid,), name=f"slm-label-{kind}-{pid}", daemon=True)
            self.threads[(pid, kind)] = thread
            thread.start()
            return True

    def busy(self, pid: int) -> bool:
        return any(t.is_alive() for (p, _), t in list(self.threads.items()) if p == pid)

    def wait(self, timeout: float = 120.0) -> None:
        """Join every running job (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # a job may start another (retraining starts label-error detection)
            alive = [t for t in list(self.threads.values()) if t.is_alive()]
            if not alive:
                return
            alive[0].join(max(0.0, deadline - time.monotonic()))

    def _set_status(self, pid: int, status: str, message: str, **fields) -> None:
        with self.sessions() as s:
            project = s.get(Project, pid)
            project.model_status, project.model_message = status, message[:2000]
            for key, value in fields.items():
                setattr(project, key, value)
            s.commit()

    # -------------------------------------------------------------------------------- the model and its pre-labels

    def check_model(self, project: Project, model_dir: str) -> None:
        from slmkit import artifacts

        directory = Path(model_dir)
        if not (directory / artifacts.HF_CONFIG).is_file():
            raise UserError(f"model_dir {model_dir}: not a trained model directory (no config.json): give the --out directory of slm train")
        unknown = [x for x in artifacts.model_labels(directory) if x not in project.labels]
        if unknown:
            raise UserError(f"model_dir {model_dir}: the model predicts {unknown[0]!r}, not a label of this project: attach a model trained on these labels")

    def start_prelabel(self, pid: int) -> bool:
        return self._start(pid, "prelabel", self._prelabel_job)

    def _prelabel_job(self, pid: int) -> None:
        try:
            n = self._prelabel(pid)
            self._set_status(pid, "idle", f"pre-labeled {n} items")
        except Exception as e:  # reported in GET model, never raised into a request
            self._set_status(pid, "failed", f"pre-labeling failed: {_one_line(e)}")

    def _prelabel(self, pid: int) -> int:
        """Store the attached model's prediction, confidence and probabilities for every item; the number of items."""
        from slmkit.label import features

        with self.sessions() as s:
            project = s.get(Project, pid)
            items = db.project_items(s, pid)
            if not items or not project.model_dir:
                return 0
            texts = [i.text for i in items]
            probs, names = features.model_probs(texts, project.model_dir)
            for item, row in zip(items, probs):
                best = int(row.argmax())
                item.prediction = names[best] if names[best] in project.labels else None
                item.confidence = float(row[best])
                item.probs = [float(p) for p in row]
            s.commit()
            model_dir = project.model_dir
        try:
            vectors = features.embed_texts(texts, model_dir)
            self.embeddings[pid] = {item.id: vec for item, vec in zip(items, vectors)}
        except Exception:  # diversity is optional: ranking falls back to uncertainty alone
            self.embeddings.pop(pid, None)
        return len(items)

    def most_informative(self, project: Project, user_id: int, items: list[Item], strategy: str) -> Item | None:
        """The next item in active-learning order: the user's unannotated items ranked once per model by
        `active.rank_for_labeling` (uncertainty with a diversity term over embeddings, so near-duplicates do not
        come one after another); None when the model has not scored these items yet."""
        import numpy as np

        from slmkit.label import active

        scored = [i for i in items if i.probs]
        if not scored:
            return None
        key = (project.id, user_id, project.model_dir, strategy)
        order = self.rankings.get(key)
        if order is None or not {i.id for i in scored} <= set(order):
            cached = self.embeddings.get(project.id, {})
            embeddings = np.stack([cached[i.id] for i in scored]) if cached and all(i.id in cached for i in scored) else None
            ranks = active.rank_for_labeling(np.array([i.probs for i in scored]), embeddings=embeddings, strategy=strategy)
            order = [scored[r].id for r in ranks]
            self.rankings[key] = order
        by_id = {i.id: i for i in scored}
        return next(by_id[iid] for iid in order if iid in by_id)

    # -------------------------------------------------------------------------------- retraining

    def labels_added(self, pid: int) -> None:
        """Called after a save: retrain in the background once `retrain_every` new labels have come in."""
        with self.sessions() as s:
            project = s.get(Project, pid)
        k = project.retrain_every
        if k and project.kind == "single" and project.labels_since_train >= k and project.model_status != "training":
            self.start_retrain(project.id)

    def start_retrain(self, pid: int) -> str:
        with self.lock:
            running = self.threads.get((pid, "retrain"))
            if running is not None and running.is_alive():
                return "training"
        self._set_status(pid, "training", "retraining started")
        self._start(pid, "retrain", self._retrain_job)
        return "training"

    def _retrain_job(self, pid: int) -> None:
        try:
            out, n_labels, n_since, accuracy = self._retrain(pid)
            with self.sessions() as s:
                since_now = s.get(Project, pid).labels_since_train
            self._set_status(pid, "training", "pre-labeling with the new model", model_dir=str(out), labels_since_train=max(0, since_now - n_since))
            self._prelabel(pid)
            shown = "" if accuracy is None else f", eval accuracy {accuracy:.3f}"
            self._set_status(pid, "idle", f"retrained on {n_labels} labels{shown}: {out}")
            self.start_label_errors(pid)  # the new model's encoder re-checks the labels it was trained on
        except Exception as e:
            self._set_status(pid, "failed", f"retraining failed: {_one_line(e)}")

    def _retrain(self, pid: int) -> tuple[Path, int, int, float | None]:
        """Train a model on the project's resolved labels with `slmkit.train.train`; (output dir, labels, counter used, accuracy)."""
        from slmkit.config import TrainConfig, load_config
        from slmkit.train import train

        with self.sessions() as s:
            project = s.get(Project, pid)
            n_since = project.labels_since_train
            body, _, _ = io.export("train", project.kind, project.labels, export_records(s, project))
            base = self.train_settings.get("model.base") or _base_of(project.model_dir)
        n_labels = body.count(b"\n") - 1  # rows after the header (texts with newlines are quoted: an estimate for the message)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        work = self.model_root / f"project-{pid}"
        work.mkdir(parents=True, exist_ok=True)
        data = work / f"labels-{stamp}.csv"
        data.write_bytes(body)
        flags = {**self.train_settings, "out": str(work / f"model-{stamp}"), "data.train": str(data), "model.base": base}
        result = train(load_config(TrainConfig, None, None, **flags), overwrite=True, progress=False)
        accuracy = result.metrics.get("eval", {}).get("accuracy")
        return result.out, n_labels, n_since, accuracy

    # -------------------------------------------------------------------------------- label errors

    def start_label_errors(self, pid: int) -> str:
        if self._start(pid, "label_errors", self._label_errors_job):
            self.label_error_status[pid] = "running"
        return self.label_error_status.get(pid, "running")

    def _label_errors_job(self, pid: int) -> None:
        from slmkit.label import label_errors

        try:
            with self.sessions() as s:
                project = s.get(Project, pid)
                records = [r for r in export_records(s, project) if r["resolved"] is not None]
                model_dir = project.model_dir
            if len({r["resolved"] for r in records}) < 2:
                raise UserError("label-error detection needs labeled items of at least two labels")
            found = label_errors.find_label_errors([r["text"] for r in records], [r["resolved"] for r in records], model_dir=model_dir)
            with self.sessions() as s:
                s.execute(delete(LabelError).where(LabelError.project_id == pid))
                for f in found:
                    r = records[int(f["index"])]
                    s.add(LabelError(project_id=pid, item_id=r["id"], given=str(f["given"]), suggested=str(f["suggested"]), score=float(f["score"])))
                s.commit()
            self.label_error_status[pid] = f"done: {len(found)} suspected errors in {len(records)} labeled items"
        except Exception as e:
            self.label_error_status[pid] = f"failed: {_one_line(e)}"


def export_records(s: Session, project: Project) -> list[dict]:
    """Every item of the project with its annotations (annotator, value, seconds), gold and resolved label."""
    from slmkit.label.db import Annotation, User

    golds = db.golds_of(s, project.id)
    by_item: dict[int, list[dict]] = {}
    rows = s.execute(
        select(Annotation, User.username).join(User, User.id == Annotation.user_id)
        .where(Annotation.project_id == project.id, Annotation.skipped.is_(False)).order_by(Annotation.item_id, User.username)
    )
    for a, name in rows:
        by_item.setdefault(a.item_id, []).append({"annotator": name, "value": a.value, "seconds": round(a.seconds, 3)})
    records = []
    for i in db.project_items(s, project.id):
        notes = by_item.get(i.id, [])
        gold = golds.get(i.id, (None, 0))[0]
        records.append({"id": i.id, "text": i.text, "meta": i.meta, "gold": gold, "prediction": i.prediction, "confidence": i.confidence,
                        "annotations": notes, "resolved": io.resolved(gold, [a["value"] for a in notes])})
    return records


def _base_of(model_dir: str | None) -> str:
    """The base model an attached slmkit model was trained from (its config.yaml), else the default."""
    from slmkit.base import DEFAULT_BASE

    if model_dir:
        try:
            import yaml

            saved = yaml.safe_load((Path(model_dir) / "config.yaml").read_text(encoding="utf-8"))
            return saved["model"]["base"]
        except (OSError, KeyError, TypeError, ValueError):
            pass
    return DEFAULT_BASE


def _one_line(e: Exception) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split()) if not isinstance(e, UserError) else " ".join(str(e).split())
