"""`slm serve` for causal language models: an OpenAI-compatible API over the project's one decode loop.

    slm serve runs/lm --max-sequences 4 --max-tokens 256
    curl -s 127.0.0.1:8000/v1/completions -d '{"model": "lm", "prompt": "my parcel", "max_tokens": 16}'

    from openai import OpenAI                       # the official client, pointed at this server
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    for chunk in client.chat.completions.create(model="lm", messages=[{"role": "user", "content": "hi"}], stream=True):
        print(chunk.choices[0].delta.content or "", end="")

`slm serve DIR` picks this module when DIR is a causal LM (`lm_kind`, which reads JSON only): a Hugging Face
causal-LM directory (safetensors; PyTorch through `slmkit.lm.TorchStepper`) or an ONNX LM export (no torch:
`slmkit.runtime.OnnxStepper`). The model is opened by `slm generate`'s `open_lm`, and every answer comes from
`slmkit.generate.generate_text`, the loop `slm generate` runs, so a greedy answer here equals `slm generate`'s.
Read top to bottom, this module owns:

- **the model** (`LMModel`): the tokenizer, a Stepper per sequence (its own KV cache) over one shared model, the
  context window, and the chat template (`slmkit.generate.render_chat`: jinja2's sandbox, as transformers does).
- **the API**: POST /v1/completions and /v1/chat/completions, streamed (server-sent events in OpenAI's chunk
  format, ending with `data: [DONE]`) or not; GET /v1/models. Parameters: max_tokens (chat also
  max_completion_tokens), stop (a string or up to 4), temperature (0 is greedy), top_p, seed, n=1, and as
  extensions top_k and repetition_penalty. Parameters the server cannot honour (n > 1, logprobs, echo, penalties,
  tools...) are refused with 422 rather than silently ignored. Answers carry usage token counts and
  finish_reason "stop" (end of sequence or a stop string) or "length".
- **the generation queue**: at most `max_sequences` sequences generate at once, each on a worker thread of its
  own, so the event loop keeps streaming and answering meanwhile; the others wait for a free sequence, within
  their deadline. Admission is serve.py's gate: at most queue_size requests at once, the excess gets 429 with
  Retry-After before its body is read.
- **limits**: a request asking for more than `max_tokens` tokens gets 422 `too_many_tokens` (refused, not
  clamped: the client learns the cap instead of receiving a silently shorter answer); a prompt that leaves no
  room for its max_tokens in the context window gets 422 `context_length_exceeded`. The request deadline
  (timeout_s) covers the wait for a sequence and the generation: a request still waiting at its deadline gets
  503 `timeout`; one generating at its deadline stops there and returns what it has, with finish_reason "length"
  (streamed: the last chunk says so).
- **disconnects**: a client that drops its stream, or leaves before a non-streamed answer, stops its
  generation: the worker checks between tokens, and the sequence is freed for the next request.

Errors are serve.py's `{"error": {"code", "message"}}` with a code from `LM_ERROR_CODES`, plus OpenAI's "type"
and "param" so that OpenAI clients show them; the API key, health endpoints, /metrics, /docs and the drain after
SIGTERM are serve.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Literal

from slmkit import artifacts
from slmkit.config import ServeConfig
from slmkit.errors import UserError
from slmkit.serve import (
    ERROR_CODES, TASK_ENDPOINTS, ApiError, Service, _App, _errors, _read_body, _Throughput, add_operations_routes, read_api_key,
)

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException

log = logging.getLogger("uvicorn.error")
LM_ERROR_CODES = {
    **{k: v for k, v in ERROR_CODES.items() if k not in ("too_many_texts", "text_too_long", "unreadable_pair")},
    "wrong_task": "the endpoint of a classification, NER or QA model: this server answers a causal LM (404)",
    "model_not_found": "the request's model is not the one this server serves: see /v1/models (404)",
    "too_many_tokens": "max_tokens above the server's cap (max_tokens setting) (422)",
    "context_length_exceeded": "the prompt and max_tokens do not fit the model's context window (422)",
    "no_chat_template": "a chat request to a model without a chat template: use /v1/completions (422)",
    "unsupported": "a parameter this server does not implement (n > 1, logprobs, echo, penalties, tools...) (422)",
}
DEFAULT_CONTEXT = 2048  # tokens, for a model whose config names no context window
MAX_STOP = 4  # stop sequences per request, as OpenAI's API
CLIENT_CLOSED = 499  # the status recorded for a request whose client left before its answer (nginx's)
WARM_UP_TOKENS = 2
LM_ARCHITECTURE_SUFFIXES = ("ForCausalLM",)  # LlamaForCausalLM, MistralForCausalLM ... (what slmkit.lm loads)
ONNX_LM_TASK = "lm"  # the manifest task of an ONNX LM export (slm export of a causal LM)


# ---------------------------------------------------------------------------------------------- the model


def lm_kind(directory: Path) -> str | None:
    """"pytorch" for a Hugging Face causal-LM directory (or a LoRA adapter kept apart from its base: served on
    it), "onnx" for an ONNX LM export, None for anything else. Reads JSON only (no torch): slm serve asks it of
    every directory."""
    from slmkit import lora

    if lora.is_adapter_dir(directory):
        return "pytorch"
    manifest = directory / artifacts.MANIFEST
    if (directory / artifacts.ONNX_MODEL).is_file() and manifest.is_file():
        with contextlib.suppress(UserError):
            if artifacts.read_json(manifest).get("task") == ONNX_LM_TASK:
                return "onnx"
        return None
    config = directory / artifacts.HF_CONFIG
    if config.is_file():
        with contextlib.suppress(UserError):
            architectures = artifacts.read_json(config).get("architectures") or []
            if any(str(a).endswith(LM_ARCHITECTURE_SUFFIXES) for a in architectures):
                return "pytorch"
    return None


@dataclass
class LMModel:
    """A causal LM ready to generate: `new_stepper()` gives each sequence its own KV cache over one shared model."""

    name: str
    backend: str  # "torch" or "onnx" (slmkit.generate.open_lm's)
    tokenizer: Any  # a tokenizers.Tokenizer: what generate_text decodes with
    new_stepper: Callable[[], Any]
    context_window: int  # tokens: prompt + completion
    chat_template: str | None  # jinja2 source
    special_ids: dict = field(default_factory=dict)  # generate_text's bos_id and eos_ids

    def encode(self, prompt: str) -> list[int]:
        """A prompt's ids, with the tokenizer's own special tokens (as generate_text and slm generate encode a text)."""
        return list(self.tokenizer.encode(prompt).ids)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """A conversation's ids: the chat template applied with the assistant's turn opened. The template writes
        its own special tokens (<s> ...), so the tokenizer adds none (as slm generate --chat)."""
        from slmkit.generate import render_chat

        token = lambda i: self.tokenizer.id_to_token(i) if i is not None else ""  # noqa: E731
        eos = self.special_ids.get("eos_ids") or (None,)
        text = render_chat(self.chat_template, messages, {"bos_token": token(self.special_ids.get("bos_id")), "eos_token": token(eos[0])})
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)


def check_lm_dir(directory: Path) -> str:
    """What `slm serve` checks before starting (without loading the model): a causal LM it can serve, with a
    tokenizer and a chat template that compiles."""
    from slmkit import lora

    kind = lm_kind(directory)
    if kind is None:
        raise UserError(f"{directory}: not a causal LM: pass a Hugging Face causal-LM directory or an ONNX LM export")
    if lora.is_adapter_dir(directory):  # served on its recorded base, the adapter merged in when each worker loads it
        base = lora.adapter_base(directory)
        if lm_kind(base) != "pytorch" or lora.is_adapter_dir(base):
            raise UserError(f"{directory}: the adapter's base {base} is not a Hugging Face causal-LM directory: fix base_model_name_or_path in {lora.ADAPTER_CONFIG}")
        check_lm_dir(base)
        artifacts.refuse_pickle(directory, lora.ADAPTER_WEIGHTS)
        missing = [n for n in (lora.ADAPTER_WEIGHTS, artifacts.TOKENIZER) if not (directory / n).is_file()]
        if missing:
            raise UserError(f"{directory}: missing {', '.join(missing)}: save the adapter again with slm train --lora")
        _check_template(directory)
        return kind
    if kind == "onnx":
        from slmkit.runtime import load_lm_manifest

        load_lm_manifest(directory)  # the runtime's own checks of the files and the KV-cache layout
    artifacts.refuse_pickle(directory, artifacts.WEIGHTS if kind == "pytorch" else artifacts.ONNX_MODEL)
    needed = (artifacts.TOKENIZER, artifacts.WEIGHTS if kind == "pytorch" else artifacts.ONNX_MODEL)
    missing = [n for n in needed if not (directory / n).is_file()]
    if missing and not (kind == "pytorch" and any(directory.glob("model-*.safetensors"))):
        raise UserError(f"{directory}: missing {', '.join(missing)}: a causal LM is served from safetensors (or model.onnx) and tokenizer.json")
    _check_template(directory)
    return kind


def _check_template(directory: Path) -> None:
    from slmkit.generate import chat_template

    if (source := chat_template(directory)) is not None:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        try:
            ImmutableSandboxedEnvironment().parse(source)
        except TemplateError as e:
            raise UserError(f"{directory}: the chat template does not compile ({e}): fix chat_template.jinja or tokenizer_config.json") from None


def load_lm(directory: Path, threads: int | None) -> LMModel:
    """The directory's causal LM, loaded once per worker by `slm generate`'s `open_lm` (PyTorch for a Hugging
    Face directory, ONNX Runtime without torch for an export)."""
    from slmkit.generate import open_lm

    check_lm_dir(directory)
    lm = open_lm(directory, threads)
    prototype = lm.stepper
    # One loaded model for every sequence, each with a stepper of its own (its own KV cache): the ONNX stepper's
    # fork() shares its session (ONNX Runtime sessions run concurrently); a TorchStepper holds only the module,
    # whose forward keeps no state, and the cache that its start() replaces, so a copy is a fork.
    fork = getattr(prototype, "fork", None) or (lambda: copy.copy(prototype))
    return LMModel(name=directory.resolve().name, backend=lm.backend, tokenizer=lm.tokenizer, new_stepper=fork,
                   context_window=lm.context_length or DEFAULT_CONTEXT, chat_template=lm.chat_template,
                   special_ids={"bos_id": lm.bos_id, "eos_ids": lm.eos_ids})


# ---------------------------------------------------------------------------------------------- requests


class _Request(BaseModel):
    """What both endpoints take (OpenAI's names and ranges)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The served model's id (see /v1/models).")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate (at most the server's max_tokens cap).")
    temperature: float = Field(1.0, ge=0, le=2, description="Sampling temperature; 0 is greedy (deterministic).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.")
    top_k: int = Field(0, ge=0, description="Extension: sample among the k most probable tokens only (0: all).")
    repetition_penalty: float = Field(1.0, gt=0, description="Extension: divide the logits of tokens already present by this (1: off).")
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOP} strings: generation ends before the first of them (not returned).")
    seed: int | None = Field(None, description="Seed of the sampler: the same request with the same seed gives the same answer.")
    n: int = Field(1, description="Choices per request: this server generates 1.")
    stream: bool = Field(False, description="Send the answer as server-sent events, one per piece of text, ending with data: [DONE].")
    stream_options: dict | None = Field(None, description='{"include_usage": true}: a last chunk carries the usage.')
    user: str | None = Field(None, description="Accepted and ignored.")
    logprobs: Any = Field(None, description="Not supported (null only).")
    presence_penalty: float = Field(0.0, description="Not supported (0 only): use repetition_penalty.")
    frequency_penalty: float = Field(0.0, description="Not supported (0 only): use repetition_penalty.")
    logit_bias: dict | None = Field(None, description="Not supported (null or empty only).")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        if any(s == "" for s in stops):
            raise ValueError("a stop string is empty")
        return stops

    def unsupported(self) -> str | None:
        """The first parameter set to a value this server does not implement."""
        if self.n != 1:
            return "n: this server generates one choice per request: send n=1 or leave it out"
        if self.logprobs not in (None, False):
            return "logprobs: not supported: leave it out"
        if self.presence_penalty or self.frequency_penalty:
            return "presence_penalty/frequency_penalty: not supported: use repetition_penalty (an extension) instead"
        if self.logit_bias:
            return "logit_bias: not supported: leave it out"
        return None


