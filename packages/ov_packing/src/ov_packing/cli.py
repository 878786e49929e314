"""The `ov-pack` command line interface.

Every onevision CLI is a click group configured the same way: `-h/--help` on every command,
defaults shown in the help text, `--version` on the group. Bad input ends the command with a
one-line error naming the file, line or sample (exit status 2; 1 for a plan that fails
`verify`), never a traceback.
"""

import dataclasses
import sys
import time
from pathlib import Path

import click
import msgspec

from ov_packing import __version__
from ov_packing.cli_conventions import (
    Group,
    claim_output,
    max_shard_size_option,
    out_option,
    overwrite_option,
    quiet_option,
    seed_option,
    work_unit_options,
    workers_option,
)
from ov_packing.errors import PackingError, PlanVerificationError

_CONTEXT = {"show_default": True, "help_option_names": ["-h", "--help"]}
# Bin budgets are int32 in the C++ core and the plan file; larger values fail at the flag.
_INT32_COUNT = click.IntRange(1, 2**31 - 1)


class _Group(Group):
    """Turns ov_packing's input errors into clean CLI errors."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PlanVerificationError as error:  # a broken plan, not a bad invocation
            raise click.ClickException(str(error)) from error
        except PackingError as error:
            usage_error = click.ClickException(str(error))
            usage_error.exit_code = 2
            raise usage_error from error


def _say(message: str) -> None:
    click.echo(message, err=True)


@click.group(name="ov-pack", cls=_Group, context_settings=_CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="ov-pack")
def main() -> None:
    """Offline packing of variable-length samples into fixed-capacity bins (C++ core), plan
    files and packed shards."""


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--capacity", type=_INT32_COUNT, required=True, help="Tokens per bin.")
@click.option(
    "--patch-capacity",
    type=_INT32_COUNT,
    default=None,
    help="ViT patches per bin (needs per-sample patch counts in the input). Default: unbounded.",
)
@click.option(
    "--max-per-bin",
    type=_INT32_COUNT,
    default=None,
    help="Samples per bin. Default: unbounded.",
)
@workers_option(
    "Threads; changes speed only, never the plan.", default=2, hidden_aliases=("--threads",)
)
@seed_option("Seed of the bin order.", maximum=2**64 - 1)
@out_option("Plan file to write.", folder=False, hidden_aliases=("--output",))
@overwrite_option()
@click.option(
    "--plan-format",
    type=click.Choice(["2", "1"]),
    default="2",
    help="Plan file format version: 2 is an Arrow IPC file (memory-mapped when read); 1 is the "
    "format of ov-packing < 0.3, for older readers.",
)
def plan(
    input_path: Path,
    capacity: int,
    patch_capacity: int | None,
    max_per_bin: int | None,
    workers: int,
    seed: int,
    out: Path,
    overwrite: bool,
    plan_format: str,
) -> None:
    """Pack the samples listed in INPUT into bins and write a plan file.

    INPUT is Parquet (columns id, tokens, patches?), JSONL ({"id", "tokens", "patches"?} per
    line), the `name:length` text format or a .npy array; all but Parquet optionally
    zstd-compressed (.zst).
    """
    from ov_packing.inputs import is_parquet, read_counts, read_ids, read_lengths
    from ov_packing.packer import pack
    from ov_packing.stats import compute_stats, format_stats

    claim_output(out, overwrite, folder=False)
    started = time.perf_counter()
    # Parquet is columnar: the packer runs on the counts alone and the id column is read after
    # it, so the ids and the packer's working memory are never resident together.
    columnar = is_parquet(input_path)
    lengths = read_counts(input_path) if columnar else read_lengths(input_path)
    _say(
        f"read {len(lengths):,} samples from {input_path} in {time.perf_counter() - started:.2f} s"
    )
    if len(lengths) == 0:
        _say(f"warning: {input_path} holds no samples; writing an empty plan")
    started = time.perf_counter()
    result = pack(
        lengths,
        capacity=capacity,
        patch_capacity=patch_capacity,
        max_per_bin=max_per_bin,
        seed=seed,
        threads=workers,
    )
    _say(f"packed into {result.num_bins:,} bins in {time.perf_counter() - started:.2f} s")
    summary = format_stats(compute_stats(result))  # before the ids are read: its memory is freed
    if columnar:
        del lengths
        started = time.perf_counter()
        result = dataclasses.replace(result, ids=read_ids(input_path))
        _say(f"read the ids from {input_path} in {time.perf_counter() - started:.2f} s")
    result.save(out, version=int(plan_format))
    _say(f"wrote {out}")
    click.echo(summary)


@main.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as one JSON object.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    help="Batch size of the input-order padding baseline.",
)
def stats(plan_path: Path, as_json: bool, batch_size: int) -> None:
    """Print the statistics of a plan: bins, lower bound, fill, padding saved."""
    from ov_packing.plan import PackPlan
    from ov_packing.stats import compute_stats, format_stats

    result = compute_stats(PackPlan.load(plan_path), batch_size=batch_size)
    click.echo(msgspec.json.encode(result).decode() if as_json else format_stats(result))


@main.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False, path_type=Path))
def show(plan_path: Path) -> None:
    """Print one JSON line per bin: {"bin", "ids", "tokens", "patches"}."""
    from ov_packing.plan import PackPlan

    loaded = PackPlan.load(plan_path)
    tokens = loaded.bin_tokens().tolist()
    patches = loaded.bin_patches()
    patches = None if patches is None else patches.tolist()
    offsets = loaded.bin_offsets
    out = sys.stdout
    block = 1 << 14  # bins whose ids are fetched from the Arrow column at once
    for first in range(0, loaded.num_bins, block):
        last = min(loaded.num_bins, first + block)
        low, high = int(offsets[first]), int(offsets[last])
        members = loaded.bin_samples[low:high]
        if loaded.ids is not None:
            names = loaded.ids.take(members).arrow.to_pylist()
        else:
            names = members.astype(str).tolist()
        for index in range(first, last):
            row = {
                "bin": index,
                "ids": names[int(offsets[index]) - low : int(offsets[index + 1]) - low],
                "tokens": tokens[index],
                "patches": None if patches is None else patches[index],
            }
            out.write(msgspec.json.encode(row).decode() + "\n")


@main.command()
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--input",
    "input_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The input the plan was made from; also check that the plan describes it exactly.",
)
def verify(plan_path: Path, input_path: Path | None) -> None:
    """Re-check every invariant of a plan independently of the packer (exit status 1 if broken)."""
    from ov_packing.plan import PackPlan
    from ov_packing.verify import verify_plan

    loaded = PackPlan.load(plan_path)
    verify_plan(loaded, input_path)  # the input is compared block by block as it is read
    checked = f" against {input_path}" if input_path is not None else ""
    click.echo(
        f"ok: {plan_path}{checked}: {loaded.num_samples:,} samples, {loaded.num_bins:,} bins"
    )


@main.command()
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Plan file whose ids are the source samples' keys.",
)
@click.option(
    "--source",
    "source_patterns",
    multiple=True,
    required=True,
    help="Source webdataset tars: files, folders or glob patterns (quote them); may repeat.",
)
@out_option("Output directory for the packed shards and index.json.")
@overwrite_option()
@click.option(
    "--max-bins-per-shard",
    type=click.IntRange(min=1),
    default=1000,
    help="Start a new shard after this many bins.",
)
@max_shard_size_option(
    "Start a new shard before one would grow past this size.",
    default=None,
    hidden_aliases=("--max-shard-bytes",),
)
@work_unit_options(
    "Processes writing shards (one shard per work unit); changes speed only, never the bytes. "
    "Default: all cores. With --engine ray: at most this many actors (default: as many as the "
    "cluster's CPUs)."
)
@quiet_option()
def write(
    plan_path: Path,
    source_patterns: tuple[str, ...],
    out: Path,
    overwrite: bool,
    max_bins_per_shard: int,
    max_shard_size: int | None,
    workers: int | None,
    engine: str,
    ray_address: str | None,
    quiet: bool,
) -> None:
    """Write packed webdataset shards: one tar entry per bin, with its sub-samples' files.

    Shards are written in parallel, one work unit per shard, each moved into place when complete.
    A folder a killed or failed write left is resumed: finished shards are checked (size and
    SHA-256) and kept, the rest written; --overwrite starts over instead.
    """
    from ov_packing.plan import PackPlan
    from ov_packing.shards import is_resumable, write_shards
    from ov_packing.work_units import WorkUnitError, default_workers, make_engine

    loaded = PackPlan.load(plan_path)
    resume = is_resumable(out) and not overwrite
    claim_output(out, overwrite, resumable=resume)
    if resume:
        _say(f"resuming the unfinished write in {out}")
    if engine == "local":
        runner = make_engine("local", workers or default_workers())
    else:
        runner = make_engine("ray", workers, ray_address)
    reports: list = []
    try:
        index = write_shards(
            loaded,
            list(source_patterns),
            out,
            max_bins_per_shard=max_bins_per_shard,
            max_shard_bytes=max_shard_size,
            progress=not quiet,
            engine=runner,
            reports=reports,
        )
    except WorkUnitError as error:  # a failed unit (not bad input), another job's folder
        raise click.ClickException(str(error)) from error
    finally:
        close = getattr(runner, "close", None)
        if close is not None:
            close()
    if reports:
        _say(f"shards: {reports[-1].summary()}")
    click.echo(f"wrote {index.num_bins:,} bins in {len(index.shards)} shards to {out}")


@main.command()
@click.argument("distribution", type=click.Choice(["caption", "sft", "uniform"]))
@click.option("-n", "--count", type=click.IntRange(min=0), default=100_000, help="Samples.")
@seed_option()
@click.option(
    "--capacity", type=click.IntRange(10, 2**31 - 1), default=8192, help="Shapes `uniform` lengths."
)
@out_option(
    "Output file: .parquet, or .jsonl, .txt (name:length) or .npy, optionally with .zst.",
    folder=False,
    hidden_aliases=("--output",),
)
@overwrite_option()
def synth(
    distribution: str, count: int, seed: int, capacity: int, out: Path, overwrite: bool
) -> None:
    """Generate realistic synthetic sample lengths (see ov_packing.synthetic) to try packing on."""
    from ov_packing.inputs import SampleLengths, write_lengths
    from ov_packing.synthetic import generate_lengths

    claim_output(out, overwrite, folder=False)
    lengths = generate_lengths(distribution, count, seed=seed, capacity=capacity)
    if ".txt" in out.suffixes:  # the release's name:length format has no patch counts
        lengths = SampleLengths(lengths.source, lengths.ids, lengths.tokens, None)
    write_lengths(out, lengths)
    click.echo(f"wrote {count:,} {distribution} samples to {out}")
