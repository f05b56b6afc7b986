"""LoRA through `slm train` on a GPU: the same command as on the CPU, with `train.device=cuda`, bf16 and gradient
checkpointing, on the tiny random models of the five causal-LM families the tests build (Llama, Mistral, Phi,
Gemma, Qwen2; tests/conftest.py `make_causal_lm`) and the tests' chat data (tests/test_llm.py).

For each family: the adapter merged (`--merge`) and kept apart; the eval perplexity after each epoch; then, read
back on the CPU, the merged model's logits against the adapter's (equal) and the base's (changed).

    python benchmarks/lora_gpu.py --out benchmarks/results/lora-gpu      # needs a GPU that PyTorch sees
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lora-gpu"), help="Results path without extension.")
    parser.add_argument("--device", default="cuda", help="Where slm train runs (cpu for a dry run).")
    args = parser.parse_args()

    import torch
    from typer.testing import CliRunner

    from conftest import LM_FAMILIES, make_causal_lm
    from slmkit.cli import app
    from slmkit.lm import load_causal_lm
    from test_llm import conversations

    if args.device != "cpu" and not torch.cuda.is_available():
        sys.exit("no GPU: PyTorch sees none here (--device cpu for a dry run)")
    root = Path(tempfile.mkdtemp(prefix="lora-gpu-"))
    (root / "train.jsonl").write_text("\n".join(json.dumps({"messages": c}) for c in conversations(48, seed=1)) + "\n")
    (root / "dev.jsonl").write_text("\n".join(json.dumps({"instruction": c[0]["content"], "response": c[1]["content"]}) for c in conversations(16, seed=2)) + "\n")
    runner, rows = CliRunner(), []
    for family in LM_FAMILIES:
        base = make_causal_lm(root / f"base-{family}", family)
        row = {"family": family}
        for mode in ("merge", "adapter"):
            out, started = root / f"{family}-{mode}", time.perf_counter()
            result = runner.invoke(app, [
                "train", "--task", "lm", "--base", str(base), "--data", str(root / "train.jsonl"), "--eval", str(root / "dev.jsonl"),
                "--out", str(out), "--lora", "r=4,alpha=8,targets=q_proj,v_proj,dropout=0", "--epochs", "3", "--lr", "3e-2",
                "--batch-size", "8", "--set", "train.warmup=0", "--set", f"train.device={args.device}", "--bf16", "--grad-checkpoint", "--quiet",
                *(["--merge"] if mode == "merge" else []),
            ])
            if result.exit_code != 0:
                sys.exit(f"{family} {mode}: slm train failed: {result.output[-500:]}")
            m = json.loads((out / "metrics.json").read_text())
            row[mode] = {"perplexity_by_epoch": [round(h["perplexity"], 2) for h in m["history"]], "trainable_parameters": m["lora"]["trainable_parameters"], "wall_s": round(time.perf_counter() - started, 1)}
        merged, tok = load_causal_lm(root / f"{family}-merge")
        adapted, _ = load_causal_lm(root / f"{family}-adapter")
        original, _ = load_causal_lm(base)
        ids = torch.tensor([tok.apply_chat_template(conversations(1, seed=9)[0][:1], add_generation_prompt=True)["input_ids"]])
        with torch.no_grad():
            a, b, c = (model(input_ids=ids).logits for model in (merged, adapted, original))
        row["merged_vs_adapter"], row["merged_vs_base"] = (a - b).abs().max().item(), (a - c).abs().max().item()
        rows.append(row)
        print(json.dumps(row), flush=True)
    device = torch.cuda.get_device_name(0) if args.device != "cpu" else "cpu"
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"command": "python benchmarks/lora_gpu.py " + " ".join(sys.argv[1:]), "device": device, "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
