"""The named recipes: Stage-1, Stage-1.5 and Stage-2 at the tiny, 4B and 8B sizes.

Values come from the LLaVA-OneVision-1.5 release (see `shared/brief/RECIPES.md`): the paper
(arXiv 2509.23661, "P"), the repository's Megatron quick-start scripts ("script") and its
DeepSpeed scripts ("ds"). The paper publishes no full hyper-parameter table, so most values are
script defaults. Where sources disagree we pick one and say why:

| value              | Stage-1 4B / 8B         | Stage-1.5 4B / 8B | Stage-2 4B / 8B | source |
|--------------------|-------------------------|-------------------|-----------------|--------|
| trainable          | projector               | all               | all             | P, s   |
| lr (every module)  | 1e-4                    | 1e-5              | 1e-5            | s (a)  |
| betas              | (0.9,0.99) / (0.9,0.95) | (0.9, 0.95)       | (0.9, 0.99)     | s      |
| weight decay       | 0 / 0.01                | 0.01              | 0               | s      |
| eps, clip          | 1e-5, 1.0               | 1e-5, 1.0         | 1e-5, 1.0       | s      |
| warmup fraction    | 0.002                   | 0.002             | 0.002           | s (b)  |
| min lr (cosine)    | 1e-6                    | 1e-6              | 1e-6            | s      |
| micro-batch tokens | 32768                   | 8192              | 32768           | (c)    |
| global batch       | 8                       | 16 / 8            | 224             | s (d)  |
| steps              | 2500 / 5000             | 20000             | 3500            | s (e)  |

P: the paper, s: script. Where the sources disagree:
(a) ds Stage-2 trains the vision encoder at 2e-6 and projector and LLM at 1e-5; we keep the
    script's single 1e-5 (`--set optim.lr_vision=2e-6` gives the ds variant).
(b) the ds scripts warm up for 3%.
(c) Stage-1: script. Stage-1.5: the paper ("packed offline to 8192 tokens", 8K context); the
    quick-start script uses 32768. Stage-2: not stated; the model's max positions, 32768.
(d) packed sequences per step. Stage-1.5 "16/8" is read as 4B / 8B; an early 4B script used
    112 (with 70000 steps). ds Stage-2: 128.
(e) an early 4B Stage-1.5 script: 70000.

`train.grad_accumulation` is the global batch, in packed sequences of `micro_batch_tokens` (one
per micro-batch); with data parallelism each of W ranks runs grad_accumulation / W of them.
Checkpoint every 500 steps, keep 3, are ours (the release states none). bf16 compute with fp32
master weights is the release's (`dtype = "auto"`).
The 4B/8B recipes checkpoint every layer's activations (`parallel.activation_checkpointing =
"full"`): by `ov-train estimate-memory` none of their Stage-1.5/2 runs fits 80 GB per GPU on 8
GPUs without it (8B Stage-2: about 383 GiB), and with it all do (8B Stage-2: about 54 GiB).

The tiny recipes are ours, for CPU runs in minutes (the quickstart, tests): the tiny preset,
learning rates raised for so short a run (1e-3 Stage-1, 5e-4 after, vision at a fifth of it as
the ds scripts do), 5% warmup, small token budgets, deterministic mode on. Their betas and
weight decay follow the 4B scripts.

Each recipe is built by a function of the size, so the table above is read in one place each.
"""

from ov_train.config import (
    MODULES,
    CheckpointConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    Recipe,
    ScheduleConfig,
    TrainConfig,
)

SIZES = ("tiny", "4b", "8b")
_RELEASE_SCHEDULE = ScheduleConfig(warmup_fraction=0.002, min_lr=1e-6)
_TINY_SCHEDULE = ScheduleConfig(warmup_fraction=0.05, min_lr=1e-5)
_TINY_CHECKPOINTS = CheckpointConfig(every=20, keep_last=2)
_RELEASE_PARALLEL = ParallelConfig(activation_checkpointing="full")


