"""Items in and labels out: import CSV/JSONL, export JSONL, CSV, `slm train`'s CSV, Label Studio JSON and spaCy spans.

A value has one shape per project kind: a label string (`single`), a list of labels (`multi`), or a list of
`{"start", "end", "label"}` character spans, end exclusive (`spans`). `check_value` is the one validator, used by
the importer (errors name file and line) and by the annotation routes (422).

Import columns: `text`, optional `label` (`labels` or `spans` in JSONL; in CSV a multi-label cell separates labels
with `|` and a span cell holds the JSON list), optional `prediction` + `confidence` (a model's pre-label), and in
JSONL an optional `meta` object; other CSV columns go into `meta`. Imported labels become the items' gold labels.

An item's exported label is its gold label, else the majority of its annotations (more than half agree), else none.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from typing import Any

from slmkit.data import json_lines
from slmkit.errors import UserError

FORMATS = ("jsonl", "csv", "train", "labelstudio", "spacy")
MULTI_SEP = "|"
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
VALUE_KEY = {"single": "label", "multi": "labels", "spans": "spans"}


# ------------------------------------------------------------------------------------------ values


def check_value(kind: str, labels: list[str], value: Any, text: str, allow_overlap: bool = False) -> Any:
    """The value, normalized (multi: sorted unique labels; spans: sorted), or ValueError saying what is wrong."""
    known = set(labels)
    if kind == "single":
        if not isinstance(value, str) or value not in known:
            raise ValueError(f"label {value!r} is not one of the project's labels ({_shown(labels)})")
        return value
    if kind == "multi":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("a multi-label value is a list of label strings")
        unknown = [v for v in value if v not in known]
        if unknown:
            raise ValueError(f"label {unknown[0]!r} is not one of the project's labels ({_shown(labels)})")
        return sorted(set(value), key=labels.index)
    if not isinstance(value, list):
        raise ValueError('a span value is a list of {"start": int, "end": int, "label": str}')
    spans = []
    for span in value:
        if not isinstance(span, dict) or not {"start", "end", "label"} <= set(span):
            raise ValueError('each span needs "start", "end" and "label"')
        start, end, label = span["start"], span["end"], span["label"]
        if not (isinstance(start, int) and isinstance(end, int)) or isinstance(start, bool) or isinstance(end, bool):
            raise ValueError(f"span offsets must be integers (got {start!r}, {end!r})")
        if not 0 <= start < end <= len(text):
            raise ValueError(f"span [{start}, {end}) falls outside the text (0 to {len(text)} characters) or is empty")
        if label not in known:
            raise ValueError(f"label {label!r} is not one of the project's labels ({_shown(labels)})")
        spans.append({"start": start, "end": end, "label": label})
    spans.sort(key=lambda sp: (sp["start"], sp["end"], sp["label"]))
    if not allow_overlap:
        for a, b in zip(spans, spans[1:]):
            if b["start"] < a["end"]:
                raise ValueError(f"spans [{a['start']}, {a['end']}) and [{b['start']}, {b['end']}) overlap, which this project does not allow")
    return spans


def _shown(labels: list[str]) -> str:
    return ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")


def check_project_labels(kind: str, labels: Any) -> list[str]:
    if kind not in VALUE_KEY:
        raise ValueError(f"kind {kind!r}: use single, multi or spans")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x.strip() for x in labels):
        raise ValueError("labels: give a non-empty list of label names")
    if len(set(labels)) != len(labels):
        raise ValueError("labels: each label once")
    if kind == "multi" and any(MULTI_SEP in x for x in labels):
        raise ValueError(f"labels of a multi-label project cannot contain {MULTI_SEP!r}")
    return labels


# ------------------------------------------------------------------------------------------ import


def read_items(filename: str, data: bytes, kind: str, labels: list[str], allow_overlap: bool = False) -> list[dict]:
    """Items from an uploaded CSV or JSONL file: dicts of text, label (or None), prediction, confidence, meta."""
    try:
        content = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{filename} line {line}: bytes that are not UTF-8: save the file as UTF-8") from None
    lower = filename.lower()
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        rows = _jsonl_rows(filename, content, kind)
    elif lower.endswith(".csv"):
        rows = _csv_rows(filename, content, kind)
    else:
        raise UserError(f"{filename}: unknown file type: upload a .csv or .jsonl file")
    items = []
    for line, row in rows:
        text = row["text"]
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{filename} line {line}: empty or missing text: fill it in or remove the row")
        for field in ("label", "prediction"):
            if row.get(field) is not None:
                try:
                    row[field] = check_value(kind, labels, row[field], text, allow_overlap)
                except ValueError as e:
                    raise UserError(f"{filename} line {line}: {field}: {e}") from None
        confidence = row.get("confidence")
        if confidence is not None:
            try:
                confidence = float(confidence)
            except (TypeError, ValueError):
                raise UserError(f"{filename} line {line}: confidence {confidence!r} is not a number") from None
            if not 0.0 <= confidence <= 1.0:
                raise UserError(f"{filename} line {line}: confidence {confidence} is outside [0, 1]")
        meta = row.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise UserError(f"{filename} line {line}: meta must be a JSON object")
        items.append({"text": text, "label": row.get("label"), "prediction": row.get("prediction"), "confidence": confidence, "meta": meta})
    if not items:
        raise UserError(f"{filename}: no items: the file has no rows with text")
    return items


def _jsonl_rows(filename: str, content: str, kind: str):
    for line, obj in json_lines(filename, content):
        if not isinstance(obj, dict) or "text" not in obj:
            raise UserError(f'{filename} line {line}: expected a JSON object with a "text" key')
        label = next((obj[k] for k in ("label", "labels", "spans") if obj.get(k) is not None), None)
        if kind == "multi" and isinstance(label, str):
            label = [x for x in label.split(MULTI_SEP) if x]
        prediction = obj.get("prediction")
        if kind == "multi" and isinstance(prediction, str):
            prediction = [x for x in prediction.split(MULTI_SEP) if x]
        yield line, {"text": obj["text"], "label": label, "prediction": prediction, "confidence": obj.get("confidence"), "meta": obj.get("meta")}


def _csv_rows(filename: str, content: str, kind: str):
    reader = csv.reader(io.StringIO(content, newline=""))
    header = next(reader, None)
    if header is None:
        raise UserError(f"{filename}: the file is empty: add a header row with a 'text' column")
    header = [h.strip() for h in header]
    if "text" not in header:
        raise UserError(f"{filename} line 1: no column 'text' (columns are: {', '.join(header)}): name the text column 'text'")
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        if len(row) != len(header):
            raise UserError(f"{filename} line {line}: {len(row)} fields where the header has {len(header)}: quote fields that contain commas")
        cells = dict(zip(header, row))
        extra = {k: v for k, v in cells.items() if k not in ("text", "label", "prediction", "confidence")}
        out = {"text": cells["text"], "meta": extra or None, "confidence": cells.get("confidence") or None}
        for field in ("label", "prediction"):
            cell = (cells.get(field) or "").strip()
            out[field] = _parse_cell(filename, line, field, cell, kind) if cell else None
        yield line, out


def _parse_cell(filename: str, line: int, field: str, cell: str, kind: str) -> Any:
    if kind == "single":
        return cell
    if kind == "multi":
        return [x.strip() for x in cell.split(MULTI_SEP) if x.strip()]
    try:
        return json.loads(cell)
    except json.JSONDecodeError:
        raise UserError(f'{filename} line {line}: {field}: spans must be a JSON list like [{{"start": 0, "end": 4, "label": "ORG"}}]') from None


# ------------------------------------------------------------------------------------------ export


def resolved(gold: Any, values: list[Any]) -> Any:
    """The item's label: gold if set, else the value more than half the annotators gave, else None."""
    if gold is not None:
        return gold
    if not values:
        return None
    key, n = Counter(json.dumps(v, sort_keys=True) for v in values).most_common(1)[0]
    return json.loads(key) if 2 * n > len(values) else None


