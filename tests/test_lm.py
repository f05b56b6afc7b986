"""`slm train --task lm`, `slm evaluate` and `slm generate` on a tiny LM, in-process: the exact files written,
held-out perplexity that training clearly lowers (with its bootstrap interval), continued training of a local causal
LM, gradient checkpointing, the bad-input cases (one line, exit 2, nothing written) and the perplexity metric."""

from __future__ import annotations

import json
import math

import numpy as np
import yaml
import pytest
from typer.testing import CliRunner

from conftest import make_causal_lm
from slmkit import metrics
from slmkit.cli import app

runner = CliRunner()
TINY = ["--shape", "layers=1,hidden=32,heads=2,ffn=64,context=64", "--vocab-size", "300", "--batch-size", "16", "--lr", "1e-2",
        "--seed", "7", "--set", "train.warmup=0", "--set", "train.patience=0", "--set", "train.threads=1", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")

def slm(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_trained(lm_text, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "run"
    result = slm("train", "--task", "lm", "--data", lm_text["train"], "--eval", lm_text["eval"], "--out", out, "--epochs", 12, *TINY)
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_a_causal_lm_and_lowers_perplexity(tiny_trained):
    out = tiny_trained
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "config.yaml", "generation_config.json", "metrics.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 300
    assert (config["num_hidden_layers"], config["hidden_size"], config["max_position_embeddings"]) == (1, 32, 64)
    tok = json.loads((out / "tokenizer_config.json").read_text())
    assert (tok["bos_token"], tok["eos_token"], tok["pad_token"]) == ("<s>", "</s>", "<pad>")
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "lm" and m["base"] == "scratch" and m["max_length"] == 64
    ppl = [h["perplexity"] for h in m["history"]]
    # a uniform guess over 300 tokens is perplexity 300; one epoch in, it is ~50; twelve epochs learn the corpus
    assert m["eval"]["perplexity"] < 10 and ppl[-1] < ppl[0] / 4
    assert m["best_epoch"] == int(np.argmin(ppl)) + 1  # lower is better
    low, high = m["eval"]["perplexity_ci95"]
    assert low < m["eval"]["perplexity"] < high and high - low < 3
    assert m["eval"]["n_examples"] == 60 and m["eval"]["n_tokens"] > 60 * 5


def test_evaluate_reports_perplexity_with_interval(tiny_trained, lm_text, tmp_path):
    result = slm("evaluate", "--model", tiny_trained, "--data", lm_text["eval"], "--out", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    trained = json.loads((tiny_trained / "metrics.json").read_text())["eval"]
    assert report["perplexity"] == pytest.approx(trained["perplexity"], rel=1e-5)
    assert report["perplexity_ci95"][0] < report["perplexity"] < report["perplexity_ci95"][1]
    assert "perplexity" in result.stdout and "60 examples" in result.stdout
    # the training corpus (seen) is easier than held-out text
    result = slm("evaluate", "--model", tiny_trained, "--data", lm_text["train"], "--out", tmp_path / "ev-train")
    assert json.loads((tmp_path / "ev-train" / "metrics.json").read_text())["perplexity"] < report["perplexity"] * 1.1


def test_generate_streams_the_greedy_continuation(tiny_trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = slm("generate", "--model", tiny_trained, "my parcel", "--greedy", "--max-tokens", 12)
    assert result.exit_code == 0, result.output
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_trained), AutoTokenizer.from_pretrained(tiny_trained)
    ids = tok("my parcel", return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tok.bos_token_id  # the prompt starts like every training document
    ref = model.generate(ids, do_sample=False, max_new_tokens=12, pad_token_id=0)[0, ids.shape[1]:]
    assert result.stdout == tok.decode(ref, skip_special_tokens=True) + "\n"
    assert result.stdout.strip()  # the trained model says something
    # seeded sampling repeats itself; stop strings cut the text before them
    runs = [slm("generate", "--model", tiny_trained, "help", "--seed", 5, "--top-k", 20, "--top-p", 0.9, "--temperature", 1.2).stdout for _ in range(2)]
    assert runs[0] == runs[1]
    text = result.stdout.rstrip("\n")
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    result = slm("generate", "--model", tiny_trained, "my parcel", "--greedy", "--max-tokens", 12, "--stop", stop)
    assert result.exit_code == 0 and result.stdout == text[: text.find(stop)] + "\n" and "(stop, torch)" in result.stderr
    beams = slm("generate", "--model", tiny_trained, "my parcel", "--beams", 3, "--max-tokens", 8)
    assert beams.exit_code == 0 and beams.stdout.strip()


def test_generate_long_prompt_is_cut_or_refused(tiny_trained):
    long = "please help with my parcel " * 40  # far beyond the 64-token window
    result = slm("generate", "--model", tiny_trained, long, "--greedy", "--max-tokens", 4)
    assert result.exit_code == 0 and "longer than the 64-token context window" in result.stderr
    result = slm("generate", "--model", tiny_trained, long, "--greedy", "--max-tokens", 4, "--strict")
    assert result.exit_code == 2 and "context window is 64" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("family", ["llama", "gemma"])  # gemma ties its output layer to the embedding
def test_continue_training_a_local_causal_lm(family, lm_text, tmp_path):
    base = make_causal_lm(tmp_path / family, family)
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"body": line}) + "\n" for line in lm_text["train"].read_text().splitlines()))
    out = tmp_path / "continued"
    result = slm("train", "--task", "lm", "--data", tmp_path / "corpus.jsonl", "--text-col", "body", "--base", base, "--out", out,
                 "--epochs", 2, "--batch-size", 16, "--lr", "1e-2", "--set", "train.warmup=0", "--quiet")
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["base"] == str(base) and m["max_length"] == 128 and m["n_eval"] == 40  # 10% of 400 documents held out
    before = slm("evaluate", "--model", base, "--data", lm_text["eval"], "--out", tmp_path / "before")
    assert before.exit_code == 0, before.output
    assert m["eval"]["perplexity"] < json.loads((tmp_path / "before" / "metrics.json").read_text())["perplexity"] / 2
    assert json.loads((out / "config.json").read_text())["architectures"] == json.loads((base / "config.json").read_text())["architectures"]


def test_grad_checkpoint_gives_the_same_training(lm_text, tmp_path):
    losses = []
    for flags in ([], ["--grad-checkpoint"]):
        out = tmp_path / f"run{len(losses)}"
        result = slm("train", "--task", "lm", "--data", lm_text["eval"], "--out", out, "--epochs", 1, *TINY, *flags)
        assert result.exit_code == 0, result.output
        losses.append(json.loads((out / "metrics.json").read_text())["history"][0]["train_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert "grad_checkpoint: true" in (tmp_path / "run1" / "config.yaml").read_text()


def test_bad_input_is_one_line_and_writes_nothing(tiny_base, lm_text, tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "binary.txt").write_bytes(b"hello\nwor\x00ld\n")
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp_path / "small.txt").write_text("a tiny corpus\nof two lines\n")
    (tmp_path / "rows.jsonl").write_text('{"text": "fine"}\n{"body": "no text key"}\n')
    out = tmp_path / "out"
    cases = [
        (["--data", tmp_path / "empty.txt"], "empty.txt: no text (the corpus is empty or only blank lines)"),
        (["--data", tmp_path / "binary.txt"], "binary.txt: a binary file (NUL byte at line 2"),
        (["--data", tmp_path / "latin.txt"], "latin.txt line 1: not utf-8 text"),
        (["--data", tmp_path / "small.txt", "--vocab-size", 8000], "small.txt: too little text for a vocabulary of 8000 tokens: it supports at most"),
        (["--data", tmp_path / "small.txt", "--vocab-size", 100], "model.vocab_size must be at least 259"),
        (["--data", tmp_path / "rows.jsonl"], "rows.jsonl line 2: no text field 'text' (found body)"),
        (["--data", lm_text["train"], "--shape", "layers=2,width=64"], "unknown key 'width': valid keys are layers, hidden, heads, kv_heads, ffn, context"),
        (["--data", lm_text["train"], "--shape", "hidden=30,heads=4"], "hidden (30) must be a multiple of heads (4)"),
        (["--data", lm_text["train"], "--base", tiny_base], "not a causal language model (config.json says BertModel)"),
        (["--data", lm_text["train"], "--base", tiny_base, "--shape", "layers=2"], "--shape and --vocab-size describe a model trained from scratch"),
        (["--data", lm_text["train"], "--base", tmp_path], "not a Hugging Face model directory (no config.json"),
    ]
    for args, message in cases:
        result = slm("train", "--task", "lm", "--out", out, "--quiet", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (message, result.stderr)
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))]
    match = __import__("re").search(r"at most (\d+)", slm("train", "--task", "lm", "--out", out, "--data", tmp_path / "small.txt").stderr)
    assert 259 < int(match.group(1)) < 300  # the largest vocabulary two short lines support
    result = slm("generate", "--model", tiny_base, "hello")
    assert result.exit_code == 2 and "not a causal language model" in result.stderr


