"""`ov-train prepare`: the click command over `prepare` (registered by `ov_train.cli`).

The packing and output options are generated from `PrepareConfig`'s fields (name, type, default,
`metadata["help"]`), so a new setting appears on the command line without being written twice.
Inputs are repeatable options, one per format; the processor is read from a model (or processor)
folder. `--workers/--engine/--ray-address` say where the measuring units run; an interrupted run
is resumed by running the same command again (`--overwrite` starts over). `--recipe` names the
recipe that will train on the data: the report and the output then say how the data fits one run
of it (`run_fit`: epochs per run, a warning when the capacity does not divide its micro-batch
budget). Importing this module does not import torch: `--help` answers at once.
"""

import dataclasses
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ov_train.commands import _user_errors
from ov_train.data.ingest_llava import LlavaSource
from ov_train.data.ingest_parquet import ParquetSource
from ov_train.data.ingest_webdataset import WebDatasetSource
from ov_train.data.prepare_config import InputSource, PrepareConfig
from rice_vit.cli_conventions import (
    AliasedOption,
    claim_output,
    max_shard_size_option,
    out_option,
    overwrite_option,
    quiet_option,
)

_PATH = click.Path(path_type=Path)
_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_NOT_CONFIG_OPTIONS = ("inputs", "out_dir")
_PARQUET_COLUMNS = ("image_column", "conversations_column", "caption_column", "id_column")
_SHOWN_DEFAULTS = {
    "capacity": "max_length",
    "workers": "all cores",
    "ray_address": "RAY_ADDRESS, else a local Ray",
}
_CHOICES = {"engine": ("local", "ray")}
# Fields whose flag follows the spelling every onevision CLI shares (see cli_conventions):
# `--max-shard-size 500MB` for max_shard_bytes, `-q/--quiet` for progress=False.
_CONVENTION_OPTIONS = {
    "max_shard_bytes": lambda: max_shard_size_option(
        "Most bytes per shard tar.", default=None, hidden_aliases=("--max-shard-bytes",)
    ),
    "progress": quiet_option,
}


def _config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One option per PrepareConfig field (other than the inputs and the output folder)."""
    for config_field in reversed(dataclasses.fields(PrepareConfig)):
        if config_field.name in _NOT_CONFIG_OPTIONS:
            continue
        if config_field.name in _CONVENTION_OPTIONS:
            command = _CONVENTION_OPTIONS[config_field.name]()(command)
            continue
        flag = config_field.name.replace("_", "-")
        help_text = config_field.metadata["help"]
        default = config_field.metadata.get("cli_default", config_field.default)
        if config_field.type is bool:
            option = click.option(f"--{flag}/--no-{flag}", default=default, help=help_text)
        else:
            option = click.option(
                f"--{flag}",
                type=_click_type(config_field.type, config_field.name),
                default=default,
                show_default=_SHOWN_DEFAULTS.get(
                    config_field.name, "none" if default is None else True
                ),
                help=help_text,
            )
        command = option(command)
    return command


def _parquet_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The column names of parquet inputs, defaults from ParquetSource."""
    defaults = {item.name: item.default for item in dataclasses.fields(ParquetSource)}
    for name in reversed(_PARQUET_COLUMNS):
        command = click.option(
            f"--parquet-{name.replace('_', '-')}",
            default=defaults[name],
            show_default=True,
            help=f"Parquet inputs: the {name.removesuffix('_column')} column.",
        )(command)
    return command


def _click_type(annotation: Any, name: str) -> Any:
    if isinstance(annotation, types.UnionType):
        (inner,) = [arg for arg in annotation.__args__ if arg is not type(None)]
        annotation = inner
    if annotation is int:
        return click.IntRange(min=0 if name == "seed" else 1)
    if name in _CHOICES:
        return click.Choice(_CHOICES[name])
    return str


