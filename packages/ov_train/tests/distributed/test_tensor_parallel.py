"""Tensor (+ sequence) parallelism against one process on the same global batch.

One 2-process launch checks, in the same forked processes: the vocabulary-parallel loss against
`cross_entropy_sum` (loss and gradients, chunked, with and without sequence parallelism, no
supervised row), training through the real `train_step` with tp = 2 (without sequence
parallelism, and with it plus activation checkpointing) against one process (loss equal,
gradients rtol 1e-5, q_norm / k_norm included) and in bf16 (FSDP2's mixed precision), the
placements of every kind of parameter (the ViT off the tp mesh), the heads each rank's attention
sees, replicated-parameter gradients identical (and Replicate, never Partial) on both tp ranks,
the error for a row that does not split over tp, and a DCP checkpoint saved under tp = 2 loaded
under dp_shard = 2 (bit-identical states). A `slow` 4-process launch checks FSDP x TP
(dp_shard 2 x tp 2, untied and tied embeddings) and CP x TP (cp 2 x tp 2: each cp rank's
share of the row split again over tp) against one process, and a dp x tp checkpoint loaded
under dp_shard = 4.

Every rank of a tp group holds the same micro-batches (the whole step when dp = 1); rows are
padded to a multiple of tp with `pad_row`'s padding sample, as the data path does.
"""

import dataclasses

import pytest
import torch
from torch.distributed.checkpoint.state_dict import get_state_dict
from torch.distributed.tensor import DTensor, Partial, Replicate

from ov_model import PRESETS, LlavaOV
from ov_model.loss import cross_entropy_sum
from ov_train.checkpointing import load_checkpoint, save_checkpoint
from ov_train.distributed.tensor_parallel import apply_tensor_parallel
from ov_train.distributed.vocab_parallel_loss import VocabParallelCrossEntropy
from ov_train.errors import TrainingError
from ov_train.memory_loader import PackedMicroBatch
from ov_train.optim import build_optimizer, freeze
from ov_train.parallel import forward_autocast, init_world, parallelize
from ov_train.schedule import build_scheduler
from ov_train.source import StepPlan, model_inputs
from ov_train.train_step import train_step

pytestmark = pytest.mark.dist

STEPS, MICRO_BATCHES = 2, 2
TP = 2
HEADS_SEEN: list[tuple[int, int, int]] = []
"""(tokens, query heads, key/value heads) each attention call of this process saw."""


def tiny_model() -> LlavaOV:
    torch.manual_seed(0)
    return LlavaOV(PRESETS["tiny"])


def tied_model() -> LlavaOV:
    """The tiny preset with the token embedding as output head (as the 3B)."""
    torch.manual_seed(0)
    config = PRESETS["tiny"]
    return LlavaOV(config.replace(text=dataclasses.replace(config.text, tie_word_embeddings=True)))


def recording_model() -> LlavaOV:
    """`tiny_model` whose attention records the heads it is given (in HEADS_SEEN)."""
    model = tiny_model()
    for layer in model.language_model.layers:
        layer.self_attn.register_forward_pre_hook(_record_heads)
    return model


def _record_heads(module, args):
    x, cos, sin, attend = args

    def recording(q, k, v):
        HEADS_SEEN.append((q.shape[0], q.shape[1], k.shape[1]))
        return attend(q, k, v)

    return x, cos, sin, recording


def step_batches(
    dist, samples, micro_batches: int = MICRO_BATCHES, multiple_of: int = TP
) -> list[list[PackedMicroBatch]]:
    """STEPS steps of `micro_batches` rows of 3 samples, every row padded to a multiple of
    `multiple_of` (and given a padding image when it has none), as the data path pads for
    sequence parallelism; odd unpadded lengths among them, so the padding is exercised."""
    config = PRESETS["tiny"]
    steps = []
    for step in range(STEPS):
        rows = samples.make_samples(3 * micro_batches, seed=step)
        steps.append(
            [
                dist.padded_row(rows[i : i + 3], config, multiple_of=multiple_of)
                for i in range(0, len(rows), 3)
            ]
        )
    return steps


