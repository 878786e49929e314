"""`ov-train plan-parallel RECIPE --gpus N`: a run's plan on N GPUs, as a table, without a GPU.

One table, a column per world size (`--gpus`, repeatable) and pipeline rank (its dp / cp / tp
ranks hold the same), rows: the mesh, the parameter values a rank holds by formula and by the
dry run (the real `parallelize` on a fake process group, `parallel_dry_run`), the memory lines
of `memory_estimate`, the bytes it sends per optimizer step by kind, then the step's model
FLOPs, its time at `--mfu`, the send rate that would hide all communication behind that time,
and the days `--tokens` take (`plan_parallel` states every formula and assumption). The layout
is the recipe's `parallel` section, changed like any recipe value: `--set parallel.tp=2 --set
parallel.pp=2`.

`--release-stage1-5` plans the release's Stage-1.5 run instead (8B, 128 A800 80 GB, 8K packed;
see `RELEASE_STAGE1_5` for the layout and global batch assumed, as the release states neither)
and prints the estimate next to its reported 3.7 days.
"""

from dataclasses import dataclass

import click

from ov_train.commands import CONTEXT, _user_errors
from ov_train.planning_cli import (
    MEMORY_ROWS,
    echo_table,
    recipe_sizing_options,
    workload_options,
)


@dataclass(frozen=True)
class ReleaseRun:
    """A run the release reports, with the settings a plan of it assumes."""

    recipe: str
    gpus: int
    overrides: tuple[str, ...]
    days: float
    tokens: float
    note: str


RELEASE_STAGE1_5 = ReleaseRun(
    recipe="stage1_5-8b",
    gpus=128,
    overrides=("parallel.pp=2", "train.grad_accumulation=512"),
    days=3.7,
    tokens=64e9,
    note=(
        "release Stage-1.5: 8B on 128 A800 80 GB, 8K packed, 3.7 days. Assumed (the release "
        "states neither): PP 2 as its 8B Stage-2 and early 4B Stage-1.5 scripts, TP 1, CP 1, "
        "FSDP over the other 64 ranks; a global batch of 512 packed rows (4.2M tokens); 64B "
        "tokens, the release's total over all stages (an upper bound for Stage-1.5)."
    ),
)

_COMMUNICATION_ROWS = (
    ("FSDP all-gather (bf16)", "fsdp_all_gather"),
    ("FSDP reduce-scatter (fp32)", "fsdp_reduce_scatter"),
    ("replica all-reduce (fp32)", "replica_all_reduce"),
    ("tensor parallel", "tensor_parallel"),
    ("context parallel", "context_parallel"),
    ("pipeline", "pipeline"),
    ("total sent per step", "total"),
    ("of which between nodes", "between_nodes"),
)


@click.command("plan-parallel", context_settings=CONTEXT)
@click.argument("recipe", required=False)
@recipe_sizing_options(
    output="plan",
    set_example="--set parallel.tp=2 --set parallel.pp=2 --set train.grad_accumulation=512",
)
@click.option(
    "--peak-tflops",
    type=click.FloatRange(min=0, min_open=True),
    default=312.0,
    help="Dense bf16 peak of one GPU in TFLOP/s (A800/A100: 312; H100 SXM: 989).",
)
@click.option(
    "--gpus-per-node",
    type=click.IntRange(min=1),
    default=8,
    help="GPUs per node (NVLink); collectives over larger groups count as between nodes.",
)
@click.option(
    "--mfu",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.4,
    help="Model FLOPs utilisation the step time and the days assume.",
)
@click.option(
    "--tokens",
    type=click.FloatRange(min=0, min_open=True),
    default=64e9,
    show_default="64e9, the release's total over its stages",
    help="Packed tokens to train on, for the days row.",
)
@workload_options(
    tokens_per_image_note="one image per packed sample, square grids",
    supervised_note="rows the loss head computes",
)
@click.option(
    "--dry-run/--no-dry-run",
    default=True,
    help="Count each rank's parameters with the real parallelize on a fake process group "
    "(meta device, no memory); --no-dry-run prints the formula only.",
)
@click.option(
    "--release-stage1-5",
    is_flag=True,
    default=False,
    help="Plan the release's Stage-1.5 run (8B, 128 GPUs, 8K; assumed layout printed) and "
    "compare with its 3.7 days; replaces RECIPE and --gpus.",
)
def plan_parallel_command(
    recipe: str | None,
    gpus: tuple[int, ...],
    overrides: tuple[str, ...],
    gpu_memory_gib: float,
    peak_tflops: float,
    gpus_per_node: int,
    mfu: float,
    tokens: float,
    image_fraction: float,
    tokens_per_image: int,
    supervised_fraction: float | None,
    dry_run: bool,
    release_stage1_5: bool,
) -> None:
    """Plan training RECIPE (a name from `ov-train recipes` or a TOML file) on --gpus GPUs:
    per-rank memory, communication per step, FLOPs and days, without a GPU."""
    with _user_errors():
        from ov_train.config_io import resolve_recipe
        from ov_train.errors import RecipeError
        from ov_train.memory_estimate import Workload
        from ov_train.plan_parallel import Hardware, plan_parallel

        release = None
        if release_stage1_5:
            if recipe is not None:
                raise RecipeError(
                    f"--release-stage1-5 plans {RELEASE_STAGE1_5.recipe}; drop RECIPE "
                    f"({recipe}) or the flag"
                )
            release = RELEASE_STAGE1_5
            recipe, gpus = release.recipe, (release.gpus,)
            overrides = release.overrides + overrides
            tokens = release.tokens
        if recipe is None:
            raise RecipeError("give a RECIPE (see `ov-train recipes`) or --release-stage1-5")
        resolved = resolve_recipe(recipe, overrides)
        hardware = Hardware(
            gpu_memory_gib=gpu_memory_gib,
            peak_tflops=peak_tflops,
            mfu=mfu,
            gpus_per_node=gpus_per_node,
        )
        workload = Workload(
            micro_batch_tokens=resolved.train.micro_batch_tokens,
            image_token_fraction=image_fraction,
            tokens_per_image=tokens_per_image,
            supervised_fraction=supervised_fraction,
        )
        plans = [
            plan_parallel(
                resolved, world_size, hardware=hardware, workload=workload, measure=dry_run
            )
            for world_size in gpus
        ]
        _print_plans(plans, tokens)
        if release is not None:
            plan = plans[0]
            click.echo(
                f"release: {release.days:g} days; this plan: {plan.days(tokens):.2f} days at MFU "
                f"{mfu:.2f}; the release's days imply MFU "
                f"{plan.implied_mfu(tokens, release.days):.2f}"
            )
            click.echo(release.note)


