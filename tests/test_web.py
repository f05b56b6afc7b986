"""`slm export-web`: the static page, opened in headless Debian chromium, tokenizes and classifies exactly as
slmkit.runtime.Predictor does (which is what the server runs), and bad input leaves nothing behind.

The JavaScript packages come from the npm cache (~/.cache/slmkit/npm); on a fresh machine the first build
downloads them from the registry (about 33 MB), so the registry must be reachable there, as in CI.
"""

from __future__ import annotations

import functools
import json
import random
import re
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CUES, FILLER
from slmkit import artifacts, npm
from slmkit.cli import app
from slmkit.config import ExportWebConfig
from slmkit.data import read_examples
from slmkit.errors import UserError
from slmkit.export_web import export_web
from slmkit.runtime import Predictor

SCORE_TOLERANCE = 1e-4
ALIASES = {"hi": "hello", "thx": "thanks", "parcels": "parcel", "refunds": "refund"}  # alias -> the word whose id it shares
LONG = " ".join(["my parcel is still not here and the courier is not answering, why?"] * 30)  # truncated
TOKENIZER_TEXTS = [
    "where is my parcel?", "Héllo wörld, ça va? naïve café résumé", "ÉCOLE Ångström", "straße", "İstanbul",
    "日本語のテキスト 中文字符", "rare 𠀀𠁊ideographs𪚥 and 說 compatibility", "emoji 🙂 and 👩‍💻 zwj", "tabs\tand\nnewlines\r\n", "\u200bzero\u200dwidth\ufeff",
    "don't stop-believing... (really)!", "$100 + 5% <tag> ~x^2 | `code`", "[CLS] literal [SEP] [MASK] tokens",
    "", "   ", "a", LONG, "unaffable quickly refund invoices", "hi thx, my parcels and refunds", "HI Thx parcel",
]
# Unicode blocks the random texts draw from: Latin with accents, combining marks, Greek, Cyrillic, Hebrew and
# Arabic, Devanagari, Thai, Hangul jamo and syllables, punctuation and format characters, CJK (BMP, compatibility
# and Extension B), presentation forms, full-width forms, emoji, mathematical letters, control and private use
BLOCKS = [(0x20, 0x7E), (0xA0, 0x17F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F),
          (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F), (0x3000, 0x30FF), (0x4E00, 0x4E80), (0xAC00, 0xAC80),
          (0xF900, 0xF9FF), (0xFB00, 0xFB4F), (0xFF00, 0xFFEF), (0x1F300, 0x1F64F), (0x1D400, 0x1D4FF), (0x20000, 0x20080),
          (0x0, 0x1F), (0xE000, 0xE010)]
runner = CliRunner()


def random_texts(n: int, seed: int = 0) -> list[str]:
    """Short texts of characters from BLOCKS, some separated by spaces (seeded)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        chars = [chr(rng.randint(*rng.choice(BLOCKS))) + (" " if rng.random() < 0.3 else "") for _ in range(rng.randint(1, 10))]
        texts.append("".join(chars))
    return texts


# ------------------------------------------------------------------------------------------------ sites


def build(model_dir: Path, out: Path) -> Path:
    return export_web(ExportWebConfig(model=str(model_dir), out=str(out))).out


def with_tokenizer(exported: Path, tokenizer_json: dict, out: Path) -> Path:
    """A copy of an exported model dir with another tokenizer.json: the page's tokenization does not depend
    on the graph, so one tiny model carries every tokenizer the id-parity test needs."""
    shutil.copytree(exported, out)
    artifacts.write_json(out / artifacts.TOKENIZER, tokenizer_json)
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The folder the test server serves: one subfolder per site."""
    return tmp_path_factory.mktemp("web")


@pytest.fixture(scope="module")
def tiny_site(exported_tiny, root) -> Path:
    """Built through the CLI, as a user would."""
    result = runner.invoke(app, ["export-web", str(exported_tiny), "--out", str(root / "tiny")])
    assert result.exit_code == 0, result.output
    assert "python -m http.server -d" in result.output
    return root / "tiny"


