"""Reading CSV/TSV/JSONL, and every bad-input case: one line naming the file, the line or column, and the fix."""

import json

import pytest

from conftest import SHARED_DATA, write_csv
from slmkit.data import check_labels, read_examples, read_texts, stratified_split
from slmkit.errors import UserError


def test_csv_tsv_jsonl_and_headerless(tmp_path):
    write_csv(tmp_path / "a.csv", [("hello, world", "x"), ("bye", "y")])
    (tmp_path / "a.tsv").write_text("text\tlabel\nhello\tx\nbye\ty\n")
    (tmp_path / "b.tsv").write_text("hello\tx\nbye\ty\n")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "hello", "label": 1}) + "\n\n" + json.dumps({"text": "bye", "label": 2}) + "\n")
    assert [(e.text, e.label, e.line) for e in read_examples(tmp_path / "a.csv")] == [("hello, world", "x", 2), ("bye", "y", 3)]
    assert [e.text for e in read_examples(tmp_path / "a.tsv")] == ["hello", "bye"]
    assert [(e.text, e.label, e.line) for e in read_examples(tmp_path / "b.tsv", "0", "1")] == [("hello", "x", 1), ("bye", "y", 2)]
    assert [(e.label, e.line) for e in read_examples(tmp_path / "a.jsonl")] == [("1", 1), ("2", 3)]


def test_utf8_bom_and_other_encodings(tmp_path):
    (tmp_path / "bom.csv").write_bytes("\ufefftext,label\ncafé,x\n".encode("utf-8"))
    assert read_examples(tmp_path / "bom.csv")[0].text == "café"
    (tmp_path / "latin.csv").write_bytes("text,label\ncafé,x\n".encode("latin-1"))
    assert read_examples(tmp_path / "latin.csv", encoding="latin-1")[0].text == "café"


def err(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    assert err(read_examples, tmp_path / "nope.csv") == f"{tmp_path / 'nope.csv'}: file not found: check the path"


def test_misspelled_column_suggests_closest(tmp_path):
    path = write_csv(tmp_path / "a.csv", [("hi", "x")], header=("text", "Labels"))
    assert "line 1: no column 'label': did you mean --label-col Labels?" in err(read_examples, path)
    path = write_csv(tmp_path / "c.csv", [("hi", "x")], header=("text", "intent"))
    assert "line 1: no column 'label': columns are: text, intent" in err(read_examples, path)
    path = write_csv(tmp_path / "b.csv", [("hi", "x")], header=("txt", "label"))
    assert "did you mean --text-col txt?" in err(read_examples, path)


def test_empty_texts_name_their_lines_and_can_be_dropped(tmp_path):
    path = write_csv(tmp_path / "a.csv", [("hi", "x"), ("   ", "y"), ("yo", "y"), ("", "x")])
    assert "empty text on line(s) 3, 5 (2 in all): fix them or pass --drop-empty" in err(read_examples, path)
    assert [e.text for e in read_examples(path, drop_empty=True)] == ["hi", "yo"]


def test_non_utf8_names_the_line(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"text,label\nfine,x\ncaf\xe9,y\n")
    message = err(read_examples, tmp_path / "a.csv")
    assert "a.csv line 3: bytes that are not utf-8" in message and "--encoding" in message


def test_ragged_rows(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\nfine,x\nnot, quoted,y\n")
    assert "a.csv line 3: 3 fields where the header has 2" in err(read_examples, tmp_path / "a.csv")


def test_bad_jsonl(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    assert "a.jsonl line 2: not valid JSON" in err(read_examples, tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text('{"Text": "a", "label": "x"}\n')
    assert "b.jsonl line 1: no key 'text': did you mean --text-col Text?" in err(read_examples, tmp_path / "b.jsonl")


def test_single_class_and_unknown_eval_label(tmp_path):
    one = read_examples(write_csv(tmp_path / "one.csv", [("a", "x"), ("b", "x")]))
    assert "only one class ('x')" in err(check_labels, one, tmp_path / "one.csv")
    train = read_examples(write_csv(tmp_path / "t.csv", [("a", "x"), ("b", "y")]))
    dev = read_examples(write_csv(tmp_path / "d.csv", [("a", "x"), ("c", "z")]))
    message = err(check_labels, train, tmp_path / "t.csv", dev, tmp_path / "d.csv")
    assert "d.csv line 3: label 'z' does not occur in the training data (x, y)" in message


def test_unknown_extension_and_encoding(tmp_path):
    (tmp_path / "a.xlsx").write_text("x")
    assert "unknown file type '.xlsx'" in err(read_examples, tmp_path / "a.xlsx")
    write_csv(tmp_path / "a.csv", [("a", "x")])
    assert "unknown encoding" in err(read_examples, tmp_path / "a.csv", encoding="klingon")


def test_stratified_split_is_seeded_and_keeps_shares(tmp_path):
    rows = [(f"text {i}", "a" if i % 4 else "b") for i in range(200)]
    examples = read_examples(write_csv(tmp_path / "a.csv", rows))
    train, held = stratified_split(examples, 0.1, seed=1)
    assert len(held) == 20 and sum(e.label == "b" for e in held) == 5
    assert not {e.line for e in train} & {e.line for e in held}
    assert stratified_split(examples, 0.1, seed=1) == (train, held)
    assert stratified_split(examples, 0.1, seed=2)[1] != held


def test_read_texts_txt(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo, with comma\n")
    assert read_texts(tmp_path / "a.txt") == ["one", "two, with comma"]


@pytest.mark.skipif(not (SHARED_DATA / "banking77").is_dir(), reason="../shared/data is absent")
def test_reads_the_real_benchmark_files():
    banking = read_examples(SHARED_DATA / "banking77" / "test.csv", "text", "category")
    assert len(banking) == 3080 and len({e.label for e in banking}) == 77
    sst2 = read_examples(SHARED_DATA / "sst2" / "dev.tsv", "sentence", "label")
    assert len(sst2) == 872 and {e.label for e in sst2} == {"0", "1"}


def test_length_buckets_cover_every_example_once():
    import numpy as np

    from slmkit.encoding import bucketed_order

    lengths = np.random.default_rng(0).integers(3, 60, size=1000)
    for pool, max_spread in ((50, 3), (1, 30)):  # sorted pools: batches of near-equal length; pool 1: random batches
        batches = bucketed_order(lengths, 16, np.random.default_rng(1), pool)
        assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
        spread = np.median([np.ptp(lengths[b]) for b in batches])
        assert (spread <= max_spread) if pool > 1 else (spread >= max_spread)
