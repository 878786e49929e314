"""The `ov-model` command line interface.

Every onevision CLI is a click group configured the same way: `-h/--help` on every command,
defaults shown in the help text, `--version` on the group. Heavy imports (torch) happen inside
the commands so that `--help` answers instantly.
"""

import click

from ov_model import __version__


@click.group(
    name="ov-model",
    context_settings={"show_default": True, "help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, "-V", "--version", prog_name="ov-model")
def main() -> None:
    """LLaVA-OneVision-1.5 model: RICE-ViT + patch-merger projector + Qwen LLM, HF checkpoints,
    processor, packed forward, generation.
    """
