"""Progress bars: tqdm on stderr, off unless asked for (the CLI asks; the library API does not)."""

import sys

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, enabled: bool, unit: str = "row") -> tqdm:
    """A tqdm bar on stderr; a silent no-op bar when `enabled` is false."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        leave=False,
    )
