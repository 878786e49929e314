"""Serving throughput: 32 concurrent requests through `ov_model.serve.Engine`, batched
continuously (max_batch 8) against one request at a time (max_batch 1).

Run: `OMP_NUM_THREADS=1 uv run --no-sync pytest packages/ov_model/benchmarks/bench_serve.py -s`
(one intra-op thread: see bench_generation.py for why on a shared machine). The case submits all
32 requests at once (32 clients arriving together) to an engine, waits for every answer, and
prints, for each setting: generated tokens/s over the whole run (first submit to last answer),
the p50/p95 latency of a request (submit to last token, waiting in the queue included) and the
p50 time to its first token; then the ratio of the tokens/s. For reference a third setting,
static batching: waves of 8 requests in arrival order through `LlavaOV.generate`, each wave
running until its longest answer is done before the next starts (what continuous batching
replaces: finished rows wait for the wave, waiting requests for the next wave). The settings run
twice, alternating, the fastest run of each kept. Every answer is asserted equal to its answer
one at a time (greedy, fp32), so batching buys speed without changing a token.

Requests: prompts of 32-256 tokens, 16-96 new tokens each (uniform, seeded), so rows finish at
different steps and waiting requests join the running batch as slots free up.

CPU case: the decoder of bench_generation.py's CPU case (384 wide, 6 layers, 16 query heads over 2
kv heads, head_dim 32, MLP 1,536, vocabulary 8,192), fp32. Measured on this machine's shared CPU
(torch 2.15, one thread), 1,793 generated tokens, two invocations (each the faster of its two
rounds):
- one at a time: 63 / 72 tokens/s, latency p50 16.4 / 14.1 s, p95 27.4 / 23.8 s, first token
  p50 15.7 / 13.4 s (the queue: request k waits for the k - 1 before it);
- batched (max_batch 8): 224 / 213 tokens/s, latency p50 5.0 / 5.6 s, p95 7.7 / 8.2 s, first
  token p50 3.1 / 3.4 s;
- static waves of 8: 189 / 190 tokens/s, latency p50 5.5 / 5.6 s, p95 9.0 / 9.0 s, first token
  p50 4.3 / 4.5 s;
- ratio batched / one at a time 3.55 / 2.97; batched / static waves 1.18 / 1.12.
A decode step of this model reads its 64 MB of fp32 weights whatever the batch (13 ms at batch 1,
about as much as `LlavaOV.generate` alone: the engine adds no measurable overhead per token), so
batching pays off by sharing that read. What keeps the ratio under 8 is the prefill, which
batching does not shrink (about 3 s for the 32 prompts, measured alone: some 40% of the batched
run, and each request that joins pauses the running rows for its own), and the tail, where fewer
than 8 requests are left.

GPU case (`gpu` marker, not yet run: no GPU was available to this session): bench_generation.py's
GPU decoder (2048 wide, 8 layers, 32 heads over 4 kv heads, head_dim 128) in bf16, prompts of
200-1,600 tokens, 64-256 new tokens. Answers are asserted equal in fp32 on a few requests first;
in bf16 a batch of other shapes rounds differently and a random model's near ties flip tokens,
so there the number of equal answers is reported, not asserted.

With `--benchmark-disable` (CI) the case runs once, untimed, on a tiny model with images in a
third of the prompts: all three settings must give every request the tokens `LlavaOV.generate` gives
it alone.
"""

import dataclasses
import statistics
import time

import pytest
import torch

from ov_model.config import PRESETS
from ov_model.model import LlavaOV
from ov_model.serve import Engine, EngineRequest, SamplingSettings

IMAGE, START, END = 5, 3, 4  # the tiny preset's image, vision start and vision end token ids

CPU_DECODER = {
    "vocab_size": 8192,
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_hidden_layers": 6,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "head_dim": 32,
}


def decoder_model(text_changes: dict, seed: int = 0) -> LlavaOV:
    """The tiny preset (its small vision tower) with another decoder, random weights, eval."""
    base = PRESETS["tiny"]
    torch.manual_seed(seed)
    return LlavaOV(base.replace(text=dataclasses.replace(base.text, **text_changes))).eval()


