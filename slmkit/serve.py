"""`slm serve`: an exported model behind HTTP — a thin FastAPI adapter over the torch-free runtime.

    slm serve runs/x-int8                                   # http://127.0.0.1:8000, docs at /docs
    curl -s 127.0.0.1:8000/v1/classify -d '{"texts": ["where is my parcel?"]}'
    curl -s 127.0.0.1:8000/v1/entities -d '{"texts": ["refund my courier parcel"]}'                   # an NER model
    curl -s 127.0.0.1:8000/v1/answer -d '{"question": "where is it?", "context": "It is in Leeds."}'   # a QA model

One task per server, read from the bundle's manifest (`TASK_ENDPOINTS`): classification answers /v1/classify
(`Predictor`), NER /v1/entities and QA /v1/answer (`TaskSession` plus the task's own decoding, the code
`slm predict` runs); the other tasks' endpoints answer 404 `wrong_task`. The batcher below merges items of any
task: texts, or QA's (question, context) pairs, whose windows then run in one model call.

A causal LM (a Hugging Face causal-LM directory or its ONNX export) gets OpenAI's API instead:
slmkit/serve_lm.py, which shares this module's gate, errors, health endpoints and drain.

`create_app(cfg)` builds the application and `serve(cfg)` checks the bundle, then runs it under uvicorn. Read
top to bottom, this module owns:

- **the bundle**: any directory `slmkit.runtime.Predictor` loads (an `slm export` / `slm quantize` output, a
  run's `deploy/`). Its name and version come from manifest.json where present; the SHA-256 of model.onnx is
  computed at start-up (and must match a checksum the manifest records); metrics come from metrics.json. Each
  worker process loads the model once, in the background: /health/live answers at once, /health/ready only
  once the model is loaded and warmed up.
- **micro-batching** (`Batcher`): the texts of concurrent requests wait in one queue; one model thread takes
  up to `max_batch` of them (the oldest waits at most `max_wait_ms` for the batch to fill) into one model call,
  so the event loop keeps answering HTTP meanwhile. A text's result does not depend on its
  batch: padded positions are masked, which leaves only float noise (< 1e-5, tested). Dynamic int8 is the
  exception — its activation scales are computed over the whole batch — so such a model runs each text on its
  own within the batch (`"batching": "per-text"` in /v1/models).
- **limits and errors**: body size (413), texts per request and characters per text (422, or truncation),
  a bounded queue of requests (429 with Retry-After, decided before the body is read, so that refusing stays
  cheap under overload), a per-request deadline (503, never a late answer), an optional API key (401). Every error body is `{"error": {"code", "message"}}` with a code from `ERROR_CODES`; no stack
  trace or internal name ever reaches a client.
- **the docs page**: /docs is slmkit/web/api-docs.html, written by the project and self-contained (FastAPI's own
  page loads Swagger UI from a CDN, blank on a machine without internet). It renders /openapi.json in the
  browser and tries the endpoints, under a strict Content-Security-Policy. The page is the same static file
  for every server, so it is open without the API key; /openapi.json and everything else stay behind it.
- **shutdown**: SIGTERM turns readiness and every new request to 503, lets the admitted requests finish,
  then stops uvicorn; the process exits 0.

Nothing here imports torch (a test checks it): a worker is onnxruntime + tokenizers + FastAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
import math
import mmap
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from slmkit import artifacts
from slmkit.config import ServeConfig, from_dict, to_dict
from slmkit.errors import UserError
from slmkit.runtime import load_manifest

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException
except ImportError:  # the serve extra is not installed
    raise UserError("slm serve needs FastAPI, uvicorn and prometheus-client: pip install 'slmkit[serve]'") from None

log = logging.getLogger("uvicorn.error")  # uvicorn configures this logger: our lines appear beside its own
CONFIG_ENV = "SLMKIT_SERVE_CONFIG"  # how `serve` hands the config to uvicorn's worker processes
HEALTH = ("/health/live", "/health/ready")  # open without an API key, answered while loading or draining
DOCS = "/docs"  # the docs page: a static file holding no server data, so open without an API key (it asks for one)
TASK_ENDPOINTS = {"classification": "/v1/classify", "ner": "/v1/entities", "qa": "/v1/answer"}  # a server answers its model's task only
LM_ENDPOINTS = ("/v1/completions", "/v1/chat/completions")  # a causal LM's (slmkit/serve_lm.py)
ENDPOINTS = frozenset({*TASK_ENDPOINTS.values(), *LM_ENDPOINTS, "/v1/models", "/metrics", DOCS, "/openapi.json", *HEALTH})  # metric labels
DOCS_PAGE = Path(__file__).parent / "web" / "api-docs.html"  # renders /openapi.json in the page: no CDN, works offline
# the page's script and style are inline; it may fetch from this server only, and load nothing else
DOCS_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
DYNAMIC_QUANT_OPS = (b"DynamicQuantizeLinear", b"DynamicQuantizeMatMul")  # activation scales computed per call
QUIET_S = 0.25  # draining ends once nothing is in flight and no request arrived for this long (s)
THROUGHPUT_WINDOW_S = 10.0  # texts/s is measured over this window
ERROR_CODES = {
    "invalid_json": "the body is not JSON (400)",
    "unauthorized": "missing or wrong API key (401)",
    "not_found": "no such endpoint (404)",
    "wrong_task": "the endpoint of another task: this server answers its model's task only (404)",
    "method_not_allowed": "the endpoint exists but not with this method (405)",
    "body_too_large": "the body exceeds max_body_bytes (413)",
    "invalid_request": "JSON of the wrong shape or type (422)",
    "too_many_texts": "more than max_texts texts (422)",
    "text_too_long": "a text exceeds max_chars characters and truncation is off (422)",
    "invalid_text": "a text is not valid Unicode (a lone surrogate) (422)",
    "unreadable_pair": "a QA model cannot read this question and context (a context longer than its window when it reads no windows) (422)",
    "queue_full": "queue_size requests are already being answered: retry after Retry-After seconds (429)",
    "internal": "a server fault; details are in the server log only (500)",
    "not_ready": "the model is still loading (503)",
    "shutting_down": "the server is draining after SIGTERM (503)",
    "timeout": "no answer within timeout_s (503)",
}


class ApiError(Exception):
    """An HTTP error answered as `{"error": {"code", "message"}}`; `code` is one of ERROR_CODES."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


