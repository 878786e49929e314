"""The per-rank memory model (`memory_estimate`, as `ov-train plan-parallel` prints it) against a
real CPU training step of the tiny model, within 10% (the issue asks 20%; measured: parameters,
gradients and states exact, activations within 2.1% on every rank): in one process, and on each
rank of 2-process worlds sharded by FSDP2 (dp_shard 2), tensor + sequence parallel (tp 2) and
context parallel (cp 2, all-gather and ring attention).

Measured, per rank, on one packed row of about 600 tokens (fp32, no activation checkpointing):
- activations: the bytes of the distinct storages autograd saves for backward during the
  forward (`saved_tensors_hooks`, deduplicated by storage; parameters, which FSDP2 and DTensor
  hand to the matmuls, are not activations and are left out);
- parameters, gradients, AdamW states: the bytes of this rank's local tensors (shards) after
  one optimizer step (gradients just before it).
Pipeline parallel (pp 2, 1F1B and Interleaved1F1B, 4 micro-batches through the real schedule)
is held to the estimate's micro-batches in flight: there the PEAK of the saved tensors alive at
once is measured (a saved tensor dies when its micro-batch's backward frees it), on each rank
(measured: within 3.6%; the interleaved rank 0 peaks after the warm-up, with 4 micro-batches of
its ViT chunk and 1 of its other chunk in flight, as the estimate's simulated order says). The
zero-bubble schedules (InterleavedZeroBubble; ZBV from torch 2.15) are held below the estimate's
upper bound and above half of it (measured: 0.68-0.79 of it); InterleavedZeroBubble still holds
some saved tensors (5 MB on rank 0) after its step returns.
The estimate models the GPU attention kernels; the CPU varlen path (one process, dp, tp) also
keeps a scattered copy of each attention output, added to the estimate here as the existing
single-process activation test does. Context parallel attention is ov_train's own and keeps
exactly what the estimate counts.
"""

import dataclasses
import weakref

import pytest
import torch
from torch.distributed.tensor import DTensor
from torch.torch_version import TorchVersion

from ov_model import PRESETS, LlavaOV
from ov_model.packing import IGNORE_INDEX, PackedBatch, pad_row, shifted_targets
from ov_train.distributed.pipeline import build_pipeline
from ov_train.memory_estimate import Layout, Workload, estimate_memory
from ov_train.memory_loader import PackedMicroBatch
from ov_train.optim import build_optimizer, freeze
from ov_train.parallel import SingleProcess, init_world, parallelize
from ov_train.source import model_inputs

pytestmark = pytest.mark.dist

TINY = PRESETS["tiny"]
TOLERANCE = 0.10
LAYOUTS = {
    "dp_shard 2": ("parallel.dp_shard=2",),
    "tp 2": ("parallel.tp=2", "parallel.dp_shard=1", "parallel.sequence_parallel=true"),
    "cp 2 allgather": ("parallel.cp=2", "parallel.dp_shard=1", "parallel.cp_attention=allgather"),
    "cp 2 ring": ("parallel.cp=2", "parallel.dp_shard=1", "parallel.cp_attention=ring"),
}


def _row(samples) -> PackedMicroBatch:
    """About 600 tokens of 24 random samples in one row, padded to a multiple of 4 (tp 2 with
    sequence parallelism, cp 2's zigzag halves)."""
    batch = pad_row(
        PackedBatch.from_samples(samples.make_samples(24, seed=7)),
        image_token_id=TINY.image_token_id,
        pad_token_id=0,
        patch_dim=TINY.vision.patch_dim,
        merge_size=TINY.merge_size,
        multiple_of=4,
    )
    return PackedMicroBatch(batch)


def _workload(batch: PackedBatch) -> Workload:
    tokens = batch.input_ids.numel()
    image_tokens = int((batch.input_ids == TINY.image_token_id).sum())
    images = int(batch.image_grid_thw.shape[0])
    supervised = int((shifted_targets(batch.labels, batch.cu_seqlens) != IGNORE_INDEX).sum())
    workload = Workload(
        micro_batch_tokens=tokens,
        image_token_fraction=image_tokens / tokens,
        tokens_per_image=image_tokens // images,
        supervised_fraction=supervised / tokens,
    )
    assert workload.image_tokens == image_tokens
    assert workload.supervised_tokens == supervised
    return workload


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor._local_tensor if isinstance(tensor, DTensor) else tensor


def _is_parameter(tensor: torch.Tensor) -> bool:
    tensor = tensor._base if tensor._base is not None else tensor
    return tensor.is_leaf and tensor.requires_grad


