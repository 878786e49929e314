"""Run the `rice-vit` command line interface as `python -m rice_vit`."""

from rice_vit.cli import main

main()
