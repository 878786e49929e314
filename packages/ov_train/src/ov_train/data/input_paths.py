"""Turning one configured input path into the files to read, in a fixed order.

An input is a file, a directory (its files with the format's suffixes, sorted by name, not
recursive) or a glob pattern (its matches, sorted). Sorting by name makes the sample order, and
so every output byte of `prepare`, independent of the file system's listing order.
"""

import glob
import re
from pathlib import Path

from ov_train.data.errors import InputConfigError

_GLOB_CHARS = re.compile(r"[*?\[]")


def expand_input(path: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    """The files `path` stands for (see the module docstring); InputConfigError if none."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            child for child in path.iterdir() if child.is_file() and child.name.endswith(suffixes)
        )
        if not files:
            raise InputConfigError(f"{path}: directory holds no {what} ({', '.join(suffixes)})")
        return files
    if _GLOB_CHARS.search(str(path)):
        files = [Path(match) for match in sorted(glob.glob(str(path))) if Path(match).is_file()]
        if not files:
            raise InputConfigError(f"{path}: pattern matches no {what}")
        return files
    raise InputConfigError(f"{path}: no such {what} file or directory")
