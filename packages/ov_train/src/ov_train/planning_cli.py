"""Options and table output shared by the planning commands, `estimate-memory` and `plan-parallel`.

Both read a recipe, change it with `--set`, size it for one or more `--gpus` world sizes and
describe one micro-batch (`memory_estimate.Workload`) by the same three flags, then print the
same memory lines as aligned columns. Declaring the options here keeps the two commands' flags,
ranges and defaults from drifting apart; each command keeps the options only it has.
"""

from collections.abc import Callable, Sequence
from typing import Any

import click

MEMORY_ROWS = (
    ("parameters (fp32, sharded)", lambda e: e.parameters),
    ("gradients (fp32, sharded)", lambda e: e.gradients),
    ("optimizer (AdamW, sharded)", lambda e: e.optimizer),
    ("gathered bf16 units + grad buffers", lambda e: e.gathered),
    ("activations: vision", lambda e: e.activations.vision),
    ("activations: projector", lambda e: e.activations.projector),
    ("activations: language model", lambda e: e.activations.language_model),
    ("activations: loss head rows", lambda e: e.activations.head),
    ("transient (loss chunk or one layer)", lambda e: e.activations.transient),
    ("allowance (2 GiB + 10%)", lambda e: e.allowance),
    ("total per GPU", lambda e: e.total),
)
"""The rows of a `MemoryEstimate` as (label, getter in bytes), in the order both tables print."""

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _stack(options: Sequence[Decorator]) -> Decorator:
    """Apply `options` so that `--help` lists them in the given order."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def recipe_sizing_options(*, output: str, set_example: str) -> Decorator:
    """`--gpus` (repeatable world sizes, one `output` each), `--set KEY=VALUE` (with
    `set_example` in its help) and `--gpu-memory-gib`, as the command's first options."""
    return _stack(
        [
            click.option(
                "--gpus",
                "gpus",
                type=click.IntRange(min=1),
                multiple=True,
                default=(8,),
                help=f"World size (GPUs); repeat for one {output} per size, e.g. --gpus 8 "
                "--gpus 128.",
            ),
            click.option(
                "--set",
                "overrides",
                multiple=True,
                metavar="KEY=VALUE",
                help=f"Change one recipe value, e.g. {set_example} (repeatable).",
            ),
            click.option(
                "--gpu-memory-gib",
                type=click.FloatRange(min=0, min_open=True),
                default=80.0,
                help="Memory of one GPU in GiB, for the `fits` row (an 80GB A800/A100/H100 "
                "has 80 GiB).",
            ),
        ]
    )


def workload_options(*, tokens_per_image_note: str, supervised_note: str) -> Decorator:
    """`--image-fraction`, `--tokens-per-image` and `--supervised-fraction`: the fields of
    `memory_estimate.Workload` a user may change (the notes end each flag's help)."""
    return _stack(
        [
            click.option(
                "--image-fraction",
                type=click.FloatRange(0, 1),
                default=0.5,
                help="Share of a micro-batch's tokens that are image tokens (4 ViT patches each).",
            ),
            click.option(
                "--tokens-per-image",
                type=click.IntRange(min=1),
                default=1024,
                help=f"Mean LLM tokens per image ({tokens_per_image_note}).",
            ),
            click.option(
                "--supervised-fraction",
                type=click.FloatRange(0, 1),
                default=None,
                show_default="every text token",
                help=f"Share of tokens with a supervised target ({supervised_note}).",
            ),
        ]
    )


def echo_table(header: list[str], rows: list[list[str]]) -> None:
    """Print `header` and `rows` as columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    for line in [header, *rows]:
        cells = [line[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)
        ]
        click.echo("  ".join(cells).rstrip())
