"""Generation: cached greedy equals uncached argmax (also batched, with images), each row of a
batch equals its run alone, stop tokens, streaming, seeded sampling."""

import pytest
import torch

from ov_model.errors import InputError


def _argmax_without_cache(model, prompt, steps, pixel_values=None, grid=None):
    ids = prompt.clone()
    out = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(ids[None], pixel_values, grid).logits[0, -1]
            token = int(logits.argmax())
            out.append(token)
            ids = torch.cat([ids, torch.tensor([token])])
    return out


def test_cached_greedy_equals_uncached_argmax(make_model):
    model = make_model(11)
    prompt = torch.randint(10, 500, (7,))
    assert model.generate([prompt], max_new_tokens=12)[0] == _argmax_without_cache(
        model, prompt, 12
    )


def test_cached_greedy_with_an_image_equals_uncached(make_model):
    model = make_model(12)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.tensor([20, 21, 3, *([5] * 6), 4, 22, 23])
    pixels, grid = torch.randn(24, 588, generator=generator), torch.tensor([[1, 4, 6]])
    cached = model.generate([prompt], pixel_values=pixels, image_grid_thw=grid, max_new_tokens=8)
    assert cached[0] == _argmax_without_cache(model, prompt, 8, pixels, grid)


def test_batched_left_padded_prompts_give_each_row_its_own_output(make_model):
    model = make_model(13)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(10, 500, (n,), generator=generator) for n in (3, 9, 5, 1)]
    batched = model.generate(prompts, max_new_tokens=10)
    alone = [model.generate([p], max_new_tokens=10)[0] for p in prompts]
    assert batched == alone


def test_stop_token_ends_a_row_and_is_kept(make_model):
    model = make_model(14)
    prompt = torch.randint(10, 500, (6,))
    free = model.generate([prompt], max_new_tokens=10)[0]
    stop = free[3]
    stopped = model.generate([prompt], max_new_tokens=10, stop_token_ids=(stop,))[0]
    assert stopped == free[: free.index(stop) + 1]


def test_streaming_callback_sees_every_token_in_order(make_model):
    model = make_model(15)
    prompts = [torch.randint(10, 500, (4,)), torch.randint(10, 500, (6,))]
    seen: dict[int, list[int]] = {0: [], 1: []}
    outputs = model.generate(prompts, max_new_tokens=5, callback=lambda r, t: seen[r].append(t))
    assert [seen[0], seen[1]] == outputs


def test_sampling_is_seeded_and_respects_top_k(make_model):
    model = make_model(16)
    prompt = torch.randint(10, 500, (5,))
    settings = {"max_new_tokens": 20, "temperature": 1.5, "top_k": 3, "seed": 7}
    first = model.generate([prompt], **settings)[0]
    assert first == model.generate([prompt], **settings)[0]
    assert first != model.generate([prompt], **{**settings, "seed": 8})[0]
    with torch.no_grad():  # every sampled token was among the 3 most likely at its step
        ids = prompt.clone()
        for token in first:
            top3 = model(ids[None]).logits[0, -1].topk(3).indices.tolist()
            assert token in top3
            ids = torch.cat([ids, torch.tensor([token])])


def test_top_p_tiny_keeps_only_the_most_likely_token(make_model):
    model = make_model(17)
    prompt = torch.randint(10, 500, (5,))
    greedy = model.generate([prompt], max_new_tokens=6)[0]
    nucleus = model.generate([prompt], max_new_tokens=6, temperature=1.0, top_p=1e-6, seed=3)[0]
    assert nucleus == greedy


def test_invalid_settings_are_refused(make_model):
    model = make_model(18)
    with pytest.raises(InputError, match="top_p must be in"):
        model.generate([torch.tensor([1, 2])], top_p=0.0)


def _mixed_batch(seed: int):
    """8 prompts of mixed lengths, every other one with one image (4x4 patches -> 4 tokens)."""
    generator = torch.Generator().manual_seed(seed)
    prompts, pixels = [], []
    for index, length in enumerate((3, 17, 9, 30, 1, 12, 24, 6)):
        text = torch.randint(10, 500, (length,), generator=generator)
        if index % 2 == 0:
            text = torch.cat([text[:1], torch.tensor([3, 5, 5, 5, 5, 4]), text[1:]])
            pixels.append(torch.randn(16, 588, generator=generator))
        prompts.append(text)
    return prompts, pixels


