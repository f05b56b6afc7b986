"""Pinned JavaScript packages, fetched from the npm registry at build time and vendored into static pages.

    from slmkit import npm
    files = npm.fetch(npm.ONNXRUNTIME_WEB, cache=npm.default_cache())   # {"ort.wasm.bundle.min.js": Path, ...}

No node or npm is needed: the tarball of an exact version is downloaded with urllib from the registry
(`https://registry.npmjs.org/<name>/-/<base>-<version>.tgz`, or a mirror), checked against the sha512
integrity pinned here (the registry's own `dist.integrity` for that version), and only the listed files are
extracted into the cache (`~/.cache/slmkit/npm/<name>@<version>/`). Later builds read the cache, offline; a
cached file is checked against the sha256 recorded when it was extracted, so a damaged cache is fetched again.
Tarball members are read by name, never extracted wholesale: a crafted archive cannot write outside the cache.

To move to a new version: change `version`, `integrity` (`npm view <name>@<version> dist.integrity`) and, if
the file layout changed, `files`; then run tests/test_web.py.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from slmkit.errors import UserError

REGISTRY = "https://registry.npmjs.org"
RECORD = ".slmkit-npm.json"  # in each cached package directory: version, integrity, sha256 of every file
TIMEOUT_S = 60  # per network read


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # "sha512-<base64>": the registry's dist.integrity of this exact version
    license: str  # SPDX identifier, from its package.json
    files: dict[str, str]  # member path in the tarball (under package/) -> file name in the cache and the page

    @property
    def tarball(self) -> str:
        """The tarball's path under the registry URL."""
        return f"{self.name}/-/{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"


# ONNX Runtime Web, the CPU (WebAssembly) build only: the bundle has the Emscripten glue inlined, so a page
# needs this one module and the .wasm (single-threaded use needs no cross-origin isolation). Renamed to .js so
# that any static server sends a JavaScript MIME type (Python's http.server knew no .mjs before 3.12).
ONNXRUNTIME_WEB = Package(
    name="onnxruntime-web",
    version="1.30.0",
    integrity="sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ==",
    license="MIT",
    files={"dist/ort.wasm.bundle.min.mjs": "ort.wasm.bundle.min.js", "dist/ort-wasm-simd-threaded.wasm": "ort-wasm-simd-threaded.wasm"},
)
# Hugging Face's tokenizers.js (what transformers.js 4 tokenizes with): reads tokenizer.json, no dependencies.
TOKENIZERS_JS = Package(
    name="@huggingface/tokenizers",
    version="0.2.0",
    integrity="sha512-LidMHe1FpcSYH4vcSjXooda34pC0M8m1gmDOv7SQi6Iv+ib1zX7J3sHBCC9/3FPCkn2k1b55FneVqMRxrr99pg==",
    license="Apache-2.0",
    files={"dist/tokenizers.min.mjs": "tokenizers.min.js", "LICENSE": "LICENSE"},
)


def default_cache() -> Path:
    """Where fetched packages are kept: $XDG_CACHE_HOME/slmkit/npm, else ~/.cache/slmkit/npm."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slmkit" / "npm"


def fetch(package: Package, cache: Path, registry: str = REGISTRY, notify: Callable[[str], None] | None = None) -> dict[str, Path]:
    """The package's listed files in the cache (downloaded and verified first if missing): name -> path.
    `notify` is told before a download starts."""
    directory = cache / f"{package.name}@{package.version}"
    if not _cached(package, directory):
        if notify:
            notify(f"downloading {package.name}@{package.version} from {registry.rstrip('/')} into {cache} (once)")
        _download(package, directory, registry)
    return {name: directory / name for name in package.files.values()}


def _cached(package: Package, directory: Path) -> bool:
    try:
        record = json.loads((directory / RECORD).read_text(encoding="utf-8"))
        return record["integrity"] == package.integrity and all(
            _sha256((directory / name).read_bytes()) == record["sha256"].get(name) for name in package.files.values()
        )
    except (OSError, ValueError, KeyError):
        return False


def _download(package: Package, directory: Path, registry: str) -> None:
    url = f"{registry.rstrip('/')}/{package.tarball}"
    what = f"{package.name}@{package.version}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(
            f"cannot download {what} from {url} ({reason}): export-web fetches it once from the npm registry into "
            f"{directory.parent}; connect to the registry (or pass --registry with a mirror) and run it again"
        ) from None
    algorithm, _, expected = package.integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise UserError(f"{url}: integrity check failed ({algorithm} {actual[:16]}... is not the pinned {expected[:16]}...): the registry or mirror served other bytes; nothing was kept")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".partial", dir=directory.parent))  # one per build
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member, name in package.files.items():
                source = archive.extractfile(f"package/{member}")  # by name only: nothing else is written
                if source is None:
                    raise KeyError(member)
                (staging / name).write_bytes(source.read())
    except (KeyError, tarfile.TarError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"{url}: the tarball lacks {e}: slmkit.npm's file list does not fit {what}") from None
    record = {"package": package.name, "version": package.version, "integrity": package.integrity, "url": url,
              "sha256": {name: _sha256((staging / name).read_bytes()) for name in package.files.values()}}
    (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(directory, ignore_errors=True)  # a damaged earlier copy
    try:
        os.replace(staging, directory)
    except OSError:  # a concurrent build put its verified copy there first
        shutil.rmtree(staging, ignore_errors=True)
        if not _cached(package, directory):
            raise


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
