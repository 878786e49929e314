"""HTTP load test of `ov-model serve`: 32 concurrent clients x 4 requests on 127.0.0.1.

Run: `uv run --no-sync pytest packages/ov_model/benchmarks/bench_serve_http.py -s` (torch is
put on one intra-op thread for the run: on a shared CPU, OpenMP threads fighting the server's
other threads cost far more than they give; see bench_generation.py). bench_serve.py measures
the engine alone; this measures the whole server: JSON parsing, image decoding, the processor,
the engine, incremental detokenisation and the HTTP responses.

The case writes a checkpoint folder, starts the app under uvicorn in a thread (max_batch 8,
max_queue 64), and sends 128 greedy requests (text prompts of 4-40 words, every third with a
data: URL image, 16-64 new tokens, seeded): first one at a time (the reference answers and the
one-at-a-time throughput), then from 32 client threads at once, each sending its 4 requests one
after another. Asserted: every request answered 200 (nothing lost, no 429), each answer and its
usage equal to its one-at-a-time answer. Printed: generated tokens/s of both runs and their ratio,
p50/p95 latency of a request (send to full answer) in the concurrent run.

CPU case: the tiny preset's vision tower with bench_serve.py's CPU decoder (384 wide, 6 layers,
16 query heads over 2 kv heads, vocabulary 8,192), fp32. Measured on this machine's shared CPU
(2 cores, one torch thread, 2026-12-03): 5,035 tokens in 128 requests; one at a time 52 tokens/s
(latency p50 0.65 s); 32 clients x 4 at once 224 tokens/s (latency p50 5.2 s, p95 6.6 s, queueing
included: 32 clients share 8 batch slots): 4.3x the throughput, every answer equal.

With `--benchmark-disable` (CI) the case runs once, untimed, on the tiny model with 4-12 new
tokens per request: the same 32 x 4 requests, the same assertions.
"""

import base64
import contextlib
import dataclasses
import io
import json
import random
import statistics
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")

import uvicorn
from PIL import Image

from ov_model.model import LlavaOV
from ov_model.processor import OVProcessor
from ov_model.serve.app import ServeSettings, create_app
from ov_model.serve.engine import Engine
from ov_model.tiny import create_tiny_model, tiny_config

CLIENTS = 32
REQUESTS_PER_CLIENT = 4
TEXT = (
    "red blue green square circle triangle cat dog sofa window picture colour what where is "
    "the a of on in near two small large bright dark describe count"
)
WORDS = TEXT.split()
CPU_DECODER = {
    "vocab_size": 8192,
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_hidden_layers": 6,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "head_dim": 32,
}


def write_checkpoint(folder: Path, decoder: dict | None) -> None:
    """A tiny checkpoint (tokenizer trained on WORDS); with `decoder`, its text model replaced
    by a random decoder of those sizes."""
    _, processor = create_tiny_model(folder, [" ".join(WORDS)] * 16)
    if decoder is not None:
        config = tiny_config(processor.tokenizer)
        config = config.replace(text=dataclasses.replace(config.text, **decoder))
        torch.manual_seed(0)
        LlavaOV(config).eval().save_pretrained(folder)


def _png(seed: int) -> str:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (rng.integers(24, 64), rng.integers(24, 64), 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"


def request_bodies(count: int, new_tokens: tuple[int, int], seed: int) -> list[dict]:
    """Greedy chat requests: text prompts, every third with an image, seeded lengths."""
    rng = random.Random(seed)
    bodies = []
    for index in range(count):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40)))
        content: list[dict] = [{"type": "text", "text": text}]
        if index % 3 == 0:
            content.insert(0, {"type": "image_url", "image_url": {"url": _png(seed + index)}})
        bodies.append(
            {
                "messages": [{"role": "user", "content": content}],
                "max_tokens": rng.randint(*new_tokens),
                "temperature": 0,
            }
        )
    return bodies


