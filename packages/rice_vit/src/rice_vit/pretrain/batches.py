"""Packed region batches for RICE pretraining, deterministic and resumable.

A batch is `batch_images` images (over all ranks; each rank gets `batch_images / world_size`)
packed at native resolution into one `pixel_values` / `grid_thw` pair, plus N regions per image
(`regions_per_image`, sampled by `rice_vit.pretrain.regions.sample_regions`: subsampled or
repeated), their patch boxes as `RegionBoxes`, and each region's positive classes in CSR form:
region r's classes are `positives_classes[positives_offsets[r]:positives_offsets[r + 1]]`
(sorted, distinct). An object region has one positive, its k-means cluster; an OCR region has
the token classes of its text (ids already offset past the K clusters by the OCR labeler).

Order: epoch e visits the images in a permutation seeded by (seed, e); global batch b of the
epoch takes permutation positions [b * batch_images, (b + 1) * batch_images) and rank r the r-th
slice of it. With `drop_last` (the default) a last incomplete global batch is left out of that
epoch (the next epoch's permutation differs, so no image is left out for good), and every rank
sees the same number of batches. A batch is a pure function of (seed, epoch, batch number,
rank): `batch_for_step(step)` is what a training loop calls, so resuming at step s gives the
same batches as never having stopped, whatever was prefetched. `state_dict()` /
`load_state_dict()` carry the position for iteration with `iter()`.

Labels are checked up front (construction), so a missing cluster, an OCR text with no token, or
a class outside `num_classes` is an error naming the image and region before training starts,
never a silently skipped region. This keeps one small tuple of classes per valid region in
memory (a few hundred bytes per image).
"""

import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rice_vit.errors import ImageError, InputError
from rice_vit.pretrain.region_manifest import RegionImage, RegionManifest
from rice_vit.pretrain.regions import (
    DEFAULT_REGIONS_PER_IMAGE,
    patch_grid,
    pixel_box_to_patch_box,
    region_rng,
    sample_regions,
)
from rice_vit.processor import ImageProcessor
from rice_vit.region_boxes import RegionBoxes

KIND_CODES = {"object": 0, "ocr": 1}
"""`RegionBatch.kinds` values."""


@dataclass(frozen=True)
class RegionBatch:
    """One rank's share of one training step."""

    pixel_values: torch.Tensor
    """(patches, 3 * P * P) float32, images packed in order, merge-block rows."""
    grid_thw: torch.Tensor
    """(images, 3) int64 (1, h, w) in patches."""
    regions: RegionBoxes
    """R = images * regions_per_image boxes, image by image."""
    positives_offsets: torch.Tensor
    """(R + 1,) int64 CSR offsets into `positives_classes`."""
    positives_classes: torch.Tensor
    """(nnz,) int64 positive class ids of each region (sorted, distinct per region)."""
    kinds: torch.Tensor
    """(R,) int64 `KIND_CODES` of each region."""
    image_rows: torch.Tensor
    """(images,) int64 manifest row of each image (for tracing a batch back to its data)."""
    region_indices: torch.Tensor
    """(R,) int64 index of each region in its manifest row's `regions`."""

    def to(self, device: torch.device | str) -> "RegionBatch":
        """The tensors on `device` (the boxes too: `encode` accepts either)."""
        return RegionBatch(
            self.pixel_values.to(device),
            self.grid_thw.to(device),
            self.regions.to(device),
            self.positives_offsets.to(device),
            self.positives_classes.to(device),
            self.kinds.to(device),
            self.image_rows.to(device),
            self.region_indices.to(device),
        )


