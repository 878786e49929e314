"""`ModelAnswerer`: a checkpoint that answers benchmark samples, in batches, greedily.

It wraps ov_model: the processor renders each sample the way the release is evaluated (the
qwen2-vl chat template with its default system prompt, the sample's images first, then the task's
prompt, a generation prompt for the assistant), the model generates greedily with a KV cache
(a batch's prompts prefilled packed, see `ov_model.generation`), and the output is cut at the
end-of-turn token and at the task's stop strings. Greedy decoding keeps the answers independent
of the batch size (tested).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ov_eval.sample import Sample

DTYPES = {
    "auto": None,  # the checkpoint's stored dtype
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class Question:
    """What the model is asked: the sample's images and the task's prompt."""

    sample: Sample
    prompt: str


def cut_at_stop_strings(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    end = len(text)
    for stop in stop_strings:
        if stop and (position := text.find(stop)) != -1:
            end = min(end, position)
    return text[:end]


class ModelAnswerer:
    """Greedy answers of a LLaVA-OV checkpoint (any folder `LlavaOV.from_pretrained` reads)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> None:
        from ov_model import LlavaOV, OVProcessor

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.model_dir = Path(model_dir)
        self.dtype, self.device = dtype, device
        self.processor = OVProcessor.from_pretrained(
            model_dir, min_pixels=min_pixels, max_pixels=max_pixels
        )
        self.model = LlavaOV.from_pretrained(model_dir, dtype=DTYPES[dtype], device=device)
        special = self.processor.tokenizer.special
        self.stop_token_ids = (special.im_end, special.endoftext)

    @property
    def min_pixels(self) -> int:
        """The image processor's lower pixel bound in use."""
        return self.processor.image_processor.min_pixels

    @property
    def max_pixels(self) -> int:
        """The image processor's upper pixel bound in use."""
        return self.processor.image_processor.max_pixels

    def answer(
        self,
        questions: Sequence[Question],
        *,
        max_new_tokens: int,
        stop_strings: Sequence[str] = (),
    ) -> list[str]:
        """The decoded answer to each question, in order (one batch)."""
        prompts, pixels, grids = [], [], []
        for question in questions:
            images = question.sample.open_images()
            content = "".join("<image>\n" for _ in images) + question.prompt
            prompt = self.processor.prompt(
                [{"from": "human", "value": content}],
                images=images or None,
                sample_id=question.sample.id,
            )
            prompts.append(prompt.input_ids)
            if prompt.pixel_values is not None:
                pixels.append(prompt.pixel_values)
                grids.append(prompt.image_grid_thw)
        outputs = self.model.generate(
            prompts,
            pixel_values=torch.cat(pixels).to(self.device) if pixels else None,
            image_grid_thw=torch.cat(grids) if grids else None,
            max_new_tokens=max_new_tokens,
            stop_token_ids=self.stop_token_ids,
            pad_token_id=self.stop_token_ids[1],
        )
        return [
            cut_at_stop_strings(self.processor.decode(ids, skip_special_tokens=True), stop_strings)
            for ids in outputs
        ]
