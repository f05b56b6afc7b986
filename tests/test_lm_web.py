"""`slm export-web` of a causal LM: the autocomplete page, opened in headless Debian chromium, completes a typed
prefix with the same greedy tokens and text as slmkit.runtime.LMGenerator (fp32 and int8), shows them as ghost
text and accepts them with Tab.

The tiny LM is random, so its completions are stray bytes rather than words: the ids are what is compared, and
the text as `tokenizers` decodes them. The JavaScript packages come from the npm cache (see tests/test_web.py).
"""

from __future__ import annotations

import functools
import re
import threading
import warnings
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slmkit import artifacts
from slmkit.cli import app
from slmkit.config import ExportConfig, ExportWebConfig, QuantizeConfig
from slmkit.export import export
from slmkit.export_web import export_web
from slmkit.generate import GenerationConfig
from slmkit.quantize import quantize
from slmkit.runtime import LMGenerator

runner = CliRunner()
SUGGEST = 8
PREFIXES = [
    "my parcel", "Why is my password still locked? ", "a", " ", "café naïve 🙂 日本語", "refund\nnew line",
    " ".join(["my parcel is late"] * 40),  # longer than the context window: cut from the left
]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lm-web")


@pytest.fixture(scope="module")
def models(tiny_lm, tmp_path_factory) -> dict[str, Path]:
    """The tiny LM exported (fp32) and quantized (int8)."""
    work = tmp_path_factory.mktemp("lm-web-models")
    fp32 = export(ExportConfig(model=str(tiny_lm), out=str(work / "fp32"), probe_size=2)).out
    return {"fp32": fp32, "int8": quantize(QuantizeConfig(model=str(fp32), out=str(work / "int8")), progress=False).out}


@pytest.fixture(scope="module")
def sites(models, root) -> dict[str, Path]:
    result = runner.invoke(app, ["export-web", str(models["fp32"]), "--out", str(root / "fp32")])
    assert result.exit_code == 0, result.output
    assert "autocomplete (8 tokens per suggestion)" in " ".join(result.output.split())
    return {"fp32": root / "fp32", "int8": export_web(ExportWebConfig(model=str(models["int8"]), out=str(root / "int8"))).out}


@pytest.fixture(scope="module")
def server(root):
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def pages(browser, server, sites):
    opened = {}

    def open_page(name: str):
        if name not in opened:
            page = browser.new_page()
            page.errors = []
            page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
            page.on("pageerror", lambda e: page.errors.append(str(e)))
            page.goto(f"{server}/{name}/")
            page.evaluate("() => window.slmkit.ready.then(() => true)")  # raises with the page's error if loading failed
            page.wait_for_function("document.querySelector('#status').className === 'ready'")
            opened[name] = page
        return opened[name]

    return open_page


def python_completion(generator: LMGenerator, prefix: str) -> tuple[list[int], str]:
    """The Python runtime's greedy ids for `prefix` (cut from the left as the page cuts it) and their text."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the over-long prefix: cut with a warning
        ids = generator.generate_ids(generator.encode(prefix), GenerationConfig(max_new_tokens=SUGGEST, temperature=0.0))
    return ids, generator.tokenizer.decode(ids)


def test_site_files_and_manifest(sites, models):
    site = sites["fp32"]
    names = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    assert names == {
        "index.html", "slmkit.js", "config.yaml", "metrics.json", "model/model.onnx", "model/tokenizer.json", "model/manifest.json",
        "vendor/ort.wasm.bundle.min.js", "vendor/ort-wasm-simd-threaded.wasm", "vendor/tokenizers.min.js",
        "vendor/LICENSE-onnxruntime-web", "vendor/LICENSE-tokenizers", "vendor/THIRD_PARTY.md",
    }
    page = artifacts.read_json(site / "model" / "manifest.json")
    source = artifacts.read_json(models["fp32"] / "manifest.json")
    assert page["task"] == "lm" and page["suggest_tokens"] == SUGGEST
    for key in ("cache", "context_length", "bos_id", "eos_ids", "inputs", "outputs"):
        assert page[key] == source[key], key
    assert (site / "model" / "model.onnx").read_bytes() == (models["fp32"] / "model.onnx").read_bytes()
    for name in ("index.html", "slmkit.js"):
        text = (site / name).read_text()
        assert "https://" not in text and not re.search(r"http://(?!localhost:8000/)", text), name


@pytest.mark.parametrize("name", ["fp32", "int8"])
def test_page_completions_equal_the_python_runtime(name, pages, models):
    page = pages(name)
    generator = LMGenerator(models[name])
    assert page.evaluate("texts => window.slmkit.encode(texts)", PREFIXES) == [generator.encode(p) for p in PREFIXES]
    for prefix in PREFIXES:
        got = page.evaluate("([text, n]) => window.slmkit.complete(text, n)", [prefix, SUGGEST])
        ids, text = python_completion(generator, prefix)
        assert got["ids"] == ids and got["text"] == text, (name, prefix)
    assert not page.errors, page.errors


def test_typing_shows_the_completion_as_ghost_text_and_tab_accepts_it(pages, models):
    page = pages("fp32")
    generator = LMGenerator(models["fp32"])
    box = page.locator("#text")
    box.click()
    box.press_sequentially("my parcel is")  # typed key by key: the page completes as the text changes
    page.wait_for_function("() => document.querySelector('#result').dataset.text === 'my parcel is'")
    _, expected = python_completion(generator, "my parcel is")
    assert expected and page.inner_text("#ghost .suggestion") == expected
    assert page.inner_text("#ghost .typed") == "my parcel is"
    assert re.fullmatch(r"first token \d+\.\d ms, \d+ tokens? in \d+\.\d ms", page.inner_text("#latency"))
    box.press("Tab")
    accepted = "my parcel is" + expected
    assert box.input_value() == accepted  # Tab took the suggestion, focus stayed in the box
    page.wait_for_function("text => document.querySelector('#result').dataset.text === text", arg=accepted)
    assert page.inner_text("#ghost .suggestion") == python_completion(generator, accepted)[1]
    box.press("Escape")
    assert page.inner_text("#ghost .suggestion") == ""
    assert not page.errors, page.errors


def test_a_manifest_without_the_cache_layout_is_refused(models, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        (broken / name).write_bytes((models["fp32"] / name).read_bytes())
    manifest = artifacts.read_json(models["fp32"] / "manifest.json")
    artifacts.write_json(broken / "manifest.json", {k: v for k, v in manifest.items() if k != "cache"})
    result = runner.invoke(app, ["export-web", str(broken), "--out", str(tmp_path / "site")])
    assert result.exit_code == 2 and "not an slmkit causal-LM manifest" in result.output, result.output
    assert not (tmp_path / "site").exists() and not list(tmp_path.glob(".*partial"))