def measure_step(model: torch.nn.Module, recipe, batch: PackedMicroBatch) -> dict[str, int]:
    """One forward, backward and AdamW step of `model` (parallelized) on `batch`: the bytes
    this rank holds (see the module docstring)."""
    optimizer = build_optimizer(model, recipe)
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not _is_parameter(tensor):
            storage = _local(tensor).untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(**model_inputs(batch.batch, torch.device("cpu")), return_logits=False)
    out.loss_sum.backward()
    parameters = [p for p in model.parameters() if p.requires_grad]
    gradients = sum(_local(p.grad).nbytes for p in parameters)
    optimizer.step()
    states = sum(
        _local(value).nbytes
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value) and value.dim() > 0
    )
    return {
        "activations": sum(storages.values()),
        "parameters": sum(_local(p).nbytes for p in model.parameters()),
        "gradients": gradients,
        "optimizer": states,
    }


def _tiny_model() -> LlavaOV:
    torch.manual_seed(0)
    return LlavaOV(TINY).train()


def _cpu_attention_copies(workload: Workload, layout: Layout) -> int:
    """The CPU varlen path's extra copy of each attention output (see the module docstring):
    fp32, the LLM's heads / tp on each rank, the ViT's whole."""
    text, vision = TINY.text, TINY.vision
    vit_tokens = workload.image_tokens * TINY.merge_size**2 + workload.images
    llm = 0
    if layout.cp == 1:
        width = text.num_attention_heads * text.head_dim // layout.tp
        llm = text.num_hidden_layers * workload.micro_batch_tokens * width
    return 4 * (llm + vision.depth * vit_tokens * vision.hidden_size)


def _estimate(recipe, world_size: int, workload: Workload) -> dict[str, int]:
    layout = Layout.from_parallel(recipe.parallel, world_size)
    estimate = estimate_memory(TINY, workload, layout, dtype="fp32")
    return {
        "activations": estimate.activations.held + _cpu_attention_copies(workload, layout),
        "parameters": estimate.parameters,
        "gradients": estimate.gradients,
        "optimizer": estimate.optimizer,
    }


def _worker(rank, recipes, batch):
    results = {}
    for name, recipe in recipes.items():
        world = init_world(recipe.parallel, "cpu")
        model = _tiny_model()
        freeze(model, recipe.model.trainable)
        results[name] = measure_step(parallelize(model, recipe, world), recipe, batch)
    return results


def _assert_within(measured: dict[str, int], estimated: dict[str, int], where: str) -> None:
    for line in (*measured, "total"):
        got = sum(measured.values()) if line == "total" else measured[line]
        want = sum(estimated.values()) if line == "total" else estimated[line]
        assert abs(got / want - 1) <= TOLERANCE, f"{where}, {line}: measured {got}, est. {want}"


def test_memory_model_matches_a_real_step_in_one_process_within_10_percent(make_recipe, samples):
    recipe = make_recipe("train.dtype=fp32")
    batch = _row(samples)
    model = parallelize(_tiny_model(), recipe, SingleProcess())
    measured = measure_step(model, recipe, batch)
    _assert_within(measured, _estimate(recipe, 1, _workload(batch.batch)), "one process")


def test_memory_model_matches_every_rank_of_fsdp_tp_and_cp_within_10_percent(
    dist, make_recipe, samples
):
    recipes = {
        name: make_recipe("train.dtype=fp32", "parallel.timeout_s=60", *overrides)
        for name, overrides in LAYOUTS.items()
    }
    batch = _row(samples)
    workload = _workload(batch.batch)
    results = dist.run_workers(_worker, 2, recipes, batch)
    for name, recipe in recipes.items():
        estimated = _estimate(recipe, 2, workload)
        for rank, result in enumerate(results):
            _assert_within(result[name], estimated, f"{name}, rank {rank}")
    # what the parallelism divides really is divided: the comparison has teeth
    one = results[0]
    assert (
        one["dp_shard 2"]["optimizer"]
        < 0.6 * _estimate(make_recipe("train.dtype=fp32"), 1, workload)["optimizer"]
    )
    assert one["cp 2 ring"]["activations"] < one["cp 2 allgather"]["activations"]
    assert one["tp 2"]["activations"] < one["dp_shard 2"]["activations"]


# ------------------------------------------------------------------ pipeline: in-flight peak
PIPELINED = dataclasses.replace(TINY, text=dataclasses.replace(TINY.text, num_hidden_layers=4))
PIPELINES = {
    "pp 2 1F1B": ("parallel.pp=2", "parallel.dp_shard=1"),
    "pp 2 interleaved": (
        "parallel.pp=2",
        "parallel.dp_shard=1",
        "parallel.pp_schedule=Interleaved1F1B",
        "parallel.pp_stages_per_rank=2",
    ),
}
ZERO_BUBBLE = {
    "pp 2 interleaved zero bubble": (
        "parallel.pp=2",
        "parallel.dp_shard=1",
        "parallel.pp_schedule=InterleavedZeroBubble",
        "parallel.pp_stages_per_rank=2",
    ),
}
if TorchVersion(torch.__version__) >= "2.15":  # the V schedules fail on gloo before
    ZERO_BUBBLE["pp 2 ZBV"] = (
        "parallel.pp=2",
        "parallel.dp_shard=1",
        "parallel.pp_schedule=ZBVZeroBubble",
        "parallel.pp_stages_per_rank=2",
    )
