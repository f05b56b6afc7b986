"""Bring-your-own small LLM: chat/instruction data masked to the replies (slmkit.chat) and LoRA fine-tuning with
PEFT (slmkit.lora) through slmkit's one training loop, on tiny random models of all five families: the loss goes
down, only adapter weights change, merged = base + adapter, the adapter saved apart loads back; bad input is one
line naming the file and line (or the flag) and the fix."""

import json
import time
from functools import partial

import pytest
from typer.testing import CliRunner

from conftest import CUES, LM_FAMILIES, lm_corpus, make_causal_lm
from slmkit import chat, lora
from slmkit.cli import app
from slmkit.errors import UserError

CUE_LABEL = {w: label for label, ws in CUES.items() for w in ws}


def conversations(n: int, seed: int) -> list[list[dict]]:
    """A user message with a cue word; the assistant names its topic (a reply a tiny model can learn)."""
    rows = []
    for text in lm_corpus(n, seed):
        topic = next(CUE_LABEL[w] for w in text.split() if w in CUE_LABEL)
        rows.append([{"role": "user", "content": text}, {"role": "assistant", "content": f"topic {topic}"}])
    return rows


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm-families")
    return {family: make_causal_lm(root / family, family) for family in LM_FAMILIES}


# ------------------------------------------------------------------------------------------ --lora


def test_parse_lora():
    spec = lora.parse_lora("r=16,alpha=32,targets=q_proj,v_proj")
    assert spec == lora.LoraSpec(r=16, alpha=32.0, targets=("q_proj", "v_proj"), dropout=0.05)
    assert lora.parse_lora("targets=q_proj,k_proj,v_proj,dropout=0,r=4") == lora.LoraSpec(r=4, alpha=8.0, targets=("q_proj", "k_proj", "v_proj"), dropout=0.0)
    assert lora.parse_lora(spec.to_text()) == spec
    for text, message in [
        ("r=0,targets=q_proj", "r must be at least 1"),
        ("r=two", "r is a whole number"),
        ("r=4,alpha=-1", "alpha must be positive"),
        ("r=4,dropout=1", r"dropout must be in \[0, 1\)"),
        ("rank=4", "unknown key 'rank': valid keys are r, alpha, targets, dropout"),
        ("r=4,q_proj", "'q_proj' is not key=value"),
        ("r=4,r=8", "r is given twice"),
        ("targets=", "targets needs module names"),
    ]:
        with pytest.raises(UserError, match=message):
            lora.parse_lora(text)


# ------------------------------------------------------------------------------------------ chat data


