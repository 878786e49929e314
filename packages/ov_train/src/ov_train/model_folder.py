"""`model.path` checked before anything loads: a missing folder and a folder that is not a model
are different one-line errors, and the second names the file that is missing.

A run starts from an HF-layout LLaVA-OV folder: the Stage-0 merge of `ov-model init`, or the
previous stage's `ov-train export`. It needs `config.json` (model_type `llavaonevision1_5`), the
weights (`model.safetensors`, or `model.safetensors.index.json` with its shards) and the
tokenizer (`tokenizer.json`; the processor's other files are optional). A common first mistake
is to point `model.path` at the raw Qwen LLM or RICE-ViT folder; their `config.json` says so,
and the error says to run `ov-model init` first.

Only names and one small JSON file are read, so the check costs nothing next to loading.
"""

import json
from pathlib import Path

from ov_train.errors import RecipeError

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
MODEL_TYPE = "llavaonevision1_5"
_PARTS = {
    "qwen2": "a Qwen LLM",
    "qwen3": "a Qwen LLM",
    "mlcd_vision_model": "a RICE-ViT (MLCD) encoder",
    "mlcd": "a RICE-ViT (MLCD) encoder",
    "rice_vit": "a RICE-ViT encoder",
}
_WHERE_FROM = "`ov-model init --out` or a previous stage's `ov-train export --out`"


def check_model_folder(
    path: str | Path, *, key: str = "model.path", tokenizer: bool = True
) -> Path:
    """`path` as a Path when it is a LLaVA-OV model folder (see the module docstring); else
    RecipeError naming `key`, the path, and either that it does not exist or which file it
    lacks. `tokenizer=False` does not require `tokenizer.json` (a caller that brings its own
    processor)."""
    folder = Path(path)
    if not folder.exists():
        raise RecipeError(f"{key} {folder}: does not exist (a model folder from {_WHERE_FROM})")
    if not folder.is_dir():
        raise RecipeError(f"{key} {folder}: is a file, not a model folder (from {_WHERE_FROM})")
    missing = []
    if not (folder / CONFIG_FILE).is_file():
        missing.append(CONFIG_FILE)
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if tokenizer and not (folder / TOKENIZER_FILE).is_file():
        missing.append(TOKENIZER_FILE)
    if missing:
        raise RecipeError(
            f"{key} {folder}: exists but is not a model folder: no {', no '.join(missing)} "
            f"(a model folder from {_WHERE_FROM})"
        )
    model_type = _model_type(folder / CONFIG_FILE)
    if model_type in _PARTS:
        raise RecipeError(
            f"{key} {folder}: is {_PARTS[model_type]} (config.json model_type {model_type!r}), "
            f"not a LLaVA-OV model; merge the parts first: ov-model init --vit VIT_DIR --llm "
            "LLM_DIR --out STAGE0_DIR, and train from STAGE0_DIR"
        )
    if model_type != MODEL_TYPE:
        raise RecipeError(
            f"{key} {folder}: exists but is not a model folder: {CONFIG_FILE} has model_type "
            f"{model_type!r}, not {MODEL_TYPE!r}"
        )
    return folder


def _model_type(config_file: Path) -> object:
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RecipeError(f"{config_file}: not valid JSON ({error})") from None
    return data.get("model_type") if isinstance(data, dict) else None
