"""Tensor + sequence parallelism for the LLM of LLaVA-OV, with DTensor's `parallelize_module`.

The tp ranks of a group hold the same micro-batch and split each decoder matmul (Megatron's
layout, torchtitan's plans):

- attention: q/k/v column-wise (each rank computes its share of the heads: heads / tp query
  heads, kv_heads / tp key/value heads, the GQA ratio unchanged), o_proj row-wise; the model
  views heads from the projections' widths, so the same attention code runs on a rank's share;
- MLP: gate/up column-wise, down row-wise;
- the token embedding vocabulary-parallel (rows of the table sharded; a token's row comes from
  the rank holding it, summed over the group), and the output head sharded the same way, so the
  loss is `vocab_parallel_loss.VocabParallelCrossEntropy` (installed as `model.loss_function`):
  no rank holds whole logits. When embeddings and head are tied (the 3B) it is one tensor,
  sharded once.

Sequence parallel (`sequence_parallel=True`): between the row-wise and the next column-wise
matmul the activations are sharded over the packed token dim (the layout is (tokens, hidden):
dim 0), so the norms (`SequenceParallel(sequence_dim=0)`) and the residual stream hold tokens/tp
rows per rank: o_proj/down reduce-scatter instead of all-reduce, and attention/MLP inputs are
all-gathered (`PrepareModuleInput` Shard(0) -> Replicate). The embeddings, with the image
features written in on every rank, enter the decoder whole and are split Replicate -> Shard(0)
(a forward pre-hook on the language model): the split's backward all-gathers, so every tp rank's
replicated ViT and projector receive the FULL gradient of their features. A row must split
evenly: the data path pads it to a multiple of tp (`ov_model.packing.pad_row(multiple_of=)`); a
row that is not is a TrainingError naming its length (gloo cannot all-gather uneven shards and
NCCL would hang).

Qwen3's q_norm / k_norm normalise each head with one shared weight; a rank sees only its heads,
so the weight's gradient from one rank is a partial sum. They get `SequenceParallel` over the
heads dim of (tokens, heads, head_dim): Replicate DTensor weights whose gradient is reduced over
the tp group (without it each rank would step its weight with a different, partial gradient,
silently). Replicated parameters (norms) get a gradient hook that all-reduces a Partial
gradient into a Replicate one when nothing else does (FSDP2 does it when it wraps them).

The ViT and the projector stay replicated over tp (FSDP over the data-parallel ranks only):
RICE-ViT's fused qkv projection interleaves q, k and v in one weight, so a plain ColwiseParallel
would hand a rank a slice mixing q, k and v of different heads (the loss is silently wrong); it
would have to be re-ordered first. The ViT is small next to the LLM (0.3B of 4.4B) and sees one
image's patches per attention segment: replicating it costs a redundant forward/backward per tp
rank, not memory worth sharding.

Apply first, before activation checkpointing and FSDP2 (torchtitan's order): FSDP2 then shards
each tp shard over the data-parallel mesh (a 2-D DTensor).
"""

from functools import partial

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from ov_train.distributed.vocab_parallel_loss import VocabParallelCrossEntropy
from ov_train.errors import TrainingError


def apply_tensor_parallel(
    model: nn.Module, tp_mesh: DeviceMesh, *, sequence_parallel: bool
) -> nn.Module:
    """Shard `model`'s LLM over the 1-D `tp_mesh` (see the module docstring); in place, returns
    the model. Nothing changes with a mesh of one rank."""
    if tp_mesh.ndim != 1:
        raise TrainingError(f"tensor parallelism needs a 1-D tp mesh, got {tp_mesh}")
    tp = tp_mesh.size()
    if tp == 1:
        return model
    check_divisible(model.config.text, tp)
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    language_model = model.language_model
    # A pipeline stage's module holds some of these (None: another stage's); only the stage
    # that embeds receives whole rows to split, the others receive this rank's rows.
    if language_model.embed_tokens is not None:
        parallelize_module(
            language_model.embed_tokens,
            tp_mesh,
            RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
        )
    for layer in language_model.layers:
        parallelize_module(layer, tp_mesh, _layer_plan(layer, sequence_parallel))
    if sequence_parallel:
        if language_model.norm is not None:
            parallelize_module(
                language_model.norm,
                tp_mesh,
                SequenceParallel(sequence_dim=0, use_local_output=True),
            )
        if language_model.embed_tokens is not None:
            language_model.register_forward_pre_hook(
                partial(_split_tokens, tp_mesh), with_kwargs=True
            )
    if model.lm_head is not None:
        parallelize_module(model.lm_head, tp_mesh, ColwiseParallel())
    # parallelize_module puts new Parameters (DTensors) in place, trainable by default: a frozen
    # module (the LLM in Stage 1) must stay frozen
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    _reduce_partial_gradients(language_model)
    model.loss_function = VocabParallelCrossEntropy(tp_mesh, sequence_parallel=sequence_parallel)
    return model