def export(fmt: str, kind: str, labels: list[str], records: list[dict]) -> tuple[bytes, str, str]:
    """Records (id, text, meta, gold, prediction, confidence, annotations: [{annotator, value, seconds}]) as
    (file bytes, media type, file extension)."""
    if fmt not in EXPORTERS:
        raise UserError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    for r in records:
        r["resolved"] = resolved(r["gold"], [a["value"] for a in r["annotations"]])
    return EXPORTERS[fmt](kind, labels, records)


def _jsonl(kind: str, labels: list[str], records: list[dict]):
    lines = []
    for r in records:
        row = {
            "id": r["id"], "text": r["text"], VALUE_KEY[kind]: r["resolved"], "gold": r["gold"], "annotations": r["annotations"],
            "prediction": r["prediction"], "confidence": r["confidence"], "meta": r["meta"],
        }
        lines.append(json.dumps(row, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode(), "application/x-ndjson", "jsonl"


def neutralize(cell: str) -> str:
    """A spreadsheet shows a cell starting with = + - @ (or tab, CR) as text, not a formula, once it starts with '."""
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


def _cell(kind: str, value: Any) -> str:
    if value is None:
        return ""
    if kind == "single":
        return value
    if kind == "multi":
        return MULTI_SEP.join(value)
    return json.dumps(value, ensure_ascii=False)


def _csv(kind: str, labels: list[str], records: list[dict]):
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["id", "text", "label", "gold", "n_annotations", "annotations", "prediction", "confidence"])
    for r in records:
        annotations = json.dumps([{"annotator": a["annotator"], "value": a["value"]} for a in r["annotations"]], ensure_ascii=False)
        cells = [
            str(r["id"]), r["text"], _cell(kind, r["resolved"]), _cell(kind, r["gold"]), str(len(r["annotations"])), annotations,
            _cell(kind, r["prediction"]), "" if r["confidence"] is None else f"{r['confidence']:.4f}",
        ]
        writer.writerow([neutralize(c) for c in cells])
    return buf.getvalue().encode(), "text/csv; charset=utf-8", "csv"


def _train(kind: str, labels: list[str], records: list[dict]):
    """`slm train --data` input: text,label for every item with a resolved label. Texts are kept verbatim (training data)."""
    if kind != "single":
        raise UserError("format train: slm train reads single-label classification data: export jsonl or spacy for this project")
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["text", "label"])
    for r in records:
        if r["resolved"] is not None:
            writer.writerow([r["text"], r["resolved"]])
    return buf.getvalue().encode(), "text/csv; charset=utf-8", "csv"


