"""Progress display, off unless asked for (the CLI asks; the library API does not).

A bar on a terminal, plain periodic lines in logs, nothing when disabled: the behaviour every
onevision CLI shares, from `cli_conventions.progress_bar`.
"""

from typing import Any

from tqdm import tqdm

from ov_concepts.cli_conventions import progress_bar as _progress_bar


def progress_bar(
    total: int | None, desc: str, enabled: bool, unit: str = "row", **kwargs: Any
) -> tqdm:
    """A progress display on stderr (see cli_conventions); a silent one when not `enabled`."""
    return _progress_bar(
        total=total, desc=desc, unit=unit, enabled=enabled, unit_scale=True, leave=False, **kwargs
    )
