"""NER and QA beyond training: `slm serve` of exported NER/QA models (POST /v1/entities, POST /v1/answer, one task
per server), and `slm predict` of NER and QA models, trained (PyTorch) and exported (torch-free runtime).

The tiny BERT is trained once per task in module fixtures on hand-made data (test_ner's and test_qa's)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from slmkit.cli import app as cli
from slmkit.config import ServeConfig
from slmkit.serve import create_app
from test_ner import ner_config, ner_rows, write_conll_rows
from test_qa import synthetic_squad
from test_serve import assert_error, batches_of_more_than_one, load_benchmark, wait_ready

TEXTS = ["please refund my courier parcel, thanks!", "", "hello", "my password is locked again", "the shipping parcel is not here today"]
# 22 words: with windows of 24 tokens (stride 8) the cue word lies in the second window only
LONG_CONTEXT = "hello my problem is still not here today why is the help not again with a problem thanks please my courier"
PAIRS = [("why the problem", LONG_CONTEXT), ("why the problem", "please help with my refund"), ("help with the problem", "my password again")]


@pytest.fixture(scope="module")
def ner_models(tiny_base, tmp_path_factory) -> tuple[Path, Path]:
    """(trained NER directory, its ONNX export)."""
    from slmkit.config import ExportConfig
    from slmkit.export import export
    from slmkit.train import train

    d = tmp_path_factory.mktemp("serve-ner")
    train_file = write_conll_rows(d / "train.conll", ner_rows(160, seed=1), "bio")
    cfg = ner_config(tiny_base, train_file, None, d / "ner")
    trained = train(cfg, progress=False).out
    return trained, export(ExportConfig(model=str(trained), out=str(d / "ner-onnx"), probe_size=16)).out


@pytest.fixture(scope="module")
def qa_models(tiny_base, tmp_path_factory) -> tuple[Path, Path]:
    """(trained QA directory, its ONNX export): windows of 24 tokens, stride 8."""
    from slmkit.config import DataConfig, ExportConfig, ModelConfig, OptimConfig, TrainConfig
    from slmkit.export import export
    from slmkit.train import train

    d = tmp_path_factory.mktemp("serve-qa")
    cfg = TrainConfig(
        task="qa", out=str(d / "qa"), data=DataConfig(train=str(synthetic_squad(d / "train.json", 40, seed=1))),
        model=ModelConfig(base=str(tiny_base), max_length=24, stride=8),
        train=OptimConfig(epochs=3, batch_size=16, lr=3e-3, warmup=0.0, seed=7, patience=0, threads=1),
    )
    trained = train(cfg, progress=False).out
    return trained, export(ExportConfig(model=str(trained), out=str(d / "qa-onnx"), probe_size=16)).out


def client_for(model: Path, **settings) -> TestClient:
    return TestClient(create_app(ServeConfig(model=str(model), **settings)))


def entity_spans(results: list[list[dict]]) -> list[list[tuple]]:
    return [[(e["label"], e["start"], e["end"], e["text"]) for e in found] for found in results]


# ------------------------------------------------------------------------------------------ NER server


def test_entities_endpoint_answers_like_the_runtime_and_pytorch(ner_models):
    from slmkit.tasks.ner import predict_entities

    trained, exported = ner_models
    with client_for(exported) as client:
        wait_ready(client)
        response = client.post("/v1/entities", json={"texts": TEXTS})
        models = client.get("/v1/models").json()["models"][0]
        openapi = client.get("/openapi.json").json()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["task"] == "ner" and [r["truncated"] for r in body["results"]] == [False] * len(TEXTS)
    served = [r["entities"] for r in body["results"]]
    assert entity_spans(served)[:3] == [[("PAY", 7, 13, "refund"), ("SHIP", 17, 31, "courier parcel")], [], []]
    for text, found in zip(TEXTS, served):
        assert all(text[e["start"] : e["end"]] == e["text"] and set(e) == {"label", "score", "start", "end", "text"} for e in found)
    pytorch = predict_entities(trained, TEXTS)
    assert entity_spans(served) == entity_spans(pytorch)
    assert [e["score"] for t in served for e in t] == pytest.approx([e["score"] for t in pytorch for e in t], abs=1e-4)
    assert models["endpoint"] == "/v1/entities" and models["labels"][0] == "O" and "B-SHIP" in models["labels"]
    assert set(openapi["paths"]) == {"/v1/entities", "/v1/models", "/metrics", "/health/live", "/health/ready"}
    assert "Named entity recognition" in openapi["info"]["description"]
    assert openapi["paths"]["/v1/entities"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["texts"]["maxItems"] == 64


def test_each_server_answers_its_own_task_only(ner_models, qa_models, exported_tiny):
    for model, wrong in ((ner_models[1], ["/v1/classify", "/v1/answer"]), (qa_models[1], ["/v1/classify", "/v1/entities"]),
                         (exported_tiny, ["/v1/entities", "/v1/answer"])):
        with client_for(model) as client:
            wait_ready(client)
            task = client.get("/v1/models").json()["models"][0]["task"]
            for path in wrong:
                error = assert_error(client.post(path, json={"texts": ["hello"]}), 404, "wrong_task")
                assert f"answers a {task} model" in error["message"]
            assert all(path not in client.get("/openapi.json").json()["paths"] for path in wrong)


def test_entity_batches_limits_and_truncation(ner_models):
    exported = ner_models[1]
    texts = [t for t in TEXTS if t] + [t + " again please" for t in TEXTS if t] + ["invoice"]
    with client_for(exported, max_batch=4, max_wait_ms=200) as client:
        wait_ready(client)
        solo = [client.post("/v1/entities", json={"texts": [t]}).json()["results"][0]["entities"] for t in texts]
        groups = [texts[i : i + 2] for i in range(0, len(texts), 2)]
        with ThreadPoolExecutor(len(groups)) as pool:
            mixed = [r["entities"] for rs in pool.map(lambda g: client.post("/v1/entities", json={"texts": g}).json()["results"], groups) for r in rs]
        assert batches_of_more_than_one(client) >= 1
    assert entity_spans(mixed) == entity_spans(solo)
    assert [e["score"] for t in mixed for e in t] == pytest.approx([e["score"] for t in solo for e in t], abs=1e-5)

    with client_for(exported, max_texts=2, max_chars=20, truncate=False) as client:
        wait_ready(client)
        assert_error(client.post("/v1/entities", json={"texts": ["a", "b", "c"]}), 422, "too_many_texts")
        assert_error(client.post("/v1/entities", json={"texts": ["x" * 21]}), 422, "text_too_long")
        assert_error(client.post("/v1/entities", json={"text": "a"}), 422, "invalid_request")
        assert_error(client.post("/v1/entities", content=b"{"), 400, "invalid_json")
    text = "please refund my courier parcel"
    with client_for(exported, max_chars=20, truncate=True) as client:
        wait_ready(client)
        cut, whole = client.post("/v1/entities", json={"texts": [text, text[:20]]}).json()["results"]
    assert cut["truncated"] is True and whole["truncated"] is False and cut["entities"] == whole["entities"]
    assert ("PAY", "refund") in [(e["label"], e["text"]) for e in cut["entities"]]


def test_fuzzed_entity_and_answer_requests_get_no_5xx(ner_models, qa_models):
    bench = load_benchmark()
    from slmkit.serve import ERROR_CODES

    for model, path in ((ner_models[1], "/v1/entities"), (qa_models[1], "/v1/answer")):
        with client_for(model, max_body_bytes=200_000) as client:
            wait_ready(client)
            bodies = list(bench.bad_requests(300, seed=2, max_body_bytes=200_000))
            if path == "/v1/answer":
                bodies += [("qa-shaped", body) for body in qa_shaped_bodies(300, seed=3)]
            for kind, body in bodies:
                response = client.post(path, content=body)
                single = response.status_code == 200 and "answer" in response.json()  # the single form's answer: no "results"
                problem = None if single else bench.check_answer(response.status_code, response.content, ERROR_CODES)
                assert problem is None, f"{path} {kind}: {problem} for {body[:100]!r}"
            assert client.post(path, content=bodies[-1][1]).status_code < 500  # still answering


def qa_shaped_bodies(n: int, seed: int) -> list[bytes]:
    """Answer requests of the right shape with odd values: wrong types, empty, huge, odd Unicode, lone surrogates,
    deep nesting, many items, stray fields."""
    import random

    rng = random.Random(seed)
    values = [None, True, 3, 1.5, [], {}, ["why"], {"q": "x"}, "", " ", "\u0000", "🙂" * 50, "a\u0301" * 30, "日本語", "why " * 600,
              "x" * 5000, "\u200b", "[CLS] [SEP]", "\t\n", "why", "please help with my refund"]

    def pair() -> dict:
        item = {"question": rng.choice(values), "context": rng.choice(values)}
        if rng.random() < 0.1:
            item[rng.choice(["id", "answers", "question "])] = 1
        if rng.random() < 0.1:
            del item[rng.choice(["question", "context"])]
        return item

    bodies = []
    for i in range(n):
        choice = i % 4
        if choice == 0:
            body = json.dumps(pair())
        elif choice == 1:
            body = json.dumps({"items": [pair() for _ in range(rng.choice([0, 1, 3, 70]))]})
        elif choice == 2:
            body = json.dumps({"items": rng.choice(values)})
        else:
            body = '{"question": ' + "[" * 3000 + "]" * 3000 + ', "context": "x"}' if rng.random() < 0.5 else '{"question": "\\ud800", "context": "x"}'
        bodies.append(body.encode("utf-8", "surrogatepass"))
    return bodies


# ------------------------------------------------------------------------------------------ QA server


def test_answer_endpoint_single_and_batch_forms(qa_models):
    from slmkit.tasks.qa import answer_questions

    trained, exported = qa_models
    pytorch = answer_questions(trained, PAIRS)
    assert pytorch[0].text == "courier" and pytorch[1].text == "refund"  # the first one's answer is in its second window
    with client_for(exported) as client:
        wait_ready(client)
        single = client.post("/v1/answer", json={"question": PAIRS[0][0], "context": PAIRS[0][1]})
        batch = client.post("/v1/answer", json={"items": [{"question": q, "context": c} for q, c in PAIRS]})
        models = client.get("/v1/models").json()["models"][0]
        openapi = client.get("/openapi.json").json()
    assert single.status_code == 200 and batch.status_code == 200, (single.text, batch.text)
    one = single.json()
    assert set(one) == {"answer", "score", "start", "end", "truncated", "model"} and one["model"]["task"] == "qa"
    results = batch.json()["results"]
    assert {k: v for k, v in one.items() if k != "model"} == results[0]
    for (question, context), result, expected in zip(PAIRS, results, pytorch):
        assert (result["answer"], result["start"], result["end"]) == (expected.text, expected.start, expected.end)
        assert context[result["start"] : result["end"]] == result["answer"] and result["score"] == pytest.approx(expected.score, abs=1e-4)
    assert models["endpoint"] == "/v1/answer" and models["labels"] == []
    schema = openapi["paths"]["/v1/answer"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert [s["title"] for s in schema["anyOf"]] == ["One question", "Several questions"]
    answers = openapi["paths"]["/v1/answer"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert json.dumps(answers).count("$ref") == 2 and {"AnswerResponse", "AnswerBatchResponse"} <= set(openapi["components"]["schemas"])


def test_answer_requests_batch_together_and_bad_ones_are_json_errors(qa_models, tmp_path):
    exported = qa_models[1]
    with client_for(exported, max_batch=8, max_wait_ms=200, max_texts=3, max_chars=120) as client:
        wait_ready(client)
        solo = [client.post("/v1/answer", json={"question": q, "context": c}).json() for q, c in PAIRS]
        with ThreadPoolExecutor(3) as pool:
            mixed = list(pool.map(lambda p: client.post("/v1/answer", json={"question": p[0], "context": p[1]}).json(), PAIRS))
        assert batches_of_more_than_one(client) >= 1
        for alone, batched in zip(solo, mixed):
            assert (alone["answer"], alone["start"]) == (batched["answer"], batched["start"]) and batched["score"] == pytest.approx(alone["score"], abs=1e-5)
        post = lambda payload: client.post("/v1/answer", json=payload)  # noqa: E731
        for payload in ({"question": "why"}, {"context": "x"}, {"question": "why", "context": "x", "extra": 1}, {"items": "x"},
                        {"items": []}, {"items": [{"question": "why"}]}, {"items": [["why", "x"]]}, {"question": 1, "context": "x"},
                        {"question": " ", "context": "x"}, {"items": [{"question": "why", "context": ""}]}, ["why", "x"], {"texts": ["a"]}):
            assert_error(post(payload), 422, "invalid_request")
        assert '"items"[0].context' in assert_error(post({"items": [{"question": "why", "context": ""}]}), 422, "invalid_request")["message"]
        assert_error(post({"items": [{"question": "q", "context": "c"}] * 4}), 422, "too_many_texts")
        assert "at most 120" in assert_error(post({"question": "why", "context": "x" * 121}), 422, "text_too_long")["message"]
        assert_error(client.post("/v1/answer", content=b'{"question": "a\\ud800", "context": "b"}'), 422, "invalid_text")
        assert_error(client.post("/v1/answer", content=b"[1,"), 400, "invalid_json")

    # a model that reads no windows (stride 0) cannot read a context longer than its window: 422, not a fault
    no_windows = shutil.copytree(exported, tmp_path / "no-windows")
    manifest = json.loads((no_windows / "manifest.json").read_text())
    manifest["task_options"]["stride"] = 0
    (no_windows / "manifest.json").write_text(json.dumps(manifest))
    with client_for(no_windows) as client:
        wait_ready(client)
        error = assert_error(client.post("/v1/answer", json={"items": [{"question": q, "context": c} for q, c in PAIRS]}), 422, "unreadable_pair")
        assert error["message"].startswith('"items"[0]: the model cannot read this question and context')
        ok = client.post("/v1/answer", json={"question": "why", "context": "please help with my refund"})
        assert ok.status_code == 200 and ok.json()["answer"] == "refund"


def test_task_servers_import_no_torch(ner_models, qa_models):
    code = (
        "import sys, time\nfrom fastapi.testclient import TestClient\nimport slmkit.cli\nfrom slmkit.config import ServeConfig\n"
        "from slmkit.serve import create_app\n"
        f"for model, path, body in (({str(ner_models[1])!r}, '/v1/entities', {{'texts': ['my invoice']}}),\n"
        f"                          ({str(qa_models[1])!r}, '/v1/answer', {{'question': 'why', 'context': 'my refund'}})):\n"
        "    with TestClient(create_app(ServeConfig(model=model))) as c:\n"
        "        while c.get('/health/ready').status_code != 200: time.sleep(0.01)\n"
        "        assert c.post(path, json=body).status_code == 200\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\nassert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------------------ slm predict


def run_cli(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_predict_entities_as_json_lines_and_conll(ner_models, tmp_path):
    """The same entities from the trained and the exported model; CoNLL output in the scheme asked for."""
    trained, exported = ner_models
    outputs = []
    for model in (trained, exported):
        code, stdout, stderr = run_cli("predict", "--model", model, *TEXTS[:3])
        assert code == 0, stderr
        outputs.append([json.loads(line) for line in stdout.splitlines()])
    for rows in outputs:
        assert [r["text"] for r in rows] == TEXTS[:3]
        assert entity_spans([r["entities"] for r in rows]) == [[("PAY", 7, 13, "refund"), ("SHIP", 17, 31, "courier parcel")], [], []]
    texts = tmp_path / "texts.txt"
    texts.write_text("my invoice\nthe shipping parcel\n", encoding="utf-8")
    words = tmp_path / "words.conll"
    words.write_text("my\ninvoice\n\nthe\nshipping\nparcel\n", encoding="utf-8")
    for model in (trained, exported):
        code, _, stderr = run_cli("predict", "--model", model, "--input", words, "--output", tmp_path / "pred.conll", "--scheme", "bioes")
        assert code == 0, stderr
        assert (tmp_path / "pred.conll").read_text() == "my O\ninvoice S-PAY\n\nthe O\nshipping B-SHIP\nparcel E-SHIP\n"
        code, _, stderr = run_cli("predict", "--model", model, "--input", texts, "--output", tmp_path / "pred.conll", "--scheme", "iob1")
        assert (tmp_path / "pred.conll").read_text() == "my O\ninvoice I-PAY\n\nthe O\nshipping I-SHIP\nparcel I-SHIP\n"
        code, _, stderr = run_cli("predict", "--model", model, "--input", texts, "--output", tmp_path / "pred.jsonl")
        rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
        assert [[e["text"] for e in r["entities"]] for r in rows] == [["invoice"], ["shipping parcel"]]
    code, _, stderr = run_cli("predict", "--model", exported, "hello", "--output", tmp_path / "x.conll", "--scheme", "bilou")
    assert code == 2 and "--scheme 'bilou'" in stderr and "Traceback" not in stderr


def test_predict_answers_from_trained_and_exported_models(qa_models, tmp_path):
    trained, exported = qa_models
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": q, "context": c, **({"id": "a"} if i == 0 else {})}) + "\n" for i, (q, c) in enumerate(PAIRS)))
    found = []
    for model in (trained, exported):
        code, stdout, stderr = run_cli("predict", "--model", model, "--input", questions)
        assert code == 0, stderr
        found.append([json.loads(line) for line in stdout.splitlines()])
    assert [(r["id"], r["answer"]) for r in found[0][:2]] == [("a", "courier"), ("2", "refund")]
    for torch_row, onnx_row, (_, context) in zip(*found, PAIRS):
        assert (torch_row["answer"], torch_row["start"], torch_row["end"]) == (onnx_row["answer"], onnx_row["start"], onnx_row["end"])
        assert context[onnx_row["start"] : onnx_row["end"]] == onnx_row["answer"] and onnx_row["score"] == pytest.approx(torch_row["score"], abs=1e-4)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "why", "context": "x"}\n{"question": "why"}\n')
    for args in (["--input", bad], ["why"], []):
        code, _, stderr = run_cli("predict", "--model", exported, *args)
        assert code == 2 and "Traceback" not in stderr
    assert "bad.jsonl line 2" in run_cli("predict", "--model", exported, "--input", bad)[2]


# ------------------------------------------------------------------------------------------ the browser page


def test_ner_page_finds_the_runtimes_entities_in_the_browser(browser, ner_models, tmp_path):
    """`slm export-web` of an NER model: word split, tokenization and first-piece decoding in JavaScript give the
    Python runtime's entities (labels and code-point offsets identical, scores within 1e-4); the text box
    highlights them."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from slmkit.config import ExportWebConfig
    from slmkit.export_web import export_web
    from slmkit.runtime import TaskSession
    from slmkit.tasks.ner import text_entities

    exported = ner_models[1]
    site = export_web(ExportWebConfig(model=str(exported), out=str(tmp_path / "site"))).out
    texts = TEXTS + ["Héllo, my INVOICE… and the courier-parcel!", "😀 refund 😀 parcel", "日本 refund 中文", "refund\tparcel\n courier  parcel",
                     " ".join(["my refund"] * 40), "parcel" * 3, "\u200b refund \u0301parcel", "the password.username locked"]
    expected = text_entities(TaskSession(exported), texts)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        page.wait_for_function("document.querySelector('#status').className === 'ready'", timeout=60_000)
        got = page.evaluate("texts => window.slmkit.entities(texts)", texts)
        assert entity_spans(got) == entity_spans(expected)
        assert [e["score"] for t in got for e in t] == pytest.approx([e["score"] for t in expected for e in t], abs=1e-4)
        assert sum(map(len, expected)) >= 10 and "entity types" in page.inner_text("#status")
        page.fill("#text", TEXTS[0])
        page.wait_for_function("text => document.querySelector('#result').dataset.text === text", arg=TEXTS[0])
        marks = page.query_selector_all("#entities mark")
        assert [(m.get_attribute("data-label"), m.evaluate("m => m.firstChild.textContent")) for m in marks] == [("PAY", "refund"), ("SHIP", "courier parcel")]
        assert page.inner_text("#label") == "2 entities" and not errors
    finally:
        server.shutdown()


