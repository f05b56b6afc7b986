"""The artifact directory: the only module that knows its file names.

A trained model directory is a Hugging Face model directory plus slmkit's own records:

    config.json, model.safetensors            the model (transformers loads it unchanged)
    tokenizer.json, tokenizer_config.json     the tokenizer (transformers and `tokenizers` load it)
    config.yaml                               the resolved stage config that produced it
    metrics.json                              what the stage measured
    pruned_bert.py                            (slm prune outputs) the model class, for trust_remote_code
    distill-cache/                            (teachers of slm distill) cached teacher outputs, safetensors
    student_models.py                         (slm distill BiLSTM / CNN students) likewise

Outputs are built in a staging directory beside the destination (`.<name>.partial`) and renamed into place
only when complete, so an interrupted or failed run never leaves a half-written output. The staging
directory also holds the training checkpoint that `--resume` continues from.
Weights are read and written with safetensors only; nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from slmkit.errors import UserError

CONFIG = "config.yaml"
METRICS = "metrics.json"
HF_CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHECKPOINT = "checkpoint"  # inside the staging dir: the latest finished epoch, for --resume
CHECKPOINT_STATE = "state.json"
OPTIMIZER = "optimizer.safetensors"
EVAL_DIR = "eval"  # <model>/eval/<data name>/ holds `slm evaluate` outputs
ONNX_MODEL = "model.onnx"  # an exported directory: the ONNX graph ...
MANIFEST = "manifest.json"  # ... and what the runtime needs to serve it (labels, inputs, max length, source)
DISTILL_CACHE = "distill-cache"  # <teacher>/distill-cache/<key>.safetensors: teacher outputs cached by slm distill
BENCH_RESULTS = "results.json"  # a bench report directory: the measurements (schema: slmkit/schemas/) ...
BENCH_MARKDOWN = "report.md"  # ... rendered as markdown ...
BENCH_HTML = "report.html"  # ... and as one self-contained HTML page (charts embedded)
BENCH_CARDS = "models"  # <report>/models/<name>/model-card.md, one per slmkit model
MODEL_CARD = "model-card.md"
WEB_PAGE = "index.html"  # an export-web site: the page (a text box with live predictions) ...
WEB_SCRIPT = "slmkit.js"  # ... the script that classifies in the browser ...
WEB_MODEL = "model"  # ... model/ holding the ONNX graph, tokenizer.json and the page's manifest.json ...
WEB_VENDOR = "vendor"  # ... and vendor/ the pinned JavaScript packages with their licenses (THIRD_PARTY.md)
RUN_RECORD = "run.json"  # a `slm run` directory: the dataset fingerprint, every stage's record, the selection
STAGES_DIR = "stages"  # <run>/stages/<stage>-<key>/: finished stage outputs, keyed by a hash of their inputs
DEPLOY_DIR = "deploy"  # <run>/deploy/: the bundle to ship
SPLITS = {"train": "train.jsonl", "eval": "eval.jsonl", "test": "test.jsonl"}  # the data stage's files
LABELS = "labels.txt"  # a bundle's labels, one per line in class-id order
BUNDLE_README = "README.md"  # a bundle's model card
BUNDLE_REPORT = "report"  # a bundle's copy of the bench report
BENCH_CHARTS = {"pareto": "pareto.png", "throughput": "throughput.png", "size": "size.png"}
# model_type -> the slmkit module whose import registers that model class with transformers' Auto* factories
CUSTOM_MODEL_MODULES = {
    "slm_pruned_bert": "slmkit.pruned_bert",  # slm prune outputs
    "slm_bilstm": "slmkit.student_models",  # slm distill students
    "slm_cnn": "slmkit.student_models",
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # never loaded: unpickling runs code


# ------------------------------------------------------------------------------------------ output staging


def staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def is_run_dir(path: Path) -> bool:
    """A finished slmkit output: it has the stage config and its metrics (a bench report: its results)."""
    return (path / CONFIG).is_file() and ((path / METRICS).is_file() or (path / BENCH_RESULTS).is_file())


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse to replace a directory that is not a previous slmkit output, unless asked to."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is a file: choose another --out")
    if out.is_dir() and any(out.iterdir()) and not is_run_dir(out) and not overwrite:
        raise UserError(f"{out}: exists and is not a previous slmkit run: choose another --out or pass --overwrite")


def begin(out: Path, overwrite: bool, resume: bool = False) -> Path:
    """Check the destination and return a staging directory to write into (kept as is when resuming)."""
    check_output(out, overwrite)
    staging = staging_dir(out)
    if resume:
        if not (staging / CHECKPOINT / CHECKPOINT_STATE).is_file():
            raise UserError(f"{out}: nothing to resume (no checkpoint in {staging}): run without --resume")
        return staging
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def commit(staging: Path, out: Path) -> Path:
    """Move the finished staging directory to `out`, replacing a previous output only at the last moment."""
    shutil.rmtree(staging / CHECKPOINT, ignore_errors=True)
    old = out.parent / f".{out.name}.old"
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


@contextlib.contextmanager
def staged(out: Path, overwrite: bool, writer: bool = True) -> Iterator[Path]:
    """A staging directory for a stage without resume: committed to `out` when the block completes, removed
    when it raises, so a failed run leaves nothing behind.

    `writer=False` (the processes of a torchrun other than rank 0): the same directory, to read what rank 0
    writes there; it is neither created, committed nor removed."""
    if not writer:
        yield staging_dir(out)
        return
    staging = begin(out, overwrite)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    commit(staging, out)


# ---------------------------------------------------------------------------------------- records


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


SERVING_FILES = (TOKENIZER, HF_CONFIG, TOKENIZER_CONFIG, "special_tokens_map.json", "vocab.txt")


def copy_serving_files(src: Path, dst: Path) -> None:
    """The tokenizer and model config files an exported directory carries beside its graph."""
    for name in SERVING_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)


def stage_dir(run_dir: Path, name: str, key: str) -> Path:
    """Where `slm run` keeps the output of stage `name` whose inputs hash to `key`."""
    return run_dir / STAGES_DIR / f"{name}-{key}"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def eval_dir(model_dir: Path, data_path: Path) -> Path:
    return model_dir / EVAL_DIR / data_path.stem


# ---------------------------------------------------------------------------------------- model


def save_model(model: Any, hf_tokenizer: Any, directory: Path) -> None:
    """Write a Hugging Face-loadable model (safetensors) and tokenizer into `directory`."""
    source = Path(hf_tokenizer.name_or_path or "") / TOKENIZER
    model.save_pretrained(directory, safe_serialization=True)
    with keeping_aliases(source, Path(directory) / TOKENIZER):
        hf_tokenizer.save_pretrained(directory)


@contextlib.contextmanager
def keeping_aliases(source: Path, target: Path):
    """Around a save of `source`'s tokenizer to `target`: put back the aliases of a trimmed vocabulary (several
    pieces sharing one id, see slmkit.trim). The tokenizers library saves one piece per id, and which one is
    arbitrary, so the vocabulary is restored from `source` when the saved one is that vocabulary less the aliases."""
    vocab = read_json(source)["model"].get("vocab") if source.is_file() else None
    yield
    if isinstance(vocab, dict) and len(set(vocab.values())) < len(vocab):
        saved = read_json(target)
        if all(vocab.get(token) == i for token, i in saved["model"]["vocab"].items()):
            saved["model"]["vocab"] = vocab
            write_json(target, saved)


def model_task(directory: Path) -> str:
    """The task a model directory was trained for (from an exported directory's manifest, else its config.yaml;
    classification if absent)."""
    import yaml

    if (directory / MANIFEST).is_file():
        return read_json(directory / MANIFEST).get("task", "classification")
    path = directory / CONFIG
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("task", "classification") if path.is_file() else "classification"


def load_weights(model: Any, directory: Path) -> None:
    """Load `directory`'s model.safetensors into `model` in place (every key must match)."""
    load_state(model, directory / WEIGHTS)


