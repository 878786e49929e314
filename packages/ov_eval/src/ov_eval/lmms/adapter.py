"""The logic of the lmms-eval model: generation and log-likelihood requests over ov_model.

- Images: the request's visuals. When the context holds exactly one `<image>` marker per visual
  (LLaVA-style task prompts), the markers place the images; otherwise stray markers are removed and
  the images go first, as the release's own lmms-eval model does.
- Generation: greedy unless `temperature` > 0 (then sampling with `top_p`), `max_new_tokens`
  (default 128, as lmms-eval's `llava_onevision1_5`), output cut at the end-of-turn token and at
  the `until` strings except "\n\n": lmms-eval gives every task without its own `until` the
  stop ["\n\n"] (its few-shot delimiter), and its `llava_onevision1_5` model (the release's) drops
  that one before generating, so long answers are not cut at their first blank line. `ov-eval run`
  does the same (its tasks carry no "\n\n" stop), so both paths give the same answers.
- Log-likelihood: the log-probability of the continuation's tokens after the rendered prompt, how
  many tokens it has, and whether greedy decoding would have produced exactly them
  (`ContinuationScore`). lmms-eval's models hand back the *loss* (mean negative log-likelihood per
  continuation token, what a Hugging Face forward with labels returns), and its multiple-choice
  scorer picks the choice with the smallest value (`np.argmin`), so the model class answers with
  `ContinuationScore.loss`.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image

from ov_eval.generation import DTYPES, cut_at_stop_strings

IMAGE_MARKER = "<image>"
DEFAULT_MAX_NEW_TOKENS = 128
DROPPED_STOP_STRINGS = ("\n\n",)


class ContinuationScore(NamedTuple):
    """How likely a continuation is after a prompt."""

    logprob: float  # summed over the continuation's tokens
    num_tokens: int
    greedy: bool  # whether greedy decoding produces exactly these tokens

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood per token (0 for an empty continuation), as lmms-eval's
        models return it."""
        return -self.logprob / self.num_tokens if self.num_tokens else 0.0


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
        until = [stop for stop in until if stop not in DROPPED_STOP_STRINGS]
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
    ) -> ContinuationScore:
        """log P(continuation | prompt), its token count, and whether greedy decoding gives it."""
        prompt = self._prompt(context, visuals)
        target = torch.tensor(self.processor.tokenizer.encode(continuation), dtype=torch.int64)
        if target.numel() == 0:
            return ContinuationScore(0.0, 0, True)
        ids = torch.cat([prompt.input_ids, target])[None].to(self.device)
        logits = self.model(ids, prompt.pixel_values, prompt.image_grid_thw).logits[0].float()
        predicting = logits[prompt.input_ids.numel() - 1 : -1]
        logprobs = predicting.log_softmax(-1).gather(1, target[:, None].to(self.device))
        greedy = bool((predicting.argmax(-1).cpu() == target).all())
        return ContinuationScore(float(logprobs.sum()), target.numel(), greedy)