def _recipe(make_recipe, *overrides, global_batch: int = MICRO_BATCHES, base: str = "stage2-tiny"):
    return make_recipe(
        "parallel.timeout_s=60",
        "train.clip_grad_norm=0",
        "train.dtype=fp32",
        f"train.grad_accumulation={global_batch}",
        *overrides,
        base=base,
    )


# ------------------------------------------------------------------- the vocabulary-parallel loss
def _loss_case(seed: int, rows: int):
    """Whole hidden states, head and supervised rows/targets (the same on every rank)."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(10, 16, generator=generator)
    head = torch.randn(24, 16, generator=generator)
    chosen = torch.randperm(10, generator=generator)[:rows].sort().values
    targets = torch.randint(0, 24, (rows,), generator=generator)
    return hidden, head, chosen, targets


def _vocab_parallel_loss(tp_mesh, rank: int) -> dict:
    """Loss and whole gradients of the vocabulary-parallel CE for each (rows, sequence
    parallel) case; the head is this rank's rows of the whole one (DTensor Shard(0))."""
    from torch.distributed.tensor import Shard, distribute_tensor

    results = {}
    for rows in (7, 0):
        for sequence_parallel in (False, True):
            hidden, head, chosen, targets = _loss_case(rows, rows)
            weight = distribute_tensor(head, tp_mesh, [Shard(0)]).requires_grad_()
            local = hidden.chunk(TP)[rank] if sequence_parallel else hidden
            local = local.clone().requires_grad_()
            loss_function = VocabParallelCrossEntropy(
                tp_mesh, sequence_parallel=sequence_parallel, chunk_size=3
            )
            loss = loss_function(local, weight, chosen, targets)
            (2.0 * loss).backward()
            results[rows, sequence_parallel] = (
                loss.detach(),
                local.grad,
                weight.grad.full_tensor(),
            )
    return results


def _check_vocab_parallel_loss(results, rank: int) -> None:
    for (rows, sequence_parallel), (loss, hidden_grad, head_grad) in results.items():
        hidden, head, chosen, targets = _loss_case(rows, rows)
        hidden.requires_grad_()
        head.requires_grad_()
        want = cross_entropy_sum(hidden, head, chosen, targets)
        (2.0 * want).backward()
        expected_hidden = hidden.grad.chunk(TP)[rank] if sequence_parallel else hidden.grad
        case = f"rows {rows}, sequence parallel {sequence_parallel}"
        torch.testing.assert_close(loss, want.detach(), rtol=1e-6, atol=1e-6, msg=case)
        torch.testing.assert_close(hidden_grad, expected_hidden, rtol=1e-5, atol=1e-6, msg=case)
        expected_head = torch.zeros_like(head) if head.grad is None else head.grad  # no rows
        torch.testing.assert_close(head_grad, expected_head, rtol=1e-5, atol=1e-6, msg=case)
        if rows:
            assert float(loss) > 1.0, case
            assert head_grad.abs().sum() > 0, case


# ------------------------------------------------------------------------ one 2-process launch
def _replicated_gradients(world, batch) -> dict:
    """After one backward of a tp = 2 + SP model (no FSDP): each replicated parameter's local
    gradient and its placements."""
    model = apply_tensor_parallel(tiny_model().train(), world.mesh["tp"], sequence_parallel=True)
    model(**model_inputs(batch.batch, world.device), return_logits=False).loss_sum.backward()
    gradients = {}
    for name, parameter in model.named_parameters():
        grad = parameter.grad
        if isinstance(grad, DTensor):
            if not all(isinstance(p, Replicate | Partial) for p in grad.placements):
                continue  # sharded over tp: each rank holds its own part
            gradients[name] = (tuple(map(str, grad.placements)), grad.to_local().clone())
        else:
            gradients[name] = ("plain", grad.clone())
    return gradients


