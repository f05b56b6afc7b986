"""Vocabulary trimming on tiny models: the rewritten tokenizer and embeddings agree, text whose tokens are kept
tokenizes and scores exactly as before, removed pieces become their nearest kept piece or [UNK] with the
segmentation kept (or, with a plain vocabulary, [UNK] words) the same way in `tokenizers` and `transformers`,
the model shrinks, stays loadable and exportable, and bad input leaves nothing behind."""

import json
import shutil

import numpy as np
import pytest
import yaml

from conftest import CUES, FILLER, tiny_config
from slmkit import artifacts
from slmkit.config import TrimConfig
from slmkit.errors import UserError
from slmkit.train import train
from slmkit.trim import trim_vocab

# words of the synthetic task recombined into sentences no data file holds; with the MiniLM vocabulary
# 'username', 'invoice' and 'refund' are several WordPiece pieces each ('in', '##vo', '##ice')
KEPT_TEXTS = ["please refund my invoice again", "Username LOCKED why", "hello courier thanks", "the parcel is still not shipping"]


@pytest.fixture(scope="module")
def minilm_model(synthetic, tmp_path_factory):
    """A 1-layer classifier over the packaged MiniLM tokenizer (30,522 WordPiece tokens), trained for 3 quick epochs."""
    cfg = tiny_config("scratch:layers=1,hidden=32,heads=2,ffn=64", synthetic, tmp_path_factory.mktemp("runs") / "minilm", epochs=3)
    return train(cfg, progress=False).out


@pytest.fixture(scope="module")
def trimmed(minilm_model, tmp_path_factory):
    """Trimmed to the model's recorded training texts (the default), checked on its recorded eval set."""
    return trim_vocab(TrimConfig(model=str(minilm_model), out=str(tmp_path_factory.mktemp("trim") / "trimmed")))


@pytest.fixture(scope="module")
def plain(minilm_model, tmp_path_factory):
    """The same, with a plain vocabulary (no aliases for the removed pieces)."""
    return trim_vocab(TrimConfig(model=str(minilm_model), out=str(tmp_path_factory.mktemp("trim") / "plain"), fallback="none"))


def _tokenizer(directory):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.no_padding()  # the saved file pads to 128, as the original's does
    tokenizer.no_truncation()
    return tokenizer


def _hf_logits(directory, texts):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True).eval()
    with torch.inference_mode():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()


def test_artifact_files_and_metrics(trimmed, plain, minilm_model):
    out, m = trimmed.out, trimmed.metrics
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "config.yaml", "metrics.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    ]
    assert not artifacts.staging_dir(out).exists()
    assert json.loads((out / "metrics.json").read_text()) == m
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == str(minilm_model)  # lineage for later stages

    # the vocabulary: the synthetic task's pieces plus the 5 special tokens, a tiny fraction of 30,522
    vocab = _tokenizer(plain.out).get_vocab(with_added_tokens=True)  # the kept pieces alone
    all_pieces = _tokenizer(out).get_vocab(with_added_tokens=True)  # and their aliases
    assert all(all_pieces[t] == i for t, i in vocab.items())
    assert m["vocab_before"] == 30522 and m["vocab_after"] == len(vocab) == len(set(all_pieces.values())) < 60
    assert {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "in", "##vo", "##ice"} <= set(vocab)
    assert sorted(vocab.values()) == list(range(len(vocab)))  # dense ids, no holes
    # every other piece but BERT's [unusedN] placeholders stays as an alias of a kept id
    assert m["fallback"] == "nearest" and m["aliases"] == len(all_pieces) - len(vocab) == 30522 - 994 - len(vocab)
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["vocab_size"] == len(vocab) and hf_config["pad_token_id"] == vocab["[PAD]"]
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_slice("bert.embeddings.word_embeddings.weight").get_shape() == [len(vocab), 32]  # (vocab, hidden)
    # the maximum length training recorded is kept: predict truncates where it did before
    tokenizer_configs = [json.loads((d / "tokenizer_config.json").read_text()) for d in (out, minilm_model)]
    assert tokenizer_configs[0]["model_max_length"] == tokenizer_configs[1]["model_max_length"]

    # smaller, and no change on the eval set, all of whose words occur in training
    assert m["parameters_after"] < m["parameters_before"] and m["model_bytes_after"] < m["model_bytes_before"]
    assert m["size_ratio"] == pytest.approx(m["model_bytes_after"] / m["model_bytes_before"]) and m["size_ratio"] < 0.1
    assert m["n_eval"] == 60 and m["eval_source"].endswith("dev.csv")
    assert m["oov_token_rate"] == 0.0 and m["oov_text_rate"] == 0.0 and m["aliased_token_rate"] == 0.0
    assert m["identical_predictions"] == 1.0 and m["accuracy_after"] == m["accuracy_before"] >= 0.9  # it learned the task
    assert m["n_kept_texts"] == 60 and m["max_prob_diff_kept_texts"] <= 1e-6


