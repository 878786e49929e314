"""Run the `ov-model` command line interface as `python -m ov_model`."""

from ov_model.cli import main

main()
