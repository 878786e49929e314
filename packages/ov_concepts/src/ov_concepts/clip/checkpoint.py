"""Reading open_clip-format checkpoints safely into `Clip`.

Accepted files: `.safetensors`, or a torch checkpoint (`.pt`, `.bin`, `.pth`) read with
`torch.load(weights_only=True)`, which refuses pickled code. As in open_clip's `load_state_dict`,
the state dict may sit under a "state_dict" key (training checkpoints, MetaCLIP's released files)
and carry DistributedDataParallel's "module." prefix. The "custom text" layout (text tower under
"text.") is mapped back to the top-level names. Then the dict must match the model exactly: a
missing, unexpected or mis-shaped key is an error that names it, since a partially loaded CLIP
still runs and silently produces meaningless embeddings.
"""

from pathlib import Path

import torch

from ov_concepts.clip.config import ClipConfig
from ov_concepts.clip.model import Clip
from ov_concepts.errors import CheckpointError

_IGNORED = ("logit_bias",)
_SHOWN = 8


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The raw tensors of a checkpoint file, with open_clip's wrappers and prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: object = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many types for corrupt files
        raise CheckpointError(f"{path}: cannot read the checkpoint ({error})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not loaded:
        raise CheckpointError(f"{path}: not a state dict of tensors")
    state = {}
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is not a named tensor")
        key = key.removeprefix("module.")
        if key.startswith("text."):
            key = key.removeprefix("text.")
        state[key] = value
    return state


def load_clip(config: ClipConfig, checkpoint: Path) -> Clip:
    """A `Clip` built from `config` with the weights of `checkpoint`, in eval mode, float32."""
    state = read_state_dict(checkpoint)
    for key in _IGNORED:
        state.pop(key, None)
    if "logit_scale" in state and state["logit_scale"].ndim:
        state["logit_scale"] = state["logit_scale"].reshape(())
    model = Clip(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_list(missing)}")
        if unexpected:
            parts.append(f"unexpected {_list(unexpected)}")
        raise CheckpointError(
            f"{checkpoint} does not match model config {config.name}: {'; '.join(parts)}"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{checkpoint}: {key} has shape {tuple(state[key].shape)}, model config "
                f"{config.name} needs {tuple(tensor.shape)}"
            )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def _list(keys: list[str]) -> str:
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more