# ---------------------------------------------------------------------------------------------- the bundle


@dataclass
class Bundle:
    """What is served: the model's identity and records, read once from its directory."""

    directory: Path
    name: str
    version: str
    sha256: str  # of model.onnx
    task: str
    labels: list[str]
    precision: str
    max_length: int
    batching: str  # "padded" (texts of a batch padded together) or "per-text" (dynamic int8: one text per call)
    metrics: dict

    def ref(self) -> dict:
        """The model block of every response."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "task": self.task}


def open_bundle(directory: Path) -> Bundle:
    """Check a bundle and describe it, without loading the model; bad bundles are one-line UserErrors."""
    manifest = load_manifest(directory)
    task = manifest.get("task", "classification")
    if task not in TASK_ENDPOINTS:
        raise UserError(f"{directory}: a {task} model: slm serve answers {', '.join(TASK_ENDPOINTS)} models")
    model = directory / artifacts.ONNX_MODEL
    sha256 = artifacts.file_sha256(model)
    recorded = manifest.get("sha256") or manifest.get("bundle", {}).get("files", {}).get(artifacts.ONNX_MODEL)
    if recorded and recorded != sha256:
        raise UserError(f"{model}: SHA-256 differs from {artifacts.MANIFEST}: the file was changed; export or deploy it again")
    metrics_path = directory / artifacts.METRICS
    metrics = artifacts.read_json(metrics_path) if metrics_path.is_file() else {
        k: v for k, v in manifest.get("bundle", {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return Bundle(
        directory=directory,
        name=str(manifest.get("name") or manifest.get("bundle", {}).get("model") or directory.resolve().name),
        version=str(manifest.get("version") or manifest.get("bundle", {}).get("key") or sha256[:12]),
        sha256=sha256,
        task=task,
        labels=list(manifest.get("labels", [])),
        precision=manifest.get("precision", "fp32"),
        max_length=int(manifest["max_length"]),
        batching="per-text" if _has_dynamic_quantization(model) else "padded",
        metrics=_without_paths(metrics),
    )


def _without_paths(value: Any) -> Any:
    """The bundle's records as served: absolute paths of the machine that made them are left out."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if not (isinstance(v, str) and Path(v).is_absolute())}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    return value


def _has_dynamic_quantization(path: Path) -> bool:
    """Whether the graph quantizes activations at run time (op names are stored as plain bytes in the file)."""
    if path.stat().st_size == 0:
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        return any(view.find(op) >= 0 for op in DYNAMIC_QUANT_OPS)


def read_api_key(path: str | Path) -> str:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise UserError(f"{path}: API key file not readable: pass --api-key-file FILE whose first line is the key") from None
    key = lines[0].strip() if lines else ""
    if len(key) < 8:
        raise UserError(f"{path}: the API key (first line) must be at least 8 characters")
    return key


@dataclass
class LoadedModel:
    """The model behind the task's endpoint: `run(items)` answers a batch of items (texts; QA: (question, context)
    pairs) with one result per item, in order (see `load_model`)."""

    task: str
    run: Callable[[list], Any]


def load_model(bundle: Bundle, threads: int | None, batch_size: int) -> LoadedModel:
    """The bundle's model loaded with the torch-free runtime, behind one batch function per task:

    - classification: texts → class probabilities (n_texts, n_labels);
    - ner: texts → per text its entities `{label, score, start, end, text}` (character offsets into the text);
    - qa: (question, context) pairs → per pair `{answer, score, start, end}`, or an ApiError for a pair the model
      cannot read. All windows of all pairs of a batch go through the model together."""
    from slmkit.runtime import Predictor, TaskSession

    if bundle.task == "classification":
        return LoadedModel(bundle.task, Predictor(bundle.directory, threads=threads, batch_size=batch_size).predict_proba)
    session = TaskSession(bundle.directory, threads=threads, batch_size=batch_size)
    if bundle.task == "ner":
        from slmkit.tasks.ner import text_entities

        return LoadedModel(bundle.task, lambda texts: text_entities(session, texts))
    return LoadedModel(bundle.task, lambda pairs: _answer_pairs(session, pairs))


def _answer_pairs(session: Any, pairs: list[tuple[str, str]]) -> list[dict | ApiError]:
    """The best answer of each pair; a pair the model cannot read gets an ApiError and leaves the others answered."""
    from slmkit import qa

    try:
        found = qa.answer_pairs(pairs, session.encoder, session.encoder.truncation["max_length"], session.task.stride, session.outputs)
    except UserError:  # one pair the model cannot read: answer the others one by one
        if len(pairs) > 1:
            return [result for pair in pairs for result in _answer_pairs(session, [pair])]
        return [ApiError(422, "unreadable_pair", "the model cannot read this question and context: its context is longer than the model's "
                                                 "window and the model reads no windows (stride 0), or it holds no tokens: send a shorter context")]
    return [{"answer": a[0].text, "score": a[0].score, "start": a[0].start, "end": a[0].end} if a else
            {"answer": "", "score": 0.0, "start": 0, "end": 0} for a in found]