def unique_state(model: Any) -> dict:
    """The model's state dict without the second name of a tied tensor (a causal LM's output layer that is its
    input embedding): safetensors stores each tensor once, as save_pretrained does."""
    seen: set = set()
    state = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        state[name] = tensor.contiguous()
    return state


def load_state(model: Any, path: Path) -> None:
    """Load a safetensors state dict into `model` in place: every key must match, except the tied names a file
    stores once (see `unique_state`)."""
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    params = model.state_dict()
    loaded = {params[k].data_ptr() for k in params if k not in missing}
    untied = [k for k in missing if params[k].data_ptr() not in loaded]
    if untied or unexpected:
        raise RuntimeError(f"{path}: weights do not match the model (missing {untied[:5]}, unexpected {unexpected[:5]})")


def model_labels(directory: Path) -> list[str]:
    """The label names of a trained classifier or tagger, in class-id order (from its config.json); none for a
    QA model (transformers does not save the default names of its start/end outputs)."""
    id2label = read_json(directory / HF_CONFIG).get("id2label") or {}
    return [id2label[str(i)] for i in range(len(id2label))]


def refuse_pickle(directory: Path, needed: str) -> None:
    """A directory that holds weights only in pickle files is refused: loading them could run arbitrary code."""
    if (directory / needed).is_file():
        return
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(
            f"{directory / pickles[0]}: pickle weights are never loaded (unpickling can run code): "
            f"convert the model to {needed} (save_pretrained(..., safe_serialization=True))"
        )


