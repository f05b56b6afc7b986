"""Load, overload, soak, shutdown and fuzz benchmark of `slm serve`, with a client on loopback.

Every phase is bounded in time and request count and stops by itself:

    load       batch-1 requests at concurrency 32 for --seconds, with --workers 1 and 2: requests/s, p50/p99
    overload   a paced (open-loop) client offering 10x the sustainable rate measured by `load`: how fast the
               excess gets 429, and the latency of the admitted requests
    soak       --soak-minutes of steady load: RSS and open file descriptors at start and end
    sigterm    SIGTERM in the middle of load: every admitted request must be answered, the exit code 0
    fuzz       --fuzz generated bad requests (malformed JSON, wrong types, empty and huge strings, deep nesting,
               unicode edge cases, invalid UTF-8, oversized bodies, 10k texts): zero 5xx, every error
               JSON-shaped, and correct answers afterwards

The client is a small asyncio HTTP/1.1 keep-alive client (uvloop when installed) rather than an HTTP library,
so that on a 2-vCPU machine the client takes as little of the CPU the server needs as possible. The bundle is
an int8 student (<= 5 MB); build one with --build (slm distill of the demo teacher, then export + quantize).

    python benchmarks/serve_load.py --build runs/serve-bench --teacher runs/demo
    python benchmarks/serve_load.py --bundle runs/serve-bench/student-int8 --soak-minutes 10

Writes benchmarks/results/serve.md and serve.json with the command.
"""

from __future__ import annotations

import json
import random
from typing import Iterator

# ------------------------------------------------------------------------------------------------ fuzz

FUZZ_KINDS = (
    "malformed_json", "wrong_types", "empty", "huge_strings", "deep_nesting", "unicode_edge", "invalid_utf8",
    "oversized_body", "ten_k_texts",
)
UNICODE_EDGES = [
    "\u0000", "\u0000abc", "\ufeff", "\uffff", "\ufffe", "\U0010ffff", "e\u0301\u0301\u0301", "\u202eevil\u202c", "👩‍👩‍👧‍👦",
    "\u200b" * 50, "\r\n\t\x0b\x0c", "Z̴̡͎̈́a̸̙͌l̷̹̇g̵̱̈o̶̜͝", "ﷺ" * 20, "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\x7f\x80\x9f", "한국어 テキスト 中文", "\u00a0" * 10,
]
ESCAPED_EDGES = ["\\ud800", "\\udfff", "\\ud83d", "\\ude00\\ud83d", "\\u0000", "\\uDBFF\\uDFFF"]  # written as JSON escapes


def bad_requests(n: int, seed: int = 0, max_body_bytes: int = 1_000_000) -> Iterator[tuple[str, bytes]]:
    """`n` generated (kind, body) pairs, cycling through FUZZ_KINDS; a few happen to be valid requests."""
    rng = random.Random(seed)
    for i in range(n):
        kind = FUZZ_KINDS[i % len(FUZZ_KINDS)]
        yield kind, _FUZZ[kind](rng, max_body_bytes)


def _text(rng: random.Random, length: int) -> str:
    return "".join(rng.choice("abcdefghij klmnop") for _ in range(length))


def _malformed_json(rng: random.Random, limit: int) -> bytes:
    valid = json.dumps({"texts": [_text(rng, rng.randint(0, 40)) for _ in range(rng.randint(1, 4))]}).encode()
    choice = rng.randrange(8)
    if choice == 0:
        return valid[: rng.randrange(len(valid))]  # truncated
    if choice == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))  # random bytes
    if choice == 2:
        return valid.replace(b'"', b"'")  # single quotes
    if choice == 3:
        return valid[:-2] + b",]}"  # trailing comma
    if choice == 4:
        return rng.choice([b"", b" ", b"null", b"NaN", b"Infinity", b"-", b"{", b"}", b'{"texts":', b"[" * 3])
    if choice == 5:
        return b'{"texts": ["a"]}' + rng.choice([b"x", b"{}", b"]", b"\x00"])  # trailing data
    if choice == 6:
        return b'{"texts": ["' + b"9" * rng.randint(5000, 20000) + b'"]}' if rng.random() < 0.5 else b'{"n": ' + b"9" * 5000 + b"}"
    pos = rng.randrange(len(valid))
    return valid[:pos] + bytes([rng.randrange(256)]) + valid[pos + 1 :]  # one byte flipped


