"""Run the `ov-concepts` command line interface as `python -m ov_concepts`."""

from ov_concepts.cli import main

main()
