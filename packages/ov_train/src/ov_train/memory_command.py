"""`ov-train estimate-memory RECIPE`: the per-GPU memory of a recipe on N GPUs, as a table.

One column per activation-checkpointing mode (none, full, selective every
`parallel.checkpoint_every`; the recipe's own mode is starred), one row per line of
`ov_train.memory_estimate` (its docstring states the formula and every assumption), in GiB,
and whether the total fits `--gpu-memory-gib`. The layout comes from the recipe's `parallel`
section, changed like any recipe value with `--set parallel.dp_replicate=2`; `--gpus` may be
given several times for one table per world size. Nothing is allocated: the model is described
by its config alone, so the 8B estimate answers at once on a laptop.
"""

import click

from ov_train.commands import CONTEXT, _user_errors
from ov_train.planning_cli import (
    MEMORY_ROWS,
    echo_table,
    recipe_sizing_options,
    workload_options,
)


@click.command("estimate-memory", context_settings=CONTEXT)
@click.argument("recipe")
@recipe_sizing_options(
    output="table",
    set_example="--set parallel.dp_replicate=2 --set train.micro_batch_tokens=16384",
)
@workload_options(
    tokens_per_image_note="one ViT class token per image",
    supervised_note="rows kept by the loss head",
)
def estimate_memory_command(
    recipe: str,
    gpus: tuple[int, ...],
    overrides: tuple[str, ...],
    gpu_memory_gib: float,
    image_fraction: float,
    tokens_per_image: int,
    supervised_fraction: float | None,
) -> None:
    """Estimate the per-GPU memory of training RECIPE (a name from `ov-train recipes` or a TOML
    file) on --gpus GPUs, with and without activation checkpointing."""
    with _user_errors():
        from ov_train.config_io import resolve_recipe

        resolved = resolve_recipe(recipe, overrides)
        for index, world_size in enumerate(gpus):
            if index:
                click.echo()
            _print_table(
                resolved,
                world_size,
                gpu_memory_gib,
                image_token_fraction=image_fraction,
                tokens_per_image=tokens_per_image,
                supervised_fraction=supervised_fraction,
            )


def _print_table(recipe, world_size: int, gpu_memory_gib: float, **workload) -> None:
    import msgspec

    from ov_train.config import ACTIVATION_CHECKPOINTING
    from ov_train.memory_estimate import (
        GIB,
        estimate_recipe_memory,
        parameter_counts,
        recipe_model_config,
    )

    estimates = {}
    for mode in ACTIVATION_CHECKPOINTING:
        parallel = msgspec.structs.replace(recipe.parallel, activation_checkpointing=mode)
        variant = msgspec.structs.replace(recipe, parallel=parallel)
        estimates[mode] = estimate_recipe_memory(variant, world_size, **workload)
    first = estimates["none"]
    layout, data = first.layout, first.workload
    every = recipe.parallel.checkpoint_every
    names = {"none": "AC none", "full": "AC full", "selective": f"AC every {every}"}
    own = recipe.parallel.activation_checkpointing
    header = ["per GPU, GiB"] + [
        names[mode] + ("*" if mode == own else "") for mode in ACTIVATION_CHECKPOINTING
    ]
    rows = [
        [label] + [f"{value(e) / GIB:.1f}" for e in estimates.values()]
        for label, value in MEMORY_ROWS
    ]
    rows.append(
        [f"fits {gpu_memory_gib:g} GiB"]
        + ["yes" if e.fits(gpu_memory_gib) else "no" for e in estimates.values()]
    )
    config = recipe_model_config(recipe)
    counts = parameter_counts(config)
    click.echo(
        f"{recipe.name}: {counts.total / 1e9:.2f}B parameters, trains "
        f"{','.join(recipe.model.trainable)}, dtype {recipe.train.dtype}"
    )
    model_parallel = "".join(
        f" x {name} {degree}"
        for name, degree in (("cp", layout.cp), ("tp", layout.tp), ("pp", layout.pp))
        if degree > 1
    )
    click.echo(
        f"{world_size} GPUs: dp_replicate {layout.dp_replicate} x dp_shard {layout.dp_shard}"
        f"{model_parallel}, reshard_after_forward {str(layout.reshard_after_forward).lower()}"
        + (" (pipeline rank 0; `ov-train plan-parallel` shows every rank)" if layout.pp > 1 else "")
    )
    supervised = data.supervised_fraction
    click.echo(
        f"micro-batch {data.micro_batch_tokens} tokens: {data.image_token_fraction:.0%} image "
        f"tokens ({data.image_tokens * config.merge_size**2} ViT patches, {data.images} images), "
        f"{data.supervised_tokens} supervised"
        + (" (every text token)" if supervised is None else "")
    )
    echo_table(header, rows)
    click.echo("* the recipe's parallel.activation_checkpointing")
