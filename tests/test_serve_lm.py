"""`slm serve` on a causal LM: the real server (uvicorn on a loopback port, in a thread) driven by the official
`openai` client — completions and chat, streamed and not, greedy answers equal to `generate_text`, stop strings,
concurrent streams, a dropped stream stopping its generation, the deadline, the queue bound and bad requests."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tokenizers import Tokenizer
from typer.testing import CliRunner

from conftest import LM_FAMILIES, make_causal_lm

openai = pytest.importorskip("openai", reason="the openai client is in the test extra: pip install 'slmkit[test]'")

import slmkit.serve_lm as serve_lm  # noqa: E402
from slmkit.cli import app as cli  # noqa: E402
from slmkit.config import ServeConfig  # noqa: E402
from slmkit.errors import UserError  # noqa: E402
from slmkit.serve import create_app  # noqa: E402
from slmkit.serve_lm import LM_ERROR_CODES  # noqa: E402

PACE = {"s": 0.0}  # seconds each forward pass sleeps: slows the tiny model down where a test needs time to act


class _PacedStepper:
    def __init__(self, inner):
        self.inner = inner
        self.context_length = inner.context_length

    def start(self, prompt_ids):
        time.sleep(PACE["s"])
        return self.inner.start(prompt_ids)

    def step(self, token_id):
        time.sleep(PACE["s"])
        return self.inner.step(token_id)


@pytest.fixture(scope="module")
def paced_loader():
    """serve_lm.load_lm with every new stepper paced by PACE (the server runs in this process)."""
    real = serve_lm.load_lm

    def load(directory, threads):
        model = real(directory, threads)
        new_stepper = model.new_stepper
        model.new_stepper = lambda: _PacedStepper(new_stepper())
        return model

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serve_lm, "load_lm", load)
        yield


@pytest.fixture(autouse=True)
def unpaced():
    PACE["s"] = 0.0
    yield
    PACE["s"] = 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, name: str):
        self.url, self.name = url, name
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-dummy", max_retries=0, timeout=30)

    def metric(self, series: str) -> float:
        text = httpx.get(f"{self.url}/metrics").text
        return float(re.search(rf"^{re.escape(series)} (\S+)$", text, re.M).group(1))


@contextlib.contextmanager
def running(model: Path, **settings):
    """`slm serve`'s app for `model` (through serve.create_app, which picks the LM API) under uvicorn on loopback."""
    import uvicorn

    port = free_port()
    app = create_app(ServeConfig(model=str(model), port=port, **settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health/ready").status_code == 200:
                break
        assert time.monotonic() < deadline and thread.is_alive(), "the server never became ready"
        time.sleep(0.05)
    try:
        yield Server(url, model.resolve().name)
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server(tiny_lm, paced_loader):
    with running(tiny_lm, max_sequences=2, max_tokens=64, queue_size=8, timeout_s=20) as s:
        yield s


@pytest.fixture(scope="module")
def reference(tiny_lm):
    """generate_text run directly on the model (what `slm generate` runs): the answers the server must give."""
    from slmkit.generate import GenerationConfig, generate_text, special_ids
    from slmkit.lm import TorchStepper, load_causal_lm

    model, tokenizer = load_causal_lm(tiny_lm)

    def generate(prompt: str | list[int], **settings) -> tuple[str, dict]:
        info: dict = {}
        text = "".join(generate_text(TorchStepper(model), tokenizer.backend_tokenizer, prompt, GenerationConfig(**settings), info=info,
                                     **special_ids(tiny_lm)))
        return text, info

    return generate


PROMPT = "please help with my parcel"


# ------------------------------------------------------------------------------------------ answers


def test_models_list_names_the_served_model(server):
    (model,) = server.client.models.list().data
    assert model.id == server.name and model.owned_by == "slmkit"
    body = httpx.get(f"{server.url}/v1/models").json()
    assert body["data"][0]["backend"] == "torch" and body["data"][0]["context_window"] == 128 and body["data"][0]["chat_template"] is True
    assert body["limits"]["max_sequences"] == 2 and body["limits"]["max_tokens"] == 64
    openapi = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models"} <= set(openapi["paths"])
    chat = openapi["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert chat["properties"]["messages"]["items"]["properties"]["role"]["enum"] == ["system", "developer", "user", "assistant"]
    assert "#/$defs/" not in json.dumps(openapi)  # every reference resolves inside the document (the /docs page follows them)
    assert {"404", "422", "429", "503"} <= set(openapi["paths"]["/v1/completions"]["post"]["responses"])


def test_greedy_completion_equals_generate_text_streamed_and_not(server, reference):
    expected, info = reference(PROMPT, max_new_tokens=12, temperature=0.0)
    assert expected and info["completion_tokens"] == 12  # the random model runs to the limit: finish_reason "length"
    answer = server.client.completions.create(model=server.name, prompt=PROMPT, max_tokens=12, temperature=0)
    (choice,) = answer.choices
    assert choice.text == expected and choice.finish_reason == "length" and answer.object == "text_completion"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (info["prompt_tokens"], 12, info["prompt_tokens"] + 12)

    chunks = list(server.client.completions.create(model=server.name, prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
                                                   stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1  # streamed piece by piece, not in one go
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12 and all(c.usage is None for c in chunks[:-1])
    assert server.metric('slm_requests_total{endpoint="/v1/completions",status="200"}') >= 2


def test_chat_uses_the_chat_template_streamed_and_not(server, reference, tiny_lm):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "where is my parcel"}]
    rendered = "<s>system: be brief</s><s>user: where is my parcel</s><s>assistant:"  # conftest's LM_CHAT_TEMPLATE
    ids = Tokenizer.from_file(str(tiny_lm / "tokenizer.json")).encode(rendered, add_special_tokens=False).ids  # the template wrote <s>
    expected, info = reference(ids, max_new_tokens=10, temperature=0.0)
    answer = server.client.chat.completions.create(model=server.name, messages=messages, max_tokens=10, temperature=0)
    assert answer.object == "chat.completion" and answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == expected and answer.choices[0].finish_reason == info["finish_reason"]
    assert answer.usage.prompt_tokens == info["prompt_tokens"] and answer.usage.completion_tokens == info["completion_tokens"]

    chunks = list(server.client.chat.completions.create(model=server.name, messages=messages, max_completion_tokens=10, temperature=0, stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == info["finish_reason"] and chunks[-1].choices[0].delta.content is None


def test_wire_format_is_server_sent_events_ending_with_done(server):
    body = {"model": server.name, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    assert json.loads(events[-3][6:])["choices"][0]["finish_reason"] == "length"


def test_stop_strings_cut_the_text_before_them(server, reference):
    full, _ = reference(PROMPT, max_new_tokens=24, temperature=0.0)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), full
    cut = full[: full.index(stop)]
    one = server.client.completions.create(model=server.name, prompt=PROMPT, max_tokens=24, temperature=0, stop=stop)
    assert one.choices[0].text == cut and one.choices[0].finish_reason == "stop" and one.usage.completion_tokens < 24
    several = list(server.client.completions.create(model=server.name, prompt=PROMPT, max_tokens=24, temperature=0, stop=["\u2603 never", stop], stream=True))
    assert "".join(c.choices[0].text for c in several) == cut and several[-1].choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats_and_top_p_is_taken(server, reference):
    settings = dict(model=server.name, prompt=PROMPT, max_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    first = server.client.completions.create(**settings).choices[0].text
    assert first == server.client.completions.create(**settings).choices[0].text
    assert first == reference(PROMPT, max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7)[0]


def test_readme_example_runs_as_written(server, capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- serve-lm-example -->\s*```python\n(.*?)```", readme, re.S)
    assert block, "README lost its serve-lm-example block"
    exec(block.group(1).replace("http://127.0.0.1:8000/v1", f"{server.url}/v1"), {})
    printed = capsys.readouterr().out
    assert " 8 length\n" in printed  # the completion's text (random: any characters), its token count and finish_reason


# ------------------------------------------------------------------------------------------ the queue


def test_two_streams_progress_together(server, reference):
    prompts = [PROMPT, "my invoice is wrong again"]
    expected = [reference(p, max_new_tokens=24, temperature=0.0)[0] for p in prompts]
    PACE["s"] = 0.02  # 24 tokens: about half a second per stream

    def stream(prompt: str) -> tuple[list[float], str]:
        times, text = [], ""
        for chunk in server.client.completions.create(model=server.name, prompt=prompt, max_tokens=24, temperature=0, stream=True):
            if chunk.choices and chunk.choices[0].text:
                times.append(time.monotonic())
                text += chunk.choices[0].text
        return times, text

    with ThreadPoolExecutor(2) as pool:
        (a, text_a), (b, text_b) = pool.map(stream, prompts)
    assert [text_a, text_b] == expected  # two KV caches over one model: no cross-talk
    assert len(a) > 3 and len(b) > 3
    assert b[0] < a[-1] and a[0] < b[-1]  # each began before the other ended: neither waited for the other
    assert min(a[-1], b[-1]) - max(a[0], b[0]) > 0.1  # and overlapped (each takes 0.48 s or more)


def test_a_dropped_stream_stops_its_generation(server, reference):
    assert reference(PROMPT, max_new_tokens=60, temperature=0.0)[1]["completion_tokens"] == 60  # greedy runs the whole way
    PACE["s"] = 0.02  # 60 tokens would take about 1.2 s
    before = server.metric("slm_generated_tokens_total")
    stream = server.client.completions.create(model=server.name, prompt=PROMPT, max_tokens=60, temperature=0, stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()  # the client drops the connection
    time.sleep(0.3)
    settled = server.metric("slm_generated_tokens_total")
    time.sleep(0.5)
    assert server.metric("slm_generated_tokens_total") == settled  # no longer growing ...
    assert settled - before < 30  # ... and stopped well before the 60 asked
    assert server.metric("slm_active_sequences") == 0


def test_a_client_leaving_before_the_answer_stops_its_generation(server, reference):
    assert reference(PROMPT, max_new_tokens=60, temperature=0.0)[1]["completion_tokens"] == 60  # greedy runs the whole way
    PACE["s"] = 0.02
    before = server.metric("slm_generated_tokens_total")
    with pytest.raises(httpx.TimeoutException):
        body = {"model": server.name, "prompt": PROMPT, "max_tokens": 60, "temperature": 0}
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=0.3)
    time.sleep(0.3)
    settled = server.metric("slm_generated_tokens_total")
    time.sleep(0.4)
    assert server.metric("slm_generated_tokens_total") == settled and settled - before < 40


def test_the_deadline_and_the_queue_bound(tiny_lm, paced_loader):
    """One sequence, two admitted requests, a 0.8 s deadline, 0.6 s per forward pass: the first request holds the
    sequence until its check at 1.2 s; the second waits for it past its own deadline (503); a third is refused."""
    with running(tiny_lm, max_sequences=1, max_tokens=64, queue_size=2, timeout_s=0.8) as server:
        PACE["s"] = 0.6

        def streamed() -> list:
            return list(server.client.completions.create(model=server.name, prompt=PROMPT, max_tokens=60, temperature=0, stream=True,
                                                         stream_options={"include_usage": True}))

        def waiting() -> Exception:
            with pytest.raises(openai.InternalServerError) as raised:
                server.client.completions.create(model=server.name, prompt=PROMPT, max_tokens=4)
            return raised.value

        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(streamed)
            time.sleep(0.1)
            second = pool.submit(waiting)
            time.sleep(0.1)
            with pytest.raises(openai.RateLimitError) as refused:  # two requests admitted: the queue is full
                server.client.completions.create(model=server.name, prompt=PROMPT, max_tokens=4)
            chunks, timed_out = first.result(), second.result()
    assert refused.value.status_code == 429 and int(refused.value.response.headers["retry-after"]) >= 1
    assert refused.value.body["code"] == "queue_full"
    assert timed_out.status_code == 503 and timed_out.body["code"] == "timeout"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert 1 <= chunks[-1].usage.completion_tokens <= 2  # cut by the deadline, not by max_tokens


# ------------------------------------------------------------------------------------------ bad requests


def assert_api_error(raised, status: int, code: str, param: str | None = "any") -> None:
    error = raised.value
    assert error.status_code == status, error
    assert code in LM_ERROR_CODES and error.code == code and error.message
    body = error.response.json()["error"]
    assert set(body) == {"code", "message", "type", "param"} and body["type"] in ("invalid_request_error", "server_error")
    if param != "any":
        assert body["param"] == param


def test_bad_requests_get_openai_style_errors(server):
    client, name = server.client, server.name
    cases = [
        (openai.NotFoundError, 404, "model_not_found", "model", dict(model="gpt-4", prompt=PROMPT)),
        (openai.UnprocessableEntityError, 422, "too_many_tokens", "max_tokens", dict(model=name, prompt=PROMPT, max_tokens=65)),
        (openai.UnprocessableEntityError, 422, "unsupported", "n", dict(model=name, prompt=PROMPT, n=2)),
        (openai.UnprocessableEntityError, 422, "invalid_request", "temperature", dict(model=name, prompt=PROMPT, temperature=3)),
        (openai.UnprocessableEntityError, 422, "invalid_request", "stop", dict(model=name, prompt=PROMPT, stop=["a", "b", "c", "d", "e"])),
        (openai.UnprocessableEntityError, 422, "unsupported", "best_of", dict(model=name, prompt=PROMPT, extra_body={"best_of": 3})),
        (openai.UnprocessableEntityError, 422, "unsupported", "tools", dict(model=name, prompt=PROMPT, extra_body={"tools": []})),
        (openai.UnprocessableEntityError, 422, "context_length_exceeded", "max_tokens", dict(model=name, prompt="parcel " * 80, max_tokens=64)),
    ]
    for error, status, code, param, request in cases:
        with pytest.raises(error) as raised:
            client.completions.create(**request)
        assert_api_error(raised, status, code, param)
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.chat.completions.create(model=name, messages=[])
    assert_api_error(raised, 422, "invalid_request", "messages")
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.chat.completions.create(model=name, messages=[{"role": "wizard", "content": "hi"}])
    assert_api_error(raised, 422, "invalid_request")
    raw = [  # bodies the client library would not send
        (b'{"model": "%s", "prompt": "\\ud800"}' % name.encode(), 422, "invalid_text"),  # a lone surrogate
        (b'{"model": "%s", "prompt": ["a", "b"]}' % name.encode(), 422, "unsupported"),  # one prompt per request
        (b'{"model": "%s", "prompt": [1, 2, 3]}' % name.encode(), 422, "invalid_request"),  # token ids
        (b'{"model": "%s", "prompt": "hi", "max_tokens": -1}' % name.encode(), 422, "invalid_request"),
        (b'[1, 2]', 422, "invalid_request"),
        (b'{"prompt": "hi"}', 422, "invalid_request"),
        (b'{"model": "%s", "prompt": "%s"}' % (name.encode(), b"x" * 1_000_001), 413, "body_too_large"),
    ]
    for body, status, code in raw:
        response = httpx.post(f"{server.url}/v1/completions", content=body, headers={"content-type": "application/json"})
        assert response.status_code == status and response.json()["error"]["code"] == code, (body[:60], response.text)
    not_json = httpx.post(f"{server.url}/v1/completions", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
    wrong = httpx.post(f"{server.url}/v1/classify", json={"texts": ["hi"]})
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "wrong_task"
    assert server.client.completions.create(model=name, prompt=PROMPT, max_tokens=2).choices[0].finish_reason  # still serving


def test_a_model_without_a_chat_template_refuses_chat_only(tiny_lm, tmp_path, paced_loader):
    bare = shutil.copytree(tiny_lm, tmp_path / "bare")
    (bare / "chat_template.jinja").unlink()
    with running(bare, max_tokens=8) as server:
        with pytest.raises(openai.UnprocessableEntityError) as raised:
            server.client.chat.completions.create(model=server.name, messages=[{"role": "user", "content": "hi"}])
        assert server.client.completions.create(model=server.name, prompt=PROMPT, max_tokens=3, temperature=0).usage.completion_tokens == 3  # greedy: a sampled EOS would end it sooner
    assert_api_error(raised, 422, "no_chat_template")


def test_slm_serve_checks_the_lm_directory_in_one_line(tiny_lm, tmp_path):
    from slmkit.serve import serve

    broken = shutil.copytree(tiny_lm, tmp_path / "no-tokenizer")
    (broken / "tokenizer.json").unlink()
    with pytest.raises(UserError, match=r"no-tokenizer: missing tokenizer\.json"):
        serve(ServeConfig(model=str(broken)))
    with pytest.raises(UserError, match="max_sequences must be at least 1"):
        serve(ServeConfig(model=str(tiny_lm), max_sequences=0))


def test_api_key_guards_generation_but_not_health(tiny_lm, tmp_path, paced_loader):
    key = tmp_path / "key.txt"
    key.write_text("s3cret-key-for-tests\n")
    with running(tiny_lm, max_tokens=8, api_key_file=str(key)) as server:
        wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.completions.create(model=server.name, prompt=PROMPT, max_tokens=2)
        right = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret-key-for-tests", max_retries=0)
        assert right.completions.create(model=server.name, prompt=PROMPT, max_tokens=2, temperature=0).usage.completion_tokens == 2
        assert httpx.get(f"{server.url}/health/ready").status_code == 200


@pytest.mark.parametrize("family", [f for f in LM_FAMILIES if f != "llama"])  # llama: tiny_lm, served above
def test_every_family_streams_its_greedy_chat_answer(family, tmp_path, paced_loader):
    from slmkit.generate import GenerationConfig, generate_text, special_ids
    from slmkit.lm import TorchStepper, load_causal_lm

    directory = make_causal_lm(tmp_path / family, family)
    model, tokenizer = load_causal_lm(directory)
    prompt = tokenizer.backend_tokenizer.encode("<s>user: where is my parcel</s><s>assistant:", add_special_tokens=False).ids
    expected = "".join(generate_text(TorchStepper(model), tokenizer.backend_tokenizer, prompt,
                                     GenerationConfig(max_new_tokens=8, temperature=0.0), **special_ids(directory)))
    with running(directory, max_tokens=8) as server:
        chunks = list(server.client.chat.completions.create(model=server.name, messages=[{"role": "user", "content": "where is my parcel"}],
                                                            temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected and chunks[-1].choices[0].finish_reason


def test_cli_serve_offers_the_lm_settings_and_refuses_in_one_line(tiny_lm, tmp_path):
    runner = CliRunner()
    shown = runner.invoke(cli, ["serve", "--help"]).stdout
    assert "--max-sequences" in shown and "--max-tokens" in shown
    broken = shutil.copytree(tiny_lm, tmp_path / "no-weights")
    (broken / "model.safetensors").unlink()
    for args, message in [([str(broken)], "missing model.safetensors"), ([str(tiny_lm), "--max-tokens", "0"], "setting max_tokens must be at least 1")]:
        result = runner.invoke(cli, ["serve", *args])
        assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.output


# ------------------------------------------------------------------------------------------ an ONNX LM export


@pytest.fixture(scope="module")
def onnx_lm(tiny_lm, tmp_path_factory) -> Path:
    """`tiny_lm` exported to ONNX with its KV cache (slm export of a causal LM)."""
    import slmkit.runtime
    from slmkit.config import ExportConfig
    from slmkit.export import export

    if not hasattr(slmkit.runtime, "LMGenerator"):
        pytest.skip("the ONNX LM runtime (slmkit.runtime.LMGenerator) is not in this tree")
    return export(ExportConfig(model=str(tiny_lm), out=str(tmp_path_factory.mktemp("lm-onnx") / "tiny-lm-onnx"))).out


def test_an_onnx_export_serves_concurrent_streams_like_the_runtime(onnx_lm):
    from slmkit.generate import GenerationConfig
    from slmkit.runtime import LMGenerator

    prompts = [PROMPT, "my invoice is wrong again"]
    generator = LMGenerator(onnx_lm)
    expected = [generator.complete(p, GenerationConfig(max_new_tokens=20, temperature=0.0)) for p in prompts]
    with running(onnx_lm, max_sequences=2, max_tokens=20) as server:
        def stream(prompt: str) -> str:
            chunks = server.client.completions.create(model=server.name, prompt=prompt, max_tokens=20, temperature=0, stream=True)
            return "".join(c.choices[0].text for c in chunks)

        with ThreadPoolExecutor(2) as pool:  # two sequences at once over one ONNX Runtime session: each keeps its own cache
            assert list(pool.map(stream, prompts * 2)) == expected * 2
        chat = server.client.chat.completions.create(model=server.name, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0)
        model = httpx.get(f"{server.url}/v1/models").json()["data"][0]
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 4  # the export carries the chat template
    assert model["backend"] == "onnx" and model["context_window"] == 128


def test_an_onnx_lm_server_process_imports_no_torch(onnx_lm):
    import subprocess
    import sys

    code = (
        "import sys, time\nfrom fastapi.testclient import TestClient\nimport slmkit.cli\nfrom slmkit.config import ServeConfig\n"
        "from slmkit.serve import create_app\n"
        f"with TestClient(create_app(ServeConfig(model={str(onnx_lm)!r}))) as c:\n"
        "    while c.get('/health/ready').status_code != 200: time.sleep(0.01)\n"
        f"    r = c.post('/v1/completions', json={{'model': {onnx_lm.name!r}, 'prompt': 'my parcel', 'max_tokens': 4}})\n"
        "    assert r.status_code == 200 and r.json()['usage']['completion_tokens'] > 0, r.text\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\nassert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