def test_perplexity_known_answers():
    # two documents: 2 tokens at ln 4 nats each, 1 token at ln 4 -> perplexity 4 whatever the resample
    nll, tokens = np.array([2 * math.log(4), math.log(4)]), np.array([2, 1])
    assert metrics.perplexity(nll, tokens) == pytest.approx(4.0)
    assert metrics.perplexity_interval(nll, tokens, 200) == pytest.approx((4.0, 4.0))
    nll, tokens = np.array([math.log(2), 3 * math.log(8)]), np.array([1, 3])  # 2 then 8 per token
    assert metrics.perplexity(nll, tokens) == pytest.approx(math.exp((math.log(2) + 3 * math.log(8)) / 4))
    low, high = metrics.perplexity_interval(nll, tokens, 500, seed=1)
    assert low == pytest.approx(2.0) and high == pytest.approx(8.0)  # all-first and all-second resamples occur
    report = metrics.perplexity_report(nll, tokens, 100)
    assert report["n_examples"] == 2 and report["n_tokens"] == 4 and report["loss"] == pytest.approx(math.log(report["perplexity"]))


def test_best_epoch_for_lower_is_better_metric():
    from slmkit.config import OptimConfig
    from slmkit.train import EpochEnd, track_epoch

    o = OptimConfig(metric="perplexity", patience=2, epochs=10)
    state = {"epoch": 0, "best": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": [], "train_seconds": 0.0}
    marks = [track_epoch(state, EpochEnd(e, 1.0, 1.0, 1.0), {"perplexity": p}, o)[:2] for e, p in enumerate([50.0, 20.0, 25.0, 20.0, 30.0], start=1)]
    assert marks == [(True, False), (True, False), (False, False), (True, True), (False, True)]
    assert state["best_epoch"] == 4 and state["best"] == 20.0


def test_distill_lm_from_teacher_continuations(tiny_trained, lm_text, tmp_path):
    from slmkit.generate import GenerationConfig, generate_ids, open_lm

    lines = lm_text["eval"].read_text().splitlines()[:24]
    (tmp_path / "prompts.txt").write_text("".join(" ".join(line.split()[:2]) + "\n" for line in lines))
    common = ["--task", "lm", "--teacher", tiny_trained, "--prompts", tmp_path / "prompts.txt", "--eval", lm_text["eval"], "--max-tokens", 8,
              "--shape", "layers=1,hidden=32,heads=2,ffn=64,context=16", "--lr", "1e-2", "--threads", 1, "--cache-dir", tmp_path / "cache",
              "--set", "train.batch_size=4", "--set", "train.warmup=0", "--quiet"]
    result = slm("distill", *common, "--epochs", 12, "--out", tmp_path / "student")
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "student" / "metrics.json").read_text())
    d = m["distill"]
    assert (d["prompts"], d["continuations"], d["teacher_backend"], d["token_kd"]) == (24, 24, "torch", "on")
    assert not d["continuations_cache"]["hit"] and len(list((tmp_path / "cache").glob("lm-*.jsonl"))) == 1
    assert json.loads((tmp_path / "student" / "config.json").read_text())["vocab_size"] == 300  # the teacher's tokenizer
    # the student learned the teacher's greedy continuations: its next token (teacher forced) is the teacher's at
    # most positions, far more often than always guessing the teacher's commonest token would be
    import torch

    teacher, student = open_lm(tiny_trained, threads=1), open_lm(tmp_path / "student", threads=1)
    greedy = GenerationConfig(max_new_tokens=8, temperature=0)
    hits, targets = 0, []
    for prompt in (tmp_path / "prompts.txt").read_text().splitlines():
        ids = teacher.encode(prompt)
        taught = list(generate_ids(teacher.stepper, ids, greedy, teacher.eos_ids))
        with torch.inference_mode():
            logits = student.stepper.model(torch.tensor([ids + taught])).logits[0]  # (seq, vocab)
        hits += int((logits[len(ids) - 1 : -1].argmax(-1) == torch.tensor(taught)).sum())
        targets += taught
    majority = max(targets.count(t) for t in set(targets))
    assert hits >= max(3 * majority, 0.7 * len(targets)), (hits, majority, len(targets))
    # a second student reuses the continuations; without KD (or with its own vocabulary) the loss is plain CE
    result = slm("distill", *common, "--epochs", 1, "--kd", 0, "--out", tmp_path / "no-kd")
    assert result.exit_code == 0, result.output
    d = json.loads((tmp_path / "no-kd" / "metrics.json").read_text())["distill"]
    assert d["continuations_cache"]["hit"] and d["token_kd"] == "off: kd is 0"
    result = slm("distill", *common, "--epochs", 1, "--set", "vocab_size=270", "--out", tmp_path / "own-vocab")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "own-vocab" / "metrics.json").read_text())["distill"]["token_kd"].startswith("off: the student has its own vocabulary")
    result = slm("distill", *common, "--student", "cnn:filters=8", "--out", tmp_path / "bad")
    assert result.exit_code == 2 and "--student: not used by --task lm" in result.stderr


