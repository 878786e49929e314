"""`write_atomically`: a file is either its old content or its new content, never half of each.

Every file ov_eval writes whole (`results.json`, a task's fingerprint, the final sample-order
rewrite of a predictions file) goes through here: the bytes go to a temporary file in the same
folder, are flushed to disk (`fsync`), and the temporary file is renamed over the target
(`os.replace`, atomic on POSIX and Windows). A kill or a full disk at any moment leaves the old
file intact; the folder is synced too, so the rename itself survives a power cut. The cost is one
extra fsync per file, negligible next to a model run.

Appending prediction lines during a run does not go through here: a torn last line is cut when
the run resumes (`runner`), which is cheaper than rewriting the file after every batch.
"""

import contextlib
import os
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> Path:
    """Replace `path` with `data` atomically (parents created); return `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)
    return path


def _sync_folder(folder: Path) -> None:
    # Makes the rename durable; folders cannot be opened this way on Windows, where the
    # rename is durable enough for our purpose.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on folders
            os.fsync(descriptor)
    finally:
        os.close(descriptor)
