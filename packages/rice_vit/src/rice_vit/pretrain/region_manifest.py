"""The region manifest: images and their region boxes for RICE pretraining, read, validated
and written.

Format: one row per image, as JSON Lines (one object a line) or Parquet (the same fields as
columns, `regions` a list of structs):

    {"image": "shops/0001.jpg",
     "regions": [{"box": [x0, y0, x1, y1], "kind": "object", "cluster": 17},
                 {"box": [12, 40, 96, 64], "kind": "ocr", "text": "OPEN"}]}

- `image`: a path relative to the manifest's folder, or to `image_root` when given. Absolute
  paths and paths with a `..` part are refused (a manifest must not reach files outside its
  root) unless `allow_outside_root=True`.
- `box`: pixels of the ORIGINAL image (before any resize), x to the right, y down, half-open
  `[x0, x1) x [y0, y1)`; ints or floats.
- `kind`: `"object"` or `"ocr"`; `text` is required for (and only allowed on) OCR regions;
  `cluster` (int >= 0, optional) is filled by the labelling step for object regions.
- Unknown keys, missing fields, wrong types and undecodable lines are errors (`ManifestError`)
  naming the file and line (JSONL, 1-based) or row (Parquet, 1-based): a malformed manifest is a
  broken pipeline, not bad data, and is never skipped. Blank JSONL lines are allowed.

Validation (`validate_regions`) reads each image's header (its size; no pixel decoded unless
`decode_images=True`) and sorts every region into kept or excluded with ONE reason, first
match in this order: `not_finite` (NaN/inf coordinate), `degenerate` (x1 < x0 or y1 < y0),
`empty` (zero width or height), `empty_text` (an OCR region whose text is blank), `outside` (no
overlap with the image), `too_small` (a side of the clipped box below `min_box_side` pixels).
A box partly outside the image is clipped and kept, and counted as `clipped`. An image that
cannot be opened (missing, corrupt, too large) excludes all its regions under
`image_unreadable`; an image left with no valid region is counted and not used. Every exclusion
is counted in the `RegionReport`, with up to `max_examples` examples per reason naming the image,
its manifest line and the region's index: nothing is dropped silently.
"""

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from rice_vit.decode import DEFAULT_MAX_IMAGE_PIXELS, decode_image, open_image
from rice_vit.errors import ImageError, RiceViTError

RegionKind = Literal["object", "ocr"]
REGION_KINDS: tuple[str, ...] = ("object", "ocr")
EXCLUSION_REASONS: tuple[str, ...] = (
    "not_finite",
    "degenerate",
    "empty",
    "empty_text",
    "outside",
    "too_small",
    "image_unreadable",
)
_ROW_KEYS = {"image", "regions"}
_REGION_KEYS = {"box", "kind", "text", "cluster"}


class ManifestError(RiceViTError):
    """A region manifest is malformed (bad JSON, missing or unknown field, wrong type, a path
    escaping its root); the message names the file and line or row."""


@dataclass(frozen=True)
class Region:
    """One region as written in the manifest."""

    box: tuple[float, float, float, float]
    """(x0, y0, x1, y1) in pixels of the original image, half-open."""
    kind: RegionKind
    text: str | None = None
    """The recognised text of an OCR region; None for objects."""
    cluster: int | None = None
    """The cluster label of an object region, once the labelling step has run."""


@dataclass(frozen=True)
class ManifestRow:
    """One image of the manifest with all its regions, bad ones included."""

    image: str
    """The path as written in the manifest."""
    path: Path
    """The image file: `image` under the manifest's root."""
    regions: tuple[Region, ...]
    source: str
    """Where the row is: `file.jsonl:LINE` or `file.parquet row N`, for messages."""


@dataclass(frozen=True)
class ValidRegion:
    """A region that passed validation."""

    index: int
    """Its position in the manifest row's `regions` (stable: used by features and labels)."""
    box: tuple[float, float, float, float]
    """(x0, y0, x1, y1), clipped to the image."""
    kind: RegionKind
    text: str | None = None
    cluster: int | None = None