class RegionBatches:
    """Deterministic packed region batches from a validated manifest (module docstring).

    `ocr_classes(text)` returns the positive class ids of an OCR text (R3's OCR labeler: token
    ids + K); required when the manifest has OCR regions. Object clusters come from the
    manifest's `cluster` fields (a labelled manifest) unless `clusters` = (index (n, 2) of
    (manifest row, region index), labels (n,)) is given, which takes precedence.
    `num_classes` (optional) bounds every class id."""

    def __init__(
        self,
        manifest: RegionManifest,
        *,
        batch_images: int,
        processor: ImageProcessor | None = None,
        regions_per_image: int | None = DEFAULT_REGIONS_PER_IMAGE,
        seed: int = 0,
        ocr_classes: Callable[[str], Sequence[int]] | None = None,
        clusters: tuple[np.ndarray, np.ndarray] | None = None,
        num_classes: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        if batch_images < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise InputError(
                f"RegionBatches: need batch_images >= 1 and 0 <= rank < world_size, got "
                f"batch_images {batch_images}, rank {rank}, world_size {world_size}"
            )
        if batch_images % world_size:
            raise InputError(
                f"RegionBatches: batch_images {batch_images} is not divisible by world_size "
                f"{world_size}"
            )
        if world_size > 1 and not drop_last:
            raise InputError("RegionBatches: drop_last=False needs world_size 1 (equal steps)")
        if seed < 0:
            raise InputError(f"RegionBatches: seed must be >= 0, got {seed}")
        self.images: tuple[RegionImage, ...] = manifest.images
        self.processor = processor or ImageProcessor()
        self.batch_images = batch_images
        self.local_images = batch_images // world_size
        self.regions_per_image = regions_per_image
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        count = len(self.images)
        self.batches_per_epoch = count // batch_images if drop_last else -(-count // batch_images)
        if self.batches_per_epoch == 0:
            raise InputError(
                f"RegionBatches: {count} usable images make no batch of {batch_images} images"
            )
        self._positives = self._label_regions(ocr_classes, clusters, num_classes)
        self._order: tuple[int, np.ndarray] | None = None
        self._epoch = 0
        self._batch = 0

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        return self.batches_per_epoch

    # ------------------------------------------------------------ labels

    def _label_regions(
        self,
        ocr_classes: Callable[[str], Sequence[int]] | None,
        clusters: tuple[np.ndarray, np.ndarray] | None,
        num_classes: int | None,
    ) -> list[list[tuple[int, ...]]]:
        given: dict[tuple[int, int], int] = {}
        if clusters is not None:
            index, labels = (np.asarray(a) for a in clusters)
            if index.ndim != 2 or index.shape[1] != 2 or labels.shape != (index.shape[0],):
                raise InputError(
                    f"RegionBatches: clusters must be (index (n, 2), labels (n,)), got "
                    f"{index.shape} and {labels.shape}"
                )
            given = {
                (row, region): label
                for (row, region), label in zip(index.tolist(), labels.tolist(), strict=True)
            }
        positives: list[list[tuple[int, ...]]] = []
        for image in self.images:
            per_image = []
            for region in image.regions:
                where = f"{image.source} {image.image} region {region.index}"
                if region.kind == "object":
                    label = given.get((image.row, region.index), region.cluster)
                    if label is None:
                        raise InputError(
                            f"{where}: object region without a cluster label (run the labels "
                            "step, or pass clusters=)"
                        )
                    classes: tuple[int, ...] = (int(label),)
                else:
                    if ocr_classes is None:
                        raise InputError(
                            f"{where}: OCR region but RegionBatches got no ocr_classes labeler"
                        )
                    classes = tuple(sorted({int(c) for c in ocr_classes(region.text or "")}))
                    if not classes:
                        raise InputError(f"{where}: OCR text {region.text!r} gives no class")
                if classes[0] < 0 or (num_classes is not None and classes[-1] >= num_classes):
                    raise InputError(
                        f"{where}: class ids {list(classes)} outside [0, {num_classes})"
                    )
                per_image.append(classes)
            positives.append(per_image)
        return positives

    # ------------------------------------------------------------ order

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Positions into `images` in the order epoch `epoch` visits them (all ranks)."""
        if epoch < 0:
            raise InputError(f"RegionBatches: epoch must be >= 0, got {epoch}")
        if self._order is None or self._order[0] != epoch:
            seeds = np.random.SeedSequence([self.seed, epoch])
            order = np.random.Generator(np.random.PCG64(seeds)).permutation(len(self.images))
            order.flags.writeable = False
            self._order = (epoch, order)  # one permutation per epoch, not one per batch
        return self._order[1]

    def images_of(self, epoch: int, number: int) -> np.ndarray:
        """Positions into `images` of this rank's share of batch `number` of `epoch`."""
        if not 0 <= number < self.batches_per_epoch:
            raise InputError(
                f"RegionBatches: batch {number} outside 0..{self.batches_per_epoch - 1}"
            )
        order = self.epoch_order(epoch)
        start = number * self.batch_images + self.rank * self.local_images
        return order[start : start + self.local_images]

    def position_of_step(self, step: int) -> tuple[int, int]:
        """(epoch, batch number) of training step `step` (0-based)."""
        if step < 0:
            raise InputError(f"RegionBatches: step must be >= 0, got {step}")
        return divmod(step, self.batches_per_epoch)

    def batch_for_step(self, step: int) -> RegionBatch:
        """This rank's batch of training step `step`: `batch(*position_of_step(step))`."""
        return self.batch(*self.position_of_step(step))

    # ------------------------------------------------------------ building a batch

    def batch(self, epoch: int, number: int) -> RegionBatch:
        """This rank's share of batch `number` of `epoch`, decoded and packed."""
        rows: list[np.ndarray] = []
        grids: list[tuple[int, int, int]] = []
        image_index: list[int] = []
        boxes: list[tuple[int, int, int, int]] = []
        offsets = [0]
        classes: list[int] = []
        kinds: list[int] = []
        region_indices: list[int] = []
        image_rows: list[int] = []
        for slot, position in enumerate(self.images_of(epoch, number).tolist()):
            image = self.images[position]
            patches, grid = self._process(image)
            rows.append(patches)
            grids.append(grid)
            image_rows.append(image.row)
            rng = region_rng(self.seed, epoch, image.row)
            for pick in sample_regions(len(image.regions), self.regions_per_image, rng=rng):
                region = image.regions[int(pick)]
                image_index.append(slot)
                boxes.append(
                    pixel_box_to_patch_box(region.box, (image.width, image.height), grid[1:])
                )
                positives = self._positives[position][int(pick)]
                classes.extend(positives)
                offsets.append(offsets[-1] + len(positives))
                kinds.append(KIND_CODES[region.kind])
                region_indices.append(region.index)
        return RegionBatch(
            pixel_values=torch.from_numpy(np.concatenate(rows)),
            grid_thw=torch.tensor(grids, dtype=torch.int64),
            regions=RegionBoxes(
                torch.tensor(image_index, dtype=torch.int64),
                torch.tensor(boxes, dtype=torch.int64).reshape(-1, 4),
            ),
            positives_offsets=torch.tensor(offsets, dtype=torch.int64),
            positives_classes=torch.tensor(classes, dtype=torch.int64),
            kinds=torch.tensor(kinds, dtype=torch.int64),
            image_rows=torch.tensor(image_rows, dtype=torch.int64),
            region_indices=torch.tensor(region_indices, dtype=torch.int64),
        )

    def _process(self, image: RegionImage) -> tuple[np.ndarray, tuple[int, int, int]]:
        patches, grid = self.processor.process_one(image.path)
        expected = patch_grid(image.width, image.height, self.processor)
        if grid[1:] != expected:
            raise ImageError(
                f"{image.path}: decoded to a {grid[1]} x {grid[2]} patch grid, but its "
                f"validated size {image.width} x {image.height} gives {expected}; the file "
                "changed after validation"
            )
        return patches, grid

    def steps(
        self, start: int = 0, stop: int | None = None, *, prefetch: int = 0
    ) -> Iterator[tuple[int, RegionBatch]]:
        """(step, `batch_for_step(step)`) for step = start, start + 1, ... up to `stop`
        (excluded; None: forever). `prefetch` > 0 builds that many upcoming batches in
        background threads (PIL decoding and resizing release the GIL) while the caller
        trains; the batches are the same either way."""
        if prefetch < 0:
            raise InputError(f"RegionBatches.steps: prefetch must be >= 0, got {prefetch}")
        numbers = itertools.count(start) if stop is None else iter(range(start, stop))
        if prefetch == 0:
            for step in numbers:
                yield step, self.batch_for_step(step)
            return
        pool = ThreadPoolExecutor(max_workers=prefetch, thread_name_prefix="region-batches")
        pending: deque[tuple[int, Future[RegionBatch]]] = deque()
        try:
            for step in itertools.islice(numbers, prefetch):
                pending.append((step, pool.submit(self.batch_for_step, step)))
            while pending:
                step, future = pending.popleft()
                following = next(numbers, None)
                if following is not None:
                    pending.append((following, pool.submit(self.batch_for_step, following)))
                yield step, future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def loader(
        self, start: int, stop: int, *, workers: int = 2, prefetch_factor: int = 2
    ) -> "torch.utils.data.DataLoader[RegionBatch]":
        """A torch `DataLoader` yielding `batch_for_step(step)` for step in [start, stop), in
        order, built by `workers` processes (each keeps `prefetch_factor` batches ahead): the
        data path of a GPU run, where one process cannot decode and resize fast enough. Same
        batches as `steps`; `workers=0` builds them in the calling process."""
        if not 0 <= start <= stop:
            raise InputError(f"RegionBatches.loader: need 0 <= start <= stop, got {start}, {stop}")
        return torch.utils.data.DataLoader(
            _StepDataset(self, start, stop),
            batch_size=None,
            num_workers=workers,
            prefetch_factor=prefetch_factor if workers else None,
        )

    # ------------------------------------------------------------ iteration and resume

    def __iter__(self) -> Iterator[RegionBatch]:
        """Batches from the current position on, forever (epoch after epoch); the position
        advances as each batch is yielded, so `state_dict()` taken after consuming a batch
        resumes at the next one."""
        while True:
            epoch, number = self._epoch, self._batch
            batch = self.batch(epoch, number)
            self._batch += 1
            if self._batch == self.batches_per_epoch:
                self._epoch, self._batch = epoch + 1, 0
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The iteration position, plus what must match on resume."""
        return {
            "epoch": self._epoch,
            "batch": self._batch,
            "seed": self.seed,
            "batch_images": self.batch_images,
            "world_size": self.world_size,
            "images": len(self.images),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (from `state_dict()`); refuses a state of another seed, batch
        size, world size or manifest size, which would silently change the data order."""
        for key in ("seed", "batch_images", "world_size", "images"):
            if state.get(key) != self.state_dict()[key]:
                raise InputError(
                    f"RegionBatches: cannot resume: state has {key} = {state.get(key)!r}, this "
                    f"loader {self.state_dict()[key]!r}"
                )
        epoch, number = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= number < self.batches_per_epoch:
            raise InputError(f"RegionBatches: bad position epoch {epoch}, batch {number}")
        self._epoch, self._batch = epoch, number


class _StepDataset(torch.utils.data.Dataset):
    """Steps [start, stop) of a `RegionBatches` as a map-style dataset (item i = step start+i)."""

    def __init__(self, batches: RegionBatches, start: int, stop: int) -> None:
        self.batches, self.start, self.stop = batches, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, item: int) -> RegionBatch:
        if not 0 <= item < len(self):
            raise IndexError(item)
        return self.batches.batch_for_step(self.start + item)
