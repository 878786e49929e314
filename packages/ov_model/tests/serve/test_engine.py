"""The continuous-batching engine: every request's tokens equal `LlavaOV.generate` for it alone,
whoever shares its batch and whenever it joins; cancellation, the bounded queue, close, errors
inside a step, asyncio streaming."""

import asyncio
import dataclasses
import threading
import time

import pytest
import torch

from ov_model.errors import InputError
from ov_model.serve import (
    Engine,
    EngineClosed,
    EngineRequest,
    QueueFull,
    SamplingSettings,
    slot_cache,
)
from ov_model.serve.slot_cache import SlotCache

IMAGE, START, END = 5, 3, 4  # the tiny preset's image, vision start and vision end token ids


def _request(prompt, images=None, **settings) -> EngineRequest:
    pixels, grid = images if images is not None else (None, None)
    return EngineRequest(prompt, pixels, grid, SamplingSettings(**settings))


def _alone(model, request: EngineRequest) -> list[int]:
    settings = request.settings
    return model.generate(
        [request.input_ids],
        pixel_values=request.pixel_values,
        image_grid_thw=request.image_grid_thw,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        seed=settings.seed or 0,
        stop_token_ids=settings.stop_token_ids,
    )[0]


def _mixed_requests(count: int, seed: int) -> list[EngineRequest]:
    """Prompts of 1-40 tokens, every third with one or two images, 2-30 new tokens."""
    generator = torch.Generator().manual_seed(seed)
    requests = []
    for index in range(count):
        length = int(torch.randint(1, 41, (1,), generator=generator))
        prompt = torch.randint(10, 500, (length,), generator=generator)
        images = None
        if index % 3 == 0:
            grids = [[1, 4, 4], [1, 2, 4]][: 1 + index % 2]
            parts = [torch.tensor([START, *[IMAGE] * (h * w // 4), END]) for _, h, w in grids]
            prompt = torch.cat([*parts, prompt])
            pixels = torch.randn(sum(h * w for _, h, w in grids), 588, generator=generator)
            images = (pixels, torch.tensor(grids))
        new = int(torch.randint(2, 31, (1,), generator=generator))
        requests.append(_request(prompt, images, max_new_tokens=new))
    return requests


def _wait_for_tokens(handle, count: int) -> None:
    for seen, _ in enumerate(handle.tokens(), start=1):
        if seen >= count:
            return


def test_greedy_answers_equal_generate_alone_when_requests_join_a_running_batch(
    make_model, monkeypatch
):
    monkeypatch.setattr(slot_cache, "INITIAL_COLUMNS", 16)  # the long request grows the cache
    model = make_model(21)
    requests = _mixed_requests(14, seed=0)
    long = _request(torch.randint(10, 500, (30,)), max_new_tokens=80)
    with Engine(model, max_batch=4) as engine:
        first = [engine.submit(r) for r in [long, *requests[:5]]]
        _wait_for_tokens(first[0], 3)  # the batch is running: the next requests join it
        second = [engine.submit(r) for r in requests[5:10]]
        _wait_for_tokens(second[-1], 1)
        third = [engine.submit(r) for r in requests[10:]]
        handles = first + second + third
        answers = [h.result(timeout=60) for h in handles]
    assert second[0].first_token_at < first[0].finished_at  # it joined the long one's batch
    expected = [_alone(model, r) for r in [long, *requests]]
    assert answers == expected
    assert all(h.finish_reason == "length" for h in handles)


def test_clients_on_many_threads_each_get_their_own_answer(make_model):
    model = make_model(31)
    requests = _mixed_requests(18, seed=6)
    for index in range(1, len(requests), 4):  # some sampled, seeded
        settings = SamplingSettings(max_new_tokens=9, temperature=0.8, seed=index)
        requests[index] = dataclasses.replace(requests[index], settings=settings)
    expected = [_alone(model, r) for r in requests]
    answers: dict[int, list[int]] = {}

    def client(indices: range) -> None:
        for index in indices:
            time.sleep(0.002 * (index % 5))  # arrive at different steps
            answers[index] = list(engine.submit(requests[index]).tokens())

    with Engine(model, max_batch=3) as engine:
        clients = [threading.Thread(target=client, args=(range(i, 18, 6),)) for i in range(6)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(timeout=60)
    assert [answers[i] for i in range(len(requests))] == expected


@pytest.mark.parametrize(
    "text_changes",
    [
        {"num_key_value_heads": 4},  # no grouped-query attention
        {"model_type": "qwen2", "attention_bias": True, "tie_word_embeddings": True},
    ],
    ids=["heads-equal-kv-heads", "qwen2-tied"],
)
def test_other_decoders_serve_the_answers_of_generate(make_model, text_changes):
    model = make_model(32, **text_changes)
    requests = _mixed_requests(6, seed=7)
    expected = [_alone(model, r) for r in requests]
    with Engine(model, max_batch=3) as engine:
        handles = [engine.submit(r) for r in requests]
        assert [h.result(timeout=30) for h in handles] == expected


def test_stop_tokens_end_a_request_and_are_its_last_token(make_model):
    model = make_model(22)
    prompt = torch.randint(10, 500, (9,))
    free = _alone(model, _request(prompt, max_new_tokens=12))
    stop = free[4]
    with Engine(model, max_batch=2) as engine:
        stopped = engine.submit(_request(prompt, max_new_tokens=12, stop_token_ids=(stop,)))
        other = engine.submit(_request(prompt, max_new_tokens=12))
        assert stopped.result(timeout=30) == free[: free.index(stop) + 1]
        assert other.result(timeout=30) == free
    assert (stopped.finish_reason, other.finish_reason) == ("stop", "length")


def test_seeded_sampling_equals_generate_alone_whatever_the_neighbours(make_model):
    model = make_model(23)
    prompts = [torch.randint(10, 500, (n,)) for n in (5, 11, 3)]
    sampled = [
        _request(p, max_new_tokens=15, temperature=1.3, top_p=0.9, top_k=20, seed=7 + i)
        for i, p in enumerate(prompts)
    ]
    greedy = _mixed_requests(4, seed=1)
    with Engine(model, max_batch=8) as engine:
        handles = [engine.submit(r) for r in [*sampled, *greedy]]
        answers = [h.result(timeout=30) for h in handles]
    assert answers == [_alone(model, r) for r in [*sampled, *greedy]]


def test_a_cancelled_request_frees_its_slot_and_leaves_the_others_unchanged(make_model):
    model = make_model(24)
    requests = _mixed_requests(3, seed=2)
    expected = [_alone(model, r) for r in requests[:2]]
    with Engine(model, max_batch=2) as engine:
        endless = engine.submit(_request(torch.randint(10, 500, (6,)), max_new_tokens=100_000))
        neighbour = engine.submit(requests[0])
        waiting = engine.submit(requests[1])  # no free slot until the endless one leaves
        _wait_for_tokens(endless, 3)
        assert not waiting.done
        endless.cancel()
        assert waiting.result(timeout=30) == expected[1]
        assert neighbour.result(timeout=30) == expected[0]
        assert len(endless.result(timeout=30)) >= 3
        assert endless.finish_reason == "cancelled"
        assert engine.pending == 0


def test_the_queue_is_bounded_and_close_cancels_what_is_pending(make_model):
    model = make_model(25)
    engine = Engine(model, max_batch=1, max_queue=1)
    handles = [engine.submit(_request(torch.tensor([11, 12]), max_new_tokens=3)) for _ in range(2)]
    with pytest.raises(QueueFull, match="max_batch 1 \\+ max_queue 1"):
        engine.submit(_request(torch.tensor([11, 12]), max_new_tokens=3))
    engine.close()
    assert [h.finish_reason for h in handles] == ["cancelled", "cancelled"]
    assert [h.result() for h in handles] == [[], []]
    with pytest.raises(EngineClosed):
        engine.submit(_request(torch.tensor([11, 12]), max_new_tokens=3))


def test_close_ends_running_and_waiting_requests_cancelled(make_model):
    model = make_model(26)
    engine = Engine(model, max_batch=1)
    engine.start()
    running = engine.submit(_request(torch.randint(10, 500, (4,)), max_new_tokens=100_000))
    waiting = engine.submit(_request(torch.randint(10, 500, (4,)), max_new_tokens=5))
    _wait_for_tokens(running, 2)
    engine.close()
    assert (running.finish_reason, waiting.finish_reason) == ("cancelled", "cancelled")
    assert waiting.result() == []


def test_an_error_in_a_decode_step_ends_its_rows_and_the_engine_keeps_serving(
    make_model, monkeypatch
):
    model = make_model(27)
    layer = model.language_model.layers[0]
    original = layer.forward_cached
    failures = iter([True])

    def flaky(*args, **kwargs):
        if next(failures, False):
            raise RuntimeError("device fell over")
        return original(*args, **kwargs)

    requests = _mixed_requests(3, seed=3)
    expected = [_alone(model, r) for r in requests]
    monkeypatch.setattr(layer, "forward_cached", flaky)
    engine = Engine(model, max_batch=4)
    failed = [engine.submit(r) for r in requests[:2]]  # prefilled together, then the step fails
    with engine:
        assert [h.result(timeout=30) for h in failed] == [e[:1] for e in expected[:2]]
        later = engine.submit(requests[2])
        assert later.result(timeout=30) == expected[2]
    assert [h.finish_reason for h in failed] == ["error", "error"]
    assert all(h.error == "RuntimeError: device fell over" for h in failed)
    assert later.finish_reason == "length"


def test_a_failing_prefill_ends_only_the_request_that_fails(make_model, monkeypatch):
    model = make_model(28)
    original = model.embed
    poison = 499

    def embed(ids, *args, **kwargs):
        if bool((ids == poison).any()):
            raise ValueError("cannot embed this prompt")
        return original(ids, *args, **kwargs)

    monkeypatch.setattr(model, "embed", embed)
    good = _mixed_requests(2, seed=4)
    bad = _request(torch.tensor([11, poison, 12]), max_new_tokens=4)
    engine = Engine(model, max_batch=4)
    handles = [engine.submit(r) for r in (good[0], bad, good[1])]  # one packed prefill
    with engine:
        answers = [h.result(timeout=30) for h in handles]
    assert answers[1] == []
    assert handles[1].finish_reason == "error"
    assert handles[1].error == "ValueError: cannot embed this prompt"
    assert [answers[0], answers[2]] == [_alone(model, r) for r in good]


def test_malformed_requests_are_refused_at_submit(make_model):
    engine = Engine(make_model(29))
    with pytest.raises(InputError, match="not empty"):
        engine.submit(_request(torch.tensor([], dtype=torch.int64), max_new_tokens=2))
    mismatched = (torch.randn(16, 588), torch.tensor([[1, 4, 4]]))
    with pytest.raises(InputError, match="placeholder"):
        engine.submit(
            _request(torch.tensor([START, IMAGE, IMAGE, END]), mismatched, max_new_tokens=2)
        )
    images = (torch.randn(8, 588), torch.tensor([[1, 4, 4]]))
    with pytest.raises(InputError, match="patches"):
        engine.submit(_request(torch.tensor([START, *[IMAGE] * 4, END]), images, max_new_tokens=2))
    with pytest.raises(InputError, match="outside the vocabulary"):
        engine.submit(_request(torch.tensor([11, 10**6]), max_new_tokens=2))
    with pytest.raises(InputError, match="top_p"):
        SamplingSettings(max_new_tokens=2, top_p=0.0)
    engine.close()


def test_async_and_threaded_readers_see_the_same_stream(make_model):
    model = make_model(30)
    request = _mixed_requests(1, seed=5)[0]

    async def read(handle) -> list[int]:
        return [token async for token in handle.atokens()]

    with Engine(model) as engine:
        handle = engine.submit(request)
        seen: list[int] = []
        reader = threading.Thread(target=lambda: seen.extend(handle.tokens()))
        reader.start()
        streamed = asyncio.run(read(handle))
        reader.join(timeout=30)
    assert streamed == seen == _alone(model, request)


def test_slot_cache_removal_moves_the_last_row_into_the_freed_one():
    cache = SlotCache(num_layers=1, slots=3)
    writer, slots = cache.prompt_writer([2, 3, 1], "cpu")
    keys = torch.arange(6, dtype=torch.float32).reshape(6, 1, 1)  # token i's key is i
    writer.scatter(0, keys, keys, slots)
    cache.remove(0)
    assert cache.lengths == [1, 3]
    assert cache.keys[0][:2, 0, :3, 0].tolist() == [
        [5, 1, 0],
        [2, 3, 4],
    ]  # column 1 of row 0: stale, masked
    assert cache.decode_mask("cpu")[:, 0, 0].tolist() == [
        [True, True, False, False],
        [True, True, True, True],
    ]