PIPELINE_MICRO_BATCHES = 4


class _Saved:
    """What the pack hook hands autograd: it dies when autograd frees the saved tensor."""

    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class PeakSaved:
    """Bytes of the distinct storages autograd holds for backward, now and at the peak."""

    def __init__(self) -> None:
        self.holders: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.now = self.peak = 0

    def pack(self, tensor: torch.Tensor):
        if _is_parameter(tensor):
            return tensor
        storage = _local(tensor).untyped_storage()
        key = storage.data_ptr()
        if not self.holders.get(key):
            self.sizes[key] = storage.nbytes()
            self.now += storage.nbytes()
            self.peak = max(self.peak, self.now)
        self.holders[key] = self.holders.get(key, 0) + 1
        saved = _Saved(tensor)
        weakref.finalize(saved, self._release, key)
        return saved

    @staticmethod
    def unpack(saved):
        return saved.tensor if isinstance(saved, _Saved) else saved

    def _release(self, key: int) -> None:
        self.holders[key] -= 1
        if not self.holders[key]:
            self.now -= self.sizes.pop(key)


def _pipeline_worker(rank, recipes, batch):
    results = {}
    for name, recipe in recipes.items():
        world = init_world(recipe.parallel, "cpu")
        torch.manual_seed(0)
        model = LlavaOV(PIPELINED).train()
        freeze(model, recipe.model.trainable)
        pipeline = build_pipeline(model, recipe, world)
        supervised = int((shifted_targets(batch.labels, batch.cu_seqlens) != IGNORE_INDEX).sum())
        peak = PeakSaved()
        # distinct copies: a real step's micro-batches share no pixel storage
        batches = [
            dataclasses.replace(batch, pixel_values=batch.pixel_values.clone())
            for _ in range(PIPELINE_MICRO_BATCHES)
        ]
        with torch.autograd.graph.saved_tensors_hooks(peak.pack, peak.unpack):
            pipeline.run(batches, supervised * PIPELINE_MICRO_BATCHES, step=1)
        results[name] = {"peak": peak.peak, "left": peak.now}
    return results


def _pipeline_estimate(recipe, workload: Workload, pp_rank: int) -> int:
    layout = Layout.from_parallel(
        recipe.parallel, recipe.parallel.pp, micro_batches=PIPELINE_MICRO_BATCHES
    )
    estimate = estimate_memory(PIPELINED, workload, layout, dtype="fp32", pp_rank=pp_rank)
    # the CPU varlen path's attention-output copies of the stages in flight (the ViT's on 0)
    text, vision = PIPELINED.text, PIPELINED.vision
    flights = estimate.activations.stages_in_flight
    per_stage = layout.stage_layers(text.num_hidden_layers)
    width = text.num_attention_heads * text.head_dim
    copies = sum(n * per_stage[s] for s, n in flights.items()) * workload.micro_batch_tokens * width
    vit_tokens = workload.image_tokens * TINY.merge_size**2 + workload.images
    copies += flights.get(0, 0) * vision.depth * vit_tokens * vision.hidden_size
    return estimate.activations.held + 4 * copies


def test_pipeline_ranks_hold_the_estimated_micro_batches_in_flight(dist, make_recipe, samples):
    row = _row(samples).batch
    budget = row.input_ids.numel()
    recipes = {
        name: make_recipe(
            "train.dtype=fp32",
            "parallel.timeout_s=60",
            f"train.micro_batch_tokens={budget}",
            f"train.grad_accumulation={PIPELINE_MICRO_BATCHES}",
            *overrides,
        )
        for name, overrides in {**PIPELINES, **ZERO_BUBBLE}.items()
    }
    length = recipes["pp 2 1F1B"].parallel.static_row_tokens(budget)
    batch = pad_row(
        row,
        image_token_id=TINY.image_token_id,
        pad_token_id=0,
        patch_dim=TINY.vision.patch_dim,
        merge_size=TINY.merge_size,
        length=length,
    )
    workload = _workload(batch)
    results = dist.run_workers(_pipeline_worker, 2, recipes, batch)
    for name, recipe in recipes.items():
        for rank, result in enumerate(results):
            measured, estimated = result[name]["peak"], _pipeline_estimate(recipe, workload, rank)
            where = f"{name}, rank {rank}: measured peak {measured}, estimated {estimated}"
            if name in ZERO_BUBBLE:  # an upper bound, not loose by more than 2x
                assert estimated / 2 <= measured <= estimated, where
            else:
                assert abs(measured / estimated - 1) <= TOLERANCE, where
                assert result[name]["left"] == 0, f"{name}, rank {rank}: saved tensors left"
