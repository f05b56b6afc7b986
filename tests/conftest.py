"""Shared fixtures: a tiny random BERT built locally and synthetic data with a known answer.

The tiny model (2 layers, hidden 32, a 60-word WordPiece vocabulary) trains in about a second, so tests run the
real training code end to end. The synthetic task: each text holds one cue word that decides its label among
filler words, so a working pipeline reaches (near) perfect accuracy and a broken one stays at chance.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CUES = {"billing": ["invoice", "charge", "refund"], "delivery": ["parcel", "courier", "shipping"], "login": ["password", "username", "locked"]}
FILLER = ["my", "the", "please", "help", "with", "today", "is", "not", "again", "why", "still", "a", "problem", "thanks", "hello"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# `make test` runs the suite on two workers (pytest-xdist, `--dist loadgroup`). Every file is one group, so it
# stays on one worker and builds its module fixtures once; the search tests continue the pipeline tests' run (a
# session fixture), so the two files form one group.
SAME_WORKER = {"test_search": "test_pipeline"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        item.add_marker(pytest.mark.xdist_group(SAME_WORKER.get(module, module)))


def synthetic_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    labels = sorted(CUES)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = rng.sample(FILLER, rng.randint(2, 7)) + [rng.choice(CUES[label])]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A random-initialized 2-layer, 32-hidden BERT with its own WordPiece tokenizer, saved as a HF directory."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
    import torch

    words = sorted({w for ws in CUES.values() for w in ws} | set(FILLER))
    vocab = {token: i for i, token in enumerate(SPECIAL + words)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    directory = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    hf_tok.save_pretrained(directory)
    return directory


# the causal-LM families slmkit takes as `--base`; tests build each one tiny and random (a few seconds for all)
LM_FAMILIES = ("llama", "mistral", "phi", "gemma", "qwen2")
LM_CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)


def lm_corpus(n: int, seed: int) -> list[str]:
    """Short support-message sentences from the cue words and filler: a corpus a tiny LM can learn."""
    rng = random.Random(seed)
    cues = [w for ws in CUES.values() for w in ws]
    return [" ".join(rng.sample(FILLER, 3) + [rng.choice(cues)] + rng.sample(FILLER, 2)) for _ in range(n)]


def make_causal_lm(directory: Path, family: str = "llama", seed: int = 0, hidden: int = 32, layers: int = 2, **config_overrides) -> Path:
    """A random-initialized `family` causal LM (hidden 32, 2 layers, 2 heads and 1 key/value head unless
    `config_overrides` say otherwise) with a byte-level BPE tokenizer (300 tokens, <pad>=0 <s>=1 </s>=2) and a chat
    template, saved as a Hugging Face directory (safetensors) at `directory`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lm_corpus(200, seed=seed), trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    hf_tok.chat_template = LM_CHAT_TEMPLATE
    extra = {"head_dim": hidden // 2} if family == "gemma" else {}
    settings = dict(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2 if family == "phi" else 1, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, **extra,
    )
    config = AutoConfig.for_model(family, **settings | config_overrides)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    hf_tok.save_pretrained(directory)
    return Path(directory)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): a tiny model's
    steps are overhead-bound, and on a busy 2-vCPU machine two threads spin (several times slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """A tiny random Llama-style causal LM directory (see `make_causal_lm`)."""
    return make_causal_lm(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def lm_text(tmp_path_factory) -> dict[str, Path]:
    """corpus.txt (400 lines) and heldout.txt (60 lines) of the cue-word sentences."""
    d = tmp_path_factory.mktemp("lm-text")
    (d / "corpus.txt").write_text("\n".join(lm_corpus(400, seed=11)) + "\n", encoding="utf-8")
    (d / "heldout.txt").write_text("\n".join(lm_corpus(60, seed=12)) + "\n", encoding="utf-8")
    return {"train": d / "corpus.txt", "eval": d / "heldout.txt"}


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    """train.csv (240 rows), dev.csv (60) and test.csv (60) of the three-label cue-word task."""
    d = tmp_path_factory.mktemp("synthetic")
    return {
        "train": write_csv(d / "train.csv", synthetic_rows(240, seed=1)),
        "dev": write_csv(d / "dev.csv", synthetic_rows(60, seed=2)),
        "test": write_csv(d / "test.csv", synthetic_rows(60, seed=3)),
    }


def tiny_config(tiny_base: Path, synthetic: dict, out: Path, **train_overrides):
    """A TrainConfig for the tiny model that learns the synthetic task in a few seconds.

    Its batches are length-bucketed, not packed (the default): the 4-epoch recipe was tuned on bucketed
    batches, and with random ones this 32-hidden model often stalls with two of the three classes merged.
    Packed batches have their own tests (test_packing.py)."""
    from slmkit.config import DataConfig, ModelConfig, OptimConfig, TrainConfig

    train = {"epochs": 4, "batch_size": 16, "lr": 3e-3, "warmup": 0.0, "seed": 7, "patience": 0, "threads": 1, "pack": False, **train_overrides}
    return TrainConfig(
        out=str(out),
        data=DataConfig(train=str(synthetic["train"]), eval=str(synthetic["dev"])),
        model=ModelConfig(base=str(tiny_base)),
        train=OptimConfig(**train),
    )


@pytest.fixture(scope="session")
def trained_tiny(tiny_base, synthetic, tmp_path_factory) -> Path:
    """The tiny model trained once on the synthetic task (dev.csv as its eval file), shared by the stage tests."""
    from slmkit.train import train

    return train(tiny_config(tiny_base, synthetic, tmp_path_factory.mktemp("shared-runs") / "tiny"), progress=False).out


@pytest.fixture(scope="session")
def exported_tiny(trained_tiny, tmp_path_factory) -> Path:
    """`trained_tiny` exported to ONNX."""
    from slmkit.config import ExportConfig
    from slmkit.export import export

    return export(ExportConfig(model=str(trained_tiny), out=str(tmp_path_factory.mktemp("shared-onnx") / "tiny-onnx"))).out


# ------------------------------------------------------------------------------------------ slm run

STUDENTS = ["bilstm:hidden=16,embed=16 lr=1e-2", "transformer:layers=1,hidden=32,heads=2,ffn=64"]


def run_config(tiny_base: Path, synthetic: dict, out: Path, **overrides):
    """`slm run` on the tiny teacher and students (each trains in about a second), with a quick benchmark (one
    round, few calls, no RSS probe) and no budgets."""
    from slmkit.config import BudgetConfig, DataConfig, LadderConfig, ModelConfig, OptimConfig, RunBenchConfig, RunConfig

    optim = dict(batch_size=16, lr=3e-3, warmup=0.0, seed=7, patience=0, threads=1)
    values = {
        "data": DataConfig(train=str(synthetic["train"]), eval=str(synthetic["dev"])),
        "test": str(synthetic["test"]),
        "model": ModelConfig(base=str(tiny_base)),
        "train": OptimConfig(epochs=4, pack=False, **optim),  # bucketed, as tiny_config (see there)
        "students": list(STUDENTS),
        "distill": LadderConfig(augment=0.0, train=OptimConfig(epochs=3, **optim)),
        "bench": RunBenchConfig(baselines=["tfidf"], threads=["1"], rounds=1, latency_calls=10, speed_texts=16, rss=False, bootstrap=100),
        "budget": BudgetConfig(size=None, latency=None, max_drop=None),
        **overrides,
    }
    return RunConfig(out=str(out), **values)


@pytest.fixture(scope="session")
def pipeline_run(tiny_base, synthetic, tmp_path_factory):
    """One finished `slm run` of `run_config`: (its config, its result). Shared by test_pipeline and test_search
    (whose run continues a copy of it, reusing its teacher stages); tests that change it work on a copy."""
    import torch
    from slmkit.pipeline import run

    cfg = run_config(tiny_base, synthetic, tmp_path_factory.mktemp("pipeline") / "run")
    threads = torch.get_num_threads()
    try:
        return cfg, run(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)  # the run sets 1 (train.threads): whatever runs next gets the thread count back


# ------------------------------------------------------------------------------------------ headless browser

CHROMIUM = "/usr/bin/chromium"  # Debian's, installed by make test when missing
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]


def importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def require_browser() -> None:
    """Skip without playwright or chromium, except where make test (or CI) says the browser tests must run."""
    missing = [what for what, ok in (("the playwright package", importable("playwright")), (CHROMIUM, Path(CHROMIUM).exists())) if not ok]
    if missing:
        message = f"{' and '.join(missing)} missing: make test installs them (apt-get install chromium)"
        if os.environ.get("CI") or os.environ.get("SLMKIT_REQUIRE_BROWSER"):  # make test sets it: there it must run
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    """Debian's headless chromium driven by Playwright (its own browser download is never used), one per module."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()
