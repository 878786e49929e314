"""Activation checkpointing: a layer keeps only its input and recomputes its forward in backward.

A checkpointed layer stores its input instead of every intermediate activation (attention
projections, the MLP's 4x-wide hidden, norms), at the cost of one more forward of that layer in
backward (about +33% compute for `full`). `selective` checkpoints every N-th layer of each stack
(layers 0, N, 2N, ...): a middle ground between memory and recompute.

How: the layer's `forward` attribute is replaced by one that runs the original forward under
`torch.utils.checkpoint.checkpoint(use_reentrant=False)`. Unlike `checkpoint_wrapper` this adds
no module level (`_checkpoint_wrapped_module`), so parameter names, the optimizer groups and the
checkpoint keys are unchanged; unlike the composable `checkpoint` API it composes with FSDP2 and
with tensor parallel's input hooks on the same layer (those run in `__call__`, outside). Applied
before FSDP2 (torchtitan's order): the recompute runs inside the layer's FSDP unit, after its
pre-backward all-gather.

Stacks: the RICE-ViT blocks and the decoder layers, each counted from 0.
"""

from collections.abc import Sequence
from functools import partial

from torch import nn
from torch.utils.checkpoint import checkpoint

from ov_train.errors import TrainingError


def layer_stacks(model: nn.Module) -> list[Sequence[nn.Module]]:
    """The repeated layers of the model: ViT blocks, decoder layers (a pipeline stage's module
    may lack the ViT)."""
    vision = [] if model.vision is None else [model.vision.blocks]
    return [*vision, model.language_model.layers]


def checkpointed_layers(stack: Sequence[nn.Module], mode: str, every: int) -> list[nn.Module]:
    """The layers of `stack` that `mode` (none | full | selective every `every`) checkpoints."""
    if mode == "none":
        return []
    if mode == "full":
        return list(stack)
    if mode == "selective":
        return [layer for index, layer in _indexed(stack) if index % every == 0]
    raise TrainingError(f"unknown activation checkpointing mode {mode!r}")


def _indexed(stack: Sequence[nn.Module]) -> list[tuple[int, nn.Module]]:
    """(index, layer): a ModuleList's keys, which a pipeline stage's layers keep from the full
    model (so selective checkpointing picks the same layers with or without a pipeline)."""
    if isinstance(stack, nn.ModuleList):
        return [(int(name), layer) for name, layer in stack.named_children()]
    return list(enumerate(stack))


def checkpoint_layer(layer: nn.Module) -> None:
    """Make `layer`'s forward recompute in backward (names and parameters unchanged).

    The new forward is a `partial` over the layer's bound forward, not a closure: a deep copy
    of the model rebinds it to the copied layer (a closure would keep calling the original)."""
    if is_checkpointed(layer):
        return
    layer.forward = partial(_checkpointed_call, layer.forward)


def is_checkpointed(layer: nn.Module) -> bool:
    """Whether `checkpoint_layer` wrapped `layer`."""
    forward = vars(layer).get("forward")
    return isinstance(forward, partial) and forward.func is _checkpointed_call


def _checkpointed_call(forward, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(model: nn.Module, mode: str, every: int) -> int:
    """Checkpoint the layers `mode` selects in every stack; returns how many."""
    count = 0
    for stack in layer_stacks(model):
        for layer in checkpointed_layers(stack, mode, every):
            checkpoint_layer(layer)
            count += 1
    return count
