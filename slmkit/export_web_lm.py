"""`slm export-web` of a causal LM: a static page that autocompletes as the user types, entirely in the browser.

`slmkit.export_web.export_web` sends an exported causal LM (manifest task "lm", the output of `slm export` or
`slm quantize` of a causal-LM directory) here. The site has the classification site's layout and vendored
packages (ONNX Runtime Web, tokenizers.js; see slmkit.export_web), with the autocomplete page and script:

    index.html            a text area that shows the model's greedy completion as grey ghost text (Tab accepts)
    slmkit.js             the completer: tokenizers.js + ONNX Runtime Web with the KV cache loop (see slmkit/web/lm.js)
    model/                model.onnx and tokenizer.json as exported; manifest.json, what the page needs
    vendor/               the pinned JavaScript packages, their licenses and THIRD_PARTY.md
    config.yaml, metrics.json

The page's completion equals `slmkit.runtime.LMGenerator`'s greedy one (tests/test_lm_web.py checks it in Chromium).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from slmkit import artifacts
from slmkit.config import ExportWebConfig
from slmkit.errors import UserError

SCRIPT = "lm.js"  # in slmkit/web: written as the site's slmkit.js
PAGE = "lm.html"  # ... and as its index.html
SUGGEST_TOKENS = 8  # new tokens per suggestion: a few words, well inside the 20 ms budget of a tiny LM


def export_web_lm(cfg: ExportWebConfig, model_dir: Path, manifest: dict, overwrite: bool = False, notify: Callable[[str], None] | None = None):
    """Write the autocomplete site of the exported causal LM `model_dir` into `cfg.out` (module doc)."""
    from slmkit.export_web import PACKAGES, _check_tokenizer, _external_data, _title, write_site

    if "cache" not in manifest or not isinstance(manifest.get("context_length"), int):
        raise UserError(f"{model_dir / artifacts.MANIFEST}: not an slmkit causal-LM manifest (no cache layout or context_length): export the model again with slm export")
    tokenizer_type = _check_tokenizer(model_dir)
    if _external_data(model_dir / artifacts.ONNX_MODEL):
        raise UserError(f"{model_dir / artifacts.ONNX_MODEL}: keeps tensors in external data files, which the page does not load: export it as one file (slm export does)")
    page_manifest = {
        "format": "slmkit-web",
        "model": _title(model_dir),
        "task": "lm",
        "inputs": manifest["inputs"],
        "outputs": manifest["outputs"],
        "cache": manifest["cache"],
        "position_ids": bool(manifest.get("position_ids", True)),
        "context_length": manifest["context_length"],
        "bos_id": manifest.get("bos_id"),
        "eos_ids": list(manifest.get("eos_ids") or []),
        "pad_id": int(manifest.get("pad_id", 0)),
        "suggest_tokens": SUGGEST_TOKENS,
        "precision": manifest.get("precision", "fp32"),
        "tokenizer": tokenizer_type,
        "vendored": {p.name: p.version for p in PACKAGES},
    }
    return write_site(cfg, model_dir, page_manifest, SCRIPT, PAGE, {"task": "lm", "suggest_tokens": SUGGEST_TOKENS}, overwrite, notify)
