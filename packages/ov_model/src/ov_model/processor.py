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
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ov_model.chat_template import ChatTemplate
from ov_model.conversation import (
    Conversation,
    ImagePart,
    Message,
    normalize_conversation,
    split_placeholders,
)
from ov_model.packing import IGNORE_INDEX
from ov_model.processor_errors import (
    ImageCountError,
    ProcessorError,
    SampleImageError,
    describe_sample,
)
from ov_model.sample_encoding import encode_conversation
from ov_model.tokenizer import TOKENIZER_FILE, TextTokenizer
from ov_model.truncation import kept_images, truncation_length
from rice_vit import ImageError, ImageProcessor
from rice_vit.processor import PREPROCESSOR_CONFIG_FILE, RESCALE_FACTOR

ImageInput = str | Path | Image.Image

# Tokenizer files of the transformers layout that ov_model does not read but keeps, byte for
# byte, so that a folder it saves still loads with transformers' AutoTokenizer.
PASSTHROUGH_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)


@dataclass(frozen=True)
class ProcessedSample:
    """One training sample. `labels` are aligned with `input_ids` (the token where supervised,
    -100 elsewhere; the model shifts them). Without images `pixel_values` and
    `image_grid_thw` are None."""

    input_ids: torch.Tensor
    """(tokens,) int64."""
    labels: torch.Tensor
    """(tokens,) int64, -100 on unsupervised positions."""
    pixel_values: torch.Tensor | None
    """(patches, 3 * P * P) float32, the kept images' patch rows concatenated."""
    image_grid_thw: torch.Tensor | None
    """(images, 3) int64, (1, h, w) in patches per kept image."""
    num_supervised: int
    truncated: bool = False
    """Whether `max_length` dropped tokens (and maybe images)."""


@dataclass(frozen=True)
class ProcessedPrompt:
    """Generation input: the prompt ending in `<|im_start|>assistant\\n`, and its images."""

    input_ids: torch.Tensor
    """(tokens,) int64."""
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None


@dataclass(frozen=True)
class SampleLength:
    """The sizes of a processed sample, as `measure` computes them without pixels."""

    llm_tokens: int
    """len(input_ids), image tokens included."""
    image_tokens: int
    """`<|image_pad|>` tokens (one per merged 2x2 patch block)."""
    vit_patches: int
    """Patch rows the vision tower encodes (sum of h * w)."""
    supervised_tokens: int
    """Labels that are not -100."""
    images: int
    """Images kept (after truncation)."""
    supervised_targets: int
    """Supervised next-token targets: labels that are not -100 at any position but the first
    (the loss never predicts a sample's first token), what the training loss is divided by."""

    @property
    def text_tokens(self) -> int:
        """Tokens that are not image pads (the template's structure included)."""
        return self.llm_tokens - self.image_tokens


