"""Reading labeled examples from CSV, TSV and JSONL, with errors a user can act on.

Every problem is reported once, in one line that names the file, the line or column, and the fix: a missing
file, a misspelled column (with the closest name), empty texts (with their lines), bytes that are not in the
file's encoding, ragged CSV rows, a label in the eval data that training never saw, a single-class dataset.
Line numbers are 1-based physical lines of the file, header included.

The bundled demo dataset (customer-support intents written by the project) lives in `slmkit/demo/`.
"""

from __future__ import annotations

import csv
import difflib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slmkit.errors import UserError

DEMO_DIR = Path(__file__).parent / "demo"
DEMO_TRAIN = DEMO_DIR / "train.csv"
DEMO_TEST = DEMO_DIR / "test.csv"


@dataclass(frozen=True)
class Example:
    text: str
    label: str | None  # None when the file has no labels (prediction input)
    line: int  # 1-based line in the source file


def read_examples(
    path: str | Path,
    text_col: str = "text",
    label_col: str | None = "label",
    encoding: str = "utf-8",
    drop_empty: bool = False,
) -> list[Example]:
    """Examples from a .csv, .tsv/.txt or .jsonl file; `label_col=None` reads texts only."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found: check the path")
    text = _decode(path, encoding)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = _jsonl_rows(path, text, text_col, label_col)
    elif suffix in (".csv", ".tsv", ".tab"):
        rows = _delimited_rows(path, text, "," if suffix == ".csv" else "\t", text_col, label_col)
    else:
        raise UserError(f"{path}: unknown file type {path.suffix!r}: use .csv, .tsv or .jsonl")
    examples, empty = [], []
    for line, text_value, label in rows:
        if not text_value.strip():
            empty.append(line)
            continue
        if label_col is not None and not label.strip():
            raise UserError(f"{path} line {line}: empty label in column {label_col!r}: fill it in or remove the row")
        examples.append(Example(text_value, label.strip() if label_col is not None else None, line))
    if empty and not drop_empty:
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        raise UserError(f"{path}: empty text on line(s) {shown} ({len(empty)} in all): fix them or pass --drop-empty to skip them")
    if not examples:
        raise UserError(f"{path}: no examples: the file has no rows with text")
    return examples


def read_texts(path: str | Path, text_col: str = "text", encoding: str = "utf-8") -> list[str]:
    """Texts to predict: a .txt file holds one per line; other formats are read like labeled files."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise UserError(f"{path}: file not found: check the path")
        texts = [line for line in _decode(path, encoding).splitlines() if line.strip()]
        if not texts:
            raise UserError(f"{path}: no texts: the file is empty")
        return texts
    return [e.text for e in read_examples(path, text_col, None, encoding, drop_empty=True)]


def check_labels(train: list[Example], train_path: Path, eval_: list[Example] | None = None, eval_path: Path | None = None) -> list[str]:
    """The sorted label set of the training data, refusing single-class data and eval labels train lacks."""
    labels = sorted({e.label for e in train})
    if len(labels) < 2:
        raise UserError(f"{train_path}: only one class ({labels[0]!r}): a classifier needs examples of at least two labels")
    check_known_labels(eval_ or [], eval_path, labels, "does not occur in the training data", "fix the label or add training examples of it")
    return labels


def check_known_labels(examples: list[Example], path: Path | None, known: list[str], problem: str, fix: str) -> None:
    """Refuse the first example whose label is not in `known`, naming its line."""
    allowed = set(known)
    for e in examples:
        if e.label not in allowed:
            shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
            raise UserError(f"{path} line {e.line}: label {e.label!r} {problem} ({shown}): {fix}")


def stratified_split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Seeded split keeping each label's share; labels with a single example stay in train."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    train, held = [], []
    for label in sorted(by_label):
        group = by_label[label]
        order = rng.permutation(len(group))
        n_held = 0 if len(group) < 2 else max(1, round(fraction * len(group)))
        held += [group[i] for i in order[:n_held]]
        train += [group[i] for i in order[n_held:]]
    train.sort(key=lambda e: e.line)
    held.sort(key=lambda e: e.line)
    return train, held


# ------------------------------------------------------------------------------------------- formats


def _decode(path: Path, encoding: str) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except LookupError:
        raise UserError(f"--encoding {encoding!r}: unknown encoding: use a name such as utf-8, latin-1 or cp1252") from None
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path} line {line}: bytes that are not {encoding} (byte {raw[e.start]:#04x}): "
            f"save the file as UTF-8 or pass --encoding (for example --encoding latin-1)"
        ) from None
    return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not part of the first column name


def _column(path: Path, header: list[str] | None, name: str, role: str) -> int:
    """Index of column `name` (or a 0-based index in a headerless file), suggesting the closest name."""
    if header is None:
        index = int(name)
        return index
    if name in header:
        return header.index(name)
    close = difflib.get_close_matches(name, header, n=1, cutoff=0.5)
    hint = f"did you mean --{role}-col {close[0]}?" if close else f"columns are: {', '.join(header)}"
    raise UserError(f"{path} line 1: no column {name!r}: {hint}")


def _delimited_rows(path: Path, text: str, delimiter: str, text_col: str, label_col: str | None):
    headerless = text_col.isdigit() and (label_col is None or label_col.isdigit())
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    header = None
    if not headerless:
        header = next(reader, None)
        if header is None:
            raise UserError(f"{path}: the file is empty: add a header row and examples")
        header = [h.strip() for h in header]
    ti = _column(path, header, text_col, "text")
    li = _column(path, header, label_col, "label") if label_col is not None else None
    width = len(header) if header else None
    rows = []
    for row in reader:
        line = reader.line_num
        if not row:
            continue  # blank line
        if width is None:
            width = len(row)
        if len(row) != width:
            raise UserError(
                f"{path} line {line}: {len(row)} fields where the {'header has' if header else 'first row has'} {width}: "
                f"quote fields that contain {'commas' if delimiter == ',' else 'tabs'} or fix the row"
            )
        needed = max(ti, li if li is not None else 0)
        if needed >= len(row):
            raise UserError(f"{path} line {line}: column index {needed} is out of range ({len(row)} fields): fix --text-col/--label-col")
        rows.append((line, row[ti], row[li] if li is not None else ""))
    return rows


def json_lines(name: str | Path, text: str):
    """(line number, decoded value) of each non-blank line of a JSONL text; invalid JSON is a UserError naming the line."""
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield line, json.loads(raw)
        except json.JSONDecodeError as e:
            raise UserError(f"{name} line {line}: not valid JSON ({e.msg}): one JSON object per line") from None


def _jsonl_rows(path: Path, text: str, text_col: str, label_col: str | None):
    rows = []
    for line, obj in json_lines(path, text):
        if not isinstance(obj, dict):
            raise UserError(f"{path} line {line}: expected a JSON object like {{\"{text_col}\": ..., \"{label_col}\": ...}}")
        for key, role in ((text_col, "text"), (label_col, "label")):
            if key is not None and key not in obj:
                close = difflib.get_close_matches(key, list(obj), n=1, cutoff=0.5)
                hint = f"did you mean --{role}-col {close[0]}?" if close else f"keys are: {', '.join(obj)}"
                raise UserError(f"{path} line {line}: no key {key!r}: {hint}")
        value = obj[text_col]
        label = obj[label_col] if label_col is not None else ""
        rows.append((line, "" if value is None else str(value), "" if label is None else str(label)))
    return rows