@contextlib.contextmanager
def running_server(folder: Path) -> Iterator[int]:
    """The app over `folder` under uvicorn on 127.0.0.1 (a free port) in a thread; its port."""
    processor = OVProcessor.from_pretrained(folder)
    model = LlavaOV.from_pretrained(folder)
    settings = ServeSettings(
        model_name=folder.name,
        max_new_tokens=128,
        max_context=model.config.text.max_position_embeddings,
    )
    with Engine(model, max_batch=8, max_queue=64) as engine:
        app = create_app(engine, processor, settings)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        try:
            yield server.servers[0].sockets[0].getsockname()[1]
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def post(port: int, body: dict) -> tuple[int, dict, float]:
    """(status, JSON answer, seconds) of one request on its own connection."""
    started = time.perf_counter()
    connection = HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request(
            "POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"}
        )
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    return response.status, answer, time.perf_counter() - started


def _summary(results: list[tuple[int, dict, float]], seconds: float) -> dict:
    generated = sum(answer["usage"]["completion_tokens"] for _, answer, _ in results)
    latencies = sorted(latency for _, _, latency in results)
    return {
        "seconds": seconds,
        "generated": generated,
        "tokens_per_s": generated / seconds,
        "p50": statistics.median(latencies),
        "p95": statistics.quantiles(latencies, n=20, method="inclusive")[-1],
    }


def load_test(folder: Path, bodies: list[dict]) -> dict:
    """One at a time, then CLIENTS threads at once; both runs' answers and timings."""
    with running_server(folder) as port:
        post(port, bodies[0])  # warm-up
        started = time.perf_counter()
        alone = [post(port, body) for body in bodies]
        alone_seconds = time.perf_counter() - started
        together: list[tuple[int, dict, float] | None] = [None] * len(bodies)

        def client(first: int) -> None:
            for index in range(first, first + REQUESTS_PER_CLIENT):
                together[index] = post(port, bodies[index])

        threads = [
            threading.Thread(target=client, args=(number * REQUESTS_PER_CLIENT,))
            for number in range(CLIENTS)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        together_seconds = time.perf_counter() - started
    return {
        "alone": alone,
        "together": together,
        "alone_s": alone_seconds,
        "together_s": together_seconds,
    }


def check_and_report(result: dict, benchmark, label: str | None) -> None:
    alone, together = result["alone"], result["together"]
    assert len(together) == CLIENTS * REQUESTS_PER_CLIENT
    assert all(entry is not None for entry in together), "a request got no answer"
    assert [status for status, _, _ in alone] == [200] * len(alone)
    assert [status for status, _, _ in together] == [200] * len(together)
    for (_, expected, _), (_, answer, _) in zip(alone, together, strict=True):
        assert answer["choices"][0]["message"] == expected["choices"][0]["message"]
        assert answer["usage"] == expected["usage"]
    if label is None:
        return
    one = _summary(alone, result["alone_s"])
    many = _summary(together, result["together_s"])
    ratio = many["tokens_per_s"] / one["tokens_per_s"]
    benchmark.extra_info.update(one_at_a_time=one, concurrent=many, ratio=ratio)
    print(f"\n{label}: {many['generated']} tokens in {len(together)} requests")
    print(f"  one at a time: {one['tokens_per_s']:,.0f} tokens/s, latency p50 {one['p50']:.2f} s")
    print(
        f"  {CLIENTS} clients x {REQUESTS_PER_CLIENT}: {many['tokens_per_s']:,.0f} tokens/s, "
        f"latency p50 {many['p50']:.2f} s, p95 {many['p95']:.2f} s"
    )
    print(f"  ratio (concurrent / one at a time): {ratio:.2f}")


def test_http_load_32_clients_x_4_requests(benchmark, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        count = CLIENTS * REQUESTS_PER_CLIENT
        folder = tmp_path / "served"
        if benchmark.disabled:  # CI: tiny model, short answers, untimed
            write_checkpoint(folder, None)
            bodies = request_bodies(count, (4, 12), seed=0)
            result = benchmark.pedantic(load_test, args=(folder, bodies), rounds=1)
            check_and_report(result, benchmark, None)
            return
        write_checkpoint(folder, CPU_DECODER)
        bodies = request_bodies(count, (16, 64), seed=0)
        result = benchmark.pedantic(load_test, args=(folder, bodies), rounds=1)
        check_and_report(result, benchmark, "CPU, HTTP, 32 clients x 4 requests, max_batch 8")
    finally:
        torch.set_num_threads(threads)
