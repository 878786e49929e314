"""The `rice-vit` command line interface.

Every onevision CLI is a click group configured the same way: `-h/--help` on every command,
defaults shown in the help text, `--version` on the group. Heavy imports (torch) happen inside
the commands so that `--help` answers instantly. Bad input (a corrupt image, a checkpoint that
does not match its config) ends the command with a one-line error naming the file, exit status 2;
`embed` skips and counts an image it cannot read and goes on.
"""

import json
import sys
from pathlib import Path

import click

from rice_vit import __version__
from rice_vit.cli_conventions import (
    AliasedOption,
    Group,
    claim_output,
    device_option,
    dtype_option,
    max_shard_size_option,
    out_option,
    overwrite_option,
    progress_bar,
    quiet_option,
    store_dtype_option,
)
from rice_vit.pretrain.cli import pretrain

_CONTEXT = {"show_default": True, "help_option_names": ["-h", "--help"]}


class _Group(Group):
    """Turns rice_vit's input errors into clean CLI errors."""

    def invoke(self, ctx: click.Context):
        from rice_vit.errors import RiceViTError

        try:
            return super().invoke(ctx)
        except RiceViTError as error:
            usage_error = click.ClickException(str(error))
            usage_error.exit_code = 2  # the status of a bad invocation
            raise usage_error from error


@click.group(name="rice-vit", cls=_Group, context_settings=_CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="rice-vit")
def main() -> None:
    """RICE-ViT: native-resolution vision encoder with 2D RoPE, image preprocessing and checkpoint
    IO.
    """


_CHECKPOINT = click.Path(exists=True, file_okay=False, path_type=Path)


@main.command()
@click.argument("checkpoint", type=_CHECKPOINT)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(checkpoint: Path, as_json: bool) -> None:
    """Layout, config and parameter count of CHECKPOINT (a folder), read from file headers."""
    import dataclasses

    from rice_vit.checkpoint import inspect_checkpoint, stored_dtype_name

    found = inspect_checkpoint(checkpoint)
    dtypes = sorted({stored_dtype_name(code) for code in found.dtypes.values()})
    report = {
        "checkpoint": str(found.path),
        "layout": found.layout,
        "tensor_prefix": found.detected.prefix,
        "files": [file.name for file in found.files],
        "dtypes": dtypes,
        "parameters": found.num_parameters,
        "encoder_tensors": len(found.shapes),
        "other_tensors": len(found.detected.other_names),
        "config": dataclasses.asdict(found.config),
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"checkpoint   {report['checkpoint']}")
    click.echo(f"layout       {found.layout} (tensor names under {found.detected.prefix!r})")
    click.echo(f"files        {', '.join(report['files'])}")
    click.echo(f"dtype        {', '.join(dtypes)}")
    click.echo(f"parameters   {found.num_parameters:,} in {len(found.shapes)} tensors")
    if found.detected.other_names:
        click.echo(
            f"other        {len(found.detected.other_names)} tensors outside the encoder "
            "(patch merger, language model), not read"
        )
    click.echo("config")
    for key, value in report["config"].items():
        click.echo(f"  {key:<22} {value}")