def check_divisible(text_config, tp: int) -> None:
    """TrainingError naming the first LLM width that `tp` does not divide."""
    for name in (
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "vocab_size",
    ):
        value = getattr(text_config, name)
        if value % tp:
            raise TrainingError(
                f"tensor parallelism over {tp} ranks needs text_config.{name} divisible by "
                f"{tp}; it is {value}"
            )


def _layer_plan(layer: nn.Module, sequence_parallel: bool) -> dict:
    """The `parallelize_module` plan of one decoder layer."""
    between = Shard(0) if sequence_parallel else Replicate()  # layout between the blocks
    plan = {
        # attention's inputs are (x, cos, sin, attend): only x is laid out; use_local_output
        # False keeps x a DTensor into q/k/v, so its gradient is reduced once, not per matmul
        "self_attn": PrepareModuleInput(
            input_layouts=(between, None, None, None),
            desired_input_layouts=(Replicate(), None, None, None),
        ),
        "self_attn.q_proj": ColwiseParallel(),
        "self_attn.k_proj": ColwiseParallel(),
        "self_attn.v_proj": ColwiseParallel(),
        "self_attn.o_proj": RowwiseParallel(output_layouts=between),
        "mlp": PrepareModuleInput(input_layouts=(between,), desired_input_layouts=(Replicate(),)),
        "mlp.gate_proj": ColwiseParallel(),
        "mlp.up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(output_layouts=between),
    }
    if layer.self_attn.q_norm is not None:
        # (tokens, heads / tp, head_dim) per rank: "sharded" over the heads dim
        heads = SequenceParallel(sequence_dim=1, use_local_output=True)
        plan["self_attn.q_norm"] = heads
        plan["self_attn.k_norm"] = heads
    if sequence_parallel:
        plan["input_layernorm"] = SequenceParallel(sequence_dim=0)
        plan["post_attention_layernorm"] = SequenceParallel(sequence_dim=0)
    return plan


def _split_tokens(mesh: DeviceMesh, module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook of the language model under sequence parallelism: its input embeddings
    (whole row, the same on every tp rank) -> this rank's rows; backward all-gathers."""
    embeds, *rest = args
    tokens, tp = embeds.shape[0], mesh.size()
    if tokens % tp:
        raise TrainingError(
            f"sequence parallelism splits a packed row of {tokens} tokens over tp = {tp} ranks: "
            f"pad rows to a multiple of {tp} (ov_model.packing.pad_row(multiple_of={tp}))"
        )
    whole = DTensor.from_local(embeds, mesh, [Replicate()], run_check=False)
    return (whole.redistribute(mesh, [Shard(0)]).to_local(), *rest), kwargs


def _reduce_partial_gradients(module: nn.Module) -> None:
    """Make every Replicate parameter of `module` receive a Replicate gradient: a norm applied
    to a shard (of tokens, of heads) gives its weight a Partial gradient (each rank's part)."""
    for parameter in module.parameters():
        if (
            parameter.requires_grad
            and isinstance(parameter, DTensor)
            and all(isinstance(p, Replicate) for p in parameter.placements)
        ):
            parameter.register_hook(_replicate_gradient)


def _replicate_gradient(grad: torch.Tensor) -> torch.Tensor:
    if isinstance(grad, DTensor) and any(isinstance(p, Partial) for p in grad.placements):
        return grad.redistribute(placements=[Replicate()] * grad.device_mesh.ndim)
    return grad