def _layout(plan) -> str:
    shape, parallel = plan.shape, plan.recipe.parallel
    text = f"{shape.pp}/{shape.dp_replicate}/{shape.dp_shard}/{shape.cp}/{shape.tp}"
    if shape.tp > 1 and not parallel.sequence_parallel:
        text += " no-SP"
    if shape.cp > 1:
        text += f" {parallel.cp_attention}"
    if shape.pp > 1:
        text += f" {parallel.pp_schedule}"
    return text


def _print_plans(plans, tokens: float) -> None:
    """One table: a column per world size and pipeline rank, a row per quantity."""
    from ov_train.memory_estimate import GIB, parameter_counts, recipe_model_config

    recipe, data = plans[0].recipe, plans[0].workload
    config = recipe_model_config(recipe)
    click.echo(
        f"{recipe.name}: {parameter_counts(config).total / 1e9:.2f}B parameters, trains "
        f"{','.join(recipe.model.trainable)}, dtype {recipe.train.dtype}, activation "
        f"checkpointing {recipe.parallel.activation_checkpointing}"
    )
    click.echo(
        f"micro-batch {data.micro_batch_tokens} tokens ({data.image_token_fraction:.0%} image "
        f"tokens, {data.images} images, {data.supervised_tokens} supervised); global batch "
        f"{recipe.train.grad_accumulation} rows ({plans[0].step_tokens / 1e6:.2f}M tokens)"
    )
    columns = [(plan, rank) for plan in plans for rank in plan.ranks]
    header = ["per rank"] + [
        f"{plan.world_size} GPUs" + (f" pp{rank.pp_rank}" if plan.shape.pp > 1 else "")
        for plan, rank in columns
    ]
    rows: list[list[str]] = []

    def row(label: str, value) -> None:
        rows.append([label] + [value(plan, rank) for plan, rank in columns])

    def section(label: str) -> None:
        rows.append([label] + [""] * len(columns))

    row("mesh pp/dp_rep/dp_shard/cp/tp", lambda p, r: _layout(p))
    row("micro-batches per rank per step", lambda p, r: str(p.micro_batches))
    row("parameters, M (formula)", lambda p, r: f"{r.formula_parameters / 1e6:.1f}")
    row(
        "parameters, M (dry run)",
        lambda p, r: "-" if r.sharded_parameters is None else f"{r.sharded_parameters / 1e6:.1f}",
    )
    section("memory, GiB")
    for label, value in MEMORY_ROWS:
        row(f"  {label}", lambda p, r, value=value: f"{value(r.memory) / GIB:.1f}")
    row("  micro-batches in flight", lambda p, r: f"{r.memory.activations.in_flight:g}")
    gib = plans[0].hardware.gpu_memory_gib
    row(f"  fits {gib:g} GiB", lambda p, r: "yes" if r.memory.fits(gib) else "no")
    section("communication, GiB sent per step")
    for label, name in _COMMUNICATION_ROWS:
        row(f"  {label}", lambda p, r, name=name: f"{getattr(r.communication, name) / GIB:.1f}")
    hardware = plans[0].hardware
    section(f"compute at MFU {hardware.mfu:g}, {hardware.peak_tflops:g} TFLOP/s")
    row("  model TFLOPs per step per GPU", lambda p, r: f"{p.step_flops / p.world_size / 1e12:.0f}")
    row("  seconds per step", lambda p, r: f"{p.step_seconds:.2f}")
    row(
        "  GiB/s sent to hide communication",
        lambda p, r: f"{r.communication.total / GIB / p.step_seconds:.1f}",
    )
    row(
        "  of which between nodes",
        lambda p, r: f"{r.communication.between_nodes / GIB / p.step_seconds:.1f}",
    )
    row(f"  days for {tokens / 1e9:g}B tokens", lambda p, r: f"{p.days(tokens):.2f}")
    echo_table(header, rows)
