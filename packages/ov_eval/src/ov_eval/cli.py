"""The `ov-eval` command line interface.

Every onevision CLI is a click group configured the same way: `-h/--help` on every command,
defaults shown in the help text, `--version` on the group. Heavy imports (torch) happen inside
the commands so that `--help` answers instantly.
"""

import click

from ov_eval import __version__


@click.group(
    name="ov-eval",
    context_settings={"show_default": True, "help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, "-V", "--version", prog_name="ov-eval")
def main() -> None:
    """Offline benchmark evaluation of LLaVA-OneVision-class checkpoints with the official
    metrics."""
