"""Turning configured input paths into files to read, and image paths into files, safely.

An input is a file, a directory (its files with the format's suffixes, sorted by name, not
recursive) or a glob pattern (its matches, sorted). Sorting by name makes the sample order, and
so every output byte of `prepare`, independent of the file system's listing order.

Image paths inside the data (a LLaVA row's `"image"`, a parquet cell's `path`) are relative to an
image folder and must stay inside it (`image_path`): a path with a `..` component is refused, and
so is an absolute path unless the job allows them (`PrepareConfig.allow_absolute_paths`,
`--allow-absolute-paths`: the data then names its files itself). Either is an `UnsafePathError`
naming the file, the row and the sample: a corpus that points outside its folder is a job to look
at, not a sample to skip. Symbolic links inside the folder are followed (whoever made the folder
put them there).
"""

import glob
import re
from pathlib import Path, PurePosixPath

from ov_train.data.conversations import RowError
from ov_train.data.errors import InputConfigError, UnsafePathError

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


def image_path(
    root: Path, value: str, *, allow_absolute: bool, where: str, sample_id: str, index: int
) -> Path:
    """The file an image path of the data names, `root / value`, checked to stay in `root`.

    UnsafePathError (naming `where`, the sample and the path) for a `..` component, or for an
    absolute path unless `allow_absolute`; RowError for a path with a NUL character (no file
    system has such a name: the row is malformed).
    """
    if "\x00" in value:
        raise RowError(f"image {index} path {value!r} holds a NUL character")
    path = PurePosixPath(value)
    if path.is_absolute() or Path(value).is_absolute():
        if allow_absolute:
            return Path(value)
        raise UnsafePathError(
            f"{where}: sample {sample_id!r}, image {index}: absolute path {value!r} is outside "
            f"the image folder {root}; pass --allow-absolute-paths "
            "(PrepareConfig.allow_absolute_paths) if the data names its files that way"
        )
    if ".." in path.parts or ".." in Path(value).parts:
        raise UnsafePathError(
            f"{where}: sample {sample_id!r}, image {index}: path {value!r} has a '..' "
            f"component and could leave the image folder {root}; image paths must stay inside it"
        )
    return root / value