def _images_of(prompts, pixels, rows):
    """pixel_values / image_grid_thw of the prompts `rows` (images in prompt order)."""
    with_image = [row for row in range(0, len(prompts), 2) if row in rows]
    if not with_image:
        return {}
    return {
        "pixel_values": torch.cat([pixels[row // 2] for row in with_image]),
        "image_grid_thw": torch.tensor([[1, 4, 4]] * len(with_image)),
    }


def test_batch_of_8_with_images_gives_each_row_its_output_alone(make_model):
    model = make_model(19)
    prompts, pixels = _mixed_batch(0)
    batched = model.generate(
        prompts, max_new_tokens=10, **_images_of(prompts, pixels, range(len(prompts)))
    )
    alone = [
        model.generate([prompt], max_new_tokens=10, **_images_of(prompts, pixels, [row]))[0]
        for row, prompt in enumerate(prompts)
    ]
    assert batched == alone


def test_batched_greedy_with_images_equals_full_recompute_without_cache(make_model):
    model = make_model(20)
    prompts, pixels = _mixed_batch(1)
    batched = model.generate(
        prompts, max_new_tokens=8, **_images_of(prompts, pixels, range(len(prompts)))
    )
    for row, prompt in enumerate(prompts):
        images = _images_of(prompts, pixels, [row])
        expected = _argmax_without_cache(
            model, prompt, 8, images.get("pixel_values"), images.get("image_grid_thw")
        )
        assert batched[row] == expected, row


def test_rows_that_stop_leave_the_batch_without_changing_the_others(make_model):
    model = make_model(21)
    generator = torch.Generator().manual_seed(2)
    prompts = [torch.randint(10, 500, (n,), generator=generator) for n in (5, 11, 2, 8)]
    free = model.generate(prompts, max_new_tokens=12)
    stop = free[1][2]  # row 1 stops at its third token, others wherever `stop` occurs
    stopped = model.generate(prompts, max_new_tokens=12, stop_token_ids=(stop,))
    for row in range(len(prompts)):
        expected = free[row][: free[row].index(stop) + 1] if stop in free[row] else free[row]
        assert stopped[row] == expected


def test_batched_sampling_is_deterministic_for_a_seed(make_model):
    model = make_model(22)
    prompts, pixels = _mixed_batch(3)
    settings = {"max_new_tokens": 10, "temperature": 1.0, "top_p": 0.9, "seed": 5}
    images = _images_of(prompts, pixels, range(len(prompts)))
    first = model.generate(prompts, **settings, **images)
    assert first == model.generate(prompts, **settings, **images)
    assert first != model.generate(prompts, **{**settings, "seed": 6}, **images)


def test_bfloat16_generation_with_images_runs_on_cpu(make_model):
    model = make_model(23).to(torch.bfloat16)
    prompts, pixels = _mixed_batch(4)
    images = _images_of(prompts, pixels, range(len(prompts)))
    outputs = model.generate(prompts, max_new_tokens=5, **images)
    assert [len(o) for o in outputs] == [5] * len(prompts)


def test_an_empty_prompt_is_refused(make_model):
    model = make_model(24)
    with pytest.raises(InputError, match="prompt 1 is empty"):
        model.generate([torch.tensor([7, 8]), torch.tensor([], dtype=torch.int64)])


def test_a_cache_that_grows_while_rows_leave_gives_the_same_tokens(make_model, monkeypatch):
    """Answers longer than the cache's first reserve: the buffers double (copying what was
    written) as rows finish, and every row's tokens are those of a cache reserved in full."""
    from ov_model import generation

    model = make_model(17)
    prompts, pixels = _mixed_batch(5)
    images = _images_of(prompts, pixels, range(len(prompts)))
    free = model.generate(prompts, max_new_tokens=24, **images)
    settings = {"max_new_tokens": 24, "stop_token_ids": (free[1][5],), **images}
    full = model.generate(prompts, **settings)
    assert len({len(tokens) for tokens in full}) > 1  # some rows leave early
    monkeypatch.setattr(generation, "CACHE_RESERVE_NEW_TOKENS", 1)
    assert model.generate(prompts, **settings) == full
