"""`slm serve` in-process through TestClient: every endpoint and limit, batching invariance, the API key,
readiness around warm-up, draining; then a real uvicorn process for SIGTERM, a torch-free process check and
a short fuzz run (the full one is benchmarks/serve_load.py)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from slmkit.cli import app as cli
from slmkit.config import QuantizeConfig, ServeConfig
from slmkit.errors import UserError
from slmkit.runtime import Predictor
from slmkit.serve import DOCS_PAGE, ERROR_CODES, create_app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXTS = ["refund that charge please", "my parcel is lost", "password locked again", "hello", "why is the courier still not here today"]
LONG = " ".join(["please help with my invoice today"] * 12)  # much longer than the others: they get padded beside it


def load_benchmark():
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quantized_tiny(exported_tiny, tmp_path_factory) -> Path:
    """`exported_tiny` with dynamic int8 quantization (activation scales computed per call)."""
    from slmkit.quantize import quantize

    return quantize(QuantizeConfig(model=str(exported_tiny), out=str(tmp_path_factory.mktemp("serve") / "tiny-int8")), progress=False).out


def client_for(model: Path, **settings) -> TestClient:
    return TestClient(create_app(ServeConfig(model=str(model), **settings)))


def wait_ready(client: TestClient, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while client.get("/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "the model never became ready"
        time.sleep(0.01)


def classify(client: TestClient, texts, **kwargs):
    return client.post("/v1/classify", json={"texts": texts}, **kwargs)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"} and body["error"]["code"] == code, body
    assert code in ERROR_CODES
    return body["error"]


# ------------------------------------------------------------------------------------------ endpoints


def test_classify_answers_like_the_runtime_with_the_model_identity(exported_tiny):
    with client_for(exported_tiny) as client:
        wait_ready(client)
        response = classify(client, TEXTS)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = Predictor(exported_tiny).predict(TEXTS)
    assert [r["label"] for r in body["results"]] == [p.label for p in expected]
    for result, prediction in zip(body["results"], expected):
        assert set(result) == {"label", "score", "scores", "truncated"} and result["truncated"] is False
        assert result["score"] == pytest.approx(prediction.score, abs=1e-6) and result["score"] == max(result["scores"].values())
        assert result["scores"] == pytest.approx(prediction.scores, abs=1e-6)
    sha256 = hashlib.sha256((exported_tiny / "model.onnx").read_bytes()).hexdigest()
    assert body["model"] == {"name": exported_tiny.name, "version": sha256[:12], "sha256": sha256, "task": "classification"}


def test_the_start_up_heap_is_frozen_out_of_the_collector_once_ready(exported_tiny):
    import gc

    gc.unfreeze()  # whatever an earlier test froze
    assert gc.get_freeze_count() == 0
    with client_for(exported_tiny) as client:
        wait_ready(client)
        assert gc.get_freeze_count() > 0  # the model, tokenizer and app: full collections no longer walk them
        assert classify(client, TEXTS[:2]).status_code == 200


def test_health_models_metrics_and_docs(exported_tiny):
    with client_for(exported_tiny) as client:
        wait_ready(client)
        assert client.get("/health/live").json() == {"status": "live"}
        assert client.get("/health/ready").json() == {"status": "ready"}
        classify(client, TEXTS[:2])
        models = client.get("/v1/models").json()
        metrics = client.get("/metrics")
        openapi = client.get("/openapi.json").json()
        docs = client.get("/docs")
    (model,) = models["models"]
    assert model["labels"] == ["billing", "delivery", "login"] and model["batching"] == "padded" and model["precision"] == "fp32"
    recorded = json.loads((exported_tiny / "metrics.json").read_text())
    assert model["metrics"]["parity"] == recorded["parity"] and model["metrics"]["onnx_bytes"] == recorded["onnx_bytes"]  # the bundle's records ...
    assert Path(recorded["probe"]["source"]).is_absolute() and "source" not in model["metrics"]["probe"]  # ... less this machine's paths
    assert models["limits"]["max_texts"] == 64 and models["limits"]["queue_size"] == 128
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    for series in ('slm_requests_total{endpoint="/v1/classify",status="200"} 1.0', 'slm_request_duration_seconds_bucket{endpoint="/v1/classify",le="0.05"}',
                   'slm_batch_texts_bucket{le="2.0"} 1.0', "slm_queue_texts 0.0", "slm_texts_total 2.0", "slm_texts_per_second",
                   "slm_ready 1.0", "slm_in_flight_requests 1.0", "process_resident_memory_bytes", "process_open_fds", "slm_model_info{"):
        assert series in text, series
    operation = openapi["paths"]["/v1/classify"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["properties"]["texts"]["type"] == "array"
    assert {"200", "413", "422", "429", "503"} <= set(operation["responses"])
    assert {"/v1/models", "/health/live", "/health/ready", "/metrics"} <= set(openapi["paths"])
    texts = operation["requestBody"]["content"]["application/json"]["schema"]["properties"]["texts"]
    assert texts["maxItems"] == 64 and texts["items"]["maxLength"] == 2000  # this server's limits, shown by the docs page
    assert docs.status_code == 200 and docs.text == DOCS_PAGE.read_text(encoding="utf-8")


def test_docs_page_is_offline_and_under_a_strict_csp(exported_tiny):
    with client_for(exported_tiny) as client:
        docs = client.get("/docs")
        assert client.get("/docs/oauth2-redirect").status_code == 404  # FastAPI's Swagger UI is off
    assert docs.status_code == 200 and docs.headers["content-type"] == "text/html; charset=utf-8"
    csp = [d.strip() for d in docs.headers["content-security-policy"].split(";")]
    for directive in ("default-src 'self'", "script-src 'unsafe-inline'", "style-src 'unsafe-inline'", "connect-src 'self'"):
        assert directive in csp, directive
    html = docs.text
    assert not re.search(r"\b(src|href|action)\s*=\s*[\"']?\s*(https?:)?//", html, re.I)  # nothing loaded from another host
    assert "http://" not in html and "https://" not in html
    for cdn in ("jsdelivr", "unpkg", "cdnjs", "googleapis", "swagger-ui", "redoc"):
        assert cdn not in html.lower(), cdn
    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):  # data is text only
        assert sink not in script, sink
    assert '"openapi.json"' in script and "textContent" in script


def test_api_key_leaves_the_docs_page_open_but_not_the_api_description(exported_tiny, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key-123\n")
    with client_for(exported_tiny, api_key_file=str(key_file)) as client:
        assert client.get("/docs").status_code == 200  # a static page: it asks for the key, then loads /openapi.json with it
        assert_error(client.get("/openapi.json"), 401, "unauthorized")
        assert client.get("/openapi.json", headers={"Authorization": "Bearer s3cret-key-123"}).status_code == 200


def test_readiness_turns_on_only_after_warm_up(exported_tiny, monkeypatch):
    import slmkit.serve as serve

    release, warming = threading.Event(), threading.Event()
    original = serve._warm_up

    def slow_warm_up(predictor, max_batch):
        warming.set()
        release.wait(30)
        original(predictor, max_batch)

    monkeypatch.setattr(serve, "_warm_up", slow_warm_up)
    with client_for(exported_tiny) as client:
        assert warming.wait(30)
        assert client.get("/health/live").json() == {"status": "live"}
        response = client.get("/health/ready")
        assert response.status_code == 503 and response.json() == {"status": "loading"}
        assert_error(classify(client, TEXTS), 503, "not_ready")
        assert_error(client.get("/v1/models"), 503, "not_ready")
        assert "slm_ready 0.0" in client.get("/metrics").text
        release.set()
        wait_ready(client)
        assert classify(client, TEXTS).status_code == 200


# ------------------------------------------------------------------------------------------ limits


def test_limits_and_bad_requests_are_json_errors(exported_tiny):
    with client_for(exported_tiny, max_texts=4, max_chars=50, max_body_bytes=16384) as client:
        wait_ready(client)
        assert_error(classify(client, ["a"] * 5), 422, "too_many_texts")
        assert "at most 50" in assert_error(classify(client, ["x" * 51]), 422, "text_too_long")["message"]
        too_big = client.post("/v1/classify", content=json.dumps({"texts": ["a" * 20000]}))
        assert_error(too_big, 413, "body_too_large")
        chunked = client.post("/v1/classify", content=(b"x" * 4096 for _ in range(5)))  # no Content-Length: counted while read
        assert_error(chunked, 413, "body_too_large")
        for body in (b"{", b"", b'{"texts": ["a"]} x', b'{"texts": ["\xff"]}', b"[" * 5000 + b"]" * 5000):
            assert_error(client.post("/v1/classify", content=body), 400, "invalid_json")
        for payload in ([], "texts", {"text": ["a"]}, {"texts": "a"}, {"texts": []}, {"texts": [1]}, {"texts": ["a", None]},
                        {"texts": ["a"], "extra": 1}, {"texts": [["a"]]}):
            assert_error(client.post("/v1/classify", json=payload), 422, "invalid_request")
        assert_error(client.post("/v1/classify", content=b'{"texts": ["a\\ud800"]}'), 422, "invalid_text")
        assert_error(client.get("/v1/nothing"), 404, "not_found")
        wrong_method = client.get("/v1/classify")
        assert_error(wrong_method, 405, "method_not_allowed")
        assert wrong_method.headers["allow"] == "POST"
        assert classify(client, ["", "\u0000", "👩‍👩‍👧‍👦"]).status_code == 200  # odd but valid texts are answered


def test_truncation_when_configured_is_reported(exported_tiny):
    text = "my parcel is lost " * 10
    with client_for(exported_tiny, max_chars=20, truncate=True) as client:
        wait_ready(client)
        body = classify(client, [text, "hello"]).json()
    assert [r["truncated"] for r in body["results"]] == [True, False]
    assert body["results"][0]["scores"] == pytest.approx(Predictor(exported_tiny).predict([text[:20]])[0].scores, abs=1e-6)


def test_full_queue_gets_429_with_retry_after_at_once(exported_tiny):
    # a batch waits up to 2 s to fill, so the first request stays in flight, filling the queue of one
    with client_for(exported_tiny, queue_size=1, max_batch=64, max_wait_ms=2000) as client:
        wait_ready(client)
        service = client.app.state.service
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(classify, client, TEXTS[:4])
            while service.in_flight < 1:
                time.sleep(0.005)
            started = time.perf_counter()
            refused = classify(client, ["hello"])
            refused_s = time.perf_counter() - started
            assert_error(refused, 429, "queue_full")
            assert int(refused.headers["retry-after"]) >= 1 and refused_s < 0.5
            assert client.get("/health/ready").status_code == 200 and client.get("/metrics").status_code == 200  # never refused
            assert first.result().status_code == 200
        assert service.in_flight == 0 and 'slm_requests_total{endpoint="/v1/classify",status="429"} 1.0' in client.get("/metrics").text


def test_deadline_gives_503_and_frees_the_queue(exported_tiny):
    with client_for(exported_tiny, timeout_s=0.2, max_batch=64, max_wait_ms=5000) as client:
        wait_ready(client)
        started = time.perf_counter()
        assert_error(classify(client, TEXTS), 503, "timeout")
        assert time.perf_counter() - started < 2
        service = client.app.state.service
        assert service.batcher.waiting == 0 and service.in_flight == 0


# ------------------------------------------------------------------------------------------ batching


def solo_and_mixed(client: TestClient, texts: list[str]) -> tuple[list[dict], list[dict]]:
    """Each text alone, then the same texts in concurrent requests of 1 to 3 texts that merge into batches."""
    solo = [classify(client, [t]).json()["results"][0] for t in texts]
    groups, start = [], 0
    while start < len(texts):
        groups.append(texts[start : start + 1 + len(groups) % 3])
        start += len(groups[-1])
    with ThreadPoolExecutor(len(groups)) as pool:
        answers = list(pool.map(lambda g: classify(client, g).json()["results"], groups))
    mixed = {}
    for group, results in zip(groups, answers):
        mixed.update(zip(group, results))
    return solo, [mixed[t] for t in texts]


def batches_of_more_than_one(client: TestClient) -> float:
    metrics = client.get("/metrics").text
    count = float(re.search(r"^slm_batch_texts_count (\S+)", metrics, re.M).group(1))
    singles = float(re.search(r'^slm_batch_texts_bucket\{le="1.0"\} (\S+)', metrics, re.M).group(1))
    return count - singles


def test_a_texts_result_does_not_depend_on_its_batch(exported_tiny):
    texts = [LONG, *TEXTS, *(t + " again" for t in TEXTS), "invoice"]
    with client_for(exported_tiny, max_batch=8, max_wait_ms=200) as client:
        wait_ready(client)
        solo, mixed = solo_and_mixed(client, texts)
        assert batches_of_more_than_one(client) >= 1  # requests were merged (and split: max_batch < texts)
    for alone, batched in zip(solo, mixed):
        assert alone["label"] == batched["label"]
        assert batched["scores"] == pytest.approx(alone["scores"], abs=1e-5)  # padding is masked: float noise only


def test_a_model_fault_fails_its_batch_with_500_and_the_model_thread_goes_on(exported_tiny):
    with TestClient(create_app(ServeConfig(model=str(exported_tiny))), raise_server_exceptions=False) as client:
        wait_ready(client)
        batcher = client.app.state.service.batcher
        predict, calls = batcher.predict, []

        def faulty(texts):
            calls.append(texts)
            if len(calls) == 1:
                raise RuntimeError("onnxruntime fault at /models/secret.onnx")
            return predict(texts)

        batcher.predict = faulty
        body = assert_error(classify(client, TEXTS[:2]), 500, "internal")
        assert "secret" not in body["message"] and "RuntimeError" not in body["message"]
        assert classify(client, TEXTS[:2]).json()["results"] == classify(client, TEXTS[:2]).json()["results"]
        assert batcher.thread.is_alive() and batcher.waiting == 0 and len(calls) == 3


def test_dynamic_int8_runs_per_text_and_is_exactly_batch_invariant(quantized_tiny):
    texts = [LONG, *TEXTS, "invoice"]
    runtime = Predictor(quantized_tiny, batch_size=32)  # why: one padded batch shifts the activation scales
    together, alone = runtime.predict_proba(texts), np.vstack([runtime.predict_proba([t]) for t in texts])
    assert not np.array_equal(together, alone)
    with client_for(quantized_tiny, max_batch=8, max_wait_ms=200) as client:
        wait_ready(client)
        assert client.get("/v1/models").json()["models"][0]["batching"] == "per-text"
        solo, mixed = solo_and_mixed(client, texts)
        assert batches_of_more_than_one(client) >= 1
    assert solo == mixed
    assert [r["scores"]["billing"] for r in solo] == pytest.approx(alone[:, 0].tolist(), abs=1e-7)


# ------------------------------------------------------------------------------------------ API key, draining


def test_api_key_guards_everything_but_health_and_the_docs_page(exported_tiny, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key-123\n")
    with client_for(exported_tiny, api_key_file=str(key_file)) as client:
        wait_ready(client)
        for path in ("/v1/models", "/metrics", "/openapi.json", "/nothing"):
            response = client.get(path)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
        assert_error(classify(client, TEXTS, headers={"Authorization": "Bearer wrong-key-123"}), 401, "unauthorized")
        assert classify(client, TEXTS, headers={"Authorization": "Bearer s3cret-key-123"}).status_code == 200
        assert classify(client, TEXTS, headers={"X-API-Key": "s3cret-key-123"}).status_code == 200
        assert client.get("/health/live").status_code == 200 and client.get("/health/ready").status_code == 200
    for content in ("", "short\n"):
        key_file.write_text(content)
        with pytest.raises(UserError, match="must be at least 8 characters"):
            create_app(ServeConfig(model=str(exported_tiny), api_key_file=str(key_file)))


def test_draining_answers_503_to_new_requests(exported_tiny):
    with client_for(exported_tiny) as client:
        wait_ready(client)
        client.portal.call(client.app.state.service.begin_drain)
        assert client.get("/health/ready").json() == {"status": "draining"}
        refused = classify(client, TEXTS)
        assert_error(refused, 503, "shutting_down")
        assert refused.headers["connection"] == "close"
        assert client.get("/health/live").status_code == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, texts: list[str], timeout: float = 30) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/classify", json.dumps({"texts": texts}).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def in_flight(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return float(re.search(r"^slm_in_flight_requests (\S+)", response.read().decode(), re.M).group(1))


def test_sigterm_finishes_admitted_requests_refuses_new_ones_and_exits_0(exported_tiny):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # batches wait up to 3 s to fill: the first requests are still in flight when SIGTERM arrives
    server = subprocess.Popen([sys.executable, "-m", "slmkit.cli", "serve", str(exported_tiny), "--port", str(port), "--max-batch", "64",
                               "--max-wait-ms", "3000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, server.communicate()[1] if server.poll() is not None else "not ready"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        with ThreadPoolExecutor(4) as pool:
            admitted = [pool.submit(post, port, [t]) for t in TEXTS[:4]]
            while in_flight(port) < 4 + 1:  # the four, and the scrape itself
                time.sleep(0.05)
            server.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            status, body = post(port, TEXTS[:1])
            assert status == 503 and body["error"]["code"] == "shutting_down"
            answers = [f.result() for f in admitted]
        assert [s for s, _ in answers] == [200] * 4
        assert [b["results"][0]["label"] for _, b in answers] == [p.label for p in Predictor(exported_tiny).predict(TEXTS[:4])]
        assert server.wait(60) == 0
        log = server.stderr.read()
        assert "draining" in log and "Traceback" not in log
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@contextlib.contextmanager
def uvicorn_in_a_thread(model: Path, **settings):
    """The app under a real uvicorn server on a free loopback port, in a thread (what a browser needs); its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ServeConfig(model=str(model), port=port, **settings)), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def open_docs(browser, base: str):
    """/docs open in a new page; `problems` collects script errors and Content-Security-Policy refusals, `requests`
    every URL the page asked for."""
    page = browser.new_page()
    page.problems, page.requests = [], []
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.on("console", lambda m: "Content Security Policy" in m.text and page.problems.append(m.text))
    page.on("request", lambda r: page.requests.append(r.url))
    page.goto(base + "/docs")
    return page