WARM_UP = {"classification": "warm up", "ner": "warm up", "qa": ("warm up?", "warm up")}  # one item of each task


def _warm_up(model: LoadedModel, max_batch: int) -> None:
    """First calls allocate ONNX Runtime's buffers: make them before the first client does."""
    model.run([WARM_UP[model.task]])
    grow = (lambda text, n: " ".join([text] * n))
    if model.task == "qa":
        model.run([(WARM_UP["qa"][0], grow(WARM_UP["qa"][1], 1 + i % 16)) for i in range(max_batch)])
    else:
        model.run([grow(WARM_UP[model.task], 1 + i % 16) for i in range(max_batch)])


# ---------------------------------------------------------------------------------------------- micro-batching


@dataclass(eq=False)
class _Job:
    """One request's items (texts, or QA pairs) on their way through the queue."""

    texts: list
    future: asyncio.Future
    results: list  # one per item, filled as batches finish
    arrived: float  # time.monotonic()
    taken: int = 0  # texts handed to the model so far
    done: int = 0  # texts answered so far
    cancelled: bool = False


class Batcher:
    """One queue of texts in front of the model, and one model thread that takes them off it: up to max_batch
    texts per model call, the oldest waiting at most max_wait_s for the batch to fill. The thread, not an event
    loop task, does the batching: a request's texts reach the model without waiting for the loop's next turn,
    and one callback per batch hands the answers back. Under overload a turn of the loop is 10-20 ms of
    refusals; between a request's submission and its answer a loop-driven batcher took three turns, the thread
    takes two. The gate bounds the queue upstream: at most queue_size requests are admitted at once."""

    def __init__(self, predict: Callable[[list], Any], max_batch: int, max_wait_s: float, on_batch: Callable[[int, float], None]):
        self.predict, self.max_batch, self.max_wait_s, self.on_batch = predict, max_batch, max_wait_s, on_batch
        self.jobs: deque[_Job] = deque()  # guarded by `lock`, as are waiting and each job's taken and cancelled
        self.waiting = 0  # texts queued, not yet in the model (the queue depth)
        self.lock = threading.Condition()
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.Thread(target=self._run, name="slm-model", daemon=True)
        self.thread.start()

    async def stop(self) -> None:
        """Stop the thread once its current batch is done; texts still waiting get 503."""
        with self.lock:
            self.stopping = True
            self.lock.notify()
        if self.thread:
            await asyncio.get_running_loop().run_in_executor(None, self.thread.join)
        await asyncio.sleep(0)  # the last batch's answers, queued by the thread, go out first
        with self.lock:
            jobs, self.waiting = list(self.jobs), 0
            self.jobs.clear()
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(ApiError(503, "shutting_down", "the server is shutting down: retry on another instance"))

    async def submit(self, texts: list) -> list:
        """The model's result for each item of `texts` (texts, or QA pairs), in order."""
        job = _Job(texts, asyncio.get_running_loop().create_future(), [None] * len(texts), time.monotonic())
        with self.lock:
            self.jobs.append(job)
            self.waiting += len(texts)
            if self.waiting == len(texts) or self.waiting >= self.max_batch:  # the thread waits for a first text or a full batch
                self.lock.notify()
        try:
            return await job.future
        except asyncio.CancelledError:  # the request's deadline passed: its texts not yet in the model leave now
            with self.lock:
                self.waiting -= len(job.texts) - job.taken
                job.taken, job.cancelled = len(job.texts), True
            raise

    def _take(self) -> list[tuple[_Job, int, int]]:
        """Up to max_batch waiting texts, oldest first, as (job, start, stop) slices (called holding the lock)."""
        batch, size = [], 0
        while self.jobs and size < self.max_batch:
            job = self.jobs[0]
            n = min(len(job.texts) - job.taken, self.max_batch - size)
            if n > 0:
                batch.append((job, job.taken, job.taken + n))
                job.taken += n
                size += n
            if job.taken == len(job.texts):
                self.jobs.popleft()
        self.waiting -= size
        return batch

    def _run(self) -> None:
        """The model thread: wait for texts, fill a batch, run it, hand the answers to the event loop."""
        while True:
            with self.lock:
                while not self.waiting and not self.stopping:
                    self.lock.wait()
                oldest = next((j.arrived for j in self.jobs if not j.cancelled), time.monotonic())
                while self.waiting < self.max_batch and not self.stopping and (left := oldest + self.max_wait_s - time.monotonic()) > 0:
                    self.lock.wait(left)
                if self.stopping:
                    return
                batch = self._take()
            if not batch:
                continue
            texts = [t for job, start, stop in batch for t in job.texts[start:stop]]
            started = time.perf_counter()
            try:
                results, failure = self.predict(texts), None
            except Exception as e:  # a runtime fault: the batch's requests get a 500, the server goes on
                log.exception("model call failed on a batch of %d texts", len(texts))
                results, failure = None, e
            seconds = time.perf_counter() - started
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits for these answers
                self.loop.call_soon_threadsafe(self._answer, batch, results, failure, len(texts), seconds)

    def _answer(self, batch: list[tuple[_Job, int, int]], results: Any, failure: Exception | None, n: int, seconds: float) -> None:
        """On the event loop: record the batch and resolve the requests it completes."""
        self.on_batch(n, seconds)
        row = 0
        for job, start, stop in batch:
            if not job.future.done():
                if results is None:
                    job.future.set_exception(failure)
                else:
                    job.results[start:stop] = results[row : row + stop - start]
                    job.done += stop - start
                    if job.done == len(job.texts):
                        job.future.set_result(job.results)
            row += stop - start


