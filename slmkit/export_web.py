"""`slm export-web`: an exported model as a static site that runs it entirely in the browser: it classifies text,
highlights an NER model's entities, or answers a question from a context with a QA model (see slmkit.js).

Read top to bottom: `export_web(cfg)` checks the input — any directory `slmkit.runtime.Predictor` loads (the
output of slm export or slm quantize, or a pipeline's deploy directory), with the same safety checks — then
that the page can reproduce it: a WordPiece or BPE tokenizer, the usual BERT inputs, the ONNX graph in one
file. It fetches the pinned JavaScript packages (slmkit.npm: from the npm registry once, then from the cache)
and writes the site in a staging directory renamed into place when complete:

    index.html            a text box with live prediction, every label's probability and the latency
    slmkit.js             the classifier: tokenizers.js + ONNX Runtime Web, reproducing Predictor (see its header)
    model/                model.onnx and tokenizer.json as exported; manifest.json, what the page needs
    vendor/               ort.wasm.bundle.min.js + ort-wasm-simd-threaded.wasm (onnxruntime-web),
                          tokenizers.min.js (@huggingface/tokenizers), their licenses and THIRD_PARTY.md
    config.yaml, metrics.json   how it was made; the size of each file

The page needs a web server (browsers refuse module scripts and fetch() on file:// URLs); any static one
works, e.g. `python -m http.server -d site 8000`. It fetches nothing from elsewhere.
"""

from __future__ import annotations

import html
import mmap
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from slmkit import artifacts, npm
from slmkit.config import ExportWebConfig, save_config
from slmkit.errors import UserError
from slmkit.runtime import load_manifest

SUPPORTED_TOKENIZERS = ("WordPiece", "BPE")  # checked for id parity with `tokenizers` by tests/test_web.py
INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what the page knows how to feed
PACKAGES = (npm.ONNXRUNTIME_WEB, npm.TOKENIZERS_JS)
ASSETS = Path(__file__).parent / "web"  # the page and its script, copied into every site
ORT_LICENSE = "onnxruntime-web.LICENSE"  # its npm package carries none: the MIT text of its repository, kept in slmkit/web


@dataclass
class ExportWebResult:
    out: Path
    metrics: dict  # the metrics.json written into `out`: bytes per file, vendored versions


def export_web(cfg: ExportWebConfig, overwrite: bool = False, notify: Callable[[str], None] | None = None) -> ExportWebResult:
    """Write a static site into `cfg.out` that classifies text with `cfg.model` in the browser (a causal LM's
    site autocompletes instead: slmkit.export_web_lm). `notify` hears
    of downloads (the first build on a machine fetches about 33 MB from the npm registry)."""
    cfg.validate()
    model_dir = Path(cfg.model)
    manifest = load_manifest(model_dir)  # the runtime's checks: an exported model, no pickle, no outside data
    if manifest.get("task") == "lm":  # a causal LM: the autocomplete page
        from slmkit.export_web_lm import export_web_lm

        return export_web_lm(cfg, model_dir, manifest, overwrite, notify)
    tokenizer_type = _check_servable(model_dir, manifest)
    page_manifest = {
        "format": "slmkit-web",
        "model": _title(model_dir),
        "task": manifest.get("task", "classification"),
        "labels": manifest["labels"],
        "inputs": manifest["inputs"],
        "output": manifest.get("output", "logits"),
        "outputs": manifest.get("outputs", [manifest.get("output", "logits")]),
        "stride": int(manifest.get("task_options", {}).get("stride", 128)),  # QA: context tokens shared by windows
        "max_length": int(manifest["max_length"]),
        "pad_id": int(manifest.get("pad_id", 0)),
        "batch_size": cfg.batch_size,
        "precision": manifest.get("precision", "fp32"),
        "tokenizer": tokenizer_type,
        "vendored": {p.name: p.version for p in PACKAGES},
    }
    return write_site(cfg, model_dir, page_manifest, artifacts.WEB_SCRIPT, artifacts.WEB_PAGE, {"labels": len(page_manifest["labels"])}, overwrite, notify)