def try_classify(page, text: str) -> tuple[str, dict]:
    """The classify operation's "try it" form, sent with one text: the status shown and the body shown."""
    operation = page.locator("#op-post-v1-classify")
    operation.locator("textarea.body").fill(json.dumps({"texts": [text]}))
    operation.locator("button.send").click()
    status = operation.locator(".try-status[data-status]")
    status.wait_for(timeout=10_000)
    return status.get_attribute("data-status"), json.loads(operation.locator(".try-body").inner_text())


def test_docs_page_in_a_browser_shows_the_schemas_and_tries_classify(browser, exported_tiny):
    text = "my parcel is lost"
    expected = Predictor(exported_tiny).predict([text])[0].label
    with uvicorn_in_a_thread(exported_tiny) as base:
        page = open_docs(browser, base)
        page.wait_for_selector("#status[data-loaded]", timeout=10_000)
        assert page.title() == "slmkit serve — API docs" and page.inner_text("#version") == "version 1"
        assert "Text classification with tiny-onnx" in page.inner_text("#description")
        toc = page.inner_text("#toc")
        for path in ("/v1/classify", "/v1/models", "/metrics", "/health/live", "/health/ready"):
            assert path in toc, path
        operation = page.locator("#op-post-v1-classify")
        assert operation.locator(".path").inner_text() == "/v1/classify" and operation.locator(".summary").inner_text() == "Classify texts"
        request_row = operation.locator(".request-body table.fields tbody tr").first.locator("td").all_inner_texts()
        assert request_row[:3] == ["texts", "array<string>", "required"]
        assert request_row[3] == "minItems 1, maxItems 64, items: maxLength 2000" and request_row[4].startswith("Texts to classify")
        assert json.loads(operation.locator("textarea.body").input_value()) == {"texts": ["where is my parcel?", "I was charged twice"]}
        fields = operation.locator(".response[data-code='200'] table.fields td.field").all_inner_texts()  # $refs resolved, nested
        assert fields == ["results", "results[].label", "results[].score", "results[].scores", "results[].truncated",
                          "model", "model.name", "model.version", "model.sha256", "model.task"]
        assert page.locator("#schema-ErrorResponse td.field").all_inner_texts() == ["error", "error.code", "error.message"]
        status, body = try_classify(page, text)
        assert status == "200" and body["results"][0]["label"] == expected
        assert operation.locator(".try-status").inner_text().startswith("200 OK")
        assert not page.problems, page.problems
        assert all(url.startswith(base + "/") for url in page.requests), page.requests  # nothing but this server


