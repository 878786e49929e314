"""Device-to-host syncs of a training micro-batch are a small fixed number, whatever the number of
layers and samples (issue 12).

On a GPU every read of a device value (`.item()`, `.tolist()`, `int(t)`, `if t:`, `nonzero`,
boolean indexing, `repeat_interleave` without `output_size`, `masked_select`, `unique`) stalls the
CPU until the GPU queue drains. On the CPU there is no queue, but the same reads pass through the
same places: a `TorchDispatchMode` sees the aten ops that read back, and `Tensor.tolist`/`item`/
`__bool__`/`__int__`/`__float__`/`__index__` are patched for the duration, because `.tolist()` of
a CPU tensor does not reach the dispatcher. The batch's host metadata is computed before counting
starts (in the loader, as in training), so what is counted is what the forward and backward read
from tensors that would live on the GPU.

Measured with `pytest -s` (it prints the counts): one micro-batch forward + backward, tiny preset:
with `PackedBatch.from_samples(..., image_token_id=, merge_size=)` metadata: 0 reads for 1 or 3
layers and 3 or 8 samples. The forward without metadata (what every micro-batch did before this
change) read 17 values with 1 layer and 21 with 3 (a `cu_seqlens.tolist()` per ViT and LLM layer
in the sdpa path, plus `int(cu...)`, the placeholder check's `.tolist()`, `nonzero`, boolean
indexing, `repeat_interleave`, `masked_scatter`); after it, without metadata, the model builds the
metadata itself from host copies: a constant 15 on the CPU, where host-side arithmetic on those
copies cannot be told apart from device reads (on a GPU: the 4-5 copies to the host).
"""

import collections
import contextlib
import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ov_model import PRESETS, LlavaOV
from ov_model.packing import PackedBatch
from ov_train.memory_loader import PackedMicroBatch
from ov_train.optim import build_optimizer, freeze
from ov_train.parallel import SingleProcess
from ov_train.schedule import build_scheduler
from ov_train.source import StepPlan, model_inputs
from ov_train.train_step import train_step

CPU = torch.device("cpu")
aten = torch.ops.aten
_READING_OPS = {
    aten._local_scalar_dense.default: "item",
    aten.nonzero.default: "nonzero",
    aten.masked_select.default: "masked_select",
    aten.masked_scatter.default: "masked_scatter",
    aten.masked_scatter_.default: "masked_scatter",
    aten._unique2.default: "unique",
    aten.unique_consecutive.default: "unique",
    aten.unique_dim.default: "unique",
}
_INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
_PYTHON_READS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__")


class HostReadCounter(TorchDispatchMode):
    """Counts the ops that read a tensor's values back to the host (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self.inside_python_read = 0
        self.enabled = True

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = self._reading(func, args, kwargs) if self.enabled else None
        if name is not None and not (name == "item" and self.inside_python_read):
            self.counts[name] += 1
        return func(*args, **kwargs)

    @staticmethod
    def _reading(func, args, kwargs) -> str | None:
        if func in _READING_OPS:
            return _READING_OPS[func]
        packet = func.overloadpacket
        if packet is aten.repeat_interleave and kwargs.get("output_size") is None:
            repeats = args[1] if len(args) > 1 else args[0]
            return "repeat_interleave" if isinstance(repeats, torch.Tensor) else None
        if packet in _INDEXING:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
                return f"{packet.__name__}[bool mask]"
        return None


@contextlib.contextmanager
def counting_host_reads():
    """A `HostReadCounter` active for the block, Tensor's Python-level reads patched too."""
    counter = HostReadCounter()
    originals = {name: getattr(torch.Tensor, name) for name in _PYTHON_READS}

    def patched(name):
        original = originals[name]

        def read(self, *args, **kwargs):
            counter.counts[f"Tensor.{name}"] += counter.enabled
            counter.inside_python_read += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                counter.inside_python_read -= 1

        return read

    with pytest.MonkeyPatch.context() as patch:
        for name in _PYTHON_READS:
            patch.setattr(torch.Tensor, name, patched(name))
        with counter:
            yield counter


def _model(layers: int) -> LlavaOV:
    config = PRESETS["tiny"]
    config = config.replace(
        text=dataclasses.replace(config.text, num_hidden_layers=layers),
        vision=dataclasses.replace(config.vision, depth=layers),
    )
    torch.manual_seed(0)
    return LlavaOV(config).train()