def test_checkpoint_of_tied_weights_round_trips(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from slmkit import artifacts

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    artifacts.save_checkpoint(tmp_path, model, optimizer, {"epoch": 1})  # safetensors refuses shared tensors: stored once
    torch.manual_seed(1)
    fresh = AutoModelForCausalLM.from_config(config)
    state = artifacts.load_checkpoint(tmp_path, fresh, torch.optim.AdamW(fresh.parameters()))
    assert state["epoch"] == 1 and fresh.lm_head.weight is fresh.model.embed_tokens.weight
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    with pytest.raises(RuntimeError, match="do not match"):
        artifacts.load_weights(AutoModelForCausalLM.from_config(LlamaConfig(**{**config.to_dict(), "tie_word_embeddings": False})), tmp_path / "checkpoint")


def test_help_of_the_lm_commands():
    result = slm("generate", "--help")
    assert result.exit_code == 0
    for option in ("--model", "--max-tokens", "--temperature", "--top-k", "--top-p", "--repetition-penalty", "--stop", "--beams", "--seed", "--greedy", "--strict", "--chat"):
        assert option in result.stdout
    result = slm("train", "--help")
    assert all(option in result.stdout for option in ("--shape", "--vocab-size", "--grad-checkpoint"))
    result = slm("distill", "--help")
    assert all(option in result.stdout for option in ("--task", "--prompts", "--samples", "--kd"))


def test_predict_points_a_language_model_to_generate(tiny_trained):
    result = slm("predict", "--model", tiny_trained, "hello")
    assert result.exit_code == 2 and "use slm generate" in result.stderr


def test_resume_continues_an_interrupted_lm_run(lm_text, tmp_path, monkeypatch):
    from slmkit import artifacts

    args = ["train", "--task", "lm", "--data", lm_text["eval"], "--epochs", 3, *TINY]
    result = slm(*args, "--out", tmp_path / "whole")
    assert result.exit_code == 0, result.output
    real_save = artifacts.save_checkpoint

    def killed_after_epoch_1(staging, model, optimizer, state):
        real_save(staging, model, optimizer, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt  # Ctrl-C right after epoch 1 was saved

    monkeypatch.setattr(artifacts, "save_checkpoint", killed_after_epoch_1)
    result = slm(*args, "--out", tmp_path / "cut")
    assert result.exit_code == 130 and not (tmp_path / "cut").exists()
    monkeypatch.setattr(artifacts, "save_checkpoint", real_save)
    result = slm("train", "--out", tmp_path / "cut", "--resume", "--quiet")  # the tokenizer is trained again, identically
    assert result.exit_code == 0, result.output
    whole, resumed = (json.loads((tmp_path / d / "metrics.json").read_text())["history"] for d in ("whole", "cut"))
    assert [h["epoch"] for h in resumed] == [1, 2, 3]
    for got, want in zip(resumed, whole):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5) and got["perplexity"] == pytest.approx(want["perplexity"], rel=1e-5)
    assert (tmp_path / "cut" / "tokenizer.json").read_text() == (tmp_path / "whole" / "tokenizer.json").read_text()


def test_learning_rate_defaults_to_the_tasks(lm_text, tmp_path):
    """1e-3 for a decoder from scratch, 1e-4 to fine-tune; what was used is recorded with the model."""
    from slmkit.tasks import get_task

    assert get_task("lm").default_lr == 1e-3 and get_task("lm", base=str(lm_text["train"])).default_lr == 1e-4
    assert get_task("classification").default_lr == 1e-4
    out = tmp_path / "lm"
    args = [a for a in TINY if a not in ("--lr", "1e-2")]
    result = slm("train", "--task", "lm", "--data", lm_text["train"], "--out", out, "--epochs", 1, *args)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 1e-3