def _tiny_train(steps: int) -> TrainConfig:
    return TrainConfig(
        steps=steps, grad_accumulation=2, micro_batch_tokens=2048, seed=0, deterministic=True
    )


def stage1(size: str) -> Recipe:
    """Stage-1, language-image alignment: only the projector trains."""
    model = ModelConfig(preset=size, trainable=("projector",))
    description = "Stage-1 alignment (LLaVA-1.5 558K captions): projector only"
    if size == "tiny":
        return Recipe(
            name="stage1-tiny",
            stage="1",
            description=description + "; tiny CPU run",
            model=model,
            optim=OptimConfig(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0),
            schedule=_TINY_SCHEDULE,
            train=_tiny_train(60),
            checkpoint=_TINY_CHECKPOINTS,
        )
    four = size == "4b"
    return Recipe(
        name=f"stage1-{size}",
        stage="1",
        description=description,
        model=model,
        optim=OptimConfig(
            lr=1e-4,
            betas=(0.9, 0.99) if four else (0.9, 0.95),
            eps=1e-5,
            weight_decay=0.0 if four else 0.01,
        ),
        schedule=_RELEASE_SCHEDULE,
        train=TrainConfig(
            steps=2500 if four else 5000, grad_accumulation=8, micro_batch_tokens=32768
        ),
        parallel=_RELEASE_PARALLEL,
        checkpoint=CheckpointConfig(every=500, keep_last=3),
    )


def stage1_5(size: str) -> Recipe:
    """Stage-1.5, mid-training on the concept-balanced captions: all modules train."""
    model = ModelConfig(preset=size, trainable=MODULES)
    description = "Stage-1.5 mid-training (concept-balanced 85M captions): all modules"
    if size == "tiny":
        return Recipe(
            name="stage1_5-tiny",
            stage="1.5",
            description=description + "; tiny CPU run",
            model=model,
            optim=OptimConfig(lr=5e-4, lr_vision=1e-4, betas=(0.9, 0.95), weight_decay=0.01),
            schedule=_TINY_SCHEDULE,
            train=_tiny_train(60),
            checkpoint=_TINY_CHECKPOINTS,
        )
    return Recipe(
        name=f"stage1_5-{size}",
        stage="1.5",
        description=description,
        model=model,
        optim=OptimConfig(lr=1e-5, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.01),
        schedule=_RELEASE_SCHEDULE,
        train=TrainConfig(
            steps=20000, grad_accumulation=16 if size == "4b" else 8, micro_batch_tokens=8192
        ),
        parallel=_RELEASE_PARALLEL,
        checkpoint=CheckpointConfig(every=500, keep_last=3),
    )


def stage2(size: str) -> Recipe:
    """Stage-2, instruction tuning: all modules train."""
    model = ModelConfig(preset=size, trainable=MODULES)
    description = "Stage-2 instruction tuning (22M instructions + FineVision): all modules"
    if size == "tiny":
        return Recipe(
            name="stage2-tiny",
            stage="2",
            description=description + "; tiny CPU run",
            model=model,
            optim=OptimConfig(lr=5e-4, lr_vision=1e-4, betas=(0.9, 0.99), weight_decay=0.0),
            schedule=_TINY_SCHEDULE,
            train=_tiny_train(80),
            checkpoint=_TINY_CHECKPOINTS,
        )
    return Recipe(
        name=f"stage2-{size}",
        stage="2",
        description=description,
        model=model,
        optim=OptimConfig(lr=1e-5, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.0),
        schedule=_RELEASE_SCHEDULE,
        train=TrainConfig(steps=3500, grad_accumulation=224, micro_batch_tokens=32768),
        parallel=_RELEASE_PARALLEL,
        checkpoint=CheckpointConfig(every=500, keep_last=3),
    )


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for build in (stage1, stage1_5, stage2)
    for recipe in (build(size) for size in SIZES)
}
"""Every named recipe, by name (`stage1-4b`, `stage1_5-8b`, `stage2-tiny`, ...)."""