class _Throughput:
    """Events (texts, requests) per second over the last THROUGHPUT_WINDOW_S seconds."""

    def __init__(self):
        self.events: deque[tuple[float, int]] = deque()
        self.total = 0

    def add(self, n: int) -> None:
        self.events.append((time.monotonic(), n))
        self.total += n
        self._trim()

    def rate(self) -> float:
        self._trim()
        return self.total / THROUGHPUT_WINDOW_S

    def _trim(self) -> None:
        horizon = time.monotonic() - THROUGHPUT_WINDOW_S
        while self.events and self.events[0][0] < horizon:
            self.total -= self.events.popleft()[1]


# ---------------------------------------------------------------------------------------------- the service


class _Metrics:
    """The Prometheus series of one worker process (own registry: several apps can live in one process)."""

    def __init__(self, service: "Service"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_open_fds, CPU seconds
        self.requests = Counter("slm_requests", "HTTP requests by endpoint and status code.", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "slm_request_duration_seconds", "Time from request start to the last response byte, by endpoint.", ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), registry=r,
        )
        self.batch_texts = Histogram("slm_batch_texts", "Texts per model call.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.batch_seconds = Histogram(
            "slm_batch_duration_seconds", "Model call time per batch, tokenization included.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0), registry=r,
        )
        self.texts = Counter("slm_texts", "Texts answered (QA: question/context pairs).", registry=r)
        Gauge("slm_queue_texts", "Texts waiting for the model (queue depth).", registry=r).set_function(lambda: service.batcher.waiting if service.batcher else 0)
        Gauge("slm_in_flight_requests", "Requests admitted and not yet answered (bounded by queue_size).", registry=r).set_function(lambda: service.in_flight)
        Gauge("slm_texts_per_second", f"Texts answered per second over the last {THROUGHPUT_WINDOW_S:g} s.", registry=r).set_function(service.throughput.rate)
        Gauge("slm_ready", "1 when the model is loaded and warmed up and the server is not draining.", registry=r).set_function(lambda: float(service.ready))
        info = Gauge("slm_model_info", "The model served (value 1).", ["name", "version", "sha256"], registry=r)
        info.labels(service.bundle.name, service.bundle.version, service.bundle.sha256).set(1)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def batch(self, texts: int, seconds: float) -> None:
        self.batch_texts.observe(texts)
        self.batch_seconds.observe(seconds)
        self.texts.inc(texts)


class Service:
    """One worker's state: the bundle, the model once loaded, the batcher, metrics, and the drain after SIGTERM."""

    def __init__(self, cfg: ServeConfig, bundle: Bundle, api_key: str | None):
        self.cfg, self.bundle = cfg, bundle
        self.api_key = api_key.encode() if api_key else None
        self.state = "loading"  # loading → ready, or failed
        self.draining = False
        self.in_flight = 0  # admitted requests not yet answered (at most cfg.queue_size)
        self.last_request = 0.0  # monotonic time of the last request seen, for the drain's quiet period
        self.batcher: Batcher | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="slm-load")
        self.throughput = _Throughput()  # texts/s
        self.answered = _Throughput()  # admitted requests/s, for Retry-After
        self.metrics = _Metrics(self)
        self.model_ref = bundle.ref()
        self._previous_sigterm: Any = None  # the SIGTERM handler the drain took over (uvicorn's)
        self._drain_task: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready" and not self.draining

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI):
        loading = asyncio.get_running_loop().create_task(self._load())
        self._take_over_sigterm()
        try:
            yield
        finally:
            loading.cancel()
            if self.batcher:
                await self.batcher.stop()
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            self.executor.shutdown(wait=False)

    async def _load(self) -> None:
        cfg, bundle = self.cfg, self.bundle
        started = time.perf_counter()

        def load() -> LoadedModel:
            batch_size = 1 if bundle.batching == "per-text" else cfg.max_batch
            model = load_model(bundle, cfg.threads, batch_size)
            _warm_up(model, cfg.max_batch)
            return model

        try:
            model = await asyncio.get_running_loop().run_in_executor(self.executor, load)
        except Exception:
            log.exception("loading %s failed", bundle.directory)
            self.state = "failed"
            return
        self.batcher = Batcher(model.run, cfg.max_batch, cfg.max_wait_ms / 1000, self._on_batch)
        self.batcher.start()
        # Everything alive now (the model, tokenizer, FastAPI's routes and schemas) lives as long as the process:
        # moved out of the collector's generations, a full collection no longer walks it. Those walks were the
        # latency tail: batch-1 load at concurrency 32, p99 38-45 ms at a 7 ms median, 9-12 ms once frozen.
        gc.collect()
        gc.freeze()
        self.state = "ready"
        log.info("model %s (version %s, sha256 %s…, %s, batching %s) loaded and warmed up in %.1f s: ready",
                 bundle.name, bundle.version, bundle.sha256[:12], bundle.precision, bundle.batching, time.perf_counter() - started)

    def _on_batch(self, texts: int, seconds: float) -> None:
        self.metrics.batch(texts, seconds)
        self.throughput.add(texts)

    def retry_after(self) -> bytes:
        """Seconds until the admitted requests are answered at the recent rate (1 to 60)."""
        rate = self.answered.rate()
        return str(min(60, max(1, math.ceil(self.in_flight / rate))) if rate > 0 else 1).encode()

    # ------------------------------------------------------------------------------------------ draining

    def _take_over_sigterm(self) -> None:
        """Replace the server's SIGTERM handler (uvicorn's closes the port at once) with the drain, which hands the
        signal back to it when done.

        Only the main thread can set signal handlers: under TestClient (another thread) `begin_drain` is called
        directly by the tests."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        self._previous_sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda sig, frame: loop.call_soon_threadsafe(self.begin_drain))

    def begin_drain(self) -> None:
        """Stop admitting requests (503), let admitted ones finish, then stop the server. A second call stops now."""
        if self.draining:
            self._stop_server()
            return
        self.draining = True
        log.info("SIGTERM: draining: new requests get 503; %d admitted request(s) in flight", self.in_flight)
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.timeout_s + 1  # admitted requests end by their own deadline
        while loop.time() < deadline and (self.in_flight or time.monotonic() - self.last_request < QUIET_S):
            await asyncio.sleep(0.02)
        log.info("drained (%d request(s) still in flight): stopping", self.in_flight)
        self._stop_server()

    def _stop_server(self) -> None:
        """SIGTERM again, now to the handler the drain took it from: uvicorn's graceful stop."""
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            signal.raise_signal(signal.SIGTERM)


