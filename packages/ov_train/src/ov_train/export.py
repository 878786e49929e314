"""Export a training checkpoint to the HF layout that ov_model and the official code load.

A checkpoint holds the model's weights in DCP form next to its `config.json` and a copy of the
run's processor files. Export rebuilds the model from that config, loads only the model's tensors
(the optimizer's are never read), optionally casts them (the release ships bf16; training keeps
fp32), and writes `LlavaOV.save_pretrained`'s layout (config.json + safetensors, sharded with an
index above `max_shard_size`) plus the processor files copied byte for byte. The result loads
with `LlavaOV.from_pretrained` and `OVProcessor.from_pretrained`.

It reads the checkpoint in one process whatever number of processes wrote it: DCP reshards on
load. The whole model is materialised in CPU memory (an 8B model in fp32: ~34 GB).
"""

import shutil
from pathlib import Path

import torch

from ov_model.config import LlavaOVConfig
from ov_model.model import LlavaOV
from ov_train.checkpointing import (
    MODEL_CONFIG,
    PROCESSOR_DIR,
    load_model_state,
    resolve_checkpoint,
)
from ov_train.errors import CheckpointError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
) -> Path:
    """Write the HF-layout model of `checkpoint` (a checkpoint folder, or a run / checkpoints
    folder for its latest) into `out_dir`; `dtype` (fp32, bf16, fp16) casts the weights,
    None keeps fp32. Returns `out_dir`."""
    source = resolve_checkpoint(checkpoint)
    if dtype is not None and dtype not in DTYPES:
        raise CheckpointError(f"export dtype {dtype!r}: choose one of {sorted(DTYPES)}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: not empty; export into a new folder")
    config = LlavaOVConfig.from_file(source / MODEL_CONFIG)
    model = LlavaOV(config)
    load_model_state(source, model)
    if dtype is not None:
        model.to(DTYPES[dtype])
    model.save_pretrained(out, max_shard_size=max_shard_size)
    processor = source / PROCESSOR_DIR
    if processor.is_dir():
        for file in sorted(processor.iterdir()):
            if file.is_file():
                shutil.copyfile(file, out / file.name)
    return out