def test_kept_text_tokenizes_and_scores_identically(trimmed, plain, minilm_model):
    old, new = _tokenizer(minilm_model), _tokenizer(trimmed.out)
    old_vocab, new_vocab = old.get_vocab(with_added_tokens=True), _tokenizer(plain.out).get_vocab(with_added_tokens=True)
    old_to_new = dict(sorted((old_vocab[t], i) for t, i in new_vocab.items()))
    assert list(old_to_new.values()) == list(range(len(new_vocab)))  # new ids follow the old id order
    for before, after in zip(old.encode_batch(KEPT_TEXTS), new.encode_batch(KEPT_TEXTS)):
        assert after.tokens == before.tokens and "[UNK]" not in after.tokens
        assert after.ids == [old_to_new[i] for i in before.ids]
    assert old.encode("please refund my invoice").tokens == ["[CLS]", "please", "ref", "##und", "my", "in", "##vo", "##ice", "[SEP]"]
    # the transformers path (AutoTokenizer + AutoModelForSequenceClassification) gives the same logits
    np.testing.assert_allclose(_hf_logits(trimmed.out, KEPT_TEXTS), _hf_logits(minilm_model, KEPT_TEXTS), atol=1e-6, rtol=0)


def test_removed_pieces_keep_the_segmentation_and_become_their_nearest_kept_piece(trimmed, plain, minilm_model):
    import torch
    from transformers import AutoTokenizer

    from slmkit.artifacts import load_model

    text = "my xylophone has usernames and passwords"
    old, new = _tokenizer(minilm_model).encode(text), _tokenizer(trimmed.out).encode(text)
    assert new.tokens == old.tokens and "[UNK]" not in new.tokens  # the same pieces, now aliases
    kept = _tokenizer(plain.out).get_vocab(with_added_tokens=True)
    old_vocab = _tokenizer(minilm_model).get_vocab(with_added_tokens=True)
    weights = torch.nn.functional.normalize(load_model(minilm_model)[0].get_input_embeddings().weight.detach(), dim=1)
    special = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    for token, i in zip(new.tokens, new.ids):
        if token in kept:
            assert i == kept[token]
            continue
        same_kind = [t for t in kept if t.startswith("##") == token.startswith("##") and t not in special]
        scores = [float(weights[old_vocab[token]] @ weights[old_vocab[t]]) for t in same_kind]
        assert i == kept[same_kind[int(np.argmax(scores))]]
    hf = AutoTokenizer.from_pretrained(trimmed.out)  # transformers agrees, aliases included
    assert hf(text)["input_ids"] == new.ids and hf.get_vocab() == _tokenizer(trimmed.out).get_vocab(with_added_tokens=True)


def test_aliases_survive_resaving(trimmed, tmp_path):
    from transformers import AutoTokenizer

    from slmkit.artifacts import load_model, save_model

    save_model(load_model(trimmed.out)[0], AutoTokenizer.from_pretrained(trimmed.out), tmp_path)
    assert _tokenizer(tmp_path).get_vocab(with_added_tokens=True) == _tokenizer(trimmed.out).get_vocab(with_added_tokens=True)


