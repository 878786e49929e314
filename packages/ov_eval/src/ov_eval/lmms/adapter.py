"""The logic of the lmms-eval model: generation and log-likelihood requests over ov_model.

- Images: the request's visuals. When the context holds exactly one `<image>` marker per visual
  (LLaVA-style task prompts), the markers place the images; otherwise stray markers are removed and
  the images go first, as the release's own lmms-eval model does.
- Generation: greedy unless `temperature` > 0 (then sampling with `top_p`), `max_new_tokens`
  (default 128, as lmms-eval's), output cut at the end-of-turn token and at `until` strings.
- Log-likelihood: the summed log-probability of the continuation's tokens after the rendered
  prompt, and whether greedy decoding would have produced exactly them.
"""

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from ov_eval.generation import DTYPES, cut_at_stop_strings

IMAGE_MARKER = "<image>"
DEFAULT_MAX_NEW_TOKENS = 128


def place_images(context: str, num_images: int) -> str:
    """The user message text with one `<image>` placeholder per image."""
    if context.count(IMAGE_MARKER) == num_images:
        return context
    text = context.replace(IMAGE_MARKER, "").strip()
    return "".join(f"{IMAGE_MARKER}\n" for _ in range(num_images)) + text


class OneVisionAdapter:
    """A checkpoint answering lmms-eval requests (see the module docstring)."""

    def __init__(
        self,
        pretrained: str | Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> None:
        from ov_model import LlavaOV, OVProcessor

        self.device = device
        self.processor = OVProcessor.from_pretrained(
            pretrained, min_pixels=min_pixels, max_pixels=max_pixels
        )
        self.model = LlavaOV.from_pretrained(pretrained, dtype=DTYPES[dtype], device=device)
        special = self.processor.tokenizer.special
        self.stop_token_ids = (special.im_end, special.endoftext)

    def _prompt(self, context: str, visuals: Sequence[Image.Image]):
        conversation = [{"from": "human", "value": place_images(context, len(visuals))}]
        return self.processor.prompt(conversation, images=list(visuals) or None)

    def generate(self, context: str, visuals: Sequence[Image.Image], gen_kwargs: dict) -> str:
        """The answer to one generation request."""
        prompt = self._prompt(context, visuals)
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        settings = {
            "max_new_tokens": int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
            "temperature": temperature,
            "top_p": float(gen_kwargs.get("top_p") or 1.0) if temperature > 0 else 1.0,
        }
        ids = self.model.generate(
            [prompt.input_ids],
            pixel_values=prompt.pixel_values,
            image_grid_thw=prompt.image_grid_thw,
            stop_token_ids=self.stop_token_ids,
            **settings,
        )[0]
        return cut_at_stop_strings(self.processor.decode(ids), until)

    @torch.no_grad()
    def loglikelihood(
        self, context: str, continuation: str, visuals: Sequence[Image.Image]
    ) -> tuple[float, bool]:
        """(log P(continuation | prompt), whether greedy decoding gives the continuation)."""
        prompt = self._prompt(context, visuals)
        target = torch.tensor(self.processor.tokenizer.encode(continuation), dtype=torch.int64)
        if target.numel() == 0:
            return 0.0, True
        ids = torch.cat([prompt.input_ids, target])[None].to(self.device)
        logits = self.model(ids, prompt.pixel_values, prompt.image_grid_thw).logits[0].float()
        predicting = logits[prompt.input_ids.numel() - 1 : -1]
        logprobs = predicting.log_softmax(-1).gather(1, target[:, None].to(self.device))
        greedy = bool((predicting.argmax(-1).cpu() == target).all())
        return float(logprobs.sum()), greedy
