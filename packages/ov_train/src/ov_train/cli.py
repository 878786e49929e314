"""The `ov-train` command line interface.

Every onevision CLI is a click group configured the same way: `-h/--help` on every command,
defaults shown in the help text, `--version` on the group. Heavy imports (torch) happen inside
the commands so that `--help` answers instantly.
"""

import click

from ov_train import __version__
from ov_train.commands import export_command, recipes_command, run_command
from ov_train.data.prepare_cli import prepare_command
from ov_train.memory_command import estimate_memory_command
from ov_train.plan_parallel_command import plan_parallel_command
from ov_train.quickstart.command import quickstart_command
from rice_vit.cli_conventions import Group


@click.group(
    name="ov-train",
    cls=Group,
    context_settings={"show_default": True, "help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, "-V", "--version", prog_name="ov-train")
def main() -> None:
    """Three-stage LLaVA-OneVision-1.5 trainer on torch.distributed: recipes, packed data, exact
    resume, quickstart.
    """


# The subcommands live beside what they run; their heavy imports happen only when one runs.
for _command in (
    quickstart_command,
    prepare_command,
    run_command,
    export_command,
    recipes_command,
    estimate_memory_command,
    plan_parallel_command,
):
    main.add_command(_command)