@pytest.fixture(scope="module")
def int8_aliased_model(exported_tiny, tmp_path_factory) -> Path:
    """exported_tiny quantized to int8, with aliases in its vocabulary (several pieces, one id: what
    slm trim-vocab writes for the pieces it removes).

    slm quantize writes 7-bit weights by default (reduce_range): on x86 CPUs without VNNI, ONNX Runtime's native
    u8×s8 kernel adds pairs of products in saturating 16-bit arithmetic, so a full-range int8 model gives the
    Python runtime logits that differ from exact int8 math (which the page's WebAssembly kernel does) by about 0.1
    on this tiny model. 7-bit weights cannot saturate: both sides are exact."""
    from slmkit.config import QuantizeConfig
    from slmkit.quantize import quantize

    out = quantize(QuantizeConfig(model=str(exported_tiny), out=str(tmp_path_factory.mktemp("int8-aliased") / "model")), progress=False).out
    assert artifacts.read_json(out / artifacts.MANIFEST)["precision"] == "int8"
    tokenizer = artifacts.read_json(out / artifacts.TOKENIZER)
    vocab = tokenizer["model"]["vocab"]
    for alias, word in ALIASES.items():
        vocab[alias] = vocab[word]
    artifacts.write_json(out / artifacts.TOKENIZER, tokenizer)
    return out


@pytest.fixture(scope="module")
def minilm_tokenizer_model(exported_tiny, tmp_path_factory) -> Path:
    """The packaged MiniLM's 30,522-piece WordPiece tokenizer, with two ##pieces turned into aliases by hand."""
    from slmkit.base import packaged_minilm_dir

    tokenizer = artifacts.read_json(packaged_minilm_dir() / artifacts.TOKENIZER)
    vocab = tokenizer["model"]["vocab"]
    vocab["##ly"], vocab["##able"] = vocab["##ed"], vocab["##s"]  # several pieces, one id: what trim-vocab writes
    tokenizer["truncation"] = tokenizer["padding"] = None
    return with_tokenizer(exported_tiny, tokenizer, tmp_path_factory.mktemp("minilm-tok") / "model")


@pytest.fixture(scope="module")
def bpe_tokenizer_model(exported_tiny, tmp_path_factory) -> Path:
    """A RoBERTa-style byte-level BPE tokenizer trained here on a few hundred texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    words = [w for ws in CUES.values() for w in ws] + FILLER
    tokenizer.train_from_iterator([" ".join(words[i:] + words[:i]) for i in range(len(words))] * 5 + TOKENIZER_TEXTS, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>")))
    return with_tokenizer(exported_tiny, json.loads(tokenizer.to_str()), tmp_path_factory.mktemp("bpe-tok") / "model")


# ------------------------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def server(root):
    """A plain static server over `root` on 127.0.0.1, in a thread (what `python -m http.server` does)."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()