@dataclass(frozen=True)
class RegionImage:
    """An image with at least one valid region."""

    row: int
    """0-based row of the manifest (stable: used by features and labels)."""
    image: str
    path: Path
    width: int
    height: int
    regions: tuple[ValidRegion, ...]
    source: str


@dataclass
class RegionReport:
    """What validation kept, clipped and excluded, and why. `format()` is the printed table,
    `to_dict()`/`write_json()` the machine-readable form."""

    manifest: str = ""
    images: int = 0
    """Rows in the manifest."""
    images_used: int = 0
    """Images with at least one valid region."""
    images_unreadable: int = 0
    images_without_valid_region: int = 0
    """Readable images all of whose regions were excluded (or that listed none)."""
    regions: int = 0
    """Regions listed in the manifest."""
    regions_valid: int = 0
    valid_by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REGION_KINDS, 0))
    clipped: int = 0
    """Valid regions that were partly outside their image and clipped to it."""
    excluded: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EXCLUSION_REASONS, 0))
    examples: list[dict[str, Any]] = field(default_factory=list)
    """Up to `max_examples` per reason (clipped included): reason, image, source, region, box,
    detail."""
    max_examples: int = 10

    @property
    def regions_excluded(self) -> int:
        """Regions excluded for any reason."""
        return sum(self.excluded.values())

    def note(
        self,
        reason: str,
        row: ManifestRow,
        region: int | None,
        detail: str,
        box: Sequence[float] | None = None,
    ) -> None:
        """Count nothing; keep an example of `reason` if fewer than `max_examples` are kept."""
        if sum(1 for e in self.examples if e["reason"] == reason) >= self.max_examples:
            return
        self.examples.append(
            {
                "reason": reason,
                "image": row.image,
                "source": row.source,
                "region": region,
                "box": None if box is None else [_json_number(v) for v in box],
                "detail": detail,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """All counts and examples as JSON-ready data."""
        return {
            "manifest": self.manifest,
            "images": self.images,
            "images_used": self.images_used,
            "images_unreadable": self.images_unreadable,
            "images_without_valid_region": self.images_without_valid_region,
            "regions": self.regions,
            "regions_valid": self.regions_valid,
            "valid_by_kind": dict(self.valid_by_kind),
            "regions_excluded": self.regions_excluded,
            "clipped": self.clipped,
            "excluded": dict(self.excluded),
            "examples": list(self.examples),
        }

    def write_json(self, path: str | Path) -> None:
        """Write `to_dict()` as indented JSON (atomically)."""
        _atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    def format(self) -> str:
        """A human-readable summary: counts, then each reason with its examples."""
        lines = [
            f"region manifest {self.manifest}",
            f"  images   {self.images} listed, {self.images_used} used, "
            f"{self.images_unreadable} unreadable, "
            f"{self.images_without_valid_region} without a valid region",
            f"  regions  {self.regions} listed, {self.regions_valid} valid ("
            + ", ".join(f"{k} {v}" for k, v in self.valid_by_kind.items())
            + f"), {self.regions_excluded} excluded, {self.clipped} clipped to their image",
        ]
        extra = {"clipped": self.clipped, "no_valid_region": self.images_without_valid_region}
        for reason in (*EXCLUSION_REASONS, *extra):
            count = extra[reason] if reason in extra else self.excluded[reason]
            if not count:
                continue
            lines.append(f"  {reason:<17} {count}")
            for example in (e for e in self.examples if e["reason"] == reason):
                where = "" if example["region"] is None else f" region {example['region']}"
                lines.append(
                    f"      {example['source']} {example['image']}{where}: {example['detail']}"
                )
        return "\n".join(lines)


@dataclass(frozen=True)
class RegionManifest:
    """A validated manifest: the usable images, and the report of what was excluded."""

    images: tuple[RegionImage, ...]
    report: RegionReport

    @property
    def num_regions(self) -> int:
        """Valid regions over all images."""
        return sum(len(image.regions) for image in self.images)

    def region_index(self) -> np.ndarray:
        """(num_regions, 2) int64: (manifest row, region index) of each valid region, images in
        manifest order, regions in row order; the row order of region features and labels."""
        pairs = [(image.row, region.index) for image in self.images for region in image.regions]
        return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


# ---------------------------------------------------------------- reading


def read_manifest(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    allow_outside_root: bool = False,
) -> list[ManifestRow]:
    """Read a JSONL (`.jsonl`, `.json`) or Parquet (`.parquet`) manifest. Image paths resolve
    under `image_root` (default: the manifest's folder). Raises `ManifestError` naming the
    file and line/row for anything malformed, and for absolute or `..` paths unless
    `allow_outside_root`."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    if path.suffix == ".parquet":
        records = _parquet_records(path)
    elif path.suffix in (".jsonl", ".json", ".ndjson"):
        records = _jsonl_records(path)
    else:
        raise ManifestError(f"{path}: unknown manifest format (use .jsonl or .parquet)")
    return [_parse_row(record, source, root, allow_outside_root) for source, record in records]


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            source = f"{path}:{number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ManifestError(f"{source}: not UTF-8 ({error})") from None
            if not text.strip():
                continue
            if text.lstrip().startswith("["):
                raise ManifestError(
                    f"{source}: a JSON array; a region manifest is JSON Lines (one image object "
                    "a line) or Parquet"
                )
            try:
                yield source, json.loads(text)
            except json.JSONDecodeError as error:
                raise ManifestError(f"{source}: not valid JSON ({error})") from None


def _parquet_records(path: Path) -> Iterator[tuple[str, Any]]:
    pq = _pyarrow_parquet()
    try:
        file = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several types for a bad file
        raise ManifestError(f"{path}: not a readable Parquet file ({error})") from None
    missing = _ROW_KEYS - set(file.schema_arrow.names)
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    number = 0
    for batch in file.iter_batches():
        for record in batch.to_pylist():
            number += 1
            yield f"{path} row {number}", record


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ManifestError(
            "Parquet manifests need pyarrow (pip install 'rice-vit[parquet]'); JSONL needs nothing"
        ) from None
    return pq


def _parse_row(record: Any, source: str, root: Path, allow_outside_root: bool) -> ManifestRow:
    if not isinstance(record, dict):
        raise ManifestError(f"{source}: expected an object, got {type(record).__name__}")
    unknown = set(record) - _ROW_KEYS
    if unknown:
        raise ManifestError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}")
    for key in ("image", "regions"):
        if record.get(key) is None:
            raise ManifestError(f"{source}: missing field {key!r}")
    image = record["image"]
    if not isinstance(image, str) or not image.strip():
        raise ManifestError(f"{source}: 'image' must be a non-empty string, got {image!r}")
    relative = PurePosixPath(image.replace("\\", "/"))
    if not allow_outside_root and (
        relative.is_absolute() or Path(image).is_absolute() or ".." in relative.parts
    ):
        raise ManifestError(
            f"{source}: image path {image!r} leaves the image root {root} (absolute or '..'); "
            "pass allow_outside_root (--allow-outside-root) if that is intended"
        )
    regions = record["regions"]
    if not isinstance(regions, list):
        raise ManifestError(f"{source}: 'regions' must be a list, got {type(regions).__name__}")
    parsed = tuple(_parse_region(r, f"{source} region {i}") for i, r in enumerate(regions))
    return ManifestRow(image=image, path=root / image, regions=parsed, source=source)


def _parse_region(record: Any, where: str) -> Region:
    if not isinstance(record, dict):
        raise ManifestError(f"{where}: expected an object, got {type(record).__name__}")
    unknown = set(record) - _REGION_KEYS
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    box = record.get("box")
    if box is None:
        raise ManifestError(f"{where}: missing field 'box'")
    if (
        not isinstance(box, list | tuple)
        or len(box) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
    ):
        raise ManifestError(f"{where}: 'box' must be 4 numbers [x0, y0, x1, y1], got {box!r}")
    kind = record.get("kind")
    if kind is None:
        raise ManifestError(f"{where}: missing field 'kind'")
    if kind not in REGION_KINDS:
        raise ManifestError(f"{where}: 'kind' must be one of {REGION_KINDS}, got {kind!r}")
    text = record.get("text")
    if kind == "ocr":
        if text is None:
            raise ManifestError(f"{where}: an OCR region needs 'text'")
        if not isinstance(text, str):
            raise ManifestError(f"{where}: 'text' must be a string, got {type(text).__name__}")
    elif text is not None:
        raise ManifestError(f"{where}: 'text' is only for OCR regions (kind {kind!r})")
    cluster = record.get("cluster")
    if cluster is not None and (
        isinstance(cluster, bool) or not isinstance(cluster, int) or cluster < 0
    ):
        raise ManifestError(f"{where}: 'cluster' must be an integer >= 0, got {cluster!r}")
    return Region(box=(box[0], box[1], box[2], box[3]), kind=kind, text=text, cluster=cluster)


# ---------------------------------------------------------------- validation


def validate_regions(
    rows: Sequence[ManifestRow],
    *,
    min_box_side: float = 1,
    decode_images: bool = False,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    manifest: str = "",
    max_examples: int = 10,
) -> RegionManifest:
    """Sort every region into valid (clipped to its image) or excluded with one reason (module
    docstring), count everything in a `RegionReport`. `min_box_side`: the shorter side of a
    clipped box must be at least this many pixels (RICE used 128 for object boxes).
    `decode_images=True` fully decodes each image (catches truncated files; slower); otherwise
    only headers are read."""
    if not (min_box_side >= 0 and math.isfinite(min_box_side)):
        raise ManifestError(f"min_box_side must be a number >= 0, got {min_box_side!r}")
    report = RegionReport(manifest=manifest, max_examples=max_examples)
    images: list[RegionImage] = []
    for row_number, row in enumerate(rows):
        report.images += 1
        report.regions += len(row.regions)
        try:
            width, height = _image_size(row.path, decode_images, max_image_pixels)
        except ImageError as error:
            report.images_unreadable += 1
            report.excluded["image_unreadable"] += len(row.regions)
            report.note("image_unreadable", row, None, error.problem)
            continue
        valid: list[ValidRegion] = []
        for index, region in enumerate(row.regions):
            reason, detail, box = _check_box(region, width, height, min_box_side)
            if reason is not None:
                report.excluded[reason] += 1
                report.note(reason, row, index, detail, region.box)
                continue
            if box != tuple(region.box):
                report.clipped += 1
                report.note("clipped", row, index, f"clipped to {_fmt_box(box)}", region.box)
            valid.append(ValidRegion(index, box, region.kind, region.text, region.cluster))
            report.valid_by_kind[region.kind] += 1
        if not valid:
            report.images_without_valid_region += 1
            report.note(
                "no_valid_region",
                row,
                None,
                f"{len(row.regions)} region(s) listed, none valid",
            )
            continue
        report.regions_valid += len(valid)
        images.append(
            RegionImage(row_number, row.image, row.path, width, height, tuple(valid), row.source)
        )
    report.images_used = len(images)
    return RegionManifest(tuple(images), report)


def load_region_manifest(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    allow_outside_root: bool = False,
    min_box_side: float = 1,
    decode_images: bool = False,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> RegionManifest:
    """`read_manifest` then `validate_regions`: the usable images and the report."""
    rows = read_manifest(path, image_root=image_root, allow_outside_root=allow_outside_root)
    return validate_regions(
        rows,
        min_box_side=min_box_side,
        decode_images=decode_images,
        max_image_pixels=max_image_pixels,
        manifest=str(path),
    )


def _image_size(path: Path, decode: bool, max_image_pixels: int) -> tuple[int, int]:
    if decode:
        image = decode_image(path, max_image_pixels=max_image_pixels)
        return image.size
    with open_image(path, max_image_pixels=max_image_pixels) as image:
        return image.size


def _check_box(
    region: Region, width: int, height: int, min_side: float
) -> tuple[str | None, str, tuple[float, float, float, float]]:
    x0, y0, x1, y1 = region.box
    box = (x0, y0, x1, y1)
    if not all(math.isfinite(v) for v in box):
        return "not_finite", "a coordinate is NaN or infinite", box
    if x1 < x0 or y1 < y0:
        return "degenerate", f"x1 < x0 or y1 < y0 in {_fmt_box(box)}", box
    if x1 == x0 or y1 == y0:
        return "empty", f"zero width or height in {_fmt_box(box)}", box
    if region.kind == "ocr" and not (region.text or "").strip():
        return "empty_text", "OCR region with blank text", box
    clipped = (max(x0, 0), max(y0, 0), min(x1, width), min(y1, height))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return "outside", f"{_fmt_box(box)} does not overlap the {width} x {height} image", box
    side = min(clipped[2] - clipped[0], clipped[3] - clipped[1])
    if side < min_side:
        return "too_small", f"shorter side {side:g} px < min_box_side {min_side:g}", box
    return None, "", clipped


def _fmt_box(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def _json_number(value: float) -> float | int | str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# ---------------------------------------------------------------- labels and writing


def attach_clusters(
    rows: Sequence[ManifestRow], index: np.ndarray, labels: np.ndarray
) -> list[ManifestRow]:
    """Rows with `cluster` set on the regions named by `index` ((n, 2) int64 of (manifest row,
    region index), as `RegionManifest.region_index()` and the feature job give) to `labels`
    ((n,) ints). Only object regions take a cluster; naming an OCR region, a row or region
    that does not exist, or one region twice is an error."""
    index = np.asarray(index)
    labels = np.asarray(labels)
    if index.ndim != 2 or index.shape[1] != 2 or labels.shape != (index.shape[0],):
        raise ManifestError(
            f"attach_clusters needs index (n, 2) and labels (n,), got {index.shape} and "
            f"{labels.shape}"
        )
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
        raise ManifestError("cluster labels must be integers >= 0")
    updates: dict[int, dict[int, int]] = {}
    for (row, region), label in zip(index.tolist(), labels.tolist(), strict=True):
        if not 0 <= row < len(rows) or not 0 <= region < len(rows[row].regions):
            raise ManifestError(f"label for (row {row}, region {region}): no such region")
        where = f"{rows[row].source} region {region}"
        if rows[row].regions[region].kind != "object":
            raise ManifestError(f"{where}: only object regions take a cluster label")
        if region in updates.setdefault(row, {}):
            raise ManifestError(f"{where}: labelled twice")
        updates[row][region] = int(label)
    out = list(rows)
    for row, by_region in updates.items():
        regions = tuple(
            replace(r, cluster=by_region[i]) if i in by_region else r
            for i, r in enumerate(rows[row].regions)
        )
        out[row] = replace(rows[row], regions=regions)
    return out


def manifest_records(rows: Iterable[ManifestRow]) -> Iterator[dict[str, Any]]:
    """The rows as manifest records (the JSONL objects); fields that are None are left out."""
    for row in rows:
        regions = []
        for region in row.regions:
            record: dict[str, Any] = {"box": list(region.box), "kind": region.kind}
            if region.text is not None:
                record["text"] = region.text
            if region.cluster is not None:
                record["cluster"] = region.cluster
            regions.append(record)
        yield {"image": row.image, "regions": regions}


def write_manifest(path: str | Path, rows: Iterable[ManifestRow]) -> None:
    """Write rows as a manifest (JSONL or Parquet by suffix), atomically (temporary file, then
    rename). Paths are written as they were read (`row.image`), so the written manifest must
    sit where its images resolve the same way (or be read with `image_root`)."""
    path = Path(path)
    records = list(manifest_records(rows))
    if path.suffix == ".parquet":
        pq = _pyarrow_parquet()
        import pyarrow as pa

        schema = pa.schema(
            [
                ("image", pa.string()),
                (
                    "regions",
                    pa.list_(
                        pa.struct(
                            [
                                ("box", pa.list_(pa.float64())),
                                ("kind", pa.string()),
                                ("text", pa.string()),
                                ("cluster", pa.int64()),
                            ]
                        )
                    ),
                ),
            ]
        )
        table = pa.Table.from_pylist(records, schema=schema)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    elif path.suffix in (".jsonl", ".json", ".ndjson"):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        _atomic_write_text(path, text)
    else:
        raise ManifestError(f"{path}: unknown manifest format (use .jsonl or .parquet)")


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