def _wrong_types(rng: random.Random, limit: int) -> bytes:
    values = [None, True, 0, -1.5, 1e308, "text", {}, {"a": "b"}, [], [1, 2], [["a"]], [None], [{"text": "a"}], ["a", 3], ["a", None]]
    choice = rng.randrange(4)
    if choice == 0:
        return json.dumps({"texts": rng.choice(values)}).encode()
    if choice == 1:
        return json.dumps(rng.choice(values)).encode()  # not an object
    if choice == 2:
        return json.dumps({rng.choice(["text", "Texts", "inputs", ""]): ["a"]}).encode()  # misspelled key
    return json.dumps({"texts": ["a"], rng.choice(["options", "model", "x" * 500]): rng.choice(values)}).encode()  # extra field


def _empty(rng: random.Random, limit: int) -> bytes:
    return rng.choice([b"", b"{}", b'{"texts": []}', b'{"texts": [""]}', b'{"texts": ["", "", ""]}', b'{"texts": [" "]}', b'{"texts": null}'])


def _huge_strings(rng: random.Random, limit: int) -> bytes:
    size = rng.choice([2001, 5000, 50_000, min(limit - 100, 900_000)])
    return json.dumps({"texts": [rng.choice("ab ") * size]}).encode()


def _deep_nesting(rng: random.Random, limit: int) -> bytes:
    depth = rng.choice([100, 1000, 10_000, 100_000, min(limit // 2 - 20, 400_000)])
    choice = rng.randrange(3)
    if choice == 0:
        return b"[" * depth + b"]" * depth
    if choice == 1:
        return b'{"texts": ' + b"[" * depth + b"]" * depth + b"}"
    return b'{"a":' * depth + b"1" + b"}" * depth


def _unicode_edge(rng: random.Random, limit: int) -> bytes:
    if rng.random() < 0.4:  # escapes that decode to lone surrogates or NUL
        return ('{"texts": ["a' + rng.choice(ESCAPED_EDGES) + 'b"]}').encode()
    texts = [rng.choice(UNICODE_EDGES) * rng.randint(1, 3) for _ in range(rng.randint(1, 5))]
    body = json.dumps({"texts": texts}, ensure_ascii=rng.random() < 0.5).encode()
    return (b"\xef\xbb\xbf" + body) if rng.random() < 0.1 else body  # a UTF-8 byte-order mark


def _invalid_utf8(rng: random.Random, limit: int) -> bytes:
    bad = rng.choice([b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xf0\x9f\x98"])
    return b'{"texts": ["abc' + bad + b'def"]}'


def _oversized_body(rng: random.Random, limit: int) -> bytes:
    return json.dumps({"texts": ["a" * 1000] * (limit // 1000 + rng.randint(1, 50))}).encode()


def _ten_k_texts(rng: random.Random, limit: int) -> bytes:
    return json.dumps({"texts": [rng.choice(["hi", "", "a b"]) for _ in range(10_000)]}).encode()


_FUZZ = {
    "malformed_json": _malformed_json, "wrong_types": _wrong_types, "empty": _empty, "huge_strings": _huge_strings,
    "deep_nesting": _deep_nesting, "unicode_edge": _unicode_edge, "invalid_utf8": _invalid_utf8,
    "oversized_body": _oversized_body, "ten_k_texts": _ten_k_texts,
}


def check_answer(status: int, body: bytes, error_codes) -> str | None:
    """What is wrong with one answer to a fuzz request (None: nothing): a 5xx, or an error that is not our JSON."""
    if status >= 500:
        return f"status {status}"
    try:
        data = json.loads(body)
    except ValueError:
        return f"status {status} with a body that is not JSON: {body[:80]!r}"
    if status == 200:
        return None if isinstance(data.get("results"), list) else "200 without results"
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or set(error) != {"code", "message"} or error["code"] not in error_codes:
        return f"status {status}: error body of the wrong shape: {body[:120]!r}"
    if any(leak in body for leak in (b"Traceback", b".py", b"slmkit", b"File \"")):
        return f"status {status}: internals in the message: {body[:120]!r}"
    return None
