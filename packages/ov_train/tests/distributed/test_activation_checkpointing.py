"""Activation checkpointing recomputes the chosen layers in backward, with the same gradients and
the same parameter names."""

import copy

import pytest
import torch

from ov_train.distributed.activation_checkpointing import (
    apply_activation_checkpointing,
    checkpointed_layers,
    is_checkpointed,
    layer_stacks,
)


def _forward_counts(model):
    """Calls of each ViT block's and decoder layer's MLP (one per forward of the layer; a pre-hook,
    as the recompute stops once it has rebuilt the tensors backward needs)."""
    counts = {}
    for stack_index, stack in enumerate(layer_stacks(model)):
        for index, layer in enumerate(stack):
            key = (stack_index, index)
            counts[key] = 0

            def hook(module, args, key=key):
                counts[key] += 1

            layer.mlp.register_forward_pre_hook(hook)
    return counts


def _loss_and_gradients(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch.batch.model_inputs(), return_logits=False)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("mode", "every", "expected"),
    [
        ("none", 2, []),
        ("full", 2, [0, 1, 2, 3]),
        ("selective", 2, [0, 2]),
        ("selective", 3, [0, 3]),
    ],
)
def test_modes_select_every_nth_layer_of_each_stack(mode, every, expected):
    stack = [torch.nn.Linear(1, 1) for _ in range(4)]
    chosen = checkpointed_layers(stack, mode, every)
    assert [stack.index(layer) for layer in chosen] == expected


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointed_layers_recompute_with_identical_gradients_and_names(
    tiny_model, make_batches, mode
):
    batch = make_batches(1, 3, seed=4)[0]
    plain = copy.deepcopy(tiny_model)
    names = [name for name, _ in plain.named_parameters()]
    keys = list(plain.state_dict())
    want_loss, want = _loss_and_gradients(plain, batch)

    count = apply_activation_checkpointing(tiny_model, mode, 2)
    assert count == apply_activation_checkpointing(tiny_model, mode, 2)  # idempotent
    calls = _forward_counts(tiny_model)
    got_loss, got = _loss_and_gradients(tiny_model, batch)

    assert [name for name, _ in tiny_model.named_parameters()] == names
    assert list(tiny_model.state_dict()) == keys
    assert torch.equal(got_loss, want_loss)
    for name in names:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-9)
    recomputed = {key for key, n in calls.items() if n == 2}
    assert all(n in (1, 2) for n in calls.values())
    layers = [(s, i) for s, stack in enumerate(layer_stacks(tiny_model)) for i in range(len(stack))]
    expected = layers if mode == "full" else [(s, i) for s, i in layers if i % 2 == 0]
    assert recomputed == set(expected)
    assert count == len(expected)


def test_a_deep_copy_of_a_checkpointed_model_computes_with_its_own_parameters(
    tiny_model, make_batches
):
    batch = make_batches(1, 3, seed=5)[0]
    apply_activation_checkpointing(tiny_model, "full", 2)
    copy_ = copy.deepcopy(tiny_model)
    assert all(is_checkpointed(layer) for layer in copy_.language_model.layers)
    with torch.no_grad():
        for parameter in copy_.language_model.layers[0].parameters():
            parameter.mul_(0.5)
    original = tiny_model(**batch.batch.model_inputs(), return_logits=False).loss
    copied = copy_(**batch.batch.model_inputs(), return_logits=False).loss
    assert not torch.equal(original, copied)
    calls = []
    copy_.language_model.layers[0].mlp.register_forward_pre_hook(lambda m, a: calls.append(1))
    copy_(**batch.batch.model_inputs(), return_logits=False)
    assert calls == [1]