def _unsplittable_row_error(dist, world, samples) -> str:
    model = apply_tensor_parallel(tiny_model(), world.mesh["tp"], sequence_parallel=True)
    config = PRESETS["tiny"]
    rows = (dist.padded_row(samples.make_samples(3, seed=seed), config) for seed in range(10, 30))
    batch = next(row for row in rows if row.batch.input_ids.numel() % TP == 1)
    with pytest.raises(TrainingError) as error:
        model(**model_inputs(batch.batch, world.device), return_logits=False)
    return str(error.value)


def _state(model, optimizer) -> dict[str, torch.Tensor]:
    """Whole model and optimizer tensors by name (collective: every rank calls it)."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {f"model.{k}": v for k, v in model_state.items()}
    for name, values in optimizer_state["state"].items():
        state.update({f"optimizer.{name}.{k}": v for k, v in values.items()})
    return {
        k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
        for k, v in state.items()
    }


def _trained(recipe, world, batches, factory=tiny_model):
    model = factory().to(world.device).train()
    freeze(model, recipe.model.trainable)
    model = parallelize(model, recipe, world)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe)
    for step_batch in batches:
        _train_one(model, optimizer, scheduler, recipe, world, step_batch)
    return model, optimizer, scheduler


def _checkpoint_across_layouts(save_recipe, load_recipe, batches, folder) -> dict:
    """Train one step under `save_recipe`'s mesh and save; load into a differently seeded model
    under `load_recipe`'s mesh; the whole states saved and loaded."""
    world = init_world(save_recipe.parallel, "cpu")
    model, optimizer, scheduler = _trained(save_recipe, world, batches[:1])
    path = save_checkpoint(
        folder,
        1,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        data_state={},
        rng_state={},
        recipe=save_recipe,
        model_config=model.config,
        processor_dir=None,
        world=world,
        keep_last=1,
    )
    saved = _state(model, optimizer)
    world = init_world(load_recipe.parallel, "cpu")
    torch.manual_seed(1)
    other = LlavaOV(PRESETS["tiny"]).train()
    freeze(other, load_recipe.model.trainable)
    other = parallelize(other, load_recipe, world)
    other_optimizer = build_optimizer(other, load_recipe)
    other_scheduler = build_scheduler(other_optimizer, load_recipe)
    # one step so the optimizer holds states to be overwritten
    _train_one(other, other_optimizer, other_scheduler, load_recipe, world, batches[1])
    before = _state(other, other_optimizer)
    load_checkpoint(
        path, model=other, optimizer=other_optimizer, scheduler=other_scheduler, world=world
    )
    return {"saved": saved, "before": before, "loaded": _state(other, other_optimizer)}


def _train_one(model, optimizer, scheduler, recipe, world, step_batch):
    train_step(
        model,
        optimizer,
        scheduler,
        StepPlan.of(_data_share(step_batch, world)),
        world=world,
        device=world.device,
        autocast=forward_autocast(recipe, world),
        clip_grad_norm=0.0,
        step=1,
    )


def _data_share(step_batch, world):
    return step_batch[world.data_rank :: world.data_size]


def _two_process_worker(rank, dist, recipes, checkpoint_recipes, batches, samples, folder):
    world = init_world(recipes["tp"].parallel, "cpu")
    facts = {"loss": _vocab_parallel_loss(world.mesh["tp"], world.coordinate("tp"))}
    facts["replicated"] = _replicated_gradients(world, batches[0][0])
    facts["unsplittable"] = _unsplittable_row_error(dist, world, samples)
    runs = {}
    for name, recipe in recipes.items():
        HEADS_SEEN.clear()
        runs[name] = dist.train_distributed(recording_model, recipe, batches)
        facts[f"heads_{name}"] = list(HEADS_SEEN)
    facts["checkpoint"] = _checkpoint_across_layouts(*checkpoint_recipes, batches, folder)
    return {"facts": facts, "runs": runs}