def test_unk_fallback_keeps_the_segmentation(minilm_model, plain, tmp_path):
    result = trim_vocab(TrimConfig(model=str(minilm_model), out=str(tmp_path / "out"), fallback="unk"))
    text = "my xylophone has usernames and passwords"
    old, new = _tokenizer(minilm_model).encode(text), _tokenizer(result.out).encode(text)
    kept = _tokenizer(plain.out).get_vocab(with_added_tokens=True)
    assert new.tokens == old.tokens
    assert new.ids == [kept[t] if t in kept else kept["[UNK]"] for t in new.tokens]
    assert result.metrics["fallback"] == "unk" and result.metrics["oov_token_rate"] == 0.0  # its eval words were all seen


def test_unseen_words_become_unknown_alike_in_tokenizers_and_transformers(plain):
    from transformers import AutoTokenizer

    trimmed = plain
    text = "my xylophone has usernames and passwords"
    encoding = _tokenizer(trimmed.out).encode(text)
    # no kept piece starts 'xylophone'; 'usernames' = user ##name + an unkept ##s: whole words become [UNK]
    assert encoding.tokens == ["[CLS]", "my", "[UNK]", "[UNK]", "[UNK]", "[UNK]", "[UNK]", "[SEP]"]
    hf = AutoTokenizer.from_pretrained(trimmed.out)
    assert hf(text)["input_ids"] == encoding.ids
    assert hf.convert_ids_to_tokens(encoding.ids) == encoding.tokens
    new = _tokenizer(trimmed.out)
    for token in ("unk", "pad", "cls", "sep", "mask"):  # transformers' special ids are the rewritten ones
        assert getattr(hf, f"{token}_token_id") == new.token_to_id(f"[{token.upper()}]")
    assert len(hf) == trimmed.metrics["vocab_after"]


