"""`ov-train quickstart`: the README's first command (see `pipeline.py` for what it runs)."""

from pathlib import Path

import click

from ov_train.commands import _user_errors
from ov_train.quickstart.corpus import QUESTION_TYPES
from rice_vit.cli_conventions import (
    claim_output,
    out_option,
    overwrite_option,
    quiet_option,
    seed_option,
)

CONTEXT = {"show_default": True, "help_option_names": ["-h", "--help"]}


def format_table(summary) -> str:
    """The stage table: loss, throughput and accuracy per question type before and after."""
    kinds = list(QUESTION_TYPES)
    header = ["stage", "steps", "final loss", "tokens/s", *kinds]
    rows = [header, ["chance", "", "", "", *(f"{summary.chance[k]:.2f}" for k in kinds)]]
    if summary.stages:
        first = summary.stages[0]
        rows.append(["0 (init)", "", "", "", *(f"{first.accuracy_before[k]:.2f}" for k in kinds)])
    for stage in summary.stages:
        loss = "" if stage.final_loss is None else f"{stage.final_loss:.3f}"
        accuracy = [f"{stage.accuracy_after[k]:.2f}" for k in kinds]
        rows.append(
            [stage.stage, str(stage.steps), loss, f"{stage.tokens_per_second:,.0f}", *accuracy]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _padding_line(name: str, data: dict) -> str:
    packing = data["packing"] or {}
    ratio = packing.get("compression_vs_pad_to_capacity")
    batched = packing.get("compression_vs_batched")
    selection = data.get("selection") or {}
    text = (
        f"{name:<9} {data['counts']['packed_copies']:>6} samples in {packing.get('bins', 0)} bins, "
        f"fill {100 * packing.get('fill_efficiency', 0):.1f}%; padding "
        f"{ratio:.0f}x less than padding to capacity, {batched:.1f}x vs batches of 8"
        if ratio is not None and batched is not None
        else f"{name:<9} no padding left after packing"
    )
    if "effective_concepts_after" in selection:
        text += (
            f"; balancing: effective concepts {selection['effective_concepts_before']:.1f} -> "
            f"{selection['effective_concepts_after']:.1f}"
        )
    return text


@click.command("quickstart", context_settings=CONTEXT)
@out_option(
    "Run folder (created; an earlier run there needs --overwrite).",
    required=False,
    default=Path("runs/quickstart"),
)
@overwrite_option("Remove an earlier run in --out first.")
@click.option("--images", type=click.IntRange(min=10), default=1500, help="Training images.")
@click.option(
    "--eval-per-type", type=click.IntRange(min=1), default=40, help="Held-out questions per type."
)
@seed_option("Seed of the corpus, model and training.")
@click.option("--stage1-steps", type=click.IntRange(min=1), default=80, help="Stage-1 steps.")
@click.option("--stage1-5-steps", type=click.IntRange(min=1), default=150, help="Stage-1.5 steps.")
@click.option("--stage2-steps", type=click.IntRange(min=1), default=1500, help="Stage-2 steps.")
@quiet_option()
def quickstart_command(
    out: Path,
    overwrite: bool,
    images: int,
    eval_per_type: int,
    seed: int,
    stage1_steps: int,
    stage1_5_steps: int,
    stage2_steps: int,
    quiet: bool,
) -> None:
    """Synthetic corpus -> tiny model -> balance + pack -> Stage-1, 1.5, 2 -> evaluation, on CPU
    in a few minutes; prints the results table and where the plot and HF checkpoint are."""
    from ov_train.quickstart.pipeline import QuickstartConfig, run_quickstart

    claim_output(out, overwrite)
    with _user_errors():
        summary = run_quickstart(
            QuickstartConfig(
                out=out,
                images=images,
                eval_per_type=eval_per_type,
                seed=seed,
                stage1_steps=stage1_steps,
                stage1_5_steps=stage1_5_steps,
                stage2_steps=stage2_steps,
                progress=not quiet,
            )
        )
    click.echo()
    for name, data in summary.data.items():
        click.echo(_padding_line(name, data))
    click.echo()
    click.echo(format_table(summary))
    click.echo()
    click.echo(f"summary:       {out / 'summary.json'} ({summary.seconds:.0f} s in all)")
    click.echo(f"loss curves:   {summary.loss_plot}")
    click.echo(f"HF checkpoint: {summary.hf_checkpoint} (LlavaOV / OVProcessor.from_pretrained)")
