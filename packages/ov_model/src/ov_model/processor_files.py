"""A processor's files in a model folder: what is read, what is written, what is kept as is.

`tokenizer.json` is required; the chat template is the folder's own or the qwen2-vl default;
`preprocessor_config.json` is optional (rice_vit's defaults without one) and is written back in
the Qwen2-VL layout the release uses, keeping keys that are not settings. Transformers' other
tokenizer files (`PASSTHROUGH_FILES`) are not read but copied byte for byte, so a folder ov_model
saves still loads with transformers' AutoTokenizer.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ov_model.chat_template import ChatTemplate
from ov_model.processor_errors import ProcessorError
from ov_model.tokenizer import TOKENIZER_FILE, TextTokenizer
from rice_vit import ImageProcessor
from rice_vit.processor import PREPROCESSOR_CONFIG_FILE, RESCALE_FACTOR

PASSTHROUGH_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)


@dataclass
class ProcessorFiles:
    """The parts of a processor as read from (or to be written to) a model folder."""

    tokenizer: TextTokenizer
    image_processor: ImageProcessor
    chat_template: ChatTemplate
    preprocessor_config: dict[str, Any] = field(default_factory=dict)
    """The `preprocessor_config.json` it was read from ({} without one)."""
    passthrough: dict[str, bytes] = field(default_factory=dict)
    """Transformers tokenizer files found, by name, kept byte for byte."""


def read_processor_files(
    path: str | Path, *, min_pixels: int | None = None, max_pixels: int | None = None
) -> ProcessorFiles:
    """Read a model folder's processor files; `min_pixels`/`max_pixels` override the image
    settings. ProcessorError (or the tokenizer's and template's errors) naming the file."""
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
        config = json.loads(config_file.read_text(encoding="utf-8"))
    else:
        image_processor = ImageProcessor(**overrides)
        config = {}
    return ProcessorFiles(
        tokenizer=tokenizer,
        image_processor=image_processor,
        chat_template=ChatTemplate.from_dir(folder),
        preprocessor_config=config,
        passthrough={
            name: (folder / name).read_bytes()
            for name in PASSTHROUGH_FILES
            if (folder / name).is_file()
        },
    )


def write_processor_files(files: ProcessorFiles, path: str | Path) -> Path:
    """Write `tokenizer.json`, `chat_template.json`, `preprocessor_config.json` and the
    passthrough files into `path` (created if needed); returns the folder."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.passthrough.items():
        (folder / name).write_bytes(data)
    files.tokenizer.save(folder / TOKENIZER_FILE)
    files.chat_template.save(folder)
    config = preprocessor_config(files.image_processor, files.preprocessor_config)
    (folder / PREPROCESSOR_CONFIG_FILE).write_text(
        json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return folder


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
