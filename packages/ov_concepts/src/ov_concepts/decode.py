"""Image decoding in worker processes, feeding the embedding model batches in input order.

Decoding a JPEG and resizing it is CPU work of a few milliseconds per image, done by Pillow; one
thread tops out at tens of images per second, far below what a GPU encodes. `DecodePool` runs that
work in `workers` spawned processes (torch-free: this module imports only numpy and Pillow, so a
worker starts in well under a second) and hands the results back in input order, so the batches the
model sees, and therefore the embeddings written, are the same bytes whatever the number of
workers (0 decodes in the calling process).

What a worker returns is whatever the encoder's preparer makes of the decoded image: for CLIP,
`ResizeCrop`, the resize, centre crop and RGB conversion of open_clip's transform, as a uint8
(size, size, 3) array (150 KB at 224 px, four times less to send back than float pixels); the
float normalisation happens batched in the model's process. Without a preparer the Pillow image
itself comes back. An image that fails to decode or to prepare (truncated, corrupt, a decompression
bomb) comes back as a failure with its reason, never an exception: one bad file in 85M should not
stop a job.

Work is sent in tasks of `task_images` images with at most `window` tasks in flight, so memory
stays bounded however fast the workers are and however slow the model is.
"""

import concurrent.futures
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def image_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this file is not a usable image" (not a bug): reported, skipped."""
    from PIL import Image

    return (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class ResizeCrop:
    """open_clip's inference resize + centre crop + RGB, as uint8 (size, size, 3). Picklable.

    Same steps in the same order as open_clip's `image_transform(is_train=False)`: resize (shortest
    side to `size`, long side truncated as torchvision computes it; or "squash" to a square), centre
    crop (offsets rounded half to even, as torchvision rounds them), conversion to RGB after
    resizing (so palette images resize with Pillow's nearest-neighbour rule, as there).
    """

    size: int
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"

    def __call__(self, image: Any) -> np.ndarray:
        from PIL import Image

        resample = Image.Resampling.BICUBIC
        if self.interpolation == "bilinear":
            resample = Image.Resampling.BILINEAR
        size = self.size
        width, height = image.size
        if self.resize_mode == "squash":
            image = image.resize((size, size), resample)
        else:
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = size, int(size * long / short)
            new_size = (new_short, new_long) if width <= height else (new_long, new_short)
            image = image.resize(new_size, resample)
        width, height = image.size
        top = round((height - size) / 2.0)  # Python rounds half to even, as torchvision does
        left = round((width - size) / 2.0)
        image = image.crop((left, top, left + size, top + size)).convert("RGB")
        return np.asarray(image, dtype=np.uint8)


def load_image(path: Path, prepare: Callable[[Any], Any] | None = None) -> Any:
    """Decode `path` fully (Pillow), then apply `prepare`; raises one of `image_errors()`."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        image = image.copy()
    return image if prepare is None else prepare(image)


def load_images(
    root: Path, keys: Sequence[str], prepare: Callable[[Any], Any] | None = None
) -> list[tuple[bool, Any]]:
    """(True, loaded) or (False, "Error: reason") for each key, a path relative to `root`."""
    errors = image_errors()
    out: list[tuple[bool, Any]] = []
    for key in keys:
        try:
            out.append((True, load_image(Path(root) / key, prepare)))
        except errors as error:
            out.append((False, f"{type(error).__name__}: {error}"))
    return out


def _exit_with_parent(parent: int) -> None:
    """In a decoding worker: exit when the process that started it is gone (SIGKILLed, or a Ray
    actor killed), instead of waiting forever for work."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


class DecodePool:
    """Loads images in `workers` spawned processes (0: inline), yielding results in input order."""

    def __init__(
        self,
        workers: int,
        prepare: Callable[[Any], Any] | None = None,
        *,
        task_images: int = 16,
        window: int | None = None,
    ) -> None:
        if workers < 0:
            raise ValueError(f"decode workers must be >= 0, got {workers}")
        if task_images < 1:
            raise ValueError(f"task_images must be >= 1, got {task_images}")
        self.workers = workers
        self.prepare = prepare
        self.task_images = task_images
        self.window = window if window is not None else max(2, 4 * workers)
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        if workers > 0:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )

    def load(self, root: Path, keys: Sequence[str]) -> Iterator[tuple[bool, Any]]:
        """(ok, image or reason) for every key, in the order of `keys`."""
        if self._executor is None:
            for start in range(0, len(keys), self.task_images):
                yield from load_images(root, keys[start : start + self.task_images], self.prepare)
            return
        pending: deque[concurrent.futures.Future] = deque()
        starts = iter(range(0, len(keys), self.task_images))
        try:
            for start in starts:
                part = list(keys[start : start + self.task_images])
                pending.append(self._executor.submit(load_images, root, part, self.prepare))
                if len(pending) >= self.window:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        """Stop the worker processes."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
