"""Run the `ov-eval` command line interface as `python -m ov_eval`."""

from ov_eval.cli import main

main()