def write_site(cfg: ExportWebConfig, model_dir: Path, page_manifest: dict, script: str, page: str, metrics: dict,
               overwrite: bool, notify: Callable[[str], None] | None) -> ExportWebResult:
    """The site every page shares, written into `cfg.out`: model/ (the graph, tokenizer.json and `page_manifest`),
    vendor/ (the pinned packages, fetched before anything is written, their licenses and THIRD_PARTY.md), the
    page's script and HTML (`script`, `page` in slmkit/web), config.yaml, and metrics.json (bytes per file,
    `metrics`, the vendored versions)."""
    out = Path(cfg.out)
    if model_dir.resolve().is_relative_to(out.resolve()):
        raise UserError(f"{out}: --out holds the model directory {model_dir}, which the site would replace: choose another --out")
    artifacts.check_output(out, overwrite)
    cache = Path(cfg.npm_cache).expanduser() if cfg.npm_cache else npm.default_cache()
    vendored = [(package, npm.fetch(package, cache, cfg.registry, notify)) for package in PACKAGES]  # before writing anything
    with artifacts.staged(out, overwrite) as staging:
        site_model, vendor = staging / artifacts.WEB_MODEL, staging / artifacts.WEB_VENDOR
        site_model.mkdir()
        vendor.mkdir()
        for name in (artifacts.ONNX_MODEL, artifacts.TOKENIZER):
            shutil.copyfile(model_dir / name, site_model / name)
        artifacts.write_json(site_model / artifacts.MANIFEST, page_manifest)
        for package, files in vendored:
            for name, path in files.items():
                target = f"LICENSE-{package.name.rsplit('/', 1)[-1]}" if name == "LICENSE" else name
                shutil.copyfile(path, vendor / target)
        (vendor / "LICENSE-onnxruntime-web").write_text((ASSETS / ORT_LICENSE).read_text(encoding="utf-8"), encoding="utf-8")
        (vendor / "THIRD_PARTY.md").write_text(_third_party(cfg.registry), encoding="utf-8")
        (staging / artifacts.WEB_SCRIPT).write_text((ASSETS / script).read_text(encoding="utf-8"), encoding="utf-8")
        text = (ASSETS / page).read_text(encoding="utf-8")
        text = text.replace("__TITLE__", html.escape(page_manifest["model"])).replace("__FOLDER__", html.escape(out.name))
        (staging / artifacts.WEB_PAGE).write_text(text, encoding="utf-8")

        files = sorted(p for p in staging.rglob("*") if p.is_file())
        metrics = {
            "bytes": {p.relative_to(staging).as_posix(): p.stat().st_size for p in files},
            "total_bytes": sum(p.stat().st_size for p in files),
            **metrics,
            "vendored": page_manifest["vendored"],
        }
        save_config(cfg, staging / artifacts.CONFIG)  # paths as given: the site may be published, absolute paths stay private
        artifacts.write_json(staging / artifacts.METRICS, metrics)
    return ExportWebResult(out, metrics)


def _title(model_dir: Path) -> str:
    """The page's title: the model directory's name (a pipeline's, for its runs/<name>/deploy directory)."""
    path = model_dir.resolve()
    return path.parent.name if path.name == "deploy" and path.parent.name else path.name


def _check_servable(model_dir: Path, manifest: dict) -> str:
    """What the page cannot reproduce is refused here, in one line; returns the tokenizer's model type."""
    task = manifest.get("task", "classification")
    if task not in ("classification", "ner", "qa"):
        raise UserError(f"{model_dir}: a {task} model: export-web takes classification, NER and QA models")
    unknown = [name for name in manifest.get("inputs", []) if name not in INPUTS]
    if unknown or (task != "qa" and not manifest.get("labels")) or not isinstance(manifest.get("max_length"), int):
        raise UserError(f"{model_dir / artifacts.MANIFEST}: not an slmkit classifier manifest (labels, max_length, inputs among {', '.join(INPUTS)}): export the model again with slm export")
    kind = _check_tokenizer(model_dir)
    if _external_data(model_dir / artifacts.ONNX_MODEL):
        raise UserError(f"{model_dir / artifacts.ONNX_MODEL}: keeps tensors in external data files, which the page does not load: export it as one file (slm export does)")
    return kind


def _check_tokenizer(model_dir: Path) -> str:
    """The tokenizer.json's model type, refused in one line unless the page's tokenizers.js reproduces it."""
    path = model_dir / artifacts.TOKENIZER
    try:
        kind = artifacts.read_json(path)["model"]["type"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}: not a tokenizers tokenizer.json (no model.type): export the model again with slm export") from None
    if kind not in SUPPORTED_TOKENIZERS:
        raise UserError(f"{path}: a {kind} tokenizer is not supported by export-web ({' and '.join(SUPPORTED_TOKENIZERS)} are): serve this model from Python (slmkit.runtime.Predictor) instead")
    return kind


def _external_data(path: Path) -> bool:
    """Whether the graph keeps tensors in separate files (a model over 2 GB, or one saved that way)."""
    import onnx

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        if view.find(b"\x0a\x08location") < 0:  # the serialized key of an external-data entry (see slmkit.runtime)
            return False
    model = onnx.load(str(path), load_external_data=False)
    tensors = list(model.graph.initializer) + [a.t for node in model.graph.node for a in node.attribute if a.HasField("t")]
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors)


def _third_party(registry: str) -> str:
    lines = ["# Third-party files in this folder", "", "Downloaded from the npm registry by `slm export-web`, checked against the pinned integrity.", ""]
    for p in PACKAGES:
        names = ", ".join(f"`{n}`" for n in p.files.values() if n != "LICENSE")
        lines.append(f"- {names}: `{p.name}` {p.version} ({p.license}, LICENSE-{p.name.rsplit('/', 1)[-1]}), "
                     f"{registry.rstrip('/')}/{p.tarball}, integrity `{p.integrity}`")
    return "\n".join(lines) + "\n"