class CompletionRequest(_Request):
    prompt: str | list[str] = Field(description="The text to continue (a list holding one string is accepted).")
    echo: bool = Field(False, description="Not supported (false only).")
    best_of: int = Field(1, description="Not supported (1 only).")
    suffix: str | None = Field(None, description="Not supported (null only).")

    def unsupported(self) -> str | None:
        if self.echo:
            return "echo: not supported: leave it out"
        if self.best_of != 1 or self.suffix is not None:
            return "best_of/suffix: not supported: leave them out"
        return super().unsupported()


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id ...: passed to the template as they are

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict] | None = None


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(description="The conversation, oldest first; rendered with the model's chat template.")
    max_completion_tokens: int | None = Field(None, ge=1, description="The newer name of max_tokens (wins when both are sent).")


def request_schema(model_class: type[BaseModel]) -> dict:
    """The JSON schema of a request body for /openapi.json, self-contained: pydantic's "#/$defs/..." references
    would not resolve inside the OpenAPI document, so they are inlined (the request models do not recurse)."""
    schema = model_class.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[1]])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return inline(schema)


def _parse(body: bytes, model_class: type[_Request]) -> _Request:
    """The request, or an ApiError naming the field (OpenAI's "param")."""
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "the body is not JSON in UTF-8: see /docs for the request format") from None
    try:
        return model_class.model_validate_json(body)
    except ValidationError as e:
        error = e.errors(include_url=False)[0]
        # pydantic names the member of a union it tried ("prompt.str"): the client sent one field, not a type
        path = [p for p in error["loc"] if isinstance(p, int) or (p.isidentifier() and p not in _TYPE_TAGS)]
        param = ".".join(str(p) for p in path)
        kind, message = error["type"], error["msg"].removeprefix("Value error, ")
        if len(path) < len(error["loc"]):
            message = "wrong type: see /docs for what it takes"
        if kind == "json_invalid":  # JSON that json.loads reads but pydantic refuses: a lone surrogate
            raise LMError(422, "invalid_text", "a string holds a lone surrogate (\\ud800-\\udfff): send valid Unicode") from None
        if kind == "extra_forbidden":
            raise LMError(422, "unsupported", f'"{param}": not a parameter this server takes: see /docs', param) from None
        if kind == "missing":
            raise LMError(422, "invalid_request", f'"{param}" is required', param) from None
        if kind == "model_type":
            raise LMError(422, "invalid_request", "expected a JSON object: see /docs", None) from None
        raise LMError(422, "invalid_request", f'"{param}": {message}', param) from None


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict"}


