"""ov_model benchmarks: packed vs padded training steps, and generation speed.

Run: `uv run pytest packages/ov_model/benchmarks -s`. Each case prints real (non-padding) tokens
per second; the packed/padded ratio is the number to read. The tiny preset runs on CPU; the
4B-shaped case (8 decoder layers, bf16) needs a GPU and is skipped without one.
"""

import pytest
import torch

from ov_model.config import PRESETS
from ov_model.model import LlavaOV
from ov_model.packing import IGNORE_INDEX

IMAGE = 5  # image_token_id of the tiny preset


def realistic_samples(count: int, seed: int, max_text: int, grids: list[tuple[int, int]]):
    """(ids, labels, pixels or None, grid or None) with a long-tailed length mix."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(count):
        length = int(torch.distributions.LogNormal(4.0, 0.8).sample().clamp(8, max_text))
        text = torch.randint(10, 400, (length,), generator=generator)
        if index % 3 == 2:  # a third text-only
            samples.append((text, text.clone(), None, None))
            continue
        h, w = grids[index % len(grids)]
        image_tokens = h * w // 4
        ids = torch.cat([text[:4], torch.full((image_tokens,), IMAGE), text[4:]])
        labels = ids.clone()
        labels[: 4 + image_tokens] = IGNORE_INDEX
        pixels = torch.randn(h * w, 588, generator=generator)
        samples.append((ids, labels, pixels, torch.tensor([[1, h, w]])))
    return samples


def packed_inputs(samples):
    lengths = [len(s[0]) for s in samples]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    pixels = [s[2] for s in samples if s[2] is not None]
    grids = [s[3] for s in samples if s[3] is not None]
    return {
        "input_ids": torch.cat([s[0] for s in samples])[None],
        "labels": torch.cat([s[1] for s in samples])[None],
        "cu_seqlens": cu,
        "pixel_values": torch.cat(pixels),
        "image_grid_thw": torch.cat(grids),
    }


def padded_inputs(samples):
    """Right padding to the longest sample: causal attention keeps pads out of real tokens."""
    width = max(len(s[0]) for s in samples)
    ids = torch.zeros(len(samples), width, dtype=torch.int64)
    labels = torch.full((len(samples), width), IGNORE_INDEX)
    for row, sample in enumerate(samples):
        ids[row, : len(sample[0])] = sample[0]
        labels[row, : len(sample[1])] = sample[1]
    inputs = packed_inputs(samples)
    return {
        "input_ids": ids,
        "labels": labels,
        "pixel_values": inputs["pixel_values"],
        "image_grid_thw": inputs["image_grid_thw"],
    }


def _step(model, inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs, return_logits=False)
    out.loss.backward()
    return out


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_training_step_tiny_cpu(benchmark, layout):
    torch.manual_seed(0)
    model = LlavaOV(PRESETS["tiny"]).train()
    samples = realistic_samples(16, 0, 400, [(8, 8), (4, 12), (16, 8)])
    inputs = packed_inputs(samples) if layout == "packed" else padded_inputs(samples)
    benchmark.pedantic(_step, args=(model, inputs), rounds=5, warmup_rounds=1)
    if benchmark.disabled:  # --benchmark-disable: ran once as a smoke test, nothing timed
        return
    real = sum(len(s[0]) for s in samples)
    rate = real / benchmark.stats.stats.min
    benchmark.extra_info.update(real_tokens=real, computed_tokens=inputs["input_ids"].numel())
    print(
        f"\n{layout}: {real} real tokens of {inputs['input_ids'].numel()} computed, "
        f"{rate:,.0f} real tokens/s"
    )


def test_generation_tokens_per_second_tiny_cpu(benchmark):
    torch.manual_seed(0)
    model = LlavaOV(PRESETS["tiny"]).eval()
    prompts = [torch.randint(10, 400, (n,)) for n in (12, 30, 7, 50)]
    outputs = benchmark.pedantic(
        model.generate, args=(prompts,), kwargs={"max_new_tokens": 64}, rounds=3
    )
    if benchmark.disabled:
        return
    generated = sum(len(o) for o in outputs)
    print(f"\ngeneration: {generated / benchmark.stats.stats.min:,.0f} tokens/s (batch 4)")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_training_step_4b_shape_8_layers_gpu(benchmark, layout):
    import dataclasses

    config = PRESETS["4b"]
    config = config.replace(text=dataclasses.replace(config.text, num_hidden_layers=8))
    model = LlavaOV(config).to("cuda", torch.bfloat16).train()
    samples = realistic_samples(8, 0, 3000, [(48, 64), (64, 48), (80, 80), (32, 96)])
    inputs = packed_inputs(samples) if layout == "packed" else padded_inputs(samples)
    inputs = {k: v.cuda() for k, v in inputs.items()}

    def step():
        _step(model, inputs)
        torch.cuda.synchronize()

    benchmark.pedantic(step, rounds=5, warmup_rounds=2)
    if benchmark.disabled:
        return
    real = sum(len(s[0]) for s in samples)
    print(f"\n4B-shape {layout}: {real / benchmark.stats.stats.min:,.0f} real tokens/s")