class _Gate:
    """Pure ASGI middleware in front of the whole application: metrics, the API key, 503 while draining, and the
    bounded queue: at most queue_size requests admitted at once, the excess refused before its body is read.
    It sits outside FastAPI's own middleware (see `_App`): under overload a refusal must cost as little as
    possible, or refusing the excess alone saturates the CPU."""

    def __init__(self, app: Any, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        service, path = self.service, scope["path"]
        started = time.perf_counter()
        status = 500  # unless a response starts

        async def send_and_record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        admitted = False
        try:
            if path in HEALTH:
                await self.app(scope, receive, send_and_record)
                return
            service.last_request = time.monotonic()
            if service.api_key is not None and path != DOCS and not _authorized(scope["headers"], service.api_key):
                await _send_error(send_and_record, 401, "unauthorized", "missing or wrong API key: send Authorization: Bearer KEY or X-API-Key: KEY",
                                  [(b"www-authenticate", b"Bearer")])
                return
            if service.draining:
                await _send_error(send_and_record, 503, "shutting_down", "the server is shutting down: retry on another instance",
                                  [(b"connection", b"close")])
                return
            if service.in_flight >= service.cfg.queue_size and path != "/metrics":
                await _send_error(send_and_record, 429, "queue_full", "too many requests in progress: retry after Retry-After seconds",
                                  [(b"retry-after", service.retry_after())])
                return
            admitted = True
            service.in_flight += 1
            await self.app(scope, receive, send_and_record)
        finally:
            if admitted:
                service.in_flight -= 1
                service.answered.add(1)
            service.metrics.request(path if path in ENDPOINTS else "other", status, time.perf_counter() - started)


class _App(FastAPI):
    """FastAPI with `_Gate` outermost (FastAPI puts `add_middleware` middleware inside its error and telemetry
    layers, which a refused request need not pass)."""

    def build_middleware_stack(self) -> Any:
        return _Gate(super().build_middleware_stack(), self.state.service)


def _authorized(headers: list[tuple[bytes, bytes]], key: bytes) -> bool:
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return hmac.compare_digest(value[7:].strip(), key)
        if name == b"x-api-key":
            return hmac.compare_digest(value.strip(), key)
    return False


async def _send_error(send: Callable, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = error_body(code, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------- requests


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes (before reading it all)."""
    too_large = ApiError(413, "body_too_large", f"the body exceeds {limit} bytes: send fewer or shorter texts", {"connection": "close"})
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise too_large
        return await request.body()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def parse_texts(body: bytes, cfg: ServeConfig) -> tuple[list[str], list[bool]]:
    """The texts of a classify request and whether each was cut to max_chars; ApiError (400/422) otherwise."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise ApiError(400, "invalid_json", 'the body is not JSON in UTF-8: send {"texts": ["..."]}') from None
    if not isinstance(data, dict) or "texts" not in data:
        raise ApiError(422, "invalid_request", 'expected a JSON object with a "texts" list: {"texts": ["..."]}')
    if len(data) > 1:
        extra = next(k for k in data if k != "texts")
        raise ApiError(422, "invalid_request", f'unknown field {json.dumps(extra[:40])}: a request holds only "texts"')
    texts = data["texts"]
    if not isinstance(texts, list):
        raise ApiError(422, "invalid_request", f'"texts" must be a list of strings (got {_json_type(texts)})')
    if not texts:
        raise ApiError(422, "invalid_request", '"texts" is empty: send at least one text')
    if len(texts) > cfg.max_texts:
        raise ApiError(422, "too_many_texts", f"a request holds at most {cfg.max_texts} texts (got {len(texts)}): split it")
    cut = [False] * len(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError(422, "invalid_request", f'"texts"[{i}] must be a string (got {_json_type(text)})')
        if len(text) > cfg.max_chars:
            if not cfg.truncate:
                raise ApiError(422, "text_too_long", f'"texts"[{i}] has {len(text)} characters; at most {cfg.max_chars} are accepted')
            texts[i], cut[i] = text[: cfg.max_chars], True
        try:
            texts[i].encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(422, "invalid_text", f'"texts"[{i}] holds a lone surrogate (\\ud800-\\udfff): send valid Unicode') from None
    return texts, cut


def parse_pairs(body: bytes, cfg: ServeConfig) -> tuple[list[tuple[str, str]], list[bool], bool]:
    """The (question, context) pairs of an answer request, whether each was cut to max_chars, and whether the
    request was the single form `{"question", "context"}` (else the batch form `{"items": [...]}`)."""
    shape = 'send {"question": "...", "context": "..."} or {"items": [{"question": "...", "context": "..."}, ...]}'
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", f"the body is not JSON in UTF-8: {shape}") from None
    if not isinstance(data, dict) or not ("items" in data or {"question", "context"} <= set(data)):
        raise ApiError(422, "invalid_request", f"expected a JSON object with a question and a context, or a list of them: {shape}")
    single = "items" not in data
    allowed = {"question", "context"} if single else {"items"}
    extra = next((k for k in data if k not in allowed), None)
    if extra is not None:
        raise ApiError(422, "invalid_request", f'unknown field {json.dumps(extra[:40])}: {shape}')
    items = [data] if single else data["items"]
    if not isinstance(items, list):
        raise ApiError(422, "invalid_request", f'"items" must be a list of {{"question", "context"}} objects (got {_json_type(items)})')
    if not items:
        raise ApiError(422, "invalid_request", '"items" is empty: send at least one question')
    if len(items) > cfg.max_texts:
        raise ApiError(422, "too_many_texts", f"a request holds at most {cfg.max_texts} items (got {len(items)}): split it")
    pairs, cut = [], []
    for i, item in enumerate(items):
        where = "" if single else f'"items"[{i}]'
        if not isinstance(item, dict) or set(item) != {"question", "context"}:
            raise ApiError(422, "invalid_request", f'{where} must be an object with exactly "question" and "context"')
        texts = []
        for name in ("question", "context"):
            field = f'{where}.{name}' if where else f'"{name}"'
            text = item[name]
            if not isinstance(text, str):
                raise ApiError(422, "invalid_request", f"{field} must be a string (got {_json_type(text)})")
            if not text.strip():
                raise ApiError(422, "invalid_request", f"{field} is empty: give every question a question and a context")
            if len(text) > cfg.max_chars:
                if not cfg.truncate:
                    raise ApiError(422, "text_too_long", f"{field} has {len(text)} characters; at most {cfg.max_chars} are accepted")
                text = text[: cfg.max_chars]
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(422, "invalid_text", f"{field} holds a lone surrogate (\\ud800-\\udfff): send valid Unicode") from None
            texts.append(text)
        pairs.append((texts[0], texts[1]))
        cut.append(any(len(item[name]) > cfg.max_chars for name in ("question", "context")))
    return pairs, cut, single


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), "another type")


# OpenAPI descriptions (the handlers build their JSON directly; these models only document it)


class ClassifyRequest(BaseModel):
    texts: list[str] = Field(min_length=1, description="Texts to classify (at most max_texts, each at most max_chars characters).",
                             examples=[["where is my parcel?", "I was charged twice"]])


class ClassPrediction(BaseModel):
    label: str = Field(description="The most probable label.")
    score: float = Field(description="Its probability.")
    scores: dict[str, float] = Field(description="The probability of every label.")
    truncated: bool = Field(description="Whether the text was cut to max_chars characters before classification.")


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str = Field(description="SHA-256 of the served model.onnx.")
    task: str = Field(description="classification (/v1/classify), ner (/v1/entities) or qa (/v1/answer): the one endpoint this server answers.")


class ClassifyResponse(BaseModel):
    results: list[ClassPrediction] = Field(description="One result per text, in request order.")
    model: ModelRef


class Entity(BaseModel):
    label: str = Field(description="The entity type (the tag without its B-/I- prefix).")
    score: float = Field(description="The mean probability of the entity's word tags.")
    start: int = Field(description="Character offset of the entity's first character in the text.")
    end: int = Field(description="Character offset just past its last character: text[start:end] is the entity.")
    text: str = Field(description="The entity's text.")


class TextEntities(BaseModel):
    entities: list[Entity] = Field(description="The text's entities, in text order.")
    truncated: bool = Field(description="Whether the text was cut to max_chars characters first (offsets refer to the cut text).")


class EntitiesResponse(BaseModel):
    results: list[TextEntities] = Field(description="One result per text, in request order.")
    model: ModelRef


class AnswerResult(BaseModel):
    answer: str = Field(description="The answer: a span of the context (empty only when the context had no span to give).")
    score: float = Field(description="Its probability in its window: softmax(start) x softmax(end) over the context tokens.")
    start: int = Field(description="Character offset of the answer in the context.")
    end: int = Field(description="Character offset just past it: context[start:end] is the answer.")
    truncated: bool = Field(description="Whether the question or the context was cut to max_chars characters first.")


class AnswerResponse(AnswerResult):
    """The single form's answer."""

    model: ModelRef


class AnswerBatchResponse(BaseModel):
    results: list[AnswerResult] = Field(description="One answer per item, in request order.")
    model: ModelRef


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable: " + "; ".join(f"{k}: {v}" for k, v in ERROR_CODES.items()) + ".")
    message: str = Field(description="What went wrong and how to fix it, for people.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


TASK_TITLES = {"classification": "Text classification", "ner": "Named entity recognition", "qa": "Extractive question answering"}


def _label_summary(bundle: Bundle) -> str:
    if bundle.task == "ner":
        return f"{len({label[2:] for label in bundle.labels if label != 'O'})} entity types"
    return f"{len(bundle.labels)} labels" if bundle.labels else "answers are spans of the context"


def _errors(*statuses: int) -> dict:
    return {s: {"model": ErrorResponse} for s in statuses}


# ---------------------------------------------------------------------------------------------- the app


def add_operations_routes(app: FastAPI, service, metrics_help: str) -> None:
    """The routes every slmkit server has: /metrics (Prometheus text, `metrics_help` its description), the docs
    page, /health/live and /health/ready (read from `service.state` and `service.draining`)."""

    @app.get("/metrics", summary="Prometheus metrics", description=metrics_help, responses=_errors(401))
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    docs_page = DOCS_PAGE.read_bytes()

    @app.get(DOCS, include_in_schema=False)
    async def docs() -> Response:
        """The API described and tried in the browser, from this server's /openapi.json (no CDN: works offline)."""
        return Response(docs_page, media_type="text/html; charset=utf-8", headers=DOCS_HEADERS)

    @app.get("/health/live", summary="Liveness")
    async def live() -> Response:
        """200 while the process works (also while loading); 503 if the model failed to load."""
        failed = service.state == "failed"
        return Response(json.dumps({"status": "failed" if failed else "live"}), 503 if failed else 200, media_type="application/json")

    @app.get("/health/ready", summary="Readiness")
    async def ready() -> Response:
        """200 once the model is loaded and warmed up; 503 while loading, after a failed load and while draining."""
        status = "draining" if service.draining else service.state
        return Response(json.dumps({"status": status}), 200 if status == "ready" else 503, media_type="application/json")


def create_app(cfg: ServeConfig) -> FastAPI:
    """The ASGI application serving `cfg.model`; the model itself loads in the background at start-up."""
    cfg.validate()
    if _is_causal_lm(cfg.model):  # the OpenAI-compatible API for generative models
        from slmkit.serve_lm import create_lm_app

        return create_lm_app(cfg)
    bundle = open_bundle(Path(cfg.model))
    service = Service(cfg, bundle, read_api_key(cfg.api_key_file) if cfg.api_key_file else None)
    app = _App(
        title="slmkit serve", version="1",
        description=f"{TASK_TITLES[bundle.task]} with **{bundle.name}** ({_label_summary(bundle)}), at `{TASK_ENDPOINTS[bundle.task]}`. Errors: "
                    + ", ".join(f"`{c}`" for c in ERROR_CODES) + ".",
        lifespan=service.lifespan, docs_url=None, redoc_url=None,  # /docs is our own page (below): FastAPI's needs a CDN
    )
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> Response:
        return Response(error_body(e.code, e.message), e.status, e.headers, media_type="application/json")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "invalid_request")
        message = {404: "no such endpoint: see /docs", 405: "method not allowed here: see /docs"}.get(e.status_code, "bad request")
        return Response(error_body(code, message), e.status_code, dict(e.headers or {}), media_type="application/json")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> Response:
        return Response(error_body("invalid_request", "the request does not match the API: see /docs"), 422, media_type="application/json")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return Response(error_body("internal", "internal error: the server log has the details"), 500, media_type="application/json")

    def require_ready() -> None:
        if service.state == "loading":
            raise ApiError(503, "not_ready", "the model is still loading: retry shortly", {"retry-after": "1"})
        if service.state == "failed":
            raise ApiError(503, "not_ready", "the model failed to load: the server log says why")

    texts_schema = ClassifyRequest.model_json_schema()  # with this server's limits, which the docs page shows
    texts_schema["properties"]["texts"]["maxItems"] = cfg.max_texts
    if not cfg.truncate:
        texts_schema["properties"]["texts"]["items"]["maxLength"] = cfg.max_chars

    async def answered(request: Request, parse: Callable[[bytes, ServeConfig], tuple]) -> tuple[tuple, list]:
        """The parsed request and the model's result per item, within the request's deadline."""
        require_ready()
        try:
            async with asyncio.timeout(cfg.timeout_s):
                parsed = parse(await _read_body(request, cfg.max_body_bytes), cfg)
                return parsed, await service.batcher.submit(parsed[0])
        except TimeoutError:
            raise ApiError(503, "timeout", f"no answer within {cfg.timeout_s:g} s: retry later or send fewer texts") from None

    def reply(payload: dict) -> Response:
        body = json.dumps({**payload, "model": service.model_ref}, ensure_ascii=False, separators=(",", ":"))
        return Response(body.encode(), media_type="application/json")

    errors = _errors(400, 401, 404, 413, 422, 429, 500, 503)
    if bundle.task == "classification":
        @app.post(
            "/v1/classify", response_model=None, summary="Classify texts", responses={200: {"model": ClassifyResponse}, **errors},
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": texts_schema}}}},
        )
        async def classify(request: Request) -> Response:
            """The label, its probability and every label's probability for each text, in request order."""
            (texts, cut), probs = await answered(request, parse_texts)
            probs = np.asarray(probs)
            labels, best = bundle.labels, probs.argmax(axis=1)
            results = [
                {"label": labels[b], "score": row[b], "scores": dict(zip(labels, row)), "truncated": c}
                for row, b, c in zip(probs.tolist(), best.tolist(), cut)
            ]
            return reply({"results": results})

    if bundle.task == "ner":
        @app.post(
            "/v1/entities", response_model=None, summary="Find entities in texts", responses={200: {"model": EntitiesResponse}, **errors},
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": texts_schema}}}},
        )
        async def entities(request: Request) -> Response:
            """Each text's entities (label, score, and character offsets into the text), in request order. A text is
            split into words (runs of letters and digits; each punctuation mark a word of its own); a word's tag is
            read at its first sub-token."""
            (texts, cut), found = await answered(request, parse_texts)
            return reply({"results": [{"entities": e, "truncated": c} for e, c in zip(found, cut)]})

    if bundle.task == "qa":
        def text_field(description: str) -> dict:
            field = {"type": "string", "minLength": 1, "description": description}
            return field if cfg.truncate else {**field, "maxLength": cfg.max_chars}

        pair_schema = {
            "type": "object", "required": ["question", "context"], "additionalProperties": False,
            "properties": {"question": text_field("The question."), "context": text_field("The text that holds the answer; long ones are read in overlapping windows.")},
        }
        answer_schema = {"anyOf": [
            {**pair_schema, "title": "One question", "example": {"question": "Where is my parcel?", "context": "Your parcel is at the depot in Leeds."}},
            {"type": "object", "title": "Several questions", "required": ["items"], "additionalProperties": False,
             "properties": {"items": {"type": "array", "items": pair_schema, "minItems": 1, "maxItems": cfg.max_texts,
                                      "description": "Questions with their contexts, answered in one model call (at most max_texts)."}}},
        ]}

        @app.post(
            "/v1/answer", response_model=None, summary="Answer questions from a context",
            responses={200: {"model": AnswerResponse | AnswerBatchResponse, "description": "One answer (single form) or a list of answers (items form)."}, **errors},
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": answer_schema}}}},
        )
        async def answer(request: Request) -> Response:
            """The best answer to each question: a span of its context, with its probability and character offsets.
            Send one question `{"question", "context"}` (the answer comes back at the top level) or several,
            `{"items": [{"question", "context"}, ...]}` (answers in `results`, in order)."""
            (pairs, cut, single), found = await answered(request, parse_pairs)
            for i, result in enumerate(found):
                if isinstance(result, ApiError):
                    raise ApiError(result.status, result.code, (f'"items"[{i}]: ' if not single else "") + result.message)
            results = [{**result, "truncated": c} for result, c in zip(found, cut)]
            return reply(results[0] if single else {"results": results})

    for other, path in TASK_ENDPOINTS.items():  # the other tasks' endpoints say which one this server answers
        if other != bundle.task:
            app.add_api_route(path, _wrong_task(bundle.task, other), methods=["POST"], include_in_schema=False)

    @app.get("/v1/models", summary="What is served", responses=_errors(401, 503))
    async def models() -> Response:
        """The model served, its endpoint, its labels, how it batches, the metrics recorded in its bundle, and the limits."""
        require_ready()
        model = {**bundle.ref(), "endpoint": TASK_ENDPOINTS[bundle.task], "labels": bundle.labels, "precision": bundle.precision, "max_length": bundle.max_length,
                 "batching": bundle.batching, "metrics": bundle.metrics}
        limits = {k: getattr(cfg, k) for k in ("max_batch", "max_wait_ms", "max_body_bytes", "max_texts", "max_chars", "truncate", "queue_size", "timeout_s")}
        return Response(json.dumps({"models": [model], "limits": limits}, ensure_ascii=False), media_type="application/json")

    add_operations_routes(app, service, "Requests by endpoint and status, latency histogram, batch sizes, queue depth, texts/s, process RSS and fds.")
    return app


def _wrong_task(task: str, other: str) -> Callable:
    async def wrong_task(request: Request) -> Response:
        raise ApiError(404, "wrong_task", f"this server answers a {task} model, not {other}: POST {TASK_ENDPOINTS[task]} (see /docs)")

    return wrong_task


def _is_causal_lm(model: str) -> bool:
    """Whether `model` is a causal LM, served by slmkit/serve_lm.py (JSON files read only: no torch here)."""
    from slmkit.serve_lm import lm_kind

    return bool(model) and lm_kind(Path(model)) is not None


def app_from_env() -> FastAPI:
    """uvicorn's app factory in every worker process: the config comes from the environment `serve` set."""
    return create_app(from_dict(ServeConfig, json.loads(os.environ[CONFIG_ENV])))


def serve(cfg: ServeConfig) -> None:
    """Check the bundle and the settings, then serve until SIGTERM or Ctrl-C."""
    cfg.validate()
    if _is_causal_lm(cfg.model):  # checked here, loaded once in each worker (a large LM is not loaded twice)
        from slmkit.serve_lm import check_lm_dir

        check_lm_dir(Path(cfg.model))
        directory = Path(cfg.model)
    else:
        bundle = open_bundle(Path(cfg.model))  # a bad bundle is one line here, not a failed load in every worker
        try:
            load_model(bundle, threads=1, batch_size=1)
        except UserError:
            raise
        except Exception as e:  # a file ONNX Runtime cannot read
            raise UserError(f"{bundle.directory}: ONNX Runtime cannot load the model ({type(e).__name__}): export it again with slm export") from None
        directory = bundle.directory
    if cfg.api_key_file:
        read_api_key(cfg.api_key_file)
    try:
        import uvicorn
    except ImportError:
        raise UserError("slm serve needs uvicorn: pip install 'slmkit[serve]'") from None
    os.environ[CONFIG_ENV] = json.dumps(to_dict(cfg) | {"model": str(directory.resolve())})
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # batches are small: no tokenizer thread pool
    # uvicorn re-raises SIGTERM once its shutdown is done; with this handler in place the process exits 0
    signal.signal(signal.SIGTERM, lambda sig, frame: None)
    uvicorn.run(
        "slmkit.serve:app_from_env", factory=True, host=cfg.host, port=cfg.port, workers=cfg.workers,
        access_log=cfg.access_log, lifespan="on", server_header=False, timeout_graceful_shutdown=int(cfg.timeout_s) + 5,
    )