def test_slm_serve_process_answers_questions_and_stops_on_sigterm(qa_models):
    """The real command (uvicorn, a worker process) on a QA bundle: ready, answers, SIGTERM → exit 0."""
    import os
    import signal
    import time
    import urllib.error
    import urllib.request

    from test_serve import ROOT, free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen([sys.executable, "-m", "slmkit.cli", "serve", str(qa_models[1]), "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
        body = json.dumps({"items": [{"question": q, "context": c} for q, c in PAIRS[:2]]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/answer", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert [r["answer"] for r in json.loads(response.read())["results"]] == ["courier", "refund"]
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
        assert "Traceback" not in server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_docs_page_tries_the_answer_endpoint(browser, qa_models):
    """/docs of a QA server: the endpoint, its two request forms, and the "try it" form answering a question."""
    from test_serve import open_docs, uvicorn_in_a_thread

    with uvicorn_in_a_thread(qa_models[1]) as base:
        page = open_docs(browser, base)
        page.wait_for_selector("#status[data-loaded]", timeout=10_000)
        assert "Extractive question answering" in page.inner_text("#description")
        assert "/v1/answer" in page.inner_text("#toc") and "/v1/classify" not in page.inner_text("#toc")
        operation = page.locator("#op-post-v1-answer")
        operation.locator("textarea.body").fill(json.dumps({"question": PAIRS[1][0], "context": PAIRS[1][1]}))
        operation.locator("button.send").click()
        status = operation.locator(".try-status[data-status]")
        status.wait_for(timeout=10_000)
        assert status.get_attribute("data-status") == "200"
        assert json.loads(operation.locator(".try-body").inner_text())["answer"] == "refund"
        assert not page.problems, page.problems


def test_qa_page_answers_like_the_runtime_in_the_browser(browser, qa_models, tmp_path):
    """`slm export-web` of a QA model: question/context windows, token offsets and span decoding in JavaScript give
    the Python runtime's answers (text and code-point offsets identical, scores within 1e-4); the form shows them."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from slmkit.config import ExportWebConfig
    from slmkit.export_web import export_web
    from slmkit.runtime import TaskSession
    from slmkit.tasks.qa import pair_answers

    exported = qa_models[1]
    site = export_web(ExportWebConfig(model=str(exported), out=str(tmp_path / "site"))).out
    long = " ".join(["hello my problem is still not here today, why is the help not again?"] * 4) + " please my courier"
    pairs = PAIRS + [("why the problem", long), ("Why, the PROBLEM?", "Héllo: my refund... is (still) not here!"),
                     ("help with the problem", "my password, again 123 thanks"), ("why", "parcel"), ("why the problem " * 3, "my invoice today")]
    expected = [a[0] for a in pair_answers(TaskSession(exported), pairs)]
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        page.wait_for_function("document.querySelector('#status').className === 'ready'", timeout=60_000)
        got = page.evaluate("pairs => window.slmkit.answer(pairs)", [list(p) for p in pairs])
        assert [(g["answer"], g["start"], g["end"]) for g in got] == [(a.text, a.start, a.end) for a in expected]
        assert [g["score"] for g in got] == pytest.approx([a.score for a in expected], abs=1e-4)
        page.fill("#question", PAIRS[0][0])
        page.fill("#text", PAIRS[0][1])
        page.wait_for_function("text => document.querySelector('#result').dataset.text === text", arg=f"{PAIRS[0][0]}\n{PAIRS[0][1]}")
        assert page.inner_text("#label") == "courier" and page.inner_text("#entities mark") == "courier" and not errors
    finally:
        server.shutdown()
