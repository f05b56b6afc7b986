"""Bring-your-own LLM benchmark on banking77: LoRA on chat data, then the weight-only quality-per-quant table.

No pretrained causal LM can be downloaded here, so the "base" is one this script trains itself: `slm train --task lm`
on banking77's training texts (a small Llama-style decoder with its own BPE tokenizer), given a chat template. Then:

1. LoRA (`slm train --task lm --base ... --lora ... --merge`) on a chat JSONL made from banking77 train: the user
   turn is the customer message, the assistant turn the intent name (words, e.g. "card arrival"); the loss is on
   the reply only. Scored on banking77 test: the perplexity of the replies (from the run) and greedy exact match of
   the generated intent on a seeded sample of test messages, for the base and the LoRA-merged model.
2. `slm quantize --method int8-weight` and `int4-weight` on the merged model with banking77 test texts as the
   held-out text: perplexity, mean KL vs fp32, top-1 agreement, size and tokens/s for fp32 / bf16 / int8 / int4.

Writes benchmarks/results/byo_llm.md (+ .json) with the command; the data files and models stay in --workdir.

    python benchmarks/byo_llm.py --workdir runs/byo-llm
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "banking77"
RESULTS = ROOT / "benchmarks" / "results"
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)
SHAPE = "layers=4,hidden=128,heads=4,ffn=512,context=64"


def rows(name: str) -> list[tuple[str, str]]:
    with open(DATA / name, newline="", encoding="utf-8") as f:
        return [(r["text"].replace("\n", " ").strip(), r["category"]) for r in csv.DictReader(f)]


def slm(*args) -> None:
    from typer.testing import CliRunner

    from slmkit.cli import app

    started = time.perf_counter()
    result = CliRunner().invoke(app, [str(a) for a in args])
    print(f"slm {' '.join(map(str, args[:3]))} ... ({time.perf_counter() - started:.0f} s)\n{result.output[-2000:]}", flush=True)
    if result.exit_code != 0:
        raise SystemExit(f"slm {shlex.join(map(str, args))} failed: {result.output[-500:]}")


def reply_accuracy(model_dir: Path, tests: list[tuple[str, str]]) -> float:
    """Greedy exact match of the generated reply with the intent words."""
    from slmkit.generate import GenerationConfig, generate_ids
    from slmkit.lm import TorchStepper, load_causal_lm

    model, tok = load_causal_lm(model_dir)
    stepper = TorchStepper(model)
    cfg = GenerationConfig(max_new_tokens=12, temperature=0.0)
    hits = 0
    for text, label in tests:
        prompt = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)["input_ids"]
        reply = tok.decode(list(generate_ids(stepper, prompt, cfg, eos_ids=[tok.eos_token_id])), skip_special_tokens=True)
        hits += reply.strip() == label.replace("_", " ")
    return hits / len(tests)


def reply_perplexity(model_dir: Path, data: list[tuple[str, str]]) -> float:
    """Perplexity of the assistant replies (the intent words and the end of turn) given the messages."""
    import torch
    import torch.nn.functional as F

    from slmkit import chat
    from slmkit.lm import load_causal_lm

    model, tok = load_causal_lm(model_dir)
    convs = [[{"role": "user", "content": t}, {"role": "assistant", "content": c.replace("_", " ")}] for t, c in data]
    features = chat.encode_conversations(convs, tok, 64, "test")
    nll, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(features), 64):
            batch = chat.collate(features[i : i + 64], tok.pad_token_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            nll += F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=chat.IGNORE, reduction="sum").item()
            count += int((labels != chat.IGNORE).sum())
    return float(np.exp(nll / count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/byo-llm")
    parser.add_argument("--lm-epochs", type=int, default=3)
    parser.add_argument("--lora-epochs", type=int, default=2)
    parser.add_argument("--lora-lr", type=float, default=5e-3)
    parser.add_argument("--sample", type=int, default=300, help="test messages for the greedy exact-match score")
    parser.add_argument("--lora-train", type=int, default=3000, help="training conversations for LoRA (a seeded sample; 0: all)")
    parser.add_argument("--lora-eval", type=int, default=500, help="test conversations scored after each LoRA epoch (a seeded sample; 0: all)")
    parser.add_argument("--base", help="an existing causal-LM directory as the base (skips training one; a chat template is added to a copy)")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA}: banking77 is not there (see ../shared/data/README.md)")
    from transformers import AutoTokenizer

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train, test = rows("train.csv"), rows("test.csv")
    (work / "corpus.txt").write_text("\n".join(t for t, _ in train) + "\n", encoding="utf-8")
    (work / "heldout.txt").write_text("\n".join(t for t, _ in test) + "\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    def subset(data, n):
        return data if not n or n >= len(data) else [data[i] for i in sorted(rng.choice(len(data), n, replace=False))]

    for name, data in (("chat-train.jsonl", subset(train, args.lora_train)), ("chat-test.jsonl", subset(test, args.lora_eval))):
        lines = [json.dumps({"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": c.replace("_", " ")}]}) for t, c in data]
        (work / name).write_text("\n".join(lines) + "\n", encoding="utf-8")

    # 0. the base: a small decoder trained on the customer messages, with a chat template added
    base = work / "base"
    if args.base:
        shutil.rmtree(base, ignore_errors=True)
        shutil.copytree(args.base, base)
    else:
        slm("train", "--task", "lm", "--data", work / "corpus.txt", "--eval", work / "heldout.txt", "--out", base, "--shape", SHAPE,
            "--vocab-size", 2000, "--epochs", args.lm_epochs, "--lr", "3e-3", "--batch-size", 32, "--overwrite", "--quiet")
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(base)

    # 1. LoRA on the chat data, merged
    lora_spec = "r=16,alpha=32,targets=q_proj,k_proj,v_proj,o_proj,dropout=0.05"
    tuned = work / "lora-merged"
    slm("train", "--task", "lm", "--base", base, "--data", work / "chat-train.jsonl", "--eval", work / "chat-test.jsonl", "--out", tuned,
        "--lora", lora_spec, "--merge", "--epochs", args.lora_epochs, "--lr", args.lora_lr, "--batch-size", 32, "--overwrite", "--quiet")
    lora_metrics = json.loads((tuned / "metrics.json").read_text())
    sample = subset(test, args.sample)
    accuracy = {"base": reply_accuracy(base, sample), "lora": reply_accuracy(tuned, sample)}
    perplexity = {"base": reply_perplexity(base, test), "lora": reply_perplexity(tuned, test)}

    # 2. the quality-per-quant table of the tuned model, on the test messages as held-out text
    quant = {}
    for method in ("int8-weight", "int4-weight"):
        out = work / f"lora-{method}"
        slm("quantize", "--model", tuned, "--method", method, "--eval", work / "heldout.txt", "--out", out, "--overwrite", "--quiet",
            *(["--set", "report_all=false"] if method == "int4-weight" else []))
        quant[method] = json.loads((out / "metrics.json").read_text())
    seconds = time.perf_counter() - started

    from slmkit.wquant import report_table

    from slmkit.lm import load_causal_lm

    n_params = sum(p.numel() for p in load_causal_lm(base)[0].parameters())
    if (base / "metrics.json").is_file():
        bm = json.loads((base / "metrics.json").read_text())
        base_line = f"`slm train --task lm --shape {SHAPE} --vocab-size 2000` on banking77 train texts ({n_params:,} parameters; perplexity {bm['eval']['perplexity']:.1f} on banking77 test)"
    else:
        base_line = f"{args.base} ({n_params:,} parameters)"

    table = report_table(quant["int8-weight"]["report"])
    by_epoch = ", ".join(f"{h['perplexity']:.2f}" for h in lora_metrics["history"])
    lines = [
        "# Bring-your-own LLM on banking77: LoRA on chat data, then weight-only int8 / int4",
        "",
        f"Command: `python {shlex.join(sys.argv)}`",
        f"({seconds / 60:.1f} minutes on this machine's CPUs; no GPU).",
        "",
        f"Base: {base_line}, plus a chat template.",
        "",
        "## LoRA (loss on the replies only), merged",
        "",
        f"`--lora {lora_spec}` on {lora_metrics['n_train']:,} banking77 training conversations: "
        f"{lora_metrics['lora']['trainable_parameters']:,} trainable parameters; {lora_metrics['epochs_run']} epoch(s) in {lora_metrics['train_seconds']:.0f} s.",
        "",
        f"| | reply perplexity (banking77 test, {len(test)} messages) | greedy exact intent ({args.sample} test messages) |",
        "|---|---:|---:|",
        f"| base (no tuning) | {perplexity['base']:.2f} | {accuracy['base']:.3f} |",
        f"| LoRA, merged | {perplexity['lora']:.2f} (after each epoch, on the {lora_metrics['n_eval']}-message eval sample: {by_epoch}) | {accuracy['lora']:.3f} |",
        "",
        "## Weight-only quantization of the tuned model (held-out: banking77 test messages)",
        "",
        "| " + " | ".join(table[0]) + " |",
        "|" + "---|" * len(table[0]),
        *("| " + " | ".join(r) + " |" for r in table[1:]),
        "",
        f"int4 (group {quant['int4-weight']['group_size']}) saved: {quant['int4-weight']['bytes'] / 1e6:.2f} MB; "
        f"int8 saved: {quant['int8-weight']['bytes'] / 1e6:.2f} MB (embeddings stay fp32: at this size they are most of the model).",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "byo_llm.md").write_text("\n".join(lines), encoding="utf-8")
    (RESULTS / "byo_llm.json").write_text(json.dumps({"lora": lora_metrics, "accuracy": accuracy, "reply_perplexity": perplexity, "quantize": quant, "seconds": seconds}, indent=2), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