class Page:
    """One site open in the browser; `classify` and `encode` call the page's own window.slmkit."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)
        self.page.evaluate("() => window.slmkit.ready.then(() => true)")  # raises with the page's error if loading failed

    def classify(self, texts: list[str]) -> list[dict]:
        return self.page.evaluate("texts => window.slmkit.classify(texts)", texts)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.page.evaluate("texts => window.slmkit.encode(texts)", texts)


@pytest.fixture(scope="module")
def sites(root, tiny_site, exported_tiny, int8_aliased_model, minilm_tokenizer_model, bpe_tokenizer_model) -> dict[str, tuple[Path, Path]]:
    """name -> (site, the model directory it was built from)."""
    models = {"int8-aliased": int8_aliased_model, "minilm-tokenizer": minilm_tokenizer_model, "bpe-tokenizer": bpe_tokenizer_model}
    return {"fp32": (tiny_site, exported_tiny), **{name: (build(model_dir, root / name), model_dir) for name, model_dir in models.items()}}


@pytest.fixture(scope="module")
def pages(browser, server, root, sites):
    """name -> the site open in the browser (each opened once: loading a page compiles 14 MB of WebAssembly)."""
    opened: dict[str, Page] = {}

    def open_page(name: str) -> Page:
        if name not in opened:
            opened[name] = Page(browser, f"{server}/{sites[name][0].relative_to(root).as_posix()}/")
        return opened[name]

    return open_page


# ---------------------------------------------------------------------------------------- references

# What the page must equal: `(model_dir, texts) -> [{"label", "scores"}]`. The server (slm serve) runs the
# same Predictor; a comparison against a running server is one more entry here.
REFERENCES = {
    "predictor": lambda model_dir, texts: [{"label": p.label, "scores": p.scores} for p in Predictor(model_dir).predict(texts)],
}


def assert_same_predictions(page: list[dict], reference: list[dict], texts: list[str]) -> None:
    assert len(page) == len(reference) == len(texts)
    for text, got, want in zip(texts, page, reference):
        assert got["label"] == want["label"], text
        assert got["scores"].keys() == want["scores"].keys()
        worst = max(abs(got["scores"][k] - want["scores"][k]) for k in want["scores"])
        assert worst <= SCORE_TOLERANCE, f"{text!r}: score differs by {worst:.2e}"
        assert got["score"] == max(got["scores"].values()) and got["text"] == text


def fifty_texts(synthetic) -> list[str]:
    """The synthetic test texts, some of them reworded, and texts the model never saw: 50 in all."""
    texts = [e.text for e in read_examples(synthetic["test"])][:40]
    return texts + [t.upper() for t in texts[:3]] + ["", "hi thx", "Café ÉCOLE: refunds?", LONG, "parcels parcels courier", "🙂", "[SEP]"]


# --------------------------------------------------------------------------------------------- tests


def test_site_files_manifest_and_no_cdn(tiny_site, exported_tiny):
    names = {p.relative_to(tiny_site).as_posix() for p in tiny_site.rglob("*") if p.is_file()}
    assert names == {
        "index.html", "slmkit.js", "config.yaml", "metrics.json", "model/model.onnx", "model/tokenizer.json", "model/manifest.json",
        "vendor/ort.wasm.bundle.min.js", "vendor/ort-wasm-simd-threaded.wasm", "vendor/tokenizers.min.js",
        "vendor/LICENSE-onnxruntime-web", "vendor/LICENSE-tokenizers", "vendor/THIRD_PARTY.md",
    }
    assert not list(tiny_site.parent.glob(".*partial"))
    source = json.loads((exported_tiny / "manifest.json").read_text())
    page = json.loads((tiny_site / "model" / "manifest.json").read_text())
    for key in ("labels", "inputs", "output", "max_length", "pad_id"):
        assert page[key] == source[key]
    assert page["vendored"] == {"onnxruntime-web": npm.ONNXRUNTIME_WEB.version, "@huggingface/tokenizers": npm.TOKENIZERS_JS.version}
    assert (tiny_site / "model" / "model.onnx").read_bytes() == (exported_tiny / "model.onnx").read_bytes()
    metrics = json.loads((tiny_site / "metrics.json").read_text())
    assert metrics["bytes"]["vendor/ort-wasm-simd-threaded.wasm"] > 1_000_000 and metrics["total_bytes"] == sum(metrics["bytes"].values())
    for name in ("index.html", "slmkit.js"):  # everything comes from the folder itself
        text = (tiny_site / name).read_text()
        assert "https://" not in text and not re.search(r"http://(?!localhost:8000/)", text), name


def test_token_ids_equal_the_python_tokenizers(sites, pages):
    """Special tokens, truncation at max_length, accents, CJK, emoji, control characters, aliases, byte-level BPE,
    and 500 random texts across Unicode."""
    texts = TOKENIZER_TEXTS + random_texts(500)
    for name, (site, model_dir) in sites.items():
        expected = [e.ids for e in Predictor(model_dir).tokenizer.encode_batch(texts)]
        got = pages(name).encode(texts)
        for text, g, e in zip(texts, got, expected):
            assert g == e, f"{name}: {text!r}"
        max_length = json.loads((site / "model" / "manifest.json").read_text())["max_length"]
        assert len(got[TOKENIZER_TEXTS.index(LONG)]) == max_length, name  # the long text was truncated, not dropped
    tiny, aliased = (Predictor(sites[name][1]).tokenizer.encode("hi thx").ids for name in ("fp32", "int8-aliased"))
    assert tiny != aliased and aliased == Predictor(sites["fp32"][1]).tokenizer.encode("hello thanks").ids  # the aliases are used


@pytest.mark.parametrize("reference", sorted(REFERENCES))
def test_predictions_equal_the_runtime_on_50_texts(reference, sites, pages, synthetic):
    """fp32, and int8 with an aliased vocabulary: labels identical, every score within 1e-4."""
    texts = fifty_texts(synthetic)
    assert len(texts) == 50
    for name in ("fp32", "int8-aliased"):
        page = pages(name)
        assert_same_predictions(page.classify(texts), REFERENCES[reference](sites[name][1], texts), texts)
        assert page.classify([]) == [] and not page.errors, name


def test_text_box_predicts_live_with_latency(pages, exported_tiny):
    page = pages("fp32").page
    page.wait_for_function("document.querySelector('#status').className === 'ready'")
    assert f"ONNX Runtime Web {npm.ONNXRUNTIME_WEB.version}" in page.inner_text("#status")
    predictor = Predictor(exported_tiny)
    for text in ("my invoice is wrong", "the courier lost my parcel"):
        page.fill("#text", text)  # typed: the page predicts on its own
        page.wait_for_function("text => document.querySelector('#result').dataset.text === text", arg=text)
        expected = predictor.predict([text])[0]
        assert page.inner_text("#label") == expected.label and page.inner_text("#score") == f"{100 * expected.score:.1f}%"
    assert re.fullmatch(r"\d+\.\d ms \(tokenize \d+\.\d ms, model \d+\.\d ms\)", page.inner_text("#latency"))
    assert len(page.query_selector_all("#scores tr")) == len(predictor.labels)


def test_a_file_url_says_how_to_serve_the_folder(browser, tiny_site):
    page = browser.new_page()
    page.goto((tiny_site / "index.html").as_uri())
    assert page.is_visible("#file-warning") and f"python -m http.server -d {tiny_site.name}" in page.inner_text("#file-warning")


# -------------------------------------------------------------------------------------------- bad input


def test_help_explains_every_option():
    result = runner.invoke(app, ["export-web", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--npm-cache", "--registry", "--batch-size", "--overwrite", "http.server"):
        assert option in result.stdout


def _without(exported: Path, name: str, out: Path) -> Path:
    shutil.copytree(exported, out)
    (out / name).unlink()
    return out


def bad_cases(exported: Path, trained: Path, tmp: Path) -> dict:
    unigram = artifacts.read_json(exported / artifacts.TOKENIZER)
    unigram["model"] = {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a", -1.0]]}
    (tmp / "busy").mkdir()
    (tmp / "busy" / "notes.txt").write_text("mine")
    return {
        "not a model": ([str(tmp / "nowhere")], "model directory not found"),
        "a trained, not exported, model": ([str(trained)], "not an exported model (missing model.onnx, manifest.json): export it first"),
        "no tokenizer.json": ([str(_without(exported, artifacts.TOKENIZER, tmp / "no-tok"))], "not an exported model (missing tokenizer.json)"),
        "unigram tokenizer": ([str(with_tokenizer(exported, unigram, tmp / "unigram"))], "a Unigram tokenizer is not supported by export-web (WordPiece and BPE are)"),
        "output holds the model": ([str(exported), "--out", str(exported.parent)], "--out holds the model directory"),
        "output exists": ([str(exported), "--out", str(tmp / "busy")], "busy: exists and is not a previous slmkit run: choose another --out or pass --overwrite"),
        "registry unreachable": ([str(exported), "--npm-cache", str(tmp / "empty-cache"), "--registry", "http://127.0.0.1:9"],
                                 f"cannot download onnxruntime-web@{npm.ONNXRUNTIME_WEB.version} from http://127.0.0.1:9/onnxruntime-web/-/"),
    }


@pytest.mark.parametrize("case", ["not a model", "a trained, not exported, model", "no tokenizer.json", "unigram tokenizer", "output holds the model", "output exists", "registry unreachable"])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, exported_tiny, trained_tiny, tmp_path):
    args, expected = bad_cases(exported_tiny, trained_tiny, tmp_path)[case]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "site")]
    result = runner.invoke(app, ["export-web", *args])
    assert result.exit_code == 2, result.output
    *notices, error = result.output.splitlines()
    assert error.startswith("error: ") and expected in error, result.output
    assert all(line.startswith("downloading ") for line in notices), result.output  # an empty cache says what it fetches
    assert not (tmp_path / "site").exists() and not list(tmp_path.glob(".*partial"))
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_the_cache_serves_offline_and_a_tampered_download_is_refused(exported_tiny, tmp_path):
    npm.fetch(npm.TOKENIZERS_JS, npm.default_cache())  # populated once (the other tests did it already)
    cache = tmp_path / "cache"
    shutil.copytree(npm.default_cache(), cache)
    offline = ExportWebConfig(model=str(exported_tiny), out=str(tmp_path / "site"), npm_cache=str(cache), registry="http://127.0.0.1:9")
    assert (export_web(offline).out / "vendor" / "tokenizers.min.js").is_file()  # no network needed
    assert (export_web(offline).out / "vendor" / "tokenizers.min.js").is_file()  # an earlier site is replaced without --overwrite

    # a mirror serving other bytes: refused, nothing kept in the cache
    tarball = tmp_path / "mirror" / npm.TOKENIZERS_JS.tarball
    tarball.parent.mkdir(parents=True)
    tarball.write_bytes(b"not the package")
    with pytest.raises(UserError, match="integrity check failed"):
        npm.fetch(npm.TOKENIZERS_JS, tmp_path / "fresh", registry=(tmp_path / "mirror").as_uri())
    assert not (tmp_path / "fresh" / f"{npm.TOKENIZERS_JS.name}@{npm.TOKENIZERS_JS.version}").exists()

    # a damaged cached file is noticed: it is downloaded again (here the registry is unreachable, so that fails)
    cached = npm.fetch(npm.TOKENIZERS_JS, cache)["tokenizers.min.js"]
    cached.write_text("tampered")
    with pytest.raises(UserError, match="cannot download"):
        npm.fetch(npm.TOKENIZERS_JS, cache, registry="http://127.0.0.1:9")