def check_model_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise UserError(f"{directory}: model directory not found: pass the --out directory of slm train")
    if (directory / ONNX_MODEL).is_file() and not (directory / WEIGHTS).is_file():
        raise UserError(f"{directory}: an exported ONNX model, not a PyTorch one: pass the slm train output (or use slmkit.runtime)")
    refuse_pickle(directory, WEIGHTS)
    missing = [n for n in (HF_CONFIG, WEIGHTS, TOKENIZER) if not (directory / n).is_file()]
    if missing:
        raise UserError(f"{directory}: not a trained model (missing {', '.join(missing)}): pass the --out directory of slm train")


def register_model_type(directory: Path) -> None:
    """Make transformers' Auto* factories know the model class of `directory` when it is one of slmkit's own
    (pruned BERT, BiLSTM or CNN student)."""
    module = CUSTOM_MODEL_MODULES.get(read_json(directory / HF_CONFIG).get("model_type"))
    if module:
        importlib.import_module(module)


def load_model(directory: Path) -> tuple[Any, Any]:
    """The trained model (eval mode) and its `transformers` tokenizer, from safetensors only."""
    import transformers
    from transformers import AutoTokenizer

    from slmkit.tasks import get_task

    check_model_dir(directory)
    transformers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    register_model_type(directory)
    auto_class = getattr(transformers, get_task(model_task(directory)).auto_class)  # the head the task trained
    model = auto_class.from_pretrained(directory, use_safetensors=True)
    model.eval()
    return model, AutoTokenizer.from_pretrained(directory)


# ---------------------------------------------------------------------------------------- checkpoint


def save_checkpoint(staging: Path, model: Any, optimizer: Any, state: dict) -> None:
    """The latest finished epoch: weights, AdamW moments and the loop state, all without pickle."""
    from safetensors.torch import save_file

    ckpt = staging / CHECKPOINT
    tmp = staging / (CHECKPOINT + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(unique_state(model), str(tmp / WEIGHTS))
    opt = optimizer.state_dict()
    tensors = {f"{i}.{name}": t for i, s in opt["state"].items() for name, t in s.items()}
    save_file(tensors, str(tmp / OPTIMIZER))
    write_json(tmp / CHECKPOINT_STATE, {**state, "param_groups": opt["param_groups"]})
    shutil.rmtree(ckpt, ignore_errors=True)
    os.replace(tmp, ckpt)


def load_checkpoint(staging: Path, model: Any, optimizer: Any) -> dict:
    """Restore weights and optimizer from the checkpoint; returns the loop state saved with them."""
    from safetensors.torch import load_file

    ckpt = staging / CHECKPOINT
    load_state(model, ckpt / WEIGHTS)
    state = read_json(ckpt / CHECKPOINT_STATE)
    per_param: dict[int, dict] = {}
    for key, tensor in load_file(str(ckpt / OPTIMIZER)).items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = tensor
    optimizer.load_state_dict({"state": per_param, "param_groups": state.pop("param_groups")})
    return state