def text_requests(
    count: int, prompt_range: tuple[int, int], new_range: tuple[int, int], vocab: int, seed: int
) -> list[EngineRequest]:
    """Greedy requests with prompt and answer lengths uniform in the given ranges."""
    generator = torch.Generator().manual_seed(seed)
    requests = []
    for _ in range(count):
        length = int(torch.randint(prompt_range[0], prompt_range[1] + 1, (1,), generator=generator))
        new = int(torch.randint(new_range[0], new_range[1] + 1, (1,), generator=generator))
        prompt = torch.randint(10, vocab, (length,), generator=generator)
        requests.append(EngineRequest(prompt, None, None, SamplingSettings(max_new_tokens=new)))
    return requests


def requests_with_images(count: int, seed: int) -> list[EngineRequest]:
    """Tiny-model requests of mixed lengths, every third with a 4x4-patch image up front."""
    requests = text_requests(count, (1, 30), (2, 20), 500, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    for index in range(0, count, 3):
        request = requests[index]
        image = torch.tensor([START, *[IMAGE] * 4, END])
        requests[index] = dataclasses.replace(
            request,
            input_ids=torch.cat([image, request.input_ids]),
            pixel_values=torch.randn(16, 588, generator=generator),
            image_grid_thw=torch.tensor([[1, 4, 4]]),
        )
    return requests


def _timings(answers: list[list[int]], submitted: float, first: list[float], done: list[float]):
    seconds = max(done) - submitted
    latencies = sorted(t - submitted for t in done)
    generated = sum(len(answer) for answer in answers)
    return {
        "answers": answers,
        "seconds": seconds,
        "tokens_per_s": generated / seconds,
        "generated": generated,
        "p50": statistics.median(latencies),
        "p95": statistics.quantiles(latencies, n=20, method="inclusive")[-1],
        "first_token_p50": statistics.median(t - submitted for t in first),
    }


def serve_all(model: LlavaOV, requests: list[EngineRequest], max_batch: int) -> dict:
    """Submit every request at once to a fresh engine; answers and timings."""
    _synchronize(model)
    with Engine(model, max_batch=max_batch, max_queue=len(requests)) as engine:
        handles = [engine.submit(request) for request in requests]
        answers = [handle.result() for handle in handles]
    first = [h.first_token_at for h in handles]
    done = [h.finished_at for h in handles]
    return _timings(answers, handles[0].submitted_at, first, done)  # type: ignore[arg-type]


def serve_static(model: LlavaOV, requests: list[EngineRequest], batch: int) -> dict:
    """Static batching, for reference: waves of `batch` requests in arrival order through
    `LlavaOV.generate`, each wave generating until its longest answer is done (a shorter answer
    is cut to its own length, ending when its last token came) before the next wave starts."""
    _synchronize(model)
    submitted = time.perf_counter()
    answers: list[list[int]] = []
    first: list[float] = []
    done: list[float] = []
    for start in range(0, len(requests), batch):
        wave = requests[start : start + batch]
        wanted = [r.settings.max_new_tokens for r in wave]
        times: list[list[float]] = [[] for _ in wave]
        with_images = [r for r in wave if r.pixel_values is not None]
        images = {}
        if with_images:
            images = {
                "pixel_values": torch.cat([r.pixel_values for r in with_images]),  # type: ignore[misc]
                "image_grid_thw": torch.cat([r.image_grid_thw for r in with_images]),  # type: ignore[misc]
            }
        outputs = model.generate(
            [r.input_ids for r in wave],
            max_new_tokens=max(wanted),
            callback=lambda row, _token: times[row].append(time.perf_counter()),  # noqa: B023
            **images,
        )
        for output, count, stamps in zip(outputs, wanted, times, strict=True):
            answers.append(output[:count])
            first.append(stamps[0])
            done.append(stamps[count - 1])
    return _timings(answers, submitted, first, done)


def _synchronize(model: LlavaOV) -> None:
    if model.head_weight.is_cuda:
        torch.cuda.synchronize()


def compare(model: LlavaOV, requests: list[EngineRequest], rounds: int) -> dict:
    """One at a time (engine, max_batch 1), batched (engine, max_batch 8) and static waves of 8,
    alternating, `rounds` each; the fastest run of each."""
    runs = {
        "one_at_a_time": lambda: serve_all(model, requests, 1),
        "batched": lambda: serve_all(model, requests, 8),
        "static_waves": lambda: serve_static(model, requests, 8),
    }
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for name, run in runs.items():
            result = run()
            if name not in best or result["seconds"] < best[name]["seconds"]:
                best[name] = result
    return best


def _report(benchmark, label: str, result: dict) -> None:
    ratio = result["batched"]["tokens_per_s"] / result["one_at_a_time"]["tokens_per_s"]
    benchmark.extra_info["ratio"] = ratio
    print(f"\n{label}: {result['batched']['generated']} tokens")
    for name in ("one_at_a_time", "batched", "static_waves"):
        run = result[name]
        benchmark.extra_info[name] = {k: v for k, v in run.items() if k != "answers"}
        print(
            f"  {name}: {run['tokens_per_s']:,.0f} tokens/s, latency p50 {run['p50']:.2f} s, "
            f"p95 {run['p95']:.2f} s, first token p50 {run['first_token_p50']:.2f} s"
        )
    static = result["batched"]["tokens_per_s"] / result["static_waves"]["tokens_per_s"]
    benchmark.extra_info["ratio_to_static"] = static
    print(f"  ratio (batched / one at a time): {ratio:.2f}; batched / static waves: {static:.2f}")


def test_serving_batched_vs_one_at_a_time_cpu(benchmark):
    if benchmark.disabled:  # CI: a tiny model, images in a third of the prompts, untimed
        model = decoder_model({}, seed=1)
        requests = requests_with_images(12, seed=0)
        result = benchmark.pedantic(compare, args=(model, requests, 1), rounds=1)
        alone = [
            model.generate(
                [r.input_ids],
                pixel_values=r.pixel_values,
                image_grid_thw=r.image_grid_thw,
                max_new_tokens=r.settings.max_new_tokens,
            )[0]
            for r in requests
        ]
        answers = [result[name]["answers"] for name in ("one_at_a_time", "batched", "static_waves")]
        assert answers == [alone] * 3
        return
    model = decoder_model(CPU_DECODER)
    requests = text_requests(32, (32, 256), (16, 96), CPU_DECODER["vocab_size"], seed=0)
    result = benchmark.pedantic(compare, args=(model, requests, 2), rounds=1)
    assert result["batched"]["answers"] == result["one_at_a_time"]["answers"]
    assert result["static_waves"]["answers"] == result["one_at_a_time"]["answers"]
    _report(benchmark, "CPU, 32 concurrent requests, max_batch 8 vs 1", result)


GPU_DECODER = {
    "vocab_size": 32768,
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_hidden_layers": 8,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
}


@pytest.mark.gpu
def test_serving_batched_vs_one_at_a_time_bf16_gpu(benchmark):
    model = decoder_model(GPU_DECODER).to("cuda")
    vocab = GPU_DECODER["vocab_size"]
    few = text_requests(12, (20, 300), (8, 32), vocab, seed=1)
    check = compare(model, few, 1)
    assert check["batched"]["answers"] == check["one_at_a_time"]["answers"]
    model = model.to(torch.bfloat16)
    requests = text_requests(32, (200, 1600), (64, 256), vocab, seed=0)
    rounds = 1 if benchmark.disabled else 2
    result = benchmark.pedantic(compare, args=(model, requests, rounds), rounds=1)
    wanted = [r.settings.max_new_tokens for r in requests]
    assert all([len(a) for a in run["answers"]] == wanted for run in result.values())
    if not benchmark.disabled:
        pairs = zip(result["batched"]["answers"], result["one_at_a_time"]["answers"], strict=True)
        equal = sum(a == b for a, b in pairs)
        benchmark.extra_info["equal_answers"] = equal
        _report(benchmark, "CUDA bf16, 32 concurrent requests, max_batch 8 vs 1", result)
        print(f"  answers equal to their answer one at a time: {equal} of {len(requests)}")