@click.command(
    "prepare", context_settings={"show_default": True, "help_option_names": ["-h", "--help"]}
)
@click.option(
    "--llava",
    "llava_files",
    multiple=True,
    type=_PATH,
    help="LLaVA JSON/JSONL annotation file (repeatable).",
)
@click.option(
    "--image-root",
    type=_PATH,
    default=None,
    show_default="each --llava file's folder",
    help="Folder the LLaVA image paths are relative to.",
)
@click.option(
    "--webdataset",
    "webdataset_paths",
    multiple=True,
    type=_PATH,
    help="Webdataset tar, directory of tars or glob (repeatable).",
)
@click.option(
    "--parquet",
    "parquet_paths",
    multiple=True,
    type=_PATH,
    help="HF parquet file, directory or glob (repeatable).",
)
@_parquet_options
@click.option(
    "--model",
    "--processor",
    "processor_dir",
    cls=AliasedOption,
    hidden_aliases=("--processor",),
    required=True,
    type=_EXISTING_DIR,
    help="Model or processor folder (tokenizer.json, preprocessor_config.json, chat template).",
)
@click.option(
    "--min-pixels",
    type=click.IntRange(min=1),
    default=None,
    show_default="the processor folder's",
    help="Override the processor's min_pixels.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=None,
    show_default="the processor folder's",
    help="Override the processor's max_pixels.",
)
@out_option("Output folder (empty or new).", dest="out_dir")
@overwrite_option()
@_config_options
@click.option(
    "--select-ids",
    type=_EXISTING_FILE,
    default=None,
    show_default="none: pack every accepted sample once",
    help="Pack only the ids listed in this file, one per line, as often as listed.",
)
@click.option(
    "--balanced",
    type=_EXISTING_DIR,
    default=None,
    show_default="none",
    help="Pack what `ov-concepts balance` drew into this folder (needs --balance-keys).",
)
@click.option(
    "--balance-keys",
    type=_EXISTING_FILE,
    default=None,
    show_default="none",
    help="Sample id of each image row of the --balanced run, one per line.",
)
@click.option(
    "--recipe",
    default=None,
    show_default="none",
    metavar="NAME|FILE",
    help="The recipe that will train on this data (a name from `ov-train recipes` or a TOML "
    "file): warn when the capacity does not divide its train.micro_batch_tokens, and report "
    "epochs per run.",
)
def prepare_command(**options: Any) -> None:
    """Measure raw data (LLaVA JSON + images, webdataset tars, HF parquet) with the model's
    processor, pack it and write packed shards, a manifest and a report into OUT."""
    from ov_model.processor import OVProcessor
    from ov_train.data.measure_units import JOB_NAME
    from ov_train.data.prepare import prepare
    from ov_train.data.prepare_output import holds_unfinished_preparation
    from ov_train.data.report import REPORT_MD
    from ov_train.data.run_fit import RunFit
    from ov_train.data.selection import balanced_dir_selector, ids_file_selector

    options["max_shard_bytes"] = options.pop("max_shard_size")
    options["progress"] = not options.pop("quiet")
    select = None
    if options["select_ids"] is not None and options["balanced"] is not None:
        raise click.UsageError("give --select-ids or --balanced, not both")
    if (options["balanced"] is None) != (options["balance_keys"] is None):
        raise click.UsageError("--balanced and --balance-keys go together")
    with _user_errors():
        inputs = _inputs(options)
        # an unfinished run is left to prepare, which resumes it when it is the same job (and
        # refuses it otherwise); anything else in the folder is refused here, before the
        # processor is read; --overwrite starts over
        claim_output(
            options["out_dir"],
            options["overwrite"],
            keep=_input_paths(options),
            resumable=holds_unfinished_preparation(Path(options["out_dir"]), JOB_NAME),
        )
        if options["select_ids"] is not None:
            select = ids_file_selector(options["select_ids"])
        elif options["balanced"] is not None:
            select = balanced_dir_selector(options["balanced"], options["balance_keys"])
        recipe = None
        if options["recipe"] is not None:
            from ov_train.config_io import resolve_recipe

            recipe = resolve_recipe(options["recipe"])
        config = PrepareConfig(
            inputs=inputs,
            out_dir=options["out_dir"],
            **{
                item.name: options[item.name]
                for item in dataclasses.fields(PrepareConfig)
                if item.name not in _NOT_CONFIG_OPTIONS
            },
        )
        processor = OVProcessor.from_pretrained(
            options["processor_dir"],
            min_pixels=options["min_pixels"],
            max_pixels=options["max_pixels"],
        )
        result = prepare(config, processor, select=select, recipe=recipe)
    if result.measuring is not None and result.measuring.skipped:
        click.echo(f"measuring (resumed): {result.measuring.summary()}")
    counts = result.report.counts
    click.echo(
        f"{counts.rows:,} samples: {counts.packed:,} packed ({counts.packed_copies:,} copies), "
        f"{counts.not_selected:,} not selected, {counts.rejected:,} rejected"
    )
    for reason, count in counts.rejected_by_reason.items():
        if count:
            click.echo(f"  {reason}: {count:,}")
    if counts.truncated:
        click.echo(
            f"  truncated to --max-length (packed, listed in the report): {counts.truncated:,}"
        )
    packing = result.report.packing or {}
    click.echo(
        f"{packing.get('bins', 0):,} bins, fill {100 * packing.get('fill_efficiency', 0):.2f}% "
        f"-> {result.shards_dir}"
    )
    fit = result.report.run_fit
    if fit is not None:
        click.echo(RunFit(**fit).summary())
        for warning in fit["warnings"]:
            click.echo(f"Warning: {warning}", err=True)
    click.echo(f"report: {result.out_dir / REPORT_MD}")


def _input_paths(options: dict[str, Any]) -> list[Path]:
    """Every path the command reads, none of which --overwrite may remove."""
    named = (options["image_root"], options["processor_dir"], options["select_ids"])
    repeated = ("llava_files", "webdataset_paths", "parquet_paths")
    return [path for path in named if path is not None] + [
        path for name in repeated for path in options[name]
    ]


def _inputs(options: dict[str, Any]) -> tuple[InputSource, ...]:
    inputs: list[InputSource] = [
        LlavaSource(path, options["image_root"]) for path in options["llava_files"]
    ]
    inputs += [WebDatasetSource(path) for path in options["webdataset_paths"]]
    inputs += [
        ParquetSource(path, **{name: options[f"parquet_{name}"] for name in _PARQUET_COLUMNS})
        for path in options["parquet_paths"]
    ]
    if not inputs:
        raise click.UsageError("give at least one input: --llava, --webdataset or --parquet")
    return tuple(inputs)