def test_docs_page_asks_for_the_api_key_and_sends_it(browser, exported_tiny, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key-123\n")
    with uvicorn_in_a_thread(exported_tiny, api_key_file=str(key_file)) as base:
        page = open_docs(browser, base)
        page.wait_for_function("document.querySelector('#status').textContent.includes('API key')", timeout=10_000)
        assert page.locator("#operations section").count() == 0
        page.fill("#api-key", "s3cret-key-123")
        page.click("#load")
        page.wait_for_selector("#status[data-loaded]", timeout=10_000)
        status, body = try_classify(page, "refund that charge please")
        assert status == "200" and body["results"][0]["label"] in {"billing", "delivery", "login"}
        page.fill("#api-key", "wrong-key-123")
        status, body = try_classify(page, "refund that charge please")
        assert status == "401" and body["error"]["code"] == "unauthorized"
        assert not page.problems, page.problems


def test_docs_page_resolves_refs_allof_anyof_recursion_and_sends_parameters(browser):
    """The page on a made-up description, served through the browser's request routing (no server): the shapes
    FastAPI emits for other models (allOf, Optional as anyOf, recursion, enums, path/query/header parameters)."""
    spec = {
        "openapi": "3.1.0", "info": {"title": "t", "version": "2", "description": "with `code` and <b>no html</b>"},
        "paths": {"/v1/items/{item_id}": {
            "parameters": [{"name": "item_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}],
            "put": {"summary": "Put an item",
                    "parameters": [{"name": "dry_run", "in": "query", "schema": {"type": "boolean"}},
                                   {"name": "X-Trace", "in": "header", "schema": {"type": "string"}}],
                    "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}},
                    "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Node"}}}}}}}},
        "components": {"schemas": {
            "Base": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1}}, "required": ["id"]},
            "Item": {"allOf": [{"$ref": "#/components/schemas/Base"}], "type": "object", "required": ["kind"], "properties": {
                "kind": {"type": "string", "enum": ["a", "b"]}, "note": {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "null"}]}}},
            "Node": {"type": "object", "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}}},
        }},
    }
    origin, sent = "http://docs.test", []
    page = browser.new_page()
    page.route(origin + "/docs", lambda route: route.fulfill(body=DOCS_PAGE.read_bytes(), content_type="text/html"))
    page.route(origin + "/openapi.json", lambda route: route.fulfill(json=spec))

    def answer(route):
        sent.append((route.request.url, route.request.headers.get("x-trace"), route.request.post_data))
        route.fulfill(status=201, json={"name": "<img src=x onerror=alert(1)>"})

    page.route(origin + "/v1/items/**", answer)
    page.goto(origin + "/docs")
    page.wait_for_selector("#status[data-loaded]")
    assert page.inner_text("#description") == "with code and <b>no html</b>"  # text, never markup
    operation = page.locator("#op-put-v1-items-item_id")
    assert operation.locator("table.parameters td.field").all_inner_texts() == ["item_id", "dry_run", "X-Trace"]
    request = operation.locator(".request-body table.fields tbody tr")
    assert [request.nth(i).locator("td").all_inner_texts()[:4] for i in range(3)] == [
        ["id", "integer", "required", "minimum 1"], ["kind", "string", "required", 'one of "a", "b"'], ["note", "string | null", "optional", ""]]
    assert json.loads(operation.locator("textarea.body").input_value()) == {"id": 1, "kind": "a", "note": "text"}
    assert operation.locator(".response td.field").all_inner_texts() == ["name", "children", "children[].…"]
    assert "recursive: see Node" in operation.locator(".response").inner_text()
    inputs = operation.locator("form.try input")
    inputs.nth(0).fill("7")
    inputs.nth(1).fill("true")
    inputs.nth(2).fill("abc")
    operation.locator("button.send").click()
    operation.locator(".try-status[data-status]").wait_for()
    assert sent == [(origin + "/v1/items/7?dry_run=true", "abc", '{\n  "id": 1,\n  "kind": "a",\n  "note": "text"\n}')]
    assert operation.locator(".try-status").get_attribute("data-status") == "201"
    assert json.loads(operation.locator(".try-body").inner_text()) == {"name": "<img src=x onerror=alert(1)>"}
    assert page.locator("img").count() == 0