class LMError(ApiError):
    """An ApiError that also names the request field at fault (OpenAI's "param")."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(status, code, message, headers)
        self.param = param


def _message_text(message: ChatMessage, i: int) -> dict:
    """A message as the template sees it: content parts of type text joined into one string."""
    content = message.content
    if isinstance(content, list):
        texts = []
        for part in content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise LMError(422, "unsupported", f'"messages.{i}.content": only text parts are supported', f"messages.{i}.content")
            texts.append(part["text"])
        content = "".join(texts)
    return {**message.model_dump(exclude_none=True), "role": "system" if message.role == "developer" else message.role, "content": content or ""}


# ---------------------------------------------------------------------------------------------- sequences


class _Stopped(Exception):
    """Raised inside the decode loop (between tokens) to end a sequence: "cancelled" or "timeout"."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_END = object()  # the last item a sequence puts in its queue


class _Sequence:
    """One request's generation: the worker thread puts text pieces into `pieces` (through the loop) and ends
    with `_END`; the event loop reads them. `cancelled` ends it at the next token."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float):
        self.loop, self.deadline = loop, deadline  # deadline: on time.monotonic()
        self.pieces: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.info: dict = {"finish_reason": "length", "prompt_tokens": 0, "completion_tokens": 0}  # generate_text fills it
        self.stopped: str | None = None  # "timeout" or "cancelled" when the loop was ended early
        self.error: Exception | None = None

    def put(self, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed (shutdown): nobody reads any more
            self.loop.call_soon_threadsafe(self.pieces.put_nowait, item)

    @property
    def finish_reason(self) -> str:
        return "length" if self.stopped == "timeout" else self.info["finish_reason"]

    def usage(self) -> dict:
        prompt, completion = self.info["prompt_tokens"], self.info["completion_tokens"]
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _WatchedStepper:
    """A Stepper that ends its sequence between tokens when it is cancelled or past its deadline, and counts the
    tokens generated (each forward pass gives the logits of one generated token)."""

    def __init__(self, inner: Any, seq: _Sequence, on_token: Callable[[], None]):
        self.inner, self.seq, self.on_token = inner, seq, on_token

    def _check(self) -> None:
        if self.seq.cancelled.is_set():
            raise _Stopped("cancelled")
        if time.monotonic() > self.seq.deadline:
            raise _Stopped("timeout")

    def start(self, prompt_ids):
        self._check()
        logits = self.inner.start(prompt_ids)
        self.on_token()
        return logits

    def step(self, token_id: int):
        self._check()
        logits = self.inner.step(token_id)
        self.on_token()
        return logits

    def __getattr__(self, name: str) -> Any:  # anything else a backend offers (beam search's forks)
        return getattr(self.inner, name)


# ---------------------------------------------------------------------------------------------- the service


class _LMMetrics:
    """The Prometheus series of one LM worker (own registry)."""

    def __init__(self, service: "LMService"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        self.requests = Counter("slm_requests", "HTTP requests by endpoint and status code.", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "slm_request_duration_seconds", "Time from request start to the last response byte, by endpoint.", ["endpoint"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0), registry=r,
        )
        self.tokens = Counter("slm_generated_tokens", "Tokens generated, an end-of-sequence token included (all sequences, finished or not).", registry=r)
        self.prompt_tokens = Counter("slm_prompt_tokens", "Prompt tokens read.", registry=r)
        Gauge("slm_active_sequences", "Sequences generating now (at most max_sequences).", registry=r).set_function(lambda: service.active)
        Gauge("slm_waiting_sequences", "Requests waiting for a free sequence.", registry=r).set_function(lambda: service.waiting)
        Gauge("slm_in_flight_requests", "Requests admitted and not yet answered (bounded by queue_size).", registry=r).set_function(lambda: service.in_flight)
        Gauge("slm_tokens_per_second", "Tokens generated per second over the last 10 s.", registry=r).set_function(service.tokens_per_second)
        Gauge("slm_ready", "1 when the model is loaded and warmed up and the server is not draining.", registry=r).set_function(lambda: float(service.ready))

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)


class LMService:
    """One worker's state: the model once loaded, the sequence slots, metrics, and the drain after SIGTERM.

    It has the attributes serve.py's gate and drain read (api_key, draining, in_flight, last_request, answered,
    metrics, cfg), and takes the drain and Retry-After from `serve.Service` as they are."""

    ready = Service.ready
    retry_after = Service.retry_after
    _take_over_sigterm = Service._take_over_sigterm
    begin_drain = Service.begin_drain
    _drain = Service._drain
    _stop_server = Service._stop_server

    def __init__(self, cfg: ServeConfig, directory: Path, api_key: str | None):
        self.cfg, self.directory = cfg, directory
        self.name = directory.resolve().name
        self.api_key = api_key.encode() if api_key else None
        self.state = "loading"
        self.draining = False
        self.in_flight = 0
        self.last_request = 0.0
        self.model: LMModel | None = None
        self.executor = ThreadPoolExecutor(cfg.max_sequences, thread_name_prefix="slm-sequence")
        self.slots: asyncio.Semaphore | None = None  # made on the server's loop
        self.active = 0  # sequences generating
        self.waiting = 0  # requests waiting for a sequence
        self.sequences: set[_Sequence] = set()
        self.throughput = _Throughput()  # generated tokens/s, added to from the worker threads under the lock
        self.throughput_lock = threading.Lock()
        self.answered = _Throughput()  # admitted requests/s, for Retry-After
        self.metrics = _LMMetrics(self)
        self._previous_sigterm: Any = None
        self._drain_task: asyncio.Task | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI):
        self.slots = asyncio.Semaphore(self.cfg.max_sequences)
        loading = asyncio.get_running_loop().create_task(self._load())
        self._take_over_sigterm()
        try:
            yield
        finally:
            loading.cancel()
            for seq in self.sequences:
                seq.cancelled.set()
            if self._previous_sigterm is not None:
                import signal

                signal.signal(signal.SIGTERM, self._previous_sigterm)
            self.executor.shutdown(wait=False)

    async def _load(self) -> None:
        started = time.perf_counter()

        def load() -> LMModel:
            from slmkit.generate import GenerationConfig, generate_text

            model = load_lm(self.directory, self.cfg.threads)
            # the first steps allocate the model's buffers: make them before the first client does
            warm_up = GenerationConfig(max_new_tokens=WARM_UP_TOKENS, temperature=0.0)
            list(generate_text(model.new_stepper(), model.tokenizer, model.encode("warm up"), warm_up, **model.special_ids))
            return model

        try:
            self.model = await asyncio.get_running_loop().run_in_executor(self.executor, load)
        except Exception:
            log.exception("loading %s failed", self.directory)
            self.state = "failed"
            return
        self.name = self.model.name
        self.state = "ready"
        log.info("causal LM %s (%s, context %d tokens, %s chat template) loaded and warmed up in %.1f s: ready",
                 self.model.name, self.model.backend, self.model.context_window, "with a" if self.model.chat_template else "no",
                 time.perf_counter() - started)

    def _on_token(self) -> None:  # on a worker thread (prometheus counters lock themselves)
        self.metrics.tokens.inc()
        with self.throughput_lock:
            self.throughput.add(1)

    def tokens_per_second(self) -> float:
        with self.throughput_lock:
            return self.throughput.rate()

    async def start(self, prompt_ids: list[int], gen: Any, deadline: float) -> _Sequence:
        """A sequence continuing `prompt_ids` on a worker thread, once a sequence slot is free (503 at the deadline)."""
        loop = asyncio.get_running_loop()
        self.waiting += 1
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self.slots.acquire()
        except TimeoutError:
            raise LMError(503, "timeout", f"no free sequence within {self.cfg.timeout_s:g} s: retry later") from None
        finally:
            self.waiting -= 1
        seq = _Sequence(loop, deadline)
        self.sequences.add(seq)
        self.active += 1
        future = loop.run_in_executor(self.executor, self._generate, seq, prompt_ids, gen)

        def release(_: Any) -> None:
            self.active -= 1
            self.sequences.discard(seq)
            self.slots.release()
            self.metrics.prompt_tokens.inc(seq.info["prompt_tokens"])

        future.add_done_callback(release)
        return seq

    def _generate(self, seq: _Sequence, prompt_ids: list[int], gen: Any) -> None:
        """On a worker thread: the decode loop, piece by piece into the sequence's queue."""
        from slmkit.generate import generate_text

        stepper = _WatchedStepper(self.model.new_stepper(), seq, self._on_token)
        try:
            for piece in generate_text(stepper, self.model.tokenizer, prompt_ids, gen, info=seq.info, **self.model.special_ids):
                if piece:
                    seq.put(piece)
        except _Stopped as e:
            seq.stopped = e.reason
        except Exception as e:  # a model fault: this request gets a 500 (or an error event), the server goes on
            log.exception("generation failed")
            seq.error = e
        finally:
            seq.put(_END)