@main.command()
@click.option("--model", "model_path", required=True, type=_CHECKPOINT, help="Checkpoint folder.")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@out_option("Output .safetensors file.", folder=False)
@overwrite_option()
@click.option(
    "--pool",
    type=click.Choice(["none", "mean", "cls"]),
    default="none",
    help="none: every patch's features; mean: mean over each image's patches; cls: the class "
    "token (post-layernorm applied when the checkpoint has one).",
)
@click.option(
    "--max-batch-patches",
    type=click.IntRange(min=1),
    default=16384,
    help="Images are run together until their patches would exceed this (a larger image runs "
    "alone).",
)
@device_option()
@dtype_option("Compute dtype; auto: the checkpoint's stored dtype.")
@click.option(
    "--min-pixels",
    type=click.IntRange(min=1),
    default=None,
    help="Resize floor. Default: the model folder's preprocessor_config.json, else 3136.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=None,
    help="Resize ceiling. Default: the model folder's preprocessor_config.json, else 2560000.",
)
@quiet_option()
def embed(
    model_path: Path,
    images: tuple[Path, ...],
    out: Path,
    overwrite: bool,
    pool: str,
    max_batch_patches: int,
    device: str,
    dtype: str,
    min_pixels: int | None,
    max_pixels: int | None,
    quiet: bool,
) -> None:
    """Encode IMAGES at native resolution and write their features to --out.

    An image that cannot be read is skipped with a one-line note; the file's metadata lists the
    embedded images (`images`, in row order) and the skipped ones (`skipped`).
    """
    import torch

    from rice_vit.errors import ImageError
    from rice_vit.model import RiceViT
    from rice_vit.processor import PREPROCESSOR_CONFIG_FILE, ImageProcessor
    from rice_vit.safetensors_folder import save_safetensors_file

    claim_output(out, overwrite, folder=False)
    overrides = {"min_pixels": min_pixels, "max_pixels": max_pixels}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if (model_path / PREPROCESSOR_CONFIG_FILE).is_file():
        processor = ImageProcessor.from_pretrained(model_path, **overrides)
    else:
        processor = ImageProcessor(**overrides)
    model = RiceViT.from_pretrained(
        model_path,
        dtype=None if dtype == "auto" else getattr(torch, dtype),
        device=device,
    )
    results: list[torch.Tensor] = []
    grids: list[tuple[int, int, int]] = []
    batch: list[tuple[torch.Tensor, tuple[int, int, int]]] = []

    def run(batch: list[tuple[torch.Tensor, tuple[int, int, int]]]) -> None:
        pixel_values = torch.cat([rows for rows, _ in batch])
        grid_thw = [grid for _, grid in batch]
        with torch.inference_mode():
            output = model.encode(pixel_values, grid_thw)
            features = output.patch_features if pool == "none" else model.pool(output, pool)
        results.append(features.cpu())
        grids.extend(grid_thw)

    embedded: list[Path] = []
    skipped: list[Path] = []
    with progress_bar(images, desc="embed", unit="img", enabled=not quiet) as progress:
        for path in progress:
            try:
                rows, grid = processor.process_one(path)
            except ImageError as error:  # one bad image must not cost the others
                progress.write(f"skipped: {error}", file=sys.stderr)
                skipped.append(path)
                continue
            embedded.append(path)
            if batch and sum(r.shape[0] for r, _ in batch) + rows.shape[0] > max_batch_patches:
                run(batch)
                batch = []
            batch.append((torch.from_numpy(rows), grid))
        if batch:
            run(batch)
    if not embedded:
        raise ImageError(f"none of the {len(images)} images could be embedded")
    name = "patch_features" if pool == "none" else "embeddings"
    tensors = {name: torch.cat(results), "grid_thw": torch.tensor(grids, dtype=torch.int64)}
    metadata = {
        "format": "pt",
        "images": json.dumps([str(path) for path in embedded]),
        "skipped": json.dumps([str(path) for path in skipped]),
        "model": str(model_path),
        "pool": pool,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_file(tensors, out, metadata=metadata)  # umask's mode, not 0600
    shape = tuple(tensors[name].shape)
    skipped_note = f" ({len(skipped)} skipped: see above)" if skipped else ""
    click.echo(f"wrote {out}: {name} {shape} for {len(grids)} images{skipped_note}", err=True)


@main.command()
@click.argument("source", type=_CHECKPOINT)
@click.argument("destination", required=False, type=click.Path(file_okay=False, path_type=Path))
@out_option("Folder for the converted checkpoint (or give it as DESTINATION).", required=False)
@click.option(
    "--layout",
    "--to",
    "layout",
    cls=AliasedOption,
    hidden_aliases=("--to",),
    type=click.Choice(["mlcd", "llava-ov"]),
    required=True,
    help="Target layout.",
)
@store_dtype_option("Cast the weights; keep leaves them bit for bit.", hidden_aliases=("--dtype",))
@max_shard_size_option("Shard above this size.")
@overwrite_option()
def convert(
    source: Path,
    destination: Path | None,
    out: Path | None,
    layout: str,
    store_dtype: str,
    max_shard_size: int,
    overwrite: bool,
) -> None:
    """Rewrite the encoder of SOURCE in another layout into --out (or DESTINATION)."""
    import torch

    from rice_vit.model import RiceViT

    if (destination is None) == (out is None):
        raise click.UsageError("give the output folder once: --out DIR (or DESTINATION)")
    destination = out if out is not None else destination
    claim_output(destination, overwrite, keep=(source,))
    model = RiceViT.from_pretrained(
        source, dtype=None if store_dtype == "keep" else getattr(torch, store_dtype)
    )
    dropped = model.save_pretrained(
        destination, layout, max_shard_size=max_shard_size, overwrite=overwrite
    )
    if dropped:
        click.echo(
            f"note: the {layout} layout has no place for {', '.join(dropped)}; not written",
            err=True,
        )
    written = sum(
        tensor.numel() for name, tensor in model.state_dict().items() if name not in dropped
    )
    click.echo(f"wrote {destination} ({layout}, {written:,} parameters)", err=True)


main.add_command(pretrain)  # rice-vit pretrain features|kmeans|labels|train|export|synthetic