def test_extra_text_and_min_count_decide_the_kept_tokens(minilm_model, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("refund refund refund\nplease refund my parcel\n", encoding="utf-8")
    extra = tmp_path / "extra.txt"
    extra.write_text("Xylophone\n", encoding="utf-8")
    result = trim_vocab(TrimConfig(model=str(minilm_model), out=str(tmp_path / "out"), data=[str(data)], extra_text=[str(extra)], min_count=3, fallback="none"))
    vocab = _tokenizer(result.out).get_vocab(with_added_tokens=True)
    # 'ref' and '##und' occur 4 times (kept), the other words once (dropped); the margin's pieces are kept at any count
    assert set(vocab) == {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "ref", "##und", "x", "##yl", "##ophone"}
    assert _tokenizer(result.out).encode("xylophone refund parcel").tokens == ["[CLS]", "x", "##yl", "##ophone", "ref", "##und", "[UNK]", "[SEP]"]
    m = result.metrics
    assert m["data"] == [str(data)] and m["n_texts"] == 2 and m["n_extra_texts"] == 1
    assert m["oov_token_rate"] > 0.5 and m["oov_text_rate"] == 1.0  # every eval text has a filler word now unknown


def test_keep_top_keeps_the_most_frequent_pieces_but_no_placeholders(minilm_model, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("refund\n", encoding="utf-8")
    result = trim_vocab(TrimConfig(model=str(minilm_model), out=str(tmp_path / "out"), data=[str(data)], keep_top=1100, fallback="none"))
    vocab = _tokenizer(result.out).get_vocab(with_added_tokens=True)
    # BERT's vocabulary: [PAD], 998 [unusedN] placeholders, the special tokens, single characters, then frequent words
    assert {"the", "of", "and", "a", "ref", "##und"} <= set(vocab) and not any(t.startswith("[unused") for t in vocab)
    assert result.metrics["keep_top"] == 1100 and len(vocab) < 1200


def test_oov_rate_is_the_share_of_newly_unknown_tokens(minilm_model, synthetic, tmp_path):
    """Dropping 'invoice' (in ##vo ##ice, no piece of which another word uses) makes exactly its occurrences [UNK]."""
    import csv

    words = sorted(({w for ws in CUES.values() for w in ws} | set(FILLER)) - {"invoice"})
    data = tmp_path / "words.txt"
    data.write_text("\n".join(words) + "\n", encoding="utf-8")
    result = trim_vocab(TrimConfig(model=str(minilm_model), out=str(tmp_path / "out"), data=[str(data)], fallback="none"))
    m = result.metrics

    dev = [row["text"] for row in csv.DictReader(open(synthetic["dev"], encoding="utf-8"))]
    invoices = np.array([text.split().count("invoice") for text in dev])
    new = _tokenizer(result.out)
    assert new.token_to_id("##vo") is None and new.encode("invoice", add_special_tokens=False).tokens == ["[UNK]"]
    n_tokens = sum(len(e.ids) for e in new.encode_batch(dev, add_special_tokens=False))
    assert m["oov_token_rate"] == pytest.approx(invoices.sum() / n_tokens) and invoices.sum() > 0
    assert m["oov_text_rate"] == pytest.approx(np.mean(invoices > 0))
    assert m["n_kept_texts"] == np.sum(invoices == 0) > 0
    assert m["max_prob_diff_kept_texts"] <= 1e-6  # texts without 'invoice' score exactly as before


def test_trimmed_model_exports_to_onnx(trimmed, tmp_path):
    import onnxruntime
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trimmed.out)
    model = AutoModelForSequenceClassification.from_pretrained(trimmed.out, use_safetensors=True).eval()
    batch = tokenizer(KEPT_TEXTS, padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    path = tmp_path / "model.onnx"
    axes = {name: {0: "batch", 1: "seq"} for name in names}
    with torch.inference_mode():
        expected = model(**batch).logits.numpy()
        torch.onnx.export(
            model, tuple(batch[n] for n in names), str(path), input_names=names, output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {n: batch[n].numpy() for n in names})
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------ bad input


def _bpe_model(src, dst):
    from tokenizers import Tokenizer, models

    shutil.copytree(src, dst)
    (dst / "tokenizer.json").write_text(Tokenizer(models.BPE({"[UNK]": 0, "a": 1}, [], unk_token="[UNK]")).to_str())
    return dst


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_model", "model directory not found"),
        ("not_a_model", "not a trained model"),
        ("empty_txt", "empty.txt: no texts"),
        ("header_only_csv", "header.csv: no examples"),
        ("missing_extra", "nowhere.txt: file not found"),
        ("bpe", "supports WordPiece vocabularies only"),
        ("min_count", "setting min_count must be at least 1"),
        ("fallback", "setting fallback must be nearest, unk or none"),
        ("out_is_model", "--out is the --model directory"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(case, message, minilm_model, tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    (tmp_path / "header.csv").write_text("text,label\n", encoding="utf-8")
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text("{}")
    out = tmp_path / "out"
    cfg = TrimConfig(model=str(minilm_model), out=str(out))
    if case == "missing_model":
        cfg.model = str(tmp_path / "nowhere")
    elif case == "not_a_model":
        cfg.model = str(tmp_path / "no-weights")
    elif case == "empty_txt":
        cfg.data = [str(tmp_path / "empty.txt")]
    elif case == "header_only_csv":
        cfg.data = [str(tmp_path / "header.csv")]
    elif case == "missing_extra":
        cfg.extra_text = [str(tmp_path / "nowhere.txt")]
    elif case == "bpe":
        cfg.model = str(_bpe_model(minilm_model, tmp_path / "bpe"))
    elif case == "min_count":
        cfg.min_count = 0
    elif case == "fallback":
        cfg.fallback = "closest"
    elif case == "out_is_model":
        cfg.out = str(minilm_model)
    with pytest.raises(UserError, match=message) as error:
        trim_vocab(cfg)
    assert "\n" not in str(error.value)
    assert not out.exists() and not artifacts.staging_dir(out).exists()
    assert not artifacts.staging_dir(minilm_model).exists() and (minilm_model / "model.safetensors").is_file()


def test_slm_export_keeps_the_aliases(trimmed, tmp_path):
    from slmkit.config import ExportConfig
    from slmkit.export import export
    from slmkit.predict import predict_probs

    result = export(ExportConfig(model=str(trimmed.out), out=str(tmp_path / "onnx")))
    assert _tokenizer(result.out).get_vocab(with_added_tokens=True) == _tokenizer(trimmed.out).get_vocab(with_added_tokens=True)
    texts = ["my xylophone has usernames and passwords", *KEPT_TEXTS]  # removed pieces, and kept ones
    np.testing.assert_allclose(predict_probs(result.out, texts)[0], predict_probs(trimmed.out, texts)[0], atol=1e-5, rtol=0)
    assert result.metrics["parity"]["runtime_max_abs_logit_diff"] <= 1e-4