@dataclass(frozen=True)
class _Encoded:
    input_ids: list[int]
    labels: list[int]
    grids: list[tuple[int, int, int]]
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
        self._preprocessor_config: dict[str, Any] = {}
        self._passthrough: dict[str, bytes] = {}

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> "OVProcessor":
        """Load from a model folder: `tokenizer.json` (required), the chat template (the
        folder's own or the qwen2-vl default), `preprocessor_config.json` (optional).
        `min_pixels`/`max_pixels` override the image settings."""
        folder = Path(path)
        if not folder.is_dir():
            raise ProcessorError(f"{folder}: not a folder (expected a model folder)")
        tokenizer = TextTokenizer.from_file(folder / TOKENIZER_FILE)
        overrides = {
            name: value
            for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels))
            if value is not None
        }
        config_file = folder / PREPROCESSOR_CONFIG_FILE
        if config_file.is_file():
            image_processor = ImageProcessor.from_pretrained(config_file, **overrides)
            preprocessor_config = json.loads(config_file.read_text(encoding="utf-8"))
        else:
            image_processor = ImageProcessor(**overrides)
            preprocessor_config = {}
        processor = cls(tokenizer, image_processor, ChatTemplate.from_dir(folder))
        processor._preprocessor_config = preprocessor_config
        processor._passthrough = {
            name: (folder / name).read_bytes()
            for name in PASSTHROUGH_FILES
            if (folder / name).is_file()
        }
        return processor

    def save_pretrained(self, path: str | Path) -> Path:
        """Write `tokenizer.json`, `chat_template.json`, `preprocessor_config.json` (and the
        transformers tokenizer files it was loaded with) into `path`; returns the folder."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self._passthrough.items():
            (folder / name).write_bytes(data)
        self.tokenizer.save(folder / TOKENIZER_FILE)
        self.chat_template.save(folder)
        config = preprocessor_config(self.image_processor, self._preprocessor_config)
        (folder / PREPROCESSOR_CONFIG_FILE).write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        return folder

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
        image_list = _as_list(images)
        _check_image_count(messages, image_list, sample_id)
        rows, grids = self._process_images(image_list, sample_id)
        encoded = self._encode(messages, grids, max_length, sample_id)
        kept = len(encoded.grids)
        labels = torch.tensor(encoded.labels, dtype=torch.int64)
        return ProcessedSample(
            input_ids=torch.tensor(encoded.input_ids, dtype=torch.int64),
            labels=labels,
            pixel_values=_pixel_tensor(rows[:kept]),
            image_grid_thw=_grid_tensor(grids[:kept]),
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
        image_list = _as_list(images)
        if isinstance(conversation, str):
            parts = split_placeholders(conversation)
            if not any(isinstance(part, ImagePart) for part in parts):
                parts = [ImagePart() for _ in image_list] + parts
            messages: tuple[Message, ...] = (Message("user", tuple(parts)),)
        else:
            messages = normalize_conversation(conversation, sample_id=sample_id)
        _check_image_count(messages, image_list, sample_id)
        rows, grids = self._process_images(image_list, sample_id)
        encoded = encode_conversation(
            messages,
            [self._image_tokens(grid) for grid in grids],
            tokenizer=self.tokenizer,
            template=self.chat_template,
            with_labels=False,
            add_generation_prompt=True,
            sample_id=sample_id,
        )
        return ProcessedPrompt(
            input_ids=torch.tensor(encoded.input_ids, dtype=torch.int64),
            pixel_values=_pixel_tensor(rows),
            image_grid_thw=_grid_tensor(grids),
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
        _check_image_count(messages, image_sizes, sample_id)
        grids = []
        for index, size in enumerate(image_sizes):
            if len(size) != 2 or not all(isinstance(side, int) for side in size):
                raise SampleImageError(
                    f"{describe_sample(sample_id)}, image {index}: a size is (height, width) in "
                    f"pixels, got {size!r}",
                    sample_id=sample_id,
                )
            height, width = size
            try:
                resized_height, resized_width = self.image_processor.resized_size(height, width)
            except ImageError as error:
                raise SampleImageError(
                    f"{describe_sample(sample_id)}, image {index}: {error}", sample_id=sample_id
                ) from None
            patch = self.image_processor.patch_size
            grids.append((1, resized_height // patch, resized_width // patch))
        encoded = self._encode(messages, grids, max_length, sample_id)
        image_tokens = sum(self._image_tokens(grid) for grid in encoded.grids)
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

    def _image_tokens(self, grid: tuple[int, int, int]) -> int:
        return grid[0] * grid[1] * grid[2] // self.image_processor.merge_size**2

    def _process_images(
        self, images: list[ImageInput], sample_id: str | int | None
    ) -> tuple[list[np.ndarray], list[tuple[int, int, int]]]:
        rows: list[np.ndarray] = []
        grids: list[tuple[int, int, int]] = []
        for index, image in enumerate(images):
            name = f"{describe_sample(sample_id)}, image {index}"
            try:
                patches, grid = self.image_processor.process_one(image, name=name)
            except ImageError as error:
                message = str(error) if str(error).startswith(name) else f"{name}: {error}"
                raise SampleImageError(message, sample_id=sample_id) from None
            rows.append(patches)
            grids.append(grid)
        return rows, grids

    def _encode(
        self,
        messages: Sequence[Message],
        grids: list[tuple[int, int, int]],
        max_length: int | None,
        sample_id: str | int | None,
    ) -> _Encoded:
        counts = [self._image_tokens(grid) for grid in grids]
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


def preprocessor_config(
    image_processor: ImageProcessor, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The `preprocessor_config.json` of these settings in the Qwen2-VL layout the release
    uses; keys of `base` (the file it was loaded from) that are not settings are kept."""
    return (base or {}) | {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(image_processor.image_mean),
        "image_processor_type": (base or {}).get("image_processor_type", "Qwen2VLImageProcessor"),
        "image_std": list(image_processor.image_std),
        "max_pixels": image_processor.max_pixels,
        "merge_size": image_processor.merge_size,
        "min_pixels": image_processor.min_pixels,
        "patch_size": image_processor.patch_size,
        "resample": int(Image.Resampling.BICUBIC),
        "rescale_factor": RESCALE_FACTOR,
        "size": {
            "longest_edge": image_processor.max_pixels,
            "shortest_edge": image_processor.min_pixels,
        },
        "temporal_patch_size": 1,
    }


def _as_list(images: ImageInput | Sequence[ImageInput] | None) -> list[ImageInput]:
    if images is None:
        return []
    if isinstance(images, str | Path | Image.Image):
        return [images]
    if not isinstance(images, Sequence):
        raise ProcessorError(
            f"images must be a PIL image, a path, or a list of them; got {type(images).__name__}"
        )
    return list(images)


def _check_image_count(
    messages: Sequence[Message], images: Sequence[Any], sample_id: str | int | None
) -> None:
    placeholders = sum(message.num_images for message in messages)
    if placeholders != len(images):
        raise ImageCountError(placeholders=placeholders, images=len(images), sample_id=sample_id)


def _check_max_length(max_length: int | None) -> None:
    if max_length is None:
        return
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ProcessorError(f"max_length must be a positive integer or None, got {max_length!r}")


def _pixel_tensor(rows: list[np.ndarray]) -> torch.Tensor | None:
    return torch.from_numpy(np.concatenate(rows, axis=0)) if rows else None


def _grid_tensor(grids: list[tuple[int, int, int]]) -> torch.Tensor | None:
    return torch.tensor(grids, dtype=torch.int64) if grids else None
