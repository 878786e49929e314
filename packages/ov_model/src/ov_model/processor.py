"""`OVProcessor`: conversations and images -> model inputs, for training and for generation.

It composes three parts, each loaded from a model folder: the tokenizer (`tokenizer.py`), the
chat template (`chat_template.py`) and rice_vit's `ImageProcessor` (settings from
`preprocessor_config.json`, rice_vit's defaults without one). What happens to a sample:

1. the conversation, LLaVA or OpenAI/HF style, becomes typed messages (`conversation.py`); the
   number of images given must equal the number of placeholders;
2. each image is resized and patchified by rice_vit; its grid (1, h, w) says how many LLM tokens
   it takes: h * w / merge_size^2 (one per 2x2 block of patches);
3. the template renders the text, which is tokenized with the image pads expanded and labels set
   on exactly the assistant answers and their `<|im_end|>` (`sample_encoding.py`);
4. `max_length` truncates by the policy of `truncation.py` (never inside an image, never down
   to no supervised token; such samples raise a `SampleError` naming the sample), and the pixel
   rows of dropped images go with them.

`count_tokens`/`measure` run steps 1, 3 and 4 from image sizes alone (rice_vit's smart_resize
gives the grid), so data preparation counts exactly the tokens training will see without
decoding a pixel.

This file composes the steps; each lives in its own: the image side in `sample_images.py`, the
folder's files in `processor_files.py`, the returned records in `processed.py` (all of their
public names stay importable from here).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ov_model.chat_template import ChatTemplate
from ov_model.conversation import (
    Conversation,
    ImagePart,
    Message,
    normalize_conversation,
    split_placeholders,
)
from ov_model.packing import IGNORE_INDEX
from ov_model.processed import ProcessedPrompt, ProcessedSample, SampleLength
from ov_model.processor_errors import ProcessorError
from ov_model.processor_files import (
    PASSTHROUGH_FILES,
    ProcessorFiles,
    preprocessor_config,
    read_processor_files,
    write_processor_files,
)
from ov_model.sample_encoding import encode_conversation
from ov_model.sample_images import (
    Grid,
    ImageInput,
    as_image_list,
    check_image_count,
    grid_tensor,
    grids_from_sizes,
    image_token_count,
    pixel_tensor,
    process_images,
)
from ov_model.tokenizer import TextTokenizer
from ov_model.truncation import kept_images, truncation_length
from rice_vit import ImageProcessor

__all__ = [
    "PASSTHROUGH_FILES",
    "ImageInput",
    "OVProcessor",
    "ProcessedPrompt",
    "ProcessedSample",
    "SampleLength",
    "preprocessor_config",
]


@dataclass(frozen=True)
class _Encoded:
    input_ids: list[int]
    labels: list[int]
    grids: list[Grid]
    """Grids of the kept images."""
    truncated: bool


class OVProcessor:
    """Tokenizer + chat template + rice_vit image processor of a LLaVA-OV model."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        image_processor: ImageProcessor | None = None,
        chat_template: ChatTemplate | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_processor = ImageProcessor() if image_processor is None else image_processor
        self.chat_template = ChatTemplate.default() if chat_template is None else chat_template
        self._preprocessor_config: dict = {}
        self._passthrough: dict[str, bytes] = {}

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> "OVProcessor":
        """Load from a model folder: `tokenizer.json` (required), the chat template (the
        folder's own or the qwen2-vl default), `preprocessor_config.json` (optional).
        `min_pixels`/`max_pixels` override the image settings."""
        files = read_processor_files(path, min_pixels=min_pixels, max_pixels=max_pixels)
        processor = cls(files.tokenizer, files.image_processor, files.chat_template)
        processor._preprocessor_config = files.preprocessor_config
        processor._passthrough = files.passthrough
        return processor

    def save_pretrained(self, path: str | Path) -> Path:
        """Write `tokenizer.json`, `chat_template.json`, `preprocessor_config.json` (and the
        transformers tokenizer files it was loaded with) into `path`; returns the folder."""
        files = ProcessorFiles(
            tokenizer=self.tokenizer,
            image_processor=self.image_processor,
            chat_template=self.chat_template,
            preprocessor_config=self._preprocessor_config,
            passthrough=self._passthrough,
        )
        return write_processor_files(files, path)

    @property
    def image_token_id(self) -> int:
        """Id of `<|image_pad|>`, the token whose rows receive image features."""
        return self.tokenizer.special.image_pad

    def __call__(
        self,
        conversation: Conversation,
        images: ImageInput | Sequence[ImageInput] | None = None,
        max_length: int | None = None,
        *,
        sample_id: str | int | None = None,
    ) -> ProcessedSample:
        """A training sample: ids, labels, pixels (see the module docstring). Raises a
        `SampleError` naming `sample_id` when the sample cannot be trained on."""
        _check_max_length(max_length)
        messages = normalize_conversation(conversation, sample_id=sample_id)
        image_list = as_image_list(images)
        check_image_count(messages, image_list, sample_id)
        rows, grids = process_images(self.image_processor, image_list, sample_id)
        encoded = self._encode(messages, grids, max_length, sample_id)
        kept = len(encoded.grids)
        labels = torch.tensor(encoded.labels, dtype=torch.int64)
        return ProcessedSample(
            input_ids=torch.tensor(encoded.input_ids, dtype=torch.int64),
            labels=labels,
            pixel_values=pixel_tensor(rows[:kept]),
            image_grid_thw=grid_tensor(grids[:kept]),
            num_supervised=int((labels != IGNORE_INDEX).sum()),
            truncated=encoded.truncated,
        )

    def prompt(
        self,
        conversation: Conversation | str,
        images: ImageInput | Sequence[ImageInput] | None = None,
        *,
        sample_id: str | int | None = None,
    ) -> ProcessedPrompt:
        """Generation input: the conversation rendered with the generation prompt, no labels.
        A plain string is one user message; without `<image>` in it, its images go first."""
        image_list = as_image_list(images)
        if isinstance(conversation, str):
            parts = split_placeholders(conversation)
            if not any(isinstance(part, ImagePart) for part in parts):
                parts = [ImagePart() for _ in image_list] + parts
            messages: tuple[Message, ...] = (Message("user", tuple(parts)),)
        else:
            messages = normalize_conversation(conversation, sample_id=sample_id)
        check_image_count(messages, image_list, sample_id)
        rows, grids = process_images(self.image_processor, image_list, sample_id)
        encoded = encode_conversation(
            messages,
            [image_token_count(self.image_processor, grid) for grid in grids],
            tokenizer=self.tokenizer,
            template=self.chat_template,
            with_labels=False,
            add_generation_prompt=True,
            sample_id=sample_id,
        )
        return ProcessedPrompt(
            input_ids=torch.tensor(encoded.input_ids, dtype=torch.int64),
            pixel_values=pixel_tensor(rows),
            image_grid_thw=grid_tensor(grids),
        )

    def decode(self, ids: torch.Tensor | Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of token ids (special tokens dropped unless `skip_special_tokens=False`)."""
        values = ids.reshape(-1).tolist() if isinstance(ids, torch.Tensor) else list(ids)
        negative = [value for value in values if value < 0]
        if negative:
            raise ProcessorError(
                f"cannot decode negative token id {negative[0]} (labels? decode the input_ids "
                f"at the supervised positions instead)"
            )
        return self.tokenizer.decode(values, skip_special_tokens=skip_special_tokens)

    def measure(
        self,
        conversation: Conversation,
        image_sizes: Sequence[tuple[int, int]],
        max_length: int | None = None,
        *,
        sample_id: str | int | None = None,
    ) -> SampleLength:
        """The sizes `self(conversation, images, max_length)` would produce, from the images'
        (height, width) in pixels alone; raises the same `SampleError`s."""
        _check_max_length(max_length)
        messages = normalize_conversation(conversation, sample_id=sample_id)
        check_image_count(messages, image_sizes, sample_id)
        grids = grids_from_sizes(self.image_processor, image_sizes, sample_id)
        encoded = self._encode(messages, grids, max_length, sample_id)
        image_tokens = sum(image_token_count(self.image_processor, grid) for grid in encoded.grids)
        return SampleLength(
            llm_tokens=len(encoded.input_ids),
            image_tokens=image_tokens,
            vit_patches=sum(grid[1] * grid[2] for grid in encoded.grids),
            supervised_tokens=len(encoded.labels) - encoded.labels.count(IGNORE_INDEX),
            images=len(encoded.grids),
            supervised_targets=len(encoded.labels[1:]) - encoded.labels[1:].count(IGNORE_INDEX),
        )

    def count_tokens(
        self,
        conversation: Conversation,
        image_sizes: Sequence[tuple[int, int]],
        max_length: int | None = None,
        *,
        sample_id: str | int | None = None,
    ) -> int:
        """Exactly `len(self(conversation, images, max_length).input_ids)`, from the images'
        (height, width) in pixels, without loading pixel data."""
        return self.measure(conversation, image_sizes, max_length, sample_id=sample_id).llm_tokens

    def _encode(
        self,
        messages: Sequence[Message],
        grids: list[Grid],
        max_length: int | None,
        sample_id: str | int | None,
    ) -> _Encoded:
        counts = [image_token_count(self.image_processor, grid) for grid in grids]
        encoded = encode_conversation(
            messages,
            counts,
            tokenizer=self.tokenizer,
            template=self.chat_template,
            sample_id=sample_id,
        )
        cut = truncation_length(encoded.labels, max_length, sample_id=sample_id)
        input_ids = encoded.input_ids[:cut]
        kept = kept_images(counts, input_ids.count(self.tokenizer.special.image_pad))
        return _Encoded(
            input_ids=input_ids,
            labels=encoded.labels[:cut],
            grids=grids[:kept],
            truncated=cut < len(encoded.input_ids),
        )


def _check_max_length(max_length: int | None) -> None:
    if max_length is None:
        return
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ProcessorError(f"max_length must be a positive integer or None, got {max_length!r}")
