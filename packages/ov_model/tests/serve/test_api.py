"""The HTTP API over raw HTTP: every bad input is a 4xx with an OpenAI-style body naming the
problem and the server keeps serving; streaming format, stop strings, disconnects, 429."""

import base64
import contextlib
import json
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPResponse
from urllib.parse import urlsplit

import pytest

pytest.importorskip("fastapi")

from ov_model.model import LlavaOV
from ov_model.processor import OVProcessor
from ov_model.serve import app as app_module
from ov_model.serve.app import AnswerText, create_app
from ov_model.serve.engine import Engine, EngineRequest, SamplingSettings

GOOD = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 3, "temperature": 0}


@dataclass
class _Response:
    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode()

    def json(self):
        return json.loads(self.content)


class _Client:
    """A minimal HTTP/1.1 client on the standard library (no httpx in the environment)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port

    def _send(self, method, path, json_body=None, content=None, headers=None):
        connection = HTTPConnection(self.host, self.port, timeout=60)
        headers = dict(headers or {})
        if json_body is not None:
            content = json.dumps(json_body).encode()
            headers.setdefault("content-type", "application/json")
        connection.request(method, path, body=content, headers=headers)
        return connection, connection.getresponse()

    def request(self, method, path, json=None, content=None, headers=None) -> _Response:
        connection, response = self._send(method, path, json, content, headers)
        with contextlib.closing(connection):
            body = response.read()
            headers = {key.lower(): value for key, value in response.getheaders()}
            return _Response(response.status, headers, body)

    def get(self, path) -> _Response:
        return self.request("GET", path)

    def post(self, path, json=None, content=None, headers=None) -> _Response:
        return self.request("POST", path, json, content, headers)

    @contextlib.contextmanager
    def stream(self, path, json) -> Iterator[tuple[HTTPResponse, Iterator[str]]]:
        """The response and an iterator over its non-empty lines; the connection closes on exit."""
        connection, response = self._send("POST", path, json)

        def lines():
            while line := response.readline():
                if line.strip():
                    yield line.decode().rstrip("\r\n")

        with contextlib.closing(connection):
            yield response, lines()


@pytest.fixture(scope="module")
def api(served):
    return _Client(served.url)


def _post(api, body):
    return api.post("/v1/chat/completions", json=body)


def _image_request(url: str) -> dict:
    return {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "what is it?"},
                ],
            }
        ],
        "max_tokens": 2,
    }


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb() -> bytes:
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    body = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    return b"\x89PNG\r\n\x1a\n" + body + _chunk(b"IEND", b"")


def _data(payload: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(payload).decode()}"


IMAGE_PART = {"type": "image_url", "image_url": {"url": "cat.png"}}

# (name, body, status, param, code, words in the message)
BAD_REQUESTS = [
    ("no messages", {"max_tokens": 2}, 400, "messages", "invalid_value", "Field required"),
    ("empty messages", {"messages": []}, 400, "messages", "invalid_value", "at least 1"),
    ("unknown field", {**GOOD, "logprobs": True}, 400, "logprobs", "unknown_field", "logprobs"),
    (
        "unknown field in a part",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a", "x": 1}]}]},
        400,
        "messages[0].content[0].x",
        "unknown_field",
        "unknown field",
    ),
    (
        "unknown role",
        {"messages": [{"role": "robot", "content": "hi"}]},
        400,
        "messages[0].role",
        "invalid_value",
        "robot",
    ),
    (
        "unknown part type",
        {"messages": [{"role": "user", "content": [{"type": "video", "video": "v"}]}]},
        400,
        "messages[0].content[0]",
        "invalid_value",
        "video",
    ),
    (
        "image from the assistant",
        {"messages": [{"role": "assistant", "content": [IMAGE_PART]}]},
        400,
        "messages[0]",
        "invalid_value",
        "only accepted in user messages",
    ),
    (
        "user message without content",
        {"messages": [{"role": "user", "content": None}]},
        400,
        "messages[0]",
        "invalid_value",
        "a user message needs content",
    ),
    (
        "image part without its url",
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        400,
        "messages[0].content[0].image_url",
        "invalid_value",
        "Field required",
    ),
    ("empty stop string", {**GOOD, "stop": ""}, 400, None, "invalid_value", "must not be empty"),
    ("n above 1", {**GOOD, "n": 3}, 400, "n", "invalid_value", "only n = 1"),
    ("negative temperature", {**GOOD, "temperature": -1}, 400, "temperature", "invalid_value", ""),
    ("top_p 0", {**GOOD, "top_p": 0}, 400, "top_p", "invalid_value", "greater than 0"),
    ("max_tokens 0", {**GOOD, "max_tokens": 0}, 400, "max_tokens", "invalid_value", ""),
    ("five stop strings", {**GOOD, "stop": list("abcde")}, 400, None, "invalid_value", "at most 4"),
    (
        "stream_options without stream",
        {**GOOD, "stream_options": {"include_usage": True}},
        400,
        None,
        "invalid_value",
        "stream: true",
    ),
    (
        "invalid base64",
        _image_request("data:image/png;base64,@@@@"),
        400,
        "messages[0].content[0].image_url.url",
        "invalid_base64",
        "invalid base64",
    ),
    (
        "not an image",
        _image_request(_data(b"%PDF-1.4 definitely not a picture")),
        400,
        "messages[0].content[0].image_url.url",
        "invalid_image",
        "not a decodable image",
    ),
    (
        "decompression bomb",
        _image_request(_data(_bomb())),
        400,
        "messages[0].content[0].image_url.url",
        "image_too_large",
        "10000000000",
    ),
    (
        "remote URL",
        _image_request("http://127.0.0.1:9/cat.png"),
        400,
        "messages[0].content[0].image_url.url",
        "remote_image_url",
        "remote image URLs are not fetched",
    ),
    (
        "path outside the image root",
        _image_request("../../etc/passwd"),
        400,
        "messages[0].content[0].image_url.url",
        "image_path_outside_root",
        "outside the server's --image-root",
    ),
    (
        "too many images",
        {"messages": [{"role": "user", "content": [IMAGE_PART] * 4}]},
        400,
        "messages",
        "too_many_images",
        "at most 3",
    ),
    (
        "prompt over the context",
        {"messages": [{"role": "user", "content": "red blue green " * 400}]},
        400,
        "messages",
        "context_length_exceeded",
        "context of 512 tokens",
    ),
    (
        "prompt + max_tokens over the context",
        {**GOOD, "max_tokens": 600},
        400,
        "max_tokens",
        "context_length_exceeded",
        "over the model's context",
    ),
    (
        "max_tokens over the server's limit",
        {"messages": GOOD["messages"], "max_completion_tokens": 300},
        400,
        "max_completion_tokens",
        "max_tokens_too_large",
        "--max-new-tokens",
    ),
]


def _check_error(response, status, param, code, words):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    assert words in error["message"]


@pytest.mark.parametrize(
    ("body", "status", "param", "code", "words"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_keeps_serving(
    api, body, status, param, code, words
):
    _check_error(_post(api, body), status, param, code, words)
    assert _post(api, GOOD).status_code == 200


def test_an_image_over_the_pixel_limit_is_refused(api, make_png, make_data_url):
    response = _post(api, _image_request(make_data_url(make_png(width=200, height=150))))
    param = "messages[0].content[0].image_url.url"
    _check_error(response, 400, param, "image_too_large", "200 x 150 = 30000 pixels")


def test_invalid_json_and_a_non_object_body_are_refused(api):
    response = api.post(
        "/v1/chat/completions",
        content=b'{"messages": [',
        headers={"content-type": "application/json"},
    )
    _check_error(response, 400, None, "invalid_json", "invalid JSON body")
    response = api.post("/v1/chat/completions", json=[1, 2])
    _check_error(response, 400, None, "invalid_request", "JSON object")


def test_a_body_over_the_size_limit_gets_413_unread(api):
    response = api.post(
        "/v1/chat/completions",
        content=b"x" * (2**20 + 1),
        headers={"content-type": "application/json"},
    )
    _check_error(response, 413, None, "request_too_large", "at most 1048576")


def test_unknown_routes_and_methods_get_openai_bodies(api):
    response = api.get("/v1/nothing")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    response = api.get("/v1/chat/completions")
    assert response.status_code == 405
    assert "GET" in response.json()["error"]["message"]


def test_health_models_and_the_chat_page(api, served):
    assert api.get("/health").json() == {"status": "ok"}
    models = api.get("/v1/models").json()
    assert models["object"] == "list"
    assert [model["id"] for model in models["data"]] == [served.model_name]
    page = api.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text.lower()


def _events(lines) -> list[str]:
    return [line.removeprefix("data: ") for line in lines]


def test_the_stream_is_server_sent_events_ending_with_done(api, served):
    body = {**GOOD, "max_tokens": 10, "stream": True, "stream_options": {"include_usage": True}}
    plain = _post(api, {**GOOD, "max_tokens": 10}).json()
    with api.stream("/v1/chat/completions", body) as (response, lines):
        assert response.status == 200
        assert response.getheader("content-type").startswith("text/event-stream")
        events = _events(lines)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks[:-1])
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == plain["usage"]


def test_a_stop_string_ends_the_answer_before_it_and_frees_the_slot(api, served):
    plain = _post(api, {**GOOD, "max_tokens": 24}).json()["choices"][0]["message"]["content"]
    assert len(plain) > 6, plain
    stop = plain[len(plain) // 2 : len(plain) // 2 + 3]
    expected = plain[: plain.index(stop)]
    answer = _post(api, {**GOOD, "max_tokens": 24, "stop": ["@@never@@", stop]}).json()
    assert answer["choices"][0]["message"]["content"] == expected
    assert answer["choices"][0]["finish_reason"] == "stop"
    handle = served.handles[-1]
    assert handle.result(timeout=10) is not None
    assert handle.finish_reason in ("cancelled", "stop", "length")
    body = {**GOOD, "max_tokens": 24, "stop": stop, "stream": True}
    with api.stream("/v1/chat/completions", body) as (_, lines):
        chunks = [json.loads(event) for event in _events(lines)[:-1]]
    streamed = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert streamed == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def _wait_until_idle(engine) -> None:
    deadline = time.monotonic() + 10
    while engine.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.pending == 0


def test_a_client_that_disconnects_mid_stream_cancels_its_request(api, served):
    body = {**GOOD, "max_tokens": 256, "stream": True}
    with api.stream("/v1/chat/completions", body) as (_, lines):
        assert next(lines).startswith("data: ")
        assert next(lines).startswith("data: ")
        handle = served.handles[-1]
    tokens = handle.result(timeout=10)  # ends once the server notices the closed connection
    assert handle.finish_reason == "cancelled"
    assert len(tokens) < 256
    _wait_until_idle(served.engine)


def test_a_client_that_disconnects_before_a_plain_answer_cancels_its_request(served, monkeypatch):
    monkeypatch.setattr(app_module, "DISCONNECT_POLL_SECONDS", 0.01)
    parts = urlsplit(served.url)
    connection = HTTPConnection(parts.hostname, parts.port, timeout=60)
    count = len(served.handles)
    body = json.dumps({**GOOD, "max_tokens": 256}).encode()
    connection.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    deadline = time.monotonic() + 10
    while len(served.handles) == count and time.monotonic() < deadline:
        time.sleep(0.005)
    connection.close()
    handle = served.handles[count]
    tokens = handle.result(timeout=10)
    assert handle.finish_reason == "cancelled"
    assert len(tokens) < 256
    _wait_until_idle(served.engine)


def test_concurrent_requests_each_get_their_sequential_answer(api, served):
    prompts = [f"question number {index}: what colour?" for index in range(6)]
    sequential = [
        _post(api, {**GOOD, "messages": [{"role": "user", "content": p}], "max_tokens": 8}).json()
        for p in prompts
    ]
    answers: dict[int, dict] = {}

    def ask(index: int) -> None:
        body = {**GOOD, "messages": [{"role": "user", "content": prompts[index]}], "max_tokens": 8}
        answers[index] = _post(api, body).json()

    threads = [threading.Thread(target=ask, args=(index,)) for index in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for index, expected in enumerate(sequential):
        assert answers[index]["choices"] == expected["choices"]
        assert answers[index]["usage"] == expected["usage"]


def test_a_full_queue_answers_429(model_dir, serve_settings, running_server):
    model = LlavaOV.from_pretrained(model_dir)
    processor = OVProcessor.from_pretrained(model_dir)
    engine = Engine(model, max_batch=1, max_queue=0)  # never started: nothing leaves the queue
    waiting = engine.submit(
        EngineRequest(
            input_ids=processor.prompt("hi").input_ids,
            pixel_values=None,
            image_grid_thw=None,
            settings=SamplingSettings(max_new_tokens=2),
        )
    )
    try:
        with running_server(create_app(engine, processor, serve_settings)) as url:
            response = _post(_Client(url), GOOD)
        assert response.status_code == 429
        error = response.json()["error"]
        assert error["type"] == "rate_limit_error"
        assert error["code"] == "queue_full"
        assert "queue is full" in error["message"]
    finally:
        engine.close()
    assert waiting.finish_reason == "cancelled"


class _CharacterDecoder:
    """A processor stand-in whose tokens are characters (ids are code points)."""

    def decode(self, ids):
        return "".join(map(chr, ids))


@pytest.mark.parametrize(
    ("stops", "pieces", "text"),
    [
        ((), ["a", "b", "c"], "abc"),
        (("bc",), ["a", "", ""], "a"),  # "b" is held back: it may start "bc"
        (("xyz",), ["a", "b", "c"], "abc"),
        (("cd",), ["a", "b", ""], "abc"),  # held, then released at the end
    ],
)
def test_answer_text_holds_back_what_may_start_a_stop_string(stops, pieces, text):
    answer = AnswerText(_CharacterDecoder(), stops)  # type: ignore[arg-type]
    shown = [answer.add(ord(character)) for character in "abc"]
    assert shown == pieces
    shown.append(answer.finish())
    assert "".join(shown) == text
    assert answer.text == text
