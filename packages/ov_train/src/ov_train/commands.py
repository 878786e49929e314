"""Click commands of the training side, for `ov-train`'s group to register: run, export, recipes.

- `ov-train run RECIPE [--set KEY=VALUE]... [--data DIR] [--out DIR] [--resume/--no-resume]
  [--resume-from STEP]`: RECIPE is a registered name (`ov-train recipes`) or a TOML file;
  overrides are parsed with the type of the field they set; `--show` prints the resolved recipe
  instead of training. Under torchrun (`torchrun --nproc-per-node N -m ov_train run ...`, or
  the `ov-train` script) every process runs this command: they form one world (see
  `ov_train.distributed.world`), each reads its share of the data, rank 0 reports.
- `ov-train export CKPT --out HF_DIR`: the HF layout of a checkpoint (or of a run's latest).
- `ov-train recipes [NAME]`: the table of registered recipes, or one of them as a complete TOML
  file (`recipe_template`: every key, unset ones as comments, model.path/data.path to fill in).

The recipe's fields are not repeated as flags: `--set` reaches every one of them, with the same
validation as a TOML file, so the CLI never drifts from the dataclasses. Torch is imported
inside the commands, so `--help` answers at once. Errors about the user's input (a recipe key,
a checkpoint folder, the data) are printed as one line, without a traceback.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from rice_vit.cli_conventions import (
    claim_output,
    max_shard_size_option,
    out_option,
    overwrite_option,
    quiet_option,
    store_dtype_option,
)

CONTEXT = {"show_default": True, "help_option_names": ["-h", "--help"]}


@contextmanager
def _user_errors() -> Iterator[None]:
    """Show the package's input errors (all ValueError subclasses) as one-line click errors with
    exit status 2, the status of a bad invocation."""
    from ov_model.errors import OVModelError
    from ov_model.processor_errors import ProcessorError
    from ov_packing.errors import PackingError
    from ov_train.data.errors import DataError
    from ov_train.errors import OVTrainError
    from rice_vit.errors import RiceViTError

    try:
        yield
    except (
        OVTrainError,
        OVModelError,
        ProcessorError,
        DataError,
        PackingError,
        RiceViTError,
    ) as error:
        usage_error = click.ClickException(str(error))
        usage_error.exit_code = 2
        raise usage_error from error


def _show_notices(rank: int = 0, size: int = 1) -> None:
    """Notices on stderr: rank 0's from INFO up, the other ranks' warnings and errors only,
    prefixed with their rank when there are several."""
    logger = logging.getLogger("ov_train")
    if not logger.handlers:
        handler = logging.StreamHandler()
        prefix = "ov-train" if size == 1 else f"ov-train[rank {rank}]"
        handler.setFormatter(logging.Formatter(f"{prefix}: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)


@click.command("run", context_settings=CONTEXT)
@click.argument("recipe")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Change one recipe value, e.g. --set optim.lr=2e-5 --set model.trainable=projector,llm "
    "(repeatable).",
)
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    show_default="the recipe's data.path",
    help="The folder `ov-train prepare --out` wrote, or its shards/ (sets data.path).",
)
@click.option(
    "--model",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    show_default="the recipe's model.path",
    help="Model folder to start from: `ov-model init` output or a previous stage's export "
    "(sets model.path).",
)
@out_option(
    "Run folder: recipe, processor, metrics.jsonl, loss.png, checkpoints. An existing one is "
    "resumed.",
    required=False,
    show_default="runs/<recipe name>",
)
@overwrite_option("Start over: remove the run folder's earlier run (checkpoints included).")
@click.option(
    "--resume/--no-resume",
    default=True,
    help="Continue from the run folder's latest checkpoint; --no-resume refuses a folder that "
    "has checkpoints.",
)
@click.option(
    "--resume-from",
    type=click.IntRange(min=0),
    default=None,
    metavar="STEP",
    help="Resume from the checkpoint of this step (newer ones are set aside as "
    ".discarded-step_X) instead of the latest.",
)
@click.option("--show", is_flag=True, help="Print the resolved recipe as TOML and exit.")
@quiet_option()
def run_command(
    recipe: str,
    overrides: tuple[str, ...],
    data: Path | None,
    model: Path | None,
    out: Path | None,
    overwrite: bool,
    resume: bool,
    resume_from: int | None,
    show: bool,
    quiet: bool,
) -> None:
    """Train RECIPE (a name from `ov-train recipes` or a TOML file).

    A run folder that holds checkpoints is resumed from the latest (--resume-from: another);
    --overwrite starts it over instead.
    """
    if overwrite and resume_from is not None:
        raise click.UsageError("--overwrite starts over; it does not go with --resume-from")
    with _user_errors():
        from ov_train.config_io import recipe_to_toml, resolve_recipe

        changes = list(overrides) + ([f"data.path={data}"] if data is not None else [])
        changes += [f"model.path={model}"] if model is not None else []
        changes += ["logging.progress_bar=false"] if quiet else []
        resolved = resolve_recipe(recipe, changes)
        if show:
            click.echo(recipe_to_toml(resolved), nl=False)
            return
        from ov_train.errors import RecipeError
        from ov_train.parallel import init_world
        from ov_train.source import open_packed_shards
        from ov_train.train_loop import Trainer, load_processor

        if resolved.model.path is None:
            raise RecipeError(
                "model.path is required to train on packed shards: a model folder with its "
                "tokenizer (`ov-model init` output or a previous stage's export)"
            )
        from ov_train.model_folder import check_model_folder

        check_model_folder(resolved.model.path)
        if resolved.data.path is not None:  # a wrong --data fails before the model loads
            from ov_train.data.prepare_output import resolve_shards_dir

            resolve_shards_dir(resolved.data.path)
        processor = load_processor(resolved.model)
        world = init_world(resolved.parallel, resolved.train.device)
        try:
            _show_notices(world.rank, world.size)
            source = open_packed_shards(resolved, processor, world)
            run_dir = out if out is not None else Path("runs") / resolved.name
            if overwrite:
                if world.rank == 0:
                    inputs = [Path(p) for p in (resolved.data.path, resolved.model.path) if p]
                    claim_output(run_dir, True, resumable=True, keep=inputs)
                world.barrier()
            trainer = Trainer(
                resolved, source, run_dir, resume=resume, resume_from=resume_from, world=world
            )
            result = trainer.run()
        finally:
            world.close()
    if world.rank != 0:
        return
    click.echo(f"run folder:      {result.run_dir}")
    click.echo(f"steps:           {result.start_step} -> {result.final_step}")
    if result.final_loss is not None:
        click.echo(f"final loss:      {result.final_loss:.4f}")
    click.echo(f"tokens/s:        {result.tokens_per_second:.0f}")
    click.echo(f"last checkpoint: {result.last_checkpoint}")
    if result.plot_path is not None:
        click.echo(f"loss curve:      {result.plot_path}")


@click.command("export", context_settings=CONTEXT)
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@out_option("Folder for the HF-layout model.")
@overwrite_option()
@store_dtype_option(
    "Weight dtype of the export (training keeps float32; the release ships bfloat16).",
    default="float32",
    choices=("float32", "bfloat16", "float16"),
    hidden_aliases=("--dtype",),
)
@max_shard_size_option("Largest safetensors file.")
@click.option(
    "--format",
    "export_format",
    type=click.Choice(["hf", "peft"]),
    default="hf",
    help="hf: the HF-layout model (a LoRA run's adapters merged into its base); peft: a LoRA "
    "run's adapters as a PEFT adapter folder (adapter_config.json + adapter_model.safetensors).",
)
def export_command(
    checkpoint: Path,
    out: Path,
    overwrite: bool,
    store_dtype: str,
    max_shard_size: int,
    export_format: str,
) -> None:
    """Write CHECKPOINT (a checkpoint folder, or a run folder for its latest) in the HF layout,
    or a LoRA run's adapters as a PEFT folder."""
    dtype = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[store_dtype]
    with _user_errors():
        from ov_train.export import export_checkpoint

        claim_output(out, overwrite, keep=(checkpoint,))
        folder = export_checkpoint(
            checkpoint, out, dtype=dtype, max_shard_size=max_shard_size, format=export_format
        )
    click.echo(f"exported {checkpoint} -> {folder}")


@click.command("recipes", context_settings=CONTEXT)
@click.argument("name", required=False)
def recipes_command(name: str | None) -> None:
    """List the registered recipes, or print recipe NAME as a complete TOML file to start from
    (every key; unset ones, model.path and data.path among them, as comments to fill in)."""
    from ov_train.config_io import resolve_recipe
    from ov_train.recipes import RECIPES

    if name is not None:
        from ov_train.recipe_template import recipe_template

        with _user_errors():
            click.echo(recipe_template(resolve_recipe(name)), nl=False)
        return
    header = ("name", "stage", "trainable", "lr", "steps", "accum", "tokens/mb")
    rows = [
        (
            recipe.name,
            recipe.stage,
            ",".join(recipe.model.trainable),
            f"{recipe.optim.lr:g}",
            str(recipe.train.steps),
            str(recipe.train.grad_accumulation),
            str(recipe.train.micro_batch_tokens),
        )
        for recipe in RECIPES.values()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
