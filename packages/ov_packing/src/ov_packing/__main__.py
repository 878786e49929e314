"""Run the `ov-pack` command line interface as `python -m ov_packing`."""

from ov_packing.cli import main

main()