def test_server_process_imports_no_torch(exported_tiny):
    code = (
        "import sys\nfrom fastapi.testclient import TestClient\nimport slmkit.cli\nfrom slmkit.config import ServeConfig\n"
        "from slmkit.serve import create_app\n"
        f"with TestClient(create_app(ServeConfig(model={str(exported_tiny)!r}))) as c:\n"
        "    import time\n    while c.get('/health/ready').status_code != 200: time.sleep(0.01)\n"
        "    assert c.post('/v1/classify', json={'texts': ['my invoice']}).status_code == 200\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\nassert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------------------ fuzz, CLI, README


def test_fuzzed_bad_requests_get_no_5xx_and_json_errors(exported_tiny):
    bench = load_benchmark()
    kinds: dict[str, set[int]] = {}
    with client_for(exported_tiny, max_body_bytes=200_000) as client:
        wait_ready(client)
        for kind, body in bench.bad_requests(1500, seed=1, max_body_bytes=200_000):
            response = client.post("/v1/classify", content=body)
            problem = bench.check_answer(response.status_code, response.content, ERROR_CODES)
            assert problem is None, f"{kind}: {problem} for {body[:100]!r}"
            kinds.setdefault(kind, set()).add(response.status_code)
        after = classify(client, TEXTS).json()["results"]
    assert set(kinds) == set(bench.FUZZ_KINDS)
    assert {400, 413, 422} <= set().union(*kinds.values())
    assert [r["label"] for r in after] == [p.label for p in Predictor(exported_tiny).predict(TEXTS)]


def test_cli_serve_bad_input_is_one_line(exported_tiny, tmp_path):
    runner = CliRunner()
    cases = [
        ([str(tmp_path / "missing")], "model directory not found"),
        ([str(exported_tiny), "--max-batch", "0"], "setting max_batch must be at least 1"),
        ([str(exported_tiny), "--queue-size", "0"], "setting queue_size must be at least 1"),
        ([str(exported_tiny), "--api-key-file", str(tmp_path / "nokey")], "API key file not readable"),
    ]
    for args, message in cases:
        result = runner.invoke(cli, ["serve", *args])
        assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.output
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for f in exported_tiny.iterdir():
        (tampered / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((tampered / "manifest.json").read_text())
    (tampered / "manifest.json").write_text(json.dumps({**manifest, "sha256": "0" * 64}))
    result = runner.invoke(cli, ["serve", str(tampered)])
    assert result.exit_code == 2 and "SHA-256 differs" in result.stderr
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    (tampered / "model.onnx").write_bytes(b"\x08\x07" + b"\x00" * 64)  # parses as a protobuf, not a model
    result = runner.invoke(cli, ["serve", str(tampered)])
    assert result.exit_code == 2 and "ONNX Runtime cannot load the model" in result.stderr, result.output


def test_readme_serve_example_runs_as_written(exported_tiny):
    block = re.search(r"<!-- serve-example -->\s*```bash\n(.*?)```", README.read_text(), re.S)
    assert block, "README lost its serve-example block"
    payload = json.loads(re.search(r"-d '(.*?)'", block.group(1)).group(1))
    with client_for(exported_tiny) as client:
        wait_ready(client)
        response = client.post("/v1/classify", json=payload)
    assert response.status_code == 200 and len(response.json()["results"]) == len(payload["texts"])
    shown = json.loads(re.search(r"<!-- serve-response -->\s*```json\n(.*?)```", README.read_text(), re.S).group(1))
    assert set(shown) == set(response.json()) and set(shown["results"][0]) == set(response.json()["results"][0])
    assert set(shown["model"]) == set(response.json()["model"])


def test_cli_serve_help_explains_every_option():
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--workers", "--api-key-file", "--max-batch", "--max-wait-ms", "--max-body-bytes", "--max-texts",
                   "--max-chars", "--truncate", "--queue-size", "--timeout", "--threads", "--access-log", "--config", "--set"):
        assert option in result.stdout, option