def test_chat_masks_exactly_the_prompt_and_template_tokens(tiny_lm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    conv = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "my parcel is late"},
        {"role": "assistant", "content": "the courier has it"},
        {"role": "user", "content": "why"},
        {"role": "assistant", "content": "shipping problem"},
    ]
    f = chat.encode_conversation(conv, tok, max_length=512)
    assert f["input_ids"] == tok(tok.apply_chat_template(conv, tokenize=False), add_special_tokens=False)["input_ids"]
    learnt = [i for i, label in zip(f["input_ids"], f["labels"]) if label != chat.IGNORE]
    assert all(label in (chat.IGNORE, i) for i, label in zip(f["input_ids"], f["labels"]))
    # exactly the two replies and the end-of-turn after each: the template's "<s>assistant:" headers, the system and
    # user turns are masked
    assert tok.decode(learnt) == " the courier has it</s> shipping problem</s>"
    masked = [i for i, label in zip(f["input_ids"], f["labels"]) if label == chat.IGNORE]
    assert tok.decode(masked) == "<s>system: be brief</s><s>user: my parcel is late</s><s>assistant:<s>user: why</s><s>assistant:"
    # the first reply starts right after the rendered prompt (generation prompt included)
    prompt = tok.apply_chat_template(conv[:2], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert all(label == chat.IGNORE for label in f["labels"][:n_prompt]) and f["labels"][n_prompt] != chat.IGNORE
    # truncation keeps the start
    short = chat.encode_conversation(conv, tok, max_length=n_prompt + 2)
    assert short["input_ids"] == f["input_ids"][: n_prompt + 2] and short["labels"] == f["labels"][: n_prompt + 2]


def test_read_instruction_and_text_files(tiny_lm, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    path = tmp_path / "chat.jsonl"
    rows = [
        {"instruction": "name the topic", "input": "my parcel is late", "response": "delivery"},
        {"instruction": "say hello", "output": "hello"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    convs = chat.read_training_data(path)
    assert convs[0] == [{"role": "user", "content": "name the topic\n\nmy parcel is late"}, {"role": "assistant", "content": "delivery"}]
    assert convs[1][0] == {"role": "user", "content": "say hello"}
    feats, dropped = chat.encode_training_data(convs, tok, 64, path)
    assert dropped == 0 and tok.decode([i for i, l in zip(feats[0]["input_ids"], feats[0]["labels"]) if l != chat.IGNORE]) == " delivery</s>"
    # a prompt longer than max_length leaves nothing to learn: dropped and counted
    fits = len(chat.encode_conversation(convs[2], tok, 999)["input_ids"])  # the short hi/hello conversation, whole
    feats, dropped = chat.encode_training_data(convs, tok, fits, path)
    assert dropped == 1 and feats[-1] == chat.encode_conversation(convs[2], tok, fits)  # the long instruction went
    text = tmp_path / "corpus.txt"
    text.write_text("my parcel is late\n\nrefund please\n", encoding="utf-8")
    texts = chat.read_training_data(text)
    assert texts == ["my parcel is late", "refund please"]
    feats, _ = chat.encode_training_data(texts, tok, 64, text)
    assert feats[0]["labels"] == feats[0]["input_ids"] and feats[0]["input_ids"][-1] == tok.eos_token_id


def test_malformed_chat_jsonl_names_file_and_line(tiny_lm, tmp_path):
    from transformers import AutoTokenizer

    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    cases = [
        ("{not json", "bad.jsonl line 2: not valid JSON"),
        ('["a list"]', "bad.jsonl line 2: expected a JSON object with a \"messages\" list"),
        ('{"prompt": "hi", "completion": "hello"}', "bad.jsonl line 2: expected a \"messages\" list of .* fields \\(its keys: 'prompt', 'completion'\\)"),
        ('{"messages": []}', "line 2: \"messages\" must be a non-empty list"),
        ('{"messages": [{"role": "user"}]}', r"line 2: messages\[0\] must be an object with \"role\" and \"content\""),
        ('{"messages": [{"role": "bot", "content": "x"}]}', r"line 2: messages\[0\] has role 'bot': use one of system, user, assistant"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "line 2: no assistant message"),
        ('{"instruction": "hi", "response": ""}', "line 2: empty \"response\""),
        ('{"instruction": "hi", "response": 3}', "line 2: \"response\" must be a string"),
    ]
    path = tmp_path / "bad.jsonl"
    for row, message in cases:
        path.write_text(good + "\n" + row + "\n", encoding="utf-8")
        with pytest.raises(UserError, match=message) as info:
            chat.read_training_data(path)
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="unknown file type '.csv'"):
        (tmp_path / "x.csv").write_text("a\n")
        chat.read_training_data(tmp_path / "x.csv")
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    tok.chat_template = None
    with pytest.raises(UserError, match="the tokenizer has no chat template"):
        chat.encode_training_data([[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]], tok, 32, path)


# ------------------------------------------------------------------------------------------ LoRA


def lora_train(model, tok, features, epochs: int, bf16: bool, lr: float = 3e-2):
    """A few LoRA epochs through slmkit's one loop."""
    from slmkit.config import OptimConfig
    from slmkit.train import EpochEnd, make_optimizer, run_epochs

    o = OptimConfig(epochs=epochs, batch_size=8, lr=lr, warmup=0.0, seed=3, bf16=bf16, patience=0)
    optimizer, scheduler = make_optimizer(model, o, -(-len(features) // o.batch_size) * epochs)
    collate = partial(chat.collate, pad_id=tok.pad_token_id)
    return [r.train_loss for r in run_epochs(model, optimizer, scheduler, features, collate, chat.causal_lm_loss, o) if isinstance(r, EpochEnd)]


def eval_loss(model, tok, features) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return chat.causal_lm_loss(model, chat.collate(features, tok.pad_token_id)).item()


@pytest.mark.parametrize("family", LM_FAMILIES)
def test_lora_steps_every_family(family, family_dirs, tmp_path):
    import torch

    from slmkit.lm import load_causal_lm

    torch.set_num_threads(1)
    base, tok = load_causal_lm(family_dirs[family])
    original = {k: v.clone() for k, v in base.state_dict().items()}
    features, _ = chat.encode_training_data(conversations(32, seed=4), tok, 64, "conversations")
    model = lora.attach(base, lora.parse_lora("r=4,alpha=8,targets=q_proj,v_proj,dropout=0"))
    lora.enable_gradient_checkpointing(model)
    assert lora.is_checkpointing(model)
    trainable = lora.adapter_state(model)
    assert trainable and all("lora_" in name for name in trainable)
    before = eval_loss(model, tok, features)
    # gradient checkpointing throughout, bf16 autocast on the CPU for the last epochs
    losses = lora_train(model, tok, features, epochs=2, bf16=False) + lora_train(model, tok, features, epochs=1, bf16=True, lr=1e-2)
    after = eval_loss(model, tok, features)
    assert after < before - 0.05, (before, after, losses)

    # only the adapters changed: every base tensor is bit-identical
    for name, tensor in model.get_base_model().state_dict().items():
        if "lora_" not in name:
            assert torch.equal(tensor, original[name.replace("base_layer.", "")]), name

    # kept apart: adapter_model.safetensors + adapter_config.json, loading back to the same outputs
    probe = chat.collate(features[:4], tok.pad_token_id)
    with torch.no_grad():
        expected = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    adapter_dir = tmp_path / "adapter"
    lora.save_adapter(model, tok, adapter_dir, family_dirs[family])
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= {p.name for p in adapter_dir.iterdir()}
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(family_dirs[family].resolve())
    loaded, _ = load_causal_lm(adapter_dir)

    # merged into the base: a plain HF directory whose outputs are the base + adapter outputs
    merged_dir = tmp_path / "merged"
    lora.save_merged(model, tok, merged_dir)
    assert "model.safetensors" in {p.name for p in merged_dir.iterdir()} and not (merged_dir / "adapter_config.json").exists()
    merged, _ = load_causal_lm(merged_dir)
    with torch.no_grad():
        for other in (loaded, merged):
            got = other(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
            assert (got - expected).abs().max().item() < 1e-4
    assert not any(p.suffix in (".bin", ".pt") for d in (adapter_dir, merged_dir) for p in d.iterdir())


def test_lora_targets_that_do_not_exist_list_the_ones_that_do(family_dirs):
    from slmkit.lm import load_causal_lm

    model, _ = load_causal_lm(family_dirs["phi"])
    with pytest.raises(UserError, match="--lora targets: o_proj not in this phi model: its linear layers are q_proj,k_proj,v_proj,dense,fc1,fc2 ") as info:
        lora.attach(model, lora.parse_lora("r=4,targets=q_proj,o_proj"))
    assert "\n" not in str(info.value)


def test_adapter_whose_base_is_gone(family_dirs, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    from slmkit.lm import load_causal_lm

    with pytest.raises(UserError, match="the adapter's base model .*gone is gone: put it back"):
        load_causal_lm(adapter)


# ------------------------------------------------------------------------------------------ slm train --task lm --lora

runner = CliRunner()
LORA = ["--lora", "r=4,alpha=8,targets=q_proj,v_proj,dropout=0", "--epochs", "3", "--lr", "3e-2", "--batch-size", "8", "--set", "train.warmup=0", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat-data")
    (d / "train.jsonl").write_text("\n".join(json.dumps({"messages": c}) for c in conversations(48, seed=1)) + "\n", encoding="utf-8")
    (d / "dev.jsonl").write_text("\n".join(json.dumps({"instruction": c[0]["content"], "response": c[1]["content"]}) for c in conversations(16, seed=2)) + "\n", encoding="utf-8")
    return {"train": d / "train.jsonl", "eval": d / "dev.jsonl"}


def test_slm_train_lm_lora_merge_or_keep_adapter(family_dirs, chat_files, tmp_path):
    import torch

    from slmkit.lm import load_causal_lm

    base = family_dirs["qwen2"]
    data = ["--task", "lm", "--base", base, "--data", chat_files["train"], "--eval", chat_files["eval"]]
    merged_out, adapter_out = tmp_path / "merged", tmp_path / "adapter"
    result = runner.invoke(app, ["train", *map(str, data), "--out", str(merged_out), "--merge", *LORA])
    assert result.exit_code == 0, result.output
    # the same run with gradient checkpointing, keeping the adapter apart
    result = runner.invoke(app, ["train", *map(str, data), "--out", str(adapter_out), "--grad-checkpoint", *LORA])
    assert result.exit_code == 0, result.output

    assert {"model.safetensors", "config.json", "tokenizer.json", "config.yaml", "metrics.json"} <= {p.name for p in merged_out.iterdir()}
    assert not (merged_out / "adapter_config.json").exists() and not (merged_out / "README.md").exists()
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "config.yaml", "metrics.json"} <= {p.name for p in adapter_out.iterdir()}
    assert not (adapter_out / "model.safetensors").exists()
    for out in (merged_out, adapter_out):
        m = json.loads((out / "metrics.json").read_text())
        perplexities = [h["perplexity"] for h in m["history"]]
        assert perplexities == sorted(perplexities, reverse=True) and perplexities[-1] < perplexities[0] - 2, perplexities
        assert m["lora"]["spec"] == "r=4,alpha=8,targets=q_proj,v_proj,dropout=0" and m["lora"]["trainable_parameters"] == 2 * (4 * 32 + 4 * 32) + 2 * (4 * 32 + 4 * 16)
    assert json.loads((adapter_out / "metrics.json").read_text())["eval"]["perplexity"] == pytest.approx(json.loads((merged_out / "metrics.json").read_text())["eval"]["perplexity"], rel=1e-5)

    # both load through the one loader; the adapter (merged in memory) gives the merged model's logits
    merged, tok = load_causal_lm(merged_out)
    adapted, _ = load_causal_lm(adapter_out)
    original, _ = load_causal_lm(base)
    ids = torch.tensor([tok.apply_chat_template(conversations(1, seed=9)[0][:1], add_generation_prompt=True)["input_ids"]])
    with torch.no_grad():
        a, b, c = (m(input_ids=ids).logits for m in (merged, adapted, original))
    assert (a - b).abs().max().item() < 1e-4 and (a - c).abs().max().item() > 1e-3
    # slm quantize takes the adapter directory too (its base with the adapter merged)
    from slmkit.config import QuantizeConfig
    from slmkit.wquant import quantize_lm

    eval_text = tmp_path / "heldout.txt"
    eval_text.write_text("\n".join(lm_corpus(10, seed=5)), encoding="utf-8")
    q = quantize_lm(QuantizeConfig(model=str(adapter_out), out=str(tmp_path / "adapter-int8"), method="int8-weight", eval_data=str(eval_text), gen_tokens=4, report_all=False))
    assert q.metrics["reload_max_abs_logit_diff"] == 0 and q.metrics["mean_kl"] < 1e-3
    # slm generate takes either, and greedy decoding gives the same reply
    replies = [runner.invoke(app, ["generate", "--model", str(d), "--chat", "my parcel is late", "--greedy", "--max-tokens", "8"]) for d in (merged_out, adapter_out)]
    assert all(r.exit_code == 0 for r in replies), replies[0].output + replies[1].output
    assert replies[0].stdout == replies[1].stdout
    # slm serve takes the adapter directory as it is: the chat API answers as slm generate did
    from fastapi.testclient import TestClient

    from slmkit.config import ServeConfig
    from slmkit.serve import create_app
    from slmkit.serve_lm import check_lm_dir

    assert check_lm_dir(adapter_out) == "pytorch"
    with TestClient(create_app(ServeConfig(model=str(adapter_out)))) as client:
        for _ in range(600):  # the model loads in the background; the server says when it is ready
            if client.get("/health/ready").status_code == 200:
                break
            time.sleep(0.05)
        answer = client.post("/v1/chat/completions", json={"model": "adapter", "messages": [{"role": "user", "content": "my parcel is late"}], "temperature": 0, "max_tokens": 8})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"].strip() == replies[1].stdout.strip()
    (adapter_out / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match="missing adapter_model.safetensors: save the adapter again"):
        check_lm_dir(adapter_out)


def test_slm_train_lora_bad_input(family_dirs, chat_files, tiny_base, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n" + '{"prompt": "x"}\n')
    llama = str(family_dirs["llama"])
    out = tmp_path / "out"
    cases = [
        (["--base", llama, "--lora", "r=4,targets=q_proj,query"], "--lora targets: query not in this llama model: its linear layers are q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"),
        (["--lora", "r=4,targets=q_proj"], "--lora adapts an existing causal LM: pass --base DIR"),
        (["--base", str(tiny_base), "--lora", "r=4,targets=q_proj"], "not a causal language model"),
        (["--base", llama, "--lora", "r=0"], "--lora: r must be at least 1"),
        (["--base", llama, "--merge"], "setting model.merge: merges LoRA adapters: pass --lora too"),
        (["--base", llama, "--lora", "r=4", "--data", str(bad)], "bad.jsonl line 2: expected a \"messages\" list"),
    ]
    for args, message in cases:
        argv = ["train", "--task", "lm", "--data", str(chat_files["train"]), "--out", str(out), "--epochs", "1", "--quiet", *args]
        result = runner.invoke(app, argv)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


# ------------------------------------------------------------------------------------------ model.dropout


@pytest.mark.parametrize("family", LM_FAMILIES)
def test_hidden_dropout_drops_while_training_only_and_saves_nothing(family, family_dirs, tmp_path):
    """model.dropout on an LM: embedding and residual dropout (hooks, or Phi's own) that change training outputs,
    leave evaluation outputs bit-identical and are not in the saved model."""
    import torch
    from transformers import AutoModelForCausalLM

    from slmkit.tasks.lm import add_hidden_dropout

    model = AutoModelForCausalLM.from_pretrained(family_dirs[family]).eval()
    ids = torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
        places = add_hidden_dropout(model, 0.5)
        assert places == (3 if family == "phi" else 5)  # Phi's own two residual and one embedding dropout; else embedding + 2 x (attention, MLP)
        assert torch.equal(model(ids).logits, before)
        model.train()
        assert not torch.allclose(model(ids).logits, model(ids).logits)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(again(ids).logits, before)