async def _pieces(seq: _Sequence) -> AsyncIterator[str]:
    """The sequence's text pieces as they come; a generation fault becomes an ApiError."""
    while (item := await seq.pieces.get()) is not _END:
        yield item
    if seq.error is not None:
        raise LMError(500, "internal", "internal error during generation: the server log has the details")


async def _until_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body was read before)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ---------------------------------------------------------------------------------------------- the app


def create_lm_app(cfg: ServeConfig) -> FastAPI:
    """The ASGI application serving the causal LM at `cfg.model`; the model loads in the background at start-up."""
    cfg.validate()
    directory = Path(cfg.model)
    check_lm_dir(directory)
    service = LMService(cfg, directory, read_api_key(cfg.api_key_file) if cfg.api_key_file else None)
    app = _App(
        title="slmkit serve (causal LM)", version="1",
        description=f"OpenAI-compatible text generation with **{service.name}**: `POST /v1/completions`, `POST /v1/chat/completions` "
                    "(`stream: true` for server-sent events). Errors: " + ", ".join(f"`{c}`" for c in LM_ERROR_CODES) + ".",
        lifespan=service.lifespan, docs_url=None, redoc_url=None,
    )
    app.state.service = service

    def error_response(status: int, code: str, message: str, param: str | None = None, headers: dict | None = None) -> Response:
        kind = "server_error" if status >= 500 else "authentication_error" if status == 401 else "invalid_request_error"
        body = json.dumps({"error": {"code": code, "message": message, "type": kind, "param": param}})
        return Response(body.encode(), status, headers, media_type="application/json")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> Response:
        return error_response(e.status, e.code, e.message, getattr(e, "param", None), e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "invalid_request")
        message = {404: "no such endpoint: see /docs", 405: "method not allowed here: see /docs"}.get(e.status_code, "bad request")
        return error_response(e.status_code, code, message, None, dict(e.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> Response:
        return error_response(422, "invalid_request", "the request does not match the API: see /docs")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal", "internal error: the server log has the details")

    def require_ready() -> LMModel:
        if service.state == "loading":
            raise LMError(503, "not_ready", "the model is still loading: retry shortly", None, {"retry-after": "1"})
        if service.state == "failed":
            raise LMError(503, "not_ready", "the model failed to load: the server log says why")
        return service.model

    def check(req: _Request) -> None:
        """The request names this model and asks only for what the server implements."""
        if req.model != service.name:
            raise LMError(404, "model_not_found", f"the model {json.dumps(req.model[:80])} is not served here: this server serves {json.dumps(service.name)}", "model")
        if (why := req.unsupported()) is not None:
            raise LMError(422, "unsupported", why, why.split(":")[0].split("/")[0])

    def plan(req: _Request, prompt_ids: list[int], default_max_tokens: int | None) -> Any:
        """The request's GenerationConfig, within the limits."""
        from slmkit.generate import GenerationConfig

        model = service.model
        asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
        if asked is not None and asked > cfg.max_tokens:
            raise LMError(422, "too_many_tokens", f"max_tokens is {asked}; this server generates at most {cfg.max_tokens} tokens per request", "max_tokens")
        prompt_tokens = len(prompt_ids) or int(model.special_ids.get("bos_id") is not None)  # generate_text starts an empty one at bos
        if prompt_tokens == 0:
            raise LMError(422, "invalid_request", "the prompt is empty: send some text to continue", "prompt")
        room = model.context_window - prompt_tokens
        if asked is None:
            asked = min(default_max_tokens or cfg.max_tokens, cfg.max_tokens, room)
        if asked > room or room < 1:
            raise LMError(422, "context_length_exceeded", f"the prompt holds {prompt_tokens} tokens and max_tokens is {asked}: together more than the "
                                                         f"model's context window of {model.context_window} tokens: shorten the prompt or ask for fewer tokens", "max_tokens")
        gen = GenerationConfig(max_new_tokens=asked, temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
                               repetition_penalty=req.repetition_penalty, stop=tuple(req.stop or ()), seed=req.seed)
        try:
            gen.validate()
        except UserError as e:
            raise LMError(422, "invalid_request", str(e)) from None
        return gen

    async def generate(request: Request, req: _Request, prompt_ids: list[int], default_max_tokens: int | None, render: type) -> Response:
        """Start the sequence, then stream it (SSE) or answer when it ends; a client that leaves stops it."""
        started = time.monotonic()
        gen = plan(req, prompt_ids, default_max_tokens)
        seq = await service.start(prompt_ids, gen, started + cfg.timeout_s)
        ident, created = f"{render.prefix}-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(_events(seq, render, ident, created, usage), media_type="text/event-stream",
                                     headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        parts: list[str] = []

        async def collect() -> None:
            async for piece in _pieces(seq):
                parts.append(piece)

        collecting = asyncio.ensure_future(collect())
        watching = asyncio.ensure_future(_until_disconnect(request))
        try:
            await asyncio.wait({collecting, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            if not collecting.done():  # the client left (or the server stops): stop its generation
                seq.cancelled.set()
                collecting.cancel()
        if collecting.cancelled():
            return Response(status_code=CLIENT_CLOSED)  # nobody reads it; the metrics count it
        collecting.result()
        body = render.whole(ident, created, service.name, "".join(parts), seq.finish_reason, seq.usage())
        return Response(json.dumps(body, ensure_ascii=False).encode(), media_type="application/json")

    async def _events(seq: _Sequence, render: type, ident: str, created: int, usage: bool) -> AsyncIterator[bytes]:
        """The sequence as server-sent events: OpenAI's chunks, then data: [DONE]."""
        extra = {"usage": None} if usage else {}

        def event(payload: dict) -> bytes:
            return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"

        try:
            if (first := render.first(ident, created, service.name)) is not None:
                yield event({**first, **extra})
            try:
                async for piece in _pieces(seq):
                    yield event({**render.chunk(ident, created, service.name, piece, None), **extra})
            except ApiError as e:
                yield event({"error": {"code": e.code, "message": e.message, "type": "server_error", "param": None}})
                yield b"data: [DONE]\n\n"
                return
            yield event({**render.chunk(ident, created, service.name, None, seq.finish_reason), **extra})
            if usage:
                yield event({**render.usage_chunk(ident, created, service.name), "usage": seq.usage()})
            yield b"data: [DONE]\n\n"
        finally:
            seq.cancelled.set()  # a client that dropped the stream ends here (cancelled): its generation stops

    errors = _errors(400, 401, 404, 413, 422, 429, 500, 503)

    @app.post("/v1/completions", response_model=None, summary="Continue a prompt (OpenAI's completions API)", responses=errors,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": request_schema(CompletionRequest)}}}})
    async def completions(request: Request) -> Response:
        """The prompt's continuation: one choice, with usage and finish_reason; `stream: true` for server-sent events."""
        model = require_ready()
        req = _parse(await _read_body(request, cfg.max_body_bytes), CompletionRequest)
        check(req)
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise LMError(422, "unsupported", "prompt: send one prompt per request (a string, or a list holding one string)", "prompt")
            prompt = prompt[0]
        return await generate(request, req, model.encode(prompt), 16, _CompletionChunks)  # OpenAI's default max_tokens for completions

    @app.post("/v1/chat/completions", response_model=None, summary="Answer a conversation (OpenAI's chat completions API)", responses=errors,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": request_schema(ChatRequest)}}}})
    async def chat_completions(request: Request) -> Response:
        """The assistant's next message, from the conversation rendered with the model's chat template."""
        model = require_ready()
        req = _parse(await _read_body(request, cfg.max_body_bytes), ChatRequest)
        check(req)
        if not req.messages:
            raise LMError(422, "invalid_request", '"messages" is empty: send at least one message', "messages")
        if model.chat_template is None:
            raise LMError(422, "no_chat_template", f"{model.name} has no chat template: use /v1/completions with a prompt", "messages")
        messages = [_message_text(m, i) for i, m in enumerate(req.messages)]
        try:
            prompt_ids = model.encode_chat(messages)
        except UserError as e:  # the template's raise_exception (say, roles that do not alternate)
            raise LMError(422, "invalid_request", str(e), "messages") from None
        return await generate(request, req, prompt_ids, None, _ChatChunks)

    for path in TASK_ENDPOINTS.values():  # the other tasks' endpoints say what this server answers
        app.add_api_route(path, _wrong_task, methods=["POST"], include_in_schema=False)

    def model_card() -> dict:
        model = service.model
        return {"id": service.name, "object": "model", "created": int(service.directory.stat().st_mtime), "owned_by": "slmkit",
                "backend": model.backend, "context_window": model.context_window, "chat_template": model.chat_template is not None}

    limits = {k: getattr(cfg, k) for k in ("max_sequences", "max_tokens", "max_body_bytes", "queue_size", "timeout_s")}

    @app.get("/v1/models", summary="What is served (OpenAI's models list)", responses=_errors(401, 503))
    async def models() -> Response:
        """The model served (its id is the `model` every request names), its backend and context window, and the limits."""
        require_ready()
        return Response(json.dumps({"object": "list", "data": [model_card()], "limits": limits}), media_type="application/json")

    @app.get("/v1/models/{model_id}", summary="One model", include_in_schema=False)
    async def model(model_id: str) -> Response:
        require_ready()
        if model_id != service.name:
            raise LMError(404, "model_not_found", f"the model {json.dumps(model_id[:80])} is not served here: see /v1/models", "model")
        return Response(json.dumps(model_card()), media_type="application/json")

    add_operations_routes(app, service, "Requests by endpoint and status, latency, tokens generated, active and waiting sequences, tokens/s.")
    return app


async def _wrong_task(request: Request) -> Response:
    raise LMError(404, "wrong_task", "this server answers a causal LM: POST /v1/completions or /v1/chat/completions (see /docs)")


class _CompletionChunks:
    """OpenAI's text_completion objects."""

    prefix = "cmpl"

    @staticmethod
    def first(ident: str, created: int, model: str) -> dict | None:
        return None

    @staticmethod
    def chunk(ident: str, created: int, model: str, text: str | None, finish: str | None) -> dict:
        return {"id": ident, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}

    @staticmethod
    def usage_chunk(ident: str, created: int, model: str) -> dict:
        return {"id": ident, "object": "text_completion", "created": created, "model": model, "choices": []}

    @staticmethod
    def whole(ident: str, created: int, model: str, text: str, finish: str, usage: dict) -> dict:
        return {**_CompletionChunks.chunk(ident, created, model, text, finish), "usage": usage}


class _ChatChunks:
    """OpenAI's chat.completion and chat.completion.chunk objects."""

    prefix = "chatcmpl"

    @staticmethod
    def first(ident: str, created: int, model: str) -> dict | None:
        return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}

    @staticmethod
    def chunk(ident: str, created: int, model: str, text: str | None, finish: str | None) -> dict:
        return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": {} if text is None else {"content": text}, "logprobs": None, "finish_reason": finish}]}

    @staticmethod
    def usage_chunk(ident: str, created: int, model: str) -> dict:
        return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model, "choices": []}

    @staticmethod
    def whole(ident: str, created: int, model: str, text: str, finish: str, usage: dict) -> dict:
        return {"id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}],
                "usage": usage}