def test_tensor_and_sequence_parallel_train_like_one_process(dist, make_recipe, samples, tmp_path):
    batches = step_batches(dist, samples)
    tp = ("parallel.tp=2", "parallel.dp_shard=1")
    recipes = {
        "tp": _recipe(make_recipe, *tp, "parallel.sequence_parallel=false"),
        "tp_sp_ac": _recipe(
            make_recipe,
            *tp,
            "parallel.sequence_parallel=true",
            "parallel.activation_checkpointing=full",
        ),
        "tp_sp_bf16": _recipe(make_recipe, *tp, "train.dtype=bf16"),
        # Stage 1: only the projector trains, the tp-sharded LLM stays frozen
        "tp_stage1": _recipe(make_recipe, *tp, base="stage1-tiny"),
    }
    checkpoint_recipes = (recipes["tp_sp_ac"], _recipe(make_recipe, "parallel.dp_shard=2"))
    results = dist.run_workers(
        _two_process_worker,
        2,
        dist,
        recipes,
        checkpoint_recipes,
        batches,
        samples,
        tmp_path / "checkpoints",
    )

    # the vocabulary-parallel loss alone
    for rank, result in enumerate(results):
        _check_vocab_parallel_loss(result["facts"]["loss"], rank)

    # training through train_step, against one process on the same global batch
    reference = dist.train_one_process(tiny_model, _recipe(make_recipe), batches)
    stage1_reference = dist.train_one_process(
        tiny_model, _recipe(make_recipe, base="stage1-tiny"), batches
    )
    for result in results:
        runs = result["runs"]
        dist.assert_same_training(runs["tp"], reference, learning_rates=False)
        dist.assert_same_training(runs["tp_sp_ac"], reference, learning_rates=False)
        _assert_tp_layouts(runs["tp_sp_ac"]["layouts"])
        stage1 = runs["tp_stage1"]
        dist.assert_same_training(stage1, stage1_reference, learning_rates=False)
        assert {name.split(".")[0] for name in stage1["gradients"][0]} == {"projector"}
        bf16 = runs["tp_sp_bf16"]
        assert bf16["losses"] != reference["losses"]  # the forward did run in bf16
        assert bf16["losses"] == pytest.approx(reference["losses"], rel=2e-2)
        for got, want in zip(bf16["gradients"], reference["gradients"], strict=True):
            assert dist.cosine(got, want) >= 0.999

    # each rank's attention sees its share of the heads over the whole row
    config = PRESETS["tiny"].text
    tokens = {b.batch.input_ids.numel() for step in batches for b in step}
    for result, name in ((r, n) for r in results for n in ("tp", "tp_sp_ac")):
        heads = result["facts"][f"heads_{name}"]
        # activation checkpointing recomputes each layer's forward in backward: twice as many
        passes = 2 if name == "tp_sp_ac" else 1
        assert len(heads) == passes * STEPS * MICRO_BATCHES * config.num_hidden_layers
        assert {(q, kv) for _, q, kv in heads} == {
            (config.num_attention_heads // TP, config.num_key_value_heads // TP)
        }
        assert {t for t, _, _ in heads} == tokens

    # replicated parameters (ViT, projector, norms, q/k norms): the same whole gradient on both
    replicated = [r["facts"]["replicated"] for r in results]
    assert replicated[0].keys() == replicated[1].keys()
    assert any(name.startswith("vision.") for name in replicated[0])
    assert "language_model.layers.0.self_attn.q_norm.weight" in replicated[0]
    for name, (placements, grad) in replicated[0].items():
        assert "Partial" not in str(placements), name
        assert torch.equal(grad, replicated[1][name][1]), name
        assert grad.abs().sum() > 0, name

    # a row that does not split over tp
    for result in results:
        message = result["facts"]["unsplittable"]
        assert "packed row of" in message
        assert "multiple_of=2" in message

    # a checkpoint saved under tp = 2, loaded under dp_shard = 2: bit-identical states
    checkpoint = results[0]["facts"]["checkpoint"]
    _assert_loaded_exactly(checkpoint)


def _assert_tp_layouts(layouts: dict[str, str]) -> None:
    """The tp placement (the last one, after FSDP2's) of each kind of parameter; the ViT and
    the projector are not on the tp mesh at all."""
    layer = "language_model.layers.0."
    for name, placement in {
        "self_attn.q_proj.weight": "Shard(dim=0)",
        "self_attn.k_proj.weight": "Shard(dim=0)",
        "mlp.up_proj.weight": "Shard(dim=0)",
        "self_attn.o_proj.weight": "Shard(dim=1)",
        "mlp.down_proj.weight": "Shard(dim=1)",
        "self_attn.q_norm.weight": "Replicate()",
        "self_attn.k_norm.weight": "Replicate()",
        "input_layernorm.weight": "Replicate()",
    }.items():
        assert layouts[layer + name].startswith("('dp_shard', 'tp')"), name
        assert layouts[layer + name].endswith(f"{placement})"), layouts[layer + name]
    for name in ("language_model.embed_tokens.weight", "lm_head.weight"):
        assert layouts[name].endswith("Shard(dim=0))"), name
    for name in ("vision.blocks.0.attn.qkv.weight", "projector.mlp.0.weight"):
        assert "'tp'" not in layouts[name], name


def _assert_loaded_exactly(checkpoint):
    saved, before, loaded = checkpoint["saved"], checkpoint["before"], checkpoint["loaded"]
    assert saved.keys() == loaded.keys()
    assert any(k.startswith("optimizer.") and k.endswith("exp_avg") for k in saved)
    for name, value in saved.items():
        assert torch.equal(loaded[name], value), name
    assert not all(torch.equal(before[name], saved[name]) for name in saved if "weight" in name)


# ------------------------------------------------------------------------------ FSDP x TP, 4 procs
def _four_process_worker(rank, dist, recipes, batches, folder):
    run = dist.train_distributed(tiny_model, recipes["fsdp_tp"], batches)
    tied = dist.train_distributed(tied_model, recipes["fsdp_tp"], batches)
    context = dist.train_distributed(tiny_model, recipes["cp_tp"], batches)
    checkpoint = _checkpoint_across_layouts(recipes["fsdp_tp"], recipes["dp"], batches, folder)
    return {"run": run, "tied": tied, "context": context, "checkpoint": checkpoint}


@pytest.mark.slow
def test_fsdp_and_context_by_tensor_parallel_on_four_processes_train_like_one_process(
    dist, make_recipe, samples, tmp_path
):
    # rows split over cp = 2 (zigzag: 4 chunks), each cp share over tp = 2 (SP): a multiple of 4
    batches = step_batches(dist, samples, micro_batches=4, multiple_of=4)
    recipes = {
        "fsdp_tp": _recipe(make_recipe, "parallel.dp_shard=2", "parallel.tp=2", global_batch=4),
        "cp_tp": _recipe(
            make_recipe, "parallel.dp_shard=1", "parallel.cp=2", "parallel.tp=2", global_batch=4
        ),
        "dp": _recipe(make_recipe, "parallel.dp_shard=4", global_batch=4),
    }
    results = dist.run_workers(_four_process_worker, 4, dist, recipes, batches, tmp_path)
    one = _recipe(make_recipe, global_batch=4)
    reference = dist.train_one_process(tiny_model, one, batches)
    tied = dist.train_one_process(tied_model, one, batches)
    for result in results:
        run = result["run"]
        dist.assert_same_training(run, reference, learning_rates=False)
        dist.assert_same_training(result["tied"], tied, learning_rates=False)
        dist.assert_same_training(result["context"], reference, learning_rates=False)
        assert "lm_head.weight" not in result["tied"]["parameters"]
        _assert_tp_layouts(run["layouts"])
    _assert_loaded_exactly(results[0]["checkpoint"])