def _batch(model: LlavaOV, items: list, *, metadata: bool = True) -> PackedBatch:
    """`items` (conftest's random samples) packed, with host metadata or without."""
    if not metadata:
        return PackedBatch.from_samples(items)
    config = model.config
    return PackedBatch.from_samples(
        items, image_token_id=config.image_token_id, merge_size=config.merge_size
    )


def _micro_batch_reads(model: LlavaOV, batch: PackedBatch, *, with_metadata: bool = True):
    inputs = model_inputs(batch, CPU)
    if not with_metadata:
        inputs["metadata"] = None
    model.zero_grad()
    with counting_host_reads() as counter:
        out = model(**inputs, return_logits=False)
        (out.loss_sum / 7).backward()
    return counter


SHAPES = [(1, 3), (1, 8), (3, 3), (3, 8)]  # (layers, samples)


def test_the_counter_sees_each_kind_of_host_read():
    x = torch.arange(6)
    mask = x > 2
    with counting_host_reads() as counter:
        x.nonzero()
        x.tolist()
        int(x.sum())
        bool(x.any())
        x[mask]
        torch.repeat_interleave(x, x)
        torch.repeat_interleave(x, x, output_size=15)  # not a read: the size is given
        x.masked_select(mask)
    assert counter.total == 7, counter.counts


def test_a_micro_batch_with_host_metadata_reads_nothing_back_whatever_layers_and_samples(samples):
    counts = {}
    for layers, count in SHAPES:
        model = _model(layers)
        counter = _micro_batch_reads(model, _batch(model, samples.make_samples(count)))
        counts[layers, count] = +counter.counts
    print("host reads per micro-batch with metadata:", counts)
    assert all(c.total() == 0 for c in counts.values()), counts


def test_without_metadata_the_model_reads_a_fixed_number_whatever_layers_and_samples(samples):
    totals = {}
    for layers, count in SHAPES:
        model = _model(layers)
        batch = _batch(model, samples.make_samples(count))
        counter = _micro_batch_reads(model, batch, with_metadata=False)
        totals[layers, count] = counter.total
    print("host reads per micro-batch without metadata:", totals)
    assert len(set(totals.values())) == 1, totals
    assert next(iter(totals.values())) <= 20


def test_a_train_step_reads_back_a_fixed_number_per_step_not_per_micro_batch(make_recipe, samples):
    recipe = make_recipe()
    totals = {}
    for layers, micro_batches in [(1, 1), (1, 3), (3, 1), (3, 3)]:
        model = _model(layers)
        freeze(model, recipe.model.trainable)
        optimizer = build_optimizer(model, recipe)
        scheduler = build_scheduler(optimizer, recipe)
        batches = [
            PackedMicroBatch(_batch(model, samples.make_samples(4, seed)))
            for seed in range(micro_batches)
        ]
        plan = StepPlan.of(batches)
        with counting_host_reads() as counter:
            # AdamW keeps its step counts as CPU tensors and reads them per parameter: host
            # reads, not device syncs, on every device. Not counted.
            optimizer.register_step_pre_hook(lambda *_: setattr(counter, "enabled", False))
            optimizer.register_step_post_hook(lambda *_: setattr(counter, "enabled", True))
            train_step(
                model,
                optimizer,
                scheduler,
                plan,
                world=SingleProcess(),
                device=CPU,
                autocast=contextlib.nullcontext,
                clip_grad_norm=1.0,
                step=1,
            )
        totals[layers, micro_batches] = dict(+counter.counts)
    print("host reads per train_step (layers, micro-batches):", totals)
    assert len({tuple(sorted(c.items())) for c in totals.values()}) == 1, totals
    assert sum(totals[1, 1].values()) <= 8, totals


@pytest.mark.gpu
def test_a_cuda_micro_batch_with_host_metadata_makes_no_synchronizing_call(samples):
    import warnings

    synchronizing = {}
    for layers in (1, 2):
        model = _model(layers).cuda()
        batch = _batch(model, samples.make_samples(6))
        for attempt in ("warm-up", "counted"):
            inputs = model_inputs(batch, torch.device("cuda"))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    with torch.autocast("cuda", torch.bfloat16):
                        out = model(**inputs, return_logits=False)
                    out.loss_sum.backward()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            if attempt == "counted":
                synchronizing[layers] = [
                    str(w.message) for w in caught if "synchroniz" in str(w.message)
                ]
    print("synchronizing CUDA calls per micro-batch:", synchronizing)
    assert len(synchronizing[1]) == len(synchronizing[2]) <= 2, synchronizing
