"""Loading and saving `LlavaOV` in the official HF layout (config.json + safetensors).

Loading builds the model on the meta device and assigns the stored tensors (no random init, no
copy), after checking names and shapes against the config; every missing, unexpected and
mis-shaped tensor is listed in one error. A checkpoint without `lm_head.weight` whose config says
the embeddings are untied is an error: the head is never re-initialised silently.
"""

import json
import shutil
from pathlib import Path

import torch

from ov_model.config import LlavaOVConfig
from ov_model.errors import CheckpointError
from ov_model.state_dict_adapter import from_hf, hf_name, to_hf
from rice_vit.safetensors_folder import read_tensors, write_tensors

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"


def check_state_matches(
    folder: Path, missing: list[str], unexpected: list[str], mis_shaped: list[str]
) -> None:
    """CheckpointError listing every missing (our names), unexpected (HF names) and mis-shaped
    tensor of the checkpoint in `folder`; nothing when all three lists are empty."""
    if missing or unexpected or mis_shaped:
        problems = []
        if missing:
            problems.append(f"missing ({len(missing)}): {', '.join(hf_name(n) for n in missing)}")
        if unexpected:
            problems.append(f"unexpected ({len(unexpected)}): {', '.join(sorted(unexpected))}")
        if mis_shaped:
            problems.append(f"mis-shaped ({len(mis_shaped)}): {'; '.join(mis_shaped)}")
        raise CheckpointError(f"{folder} does not match its config: " + "; ".join(problems))


def load_model(cls, path: str | Path, *, dtype: torch.dtype | None, device: str):
    """Build `cls(config)` from a checkpoint folder (see the module docstring)."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a checkpoint folder")
    config = LlavaOVConfig.from_file(folder / CONFIG_FILE)
    state, unknown = from_hf(read_tensors(folder, device=device))
    with torch.device("meta"):
        model = cls(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = [name for name in expected if name not in state]
    if "lm_head.weight" in missing:
        raise CheckpointError(
            f"{folder}: lm_head.weight is missing and text_config.tie_word_embeddings is false; "
            "refusing to initialise the output head at random"
        )
    unexpected = unknown + [hf_name(n) for n in state if n not in expected]
    mis_shaped = [
        f"{hf_name(n)}: stored {tuple(state[n].shape)}, config needs {shape}"
        for n, shape in expected.items()
        if n in state and tuple(state[n].shape) != shape
    ]
    check_state_matches(folder, missing, unexpected, mis_shaped)
    model.load_state_dict({n: state[n] for n in expected}, strict=True, assign=True)
    if dtype is not None:
        model.to(dtype=dtype)
    generation = folder / GENERATION_CONFIG_FILE
    model.generation_config = json.loads(generation.read_text()) if generation.is_file() else None
    return model.eval()


def save_model(model, path: str | Path, *, max_shard_size: int | str) -> None:
    """Write config.json, the weights and (if the model was loaded with one) generation_config."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = to_hf(model.state_dict())
    dtypes = {str(t.dtype).removeprefix("torch.") for t in tensors.values()}
    config = model.config
    if len(dtypes) == 1:
        config = config.replace(extra={**config.extra, "torch_dtype": dtypes.pop()})
    write_tensors(folder, tensors, max_shard_size=max_shard_size)
    config.save(folder / CONFIG_FILE)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        (folder / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2) + "\n")


def copy_tokenizer_files(source: str | Path, target: str | Path) -> list[str]:
    """Copy the tokenizer/processor files found in `source` to `target`; returns their names."""
    names = [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
        "chat_template.json",
        "chat_template.jinja",
        "preprocessor_config.json",
    ]
    copied = []
    for name in names:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, Path(target) / name)
            copied.append(name)
    return copied
