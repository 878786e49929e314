"""Run the `ov-train` command line interface as `python -m ov_train`."""

from ov_train.cli import main

main()