def _ls_result(kind: str, text: str, value: Any) -> list[dict]:
    """A value as Label Studio `result` regions (a <Choices name="label" toName="text"> or <Labels> control)."""
    if kind == "spans":
        return [
            {"from_name": "label", "to_name": "text", "type": "labels",
             "value": {"start": sp["start"], "end": sp["end"], "text": text[sp["start"]:sp["end"]], "labels": [sp["label"]]}}
            for sp in value
        ]
    choices = [value] if kind == "single" else list(value)
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": choices}}]


def _labelstudio(kind: str, labels: list[str], records: list[dict]):
    """Label Studio's task import format: data, annotations (result, lead_time) and predictions (result, score)."""
    tasks = []
    for r in records:
        task = {"id": r["id"], "data": {"text": r["text"], **({"meta": r["meta"]} if r["meta"] else {})}, "annotations": [], "predictions": []}
        for a in r["annotations"]:
            task["annotations"].append({"result": _ls_result(kind, r["text"], a["value"]), "lead_time": a.get("seconds", 0.0),
                                        "completed_by": {"email": f"{a['annotator']}@slm-label"}, "was_cancelled": False})
        if r["gold"] is not None:
            task["annotations"].append({"result": _ls_result(kind, r["text"], r["gold"]), "ground_truth": True, "was_cancelled": False})
        if r["prediction"] is not None:
            task["predictions"].append({"result": _ls_result(kind, r["text"], r["prediction"]), "score": r["confidence"], "model_version": "slmkit"})
        tasks.append(task)
    return json.dumps(tasks, ensure_ascii=False, indent=1).encode(), "application/json", "json"


def _spacy(kind: str, labels: list[str], records: list[dict]):
    """spaCy-style JSONL: {"text", "spans": [{"start", "end", "label"}]}; classification projects give "cats"."""
    lines = []
    for r in records:
        value = r["resolved"]
        if value is None:
            continue
        if kind == "spans":
            row = {"text": r["text"], "spans": value}
        else:
            chosen = {value} if kind == "single" else set(value)
            row = {"text": r["text"], "cats": {label: float(label in chosen) for label in labels}}
        lines.append(json.dumps(row, ensure_ascii=False))
    return ("\n".join(lines) + ("\n" if lines else "")).encode(), "application/x-ndjson", "jsonl"


EXPORTERS = {"jsonl": _jsonl, "csv": _csv, "train": _train, "labelstudio": _labelstudio, "spacy": _spacy}
