"""The `rice-vit` command line interface.

Every onevision CLI is a click group configured the same way: `-h/--help` on every command,
defaults shown in the help text, `--version` on the group. Heavy imports (torch) happen inside
the commands so that `--help` answers instantly.
"""

import click

from rice_vit import __version__


@click.group(
    name="rice-vit",
    context_settings={"show_default": True, "help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, "-V", "--version", prog_name="rice-vit")
def main() -> None:
    """RICE-ViT: native-resolution vision encoder with 2D RoPE, image preprocessing and checkpoint
    IO.
    """
