"""The decode loop (slmkit.generate) and the PyTorch stepper (slmkit.lm): processors with known answers, greedy and
beam parity with Hugging Face's `generate` on the five tiny families, stop strings across pieces, seeded sampling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import LM_FAMILIES, make_causal_lm
from slmkit.errors import UserError
from slmkit.generate import (
    GenerationConfig,
    apply_repetition_penalty,
    apply_temperature,
    generate_ids,
    generate_text,
    special_ids,
    top_k_filter,
    top_p_filter,
    truncate_prompt,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")

def test_generate_module_is_torch_free():
    code = "import sys, slmkit.generate; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.split() == ["False", "False"]


# ------------------------------------------------------------------------------------------ processors


def test_processors_known_answers():
    logits = np.array([2.0, -1.0, 0.5, 3.0], dtype=np.float32)
    np.testing.assert_allclose(apply_repetition_penalty(logits, [0, 1, 1], 2.0), [1.0, -2.0, 0.5, 3.0])
    np.testing.assert_allclose(apply_temperature(logits, 0.5), logits * 2)
    assert np.isneginf(top_k_filter(logits, 2)).tolist() == [False, True, True, False]
    assert np.isfinite(top_k_filter(logits, 0)).all()
    # probabilities of [3, 2, 0.5, -1]: 0.69, 0.25, 0.02, 0.01 -> top-p 0.5 keeps one, 0.9 keeps two, 0.95 three
    assert np.isfinite(top_p_filter(logits, 0.5)).tolist() == [False, False, False, True]
    assert np.isfinite(top_p_filter(logits, 0.9)).tolist() == [True, False, False, True]
    assert np.isfinite(top_p_filter(logits, 0.95)).tolist() == [True, False, True, True]
    with pytest.raises(UserError, match="top_p"):
        GenerationConfig(top_p=0).validate()
    with pytest.raises(UserError, match="stop"):
        GenerationConfig(stop=("",)).validate()


class Scripted:
    """A stepper that makes `script` the greedy continuation whatever the prompt (and records its calls)."""

    def __init__(self, script: list[int], vocab: int):
        self.script, self.vocab, self.calls = script, vocab, []

    def _logits(self, position: int) -> np.ndarray:
        logits = np.zeros(self.vocab, dtype=np.float32)
        logits[self.script[min(position, len(self.script) - 1)]] = 10.0
        return logits

    def start(self, prompt_ids):
        self.calls.append(("start", len(prompt_ids)))
        self.n = 0
        return self._logits(0)

    def step(self, token_id):
        self.calls.append(("step", token_id))
        self.n += 1
        return self._logits(self.n)


class Chars:
    """A tokenizer whose tokens are the given strings (decode concatenates)."""

    def __init__(self, pieces: list[str]):
        self.pieces = pieces

    def encode(self, text):
        return [0]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids)


def test_stop_strings_across_pieces_and_eos():
    pieces = ["<p>", "ab", "c", "de", "cx", "!", "</s>"]
    tok = Chars(pieces)
    greedy = GenerationConfig(temperature=0, max_new_tokens=10)
    script = [1, 2, 4, 3, 5, 6]  # ab c cx de ! </s>
    stepper = Scripted(script, len(pieces))
    info = {}
    text = list(generate_text(stepper, tok, "x", GenerationConfig(temperature=0, max_new_tokens=5, stop=("cd",)), info=info))
    assert "".join(text) == "abccxde!" and info["finish_reason"] == "length"  # "c" then "cx": held, then let go
    # "c" + "de": the stop string spans two pieces; the "c" is held back, never shown
    text = list(generate_text(Scripted([1, 2, 3, 5], len(pieces)), tok, "x", GenerationConfig(temperature=0, stop=("cd", "zz"), max_new_tokens=10), info=info))
    assert text == ["ab"] and info["finish_reason"] == "stop"
    # eos ends it (not shown) and nothing runs past it
    stepper = Scripted(script, len(pieces))
    text = list(generate_text(stepper, tok, "x", greedy, eos_ids=[6], info=info))
    assert "".join(text) == "abccxde!" and info == {"finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 5}
    # max_new_tokens: the last token needs no step of its own
    stepper = Scripted(script, len(pieces))
    assert list(generate_ids(stepper, [0], GenerationConfig(temperature=0, max_new_tokens=3))) == [1, 2, 4]
    assert stepper.calls == [("start", 1), ("step", 1), ("step", 2)]


def test_incremental_detokenization_of_multibyte_text(tiny_lm):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_lm / "tokenizer.json"))
    text = " héllo wörld 日本 card"
    ids = tok.encode(text).ids
    assert len(ids) > len(text.split())  # several tokens are pieces of one character
    pieces = list(generate_text(Scripted(ids, tok.get_vocab_size()), tok, [1], GenerationConfig(temperature=0, max_new_tokens=len(ids))))
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert len(pieces) > 3  # streamed, not one piece at the end


def test_truncate_prompt():
    assert truncate_prompt(list(range(10)), 16, 4) == (list(range(10)), 0)
    assert truncate_prompt(list(range(20)), 16, 4) == (list(range(8, 20)), 8)
    with pytest.raises(UserError, match="context window is 16"):
        truncate_prompt(list(range(20)), 16, 4, strict=True)


# ------------------------------------------------------------------------------------------ real models


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: make_causal_lm(root / f, f) for f in LM_FAMILIES}


@pytest.mark.parametrize("family", LM_FAMILIES)
def test_greedy_and_beam_equal_hf_generate(families, family):
    import torch

    from slmkit.lm import TorchStepper, load_causal_lm

    model, tok = load_causal_lm(families[family])
    ids = tok("my card was declined at the shop")["input_ids"]
    stepper = TorchStepper(model)
    eos = special_ids(families[family])["eos_ids"]
    assert eos == (2,)
    mine = list(generate_ids(stepper, ids, GenerationConfig(max_new_tokens=24, temperature=0), eos))
    ref = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=24, pad_token_id=0)[0, len(ids):].tolist()
    assert mine == [t for t in ref if t not in eos]
    assert ref[len(mine):] in ([], [2])  # HF keeps the end token; the loop stops before it
    # beam search (no end token, fixed length) = Hugging Face's beam search
    beams = list(generate_ids(stepper, ids, GenerationConfig(max_new_tokens=6, num_beams=3)))
    ref = model.generate(torch.tensor([ids]), do_sample=False, num_beams=3, max_new_tokens=6, min_new_tokens=6, pad_token_id=0, eos_token_id=None)
    assert beams == ref[0, len(ids):].tolist()


def test_sampling_is_seeded_and_text_matches_ids(tiny_lm):
    from slmkit.lm import TorchStepper, load_causal_lm

    model, tok = load_causal_lm(tiny_lm)
    stepper = TorchStepper(model)
    backend = tok.backend_tokenizer
    prompt = "refund please"
    ids = backend.encode(prompt).ids

    def sample(seed, **kw):
        return list(generate_ids(stepper, ids, GenerationConfig(max_new_tokens=16, seed=seed, **kw)))

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)
    assert sample(3, top_k=1) == list(generate_ids(stepper, ids, GenerationConfig(max_new_tokens=16, temperature=0)))
    # the streamed text is the decoded ids (sampling with a seed is the same draw through either entry point)
    text = "".join(generate_text(stepper, backend, prompt, GenerationConfig(max_new_tokens=16, seed=3)))
    assert text == backend.decode(sample(3), skip_special_tokens=True)
    # a high repetition penalty avoids repeats that greedy makes on a random model
    greedy = list(generate_ids(stepper, ids, GenerationConfig(max_new_tokens=16, temperature=0)))
    penalized = list(generate_ids(stepper, ids, GenerationConfig(max_new_tokens=16, temperature=0, repetition_penalty=100.0)))
    assert len(set(penalized)) > len(set(greedy))


def test_load_causal_lm_refuses_non_lm(tiny_base, tmp_path):
    from slmkit.lm import load_causal_lm

    with pytest.raises(UserError, match="not a causal language model .*BertModel"):
        load_causal_lm(tiny_base)
    with pytest.raises(UserError, match="no config.json"):
        load_causal_lm(tmp_path)


def test_context_window_ends_generation():
    pieces = ["<p>", "ab", "c", "de", "cx", "!", "</s>"]
    stepper = Scripted([1, 2, 4, 3, 5], len(pieces))
    stepper.context_length = 4  # the prompt's one token and three new ones fill it
    info = {}
    text = "".join(generate_text(stepper, Chars(pieces), [0], GenerationConfig(temperature=0, max_new_tokens=10), info=info))
    assert text == "abccx" and info["finish_reason"] == "length" and info["completion_tokens"] == 3
    assert list(generate_ids(stepper, [0, 0, 0, 0], GenerationConfig(temperature=0))) == []


class Markov:
    """A stepper whose next-token logits depend on the last token only: `table[last]`."""

    def __init__(self, table: np.ndarray):
        self.table = table.astype(np.float32)

    def start(self, prompt_ids):
        self.last = prompt_ids[-1]
        return self.table[self.last]

    def step(self, token_id):
        self.last = token_id
        return self.table[token_id]


def test_beam_search_finishes_at_the_end_token():
    # from 0: token 1 (p 0.6) or 2 (p 0.4); after 1 the end (3) is nearly certain; after 2, 2 again is (p 0.99)
    p = np.full((4, 4), 1e-6)
    p[0, 1], p[0, 2] = 0.6, 0.4
    p[1, 3], p[1, 0] = 0.99, 0.01
    p[2, 2], p[2, 3] = 0.99, 0.01
    p[3, 3] = 1.0
    stepper = Markov(np.log(p))
    cfg = GenerationConfig(num_beams=2, max_new_tokens=6)
    assert list(generate_ids(stepper, [0], cfg, eos_ids=[3])) == [1]  # ends: mean log-prob of 1 then the end is the best
    assert list(generate_ids(stepper, [0], GenerationConfig(temperature=0, max_new_tokens=6), eos_ids=[3])) == [1]
    # without end ids, 3 is a token like any other: 1 then 3s (0.6 * 0.99) beats the 2s (0.4 * 0.99^5)
    assert list(generate_ids(stepper, [0], cfg)) == [1, 3, 3, 3, 3, 3]
    # a beam that looks worse at first can win: from 0, 1 (0.6) leads to a 0.5/0.5 split, 2 (0.4) to certain 2s
    p[1, 3], p[1, 0], p[1, 1] = 1e-6, 0.5, 0.5
    p[0, 0] = 1e-6
    stepper = Markov(np.log(p / p.sum(1, keepdims=True)))
    assert list(generate_ids(stepper, [0], GenerationConfig(temperature=0, max_new_tokens=4)))[0] == 1  # greedy takes 1
    assert list(generate_ids(stepper, [0], GenerationConfig(num_beams=2, max_new_tokens=4))) == [2, 2, 2, 2]


def test_chat_prompt_renders_like_transformers(tiny_lm):
    import torch

    from slmkit.generate import open_lm
    from slmkit.lm import load_causal_lm

    lm = open_lm(tiny_lm)
    model, tok = load_causal_lm(tiny_lm)
    messages = [{"role": "user", "content": "my card is locked"}]
    ref = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    ids = lm.encode("my card is locked", chat=True)
    assert ids == list(ref) and ids[0] == 1  # the template's own <s>, as a special token
    greedy = GenerationConfig(temperature=0, max_new_tokens=8)
    out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=8, pad_token_id=0)[0, len(ids):].tolist()
    text = "".join(generate_text(lm.stepper, lm.tokenizer, ids, greedy, eos_ids=lm.eos_ids))
    assert text == tok.decode(out[: out.index(2)] if 2 in out else out)  # the same text, up to the end token
    with pytest.raises(UserError, match="no chat template"):
        lm.chat_template = None
        lm.encode("x", chat=True)
