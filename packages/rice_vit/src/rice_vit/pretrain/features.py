"""Region features for clustering: crop each valid region of the original image, embed the
crops with an encoder, and store the features in resumable chunks.

RICE labels object regions by k-means over CLIP features of the crops (RICE 3.1). The encoder is
anything with `encode(crops) -> (n, dim) float32` (`RegionFeatureEncoder`); three ship:

- `PixelFeatures(size)`: the crop resized to size x size RGB (PIL box filter in float: the area
  mean of each cell), flattened, L2-normalised. No model: a baseline, and the encoder of the
  synthetic end-to-end run, where colour and shape are what the clusters should find.
- `RiceViTFeatures`: a `RiceViT` checkpoint at native resolution, class-token pooled (with the
  post-layernorm when the checkpoint has one), L2-normalised: continue pretraining from the
  clusters of an earlier round.
- `ClipFeatures`: an open_clip-format CLIP image tower through `ov_concepts.clip` (imported only
  when used; rice_vit does not depend on ov_concepts), L2-normalised.

Every encoder returns unit rows (a zero row stays zero), so k-means' L2 distance ranks like
cosine similarity. A NaN/inf feature is an error naming the image and region: it means the
encoder is broken, not the data.

The job (`extract_region_features`) walks the valid regions in `RegionManifest.region_index()`
order and cuts them into chunks of `chunk_regions`. Each chunk is written as
`chunk-NNNNNN.npy` (float32 (rows, dim)) through a temporary file and a rename, so a chunk file
exists only when complete; `index.npy` ((n, 2) int64: manifest row, region index of each feature
row) and `features.json` (encoder, dim, counts and a SHA-256 over every region's image and box)
are written before the first chunk. A rerun with the same manifest, encoder and chunk size skips
the chunks already on disk; anything else is refused instead of mixing features of two jobs.
Images are decoded once per chunk (a chunk holding regions of several images decodes each once).
"""

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from rice_vit.decode import DEFAULT_MAX_IMAGE_PIXELS, decode_image
from rice_vit.errors import RiceViTError
from rice_vit.pretrain.region_manifest import RegionManifest
from rice_vit.processor import ImageProcessor

FEATURES_META = "features.json"
INDEX_FILE = "index.npy"
_FORMAT_VERSION = 1


class FeatureError(RiceViTError):
    """A feature job cannot run or resume (another job's folder, missing chunks, bad features);
    the message names the folder, file, image or region."""


@runtime_checkable
class RegionFeatureEncoder(Protocol):
    """Embeds region crops: `encode(crops)` -> (len(crops), dim) float32 on the CPU."""

    @property
    def dim(self) -> int:
        """Feature dimension."""
        ...

    @property
    def description(self) -> str:
        """A stable identifier of the encoder and its weights (recorded by the feature job)."""
        ...

    def encode(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        """(len(crops), dim) float32 features of RGB crops."""
        ...


def crop_region(image: Image.Image, box: Sequence[float]) -> Image.Image:
    """The pixels of `image` under `box` (x0, y0, x1, y1): fractional edges round outward
    (every pixel the box touches), clamped to the image, at least one pixel per side."""
    width, height = image.size
    x0 = min(max(math.floor(box[0]), 0), width - 1)
    y0 = min(max(math.floor(box[1]), 0), height - 1)
    x1 = min(max(math.ceil(box[2]), x0 + 1), width)
    y1 = min(max(math.ceil(box[3]), y0 + 1), height)
    return image.crop((x0, y0, x1, y1))


def l2_normalise(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm, float32; a zero row stays zero."""
    features = features.float()
    return features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)


class PixelFeatures:
    """The crop resized to `size` x `size` RGB (box filter), flattened in [0, 1], L2-normalised:
    dim = 3 * size * size. Deterministic, no model."""

    def __init__(self, size: int = 8) -> None:
        if size < 1:
            raise FeatureError(f"PixelFeatures size must be >= 1, got {size}")
        self.size = size

    @property
    def dim(self) -> int:
        """3 * size * size."""
        return 3 * self.size * self.size

    @property
    def description(self) -> str:
        """`pixels:SIZE`."""
        return f"pixels:{self.size}"

    def encode(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        """(n, 3*size*size) unit rows."""
        if not crops:
            return torch.empty(0, self.dim)
        return l2_normalise(torch.from_numpy(np.stack([self._pixels(c) for c in crops])))

    def _pixels(self, crop: Image.Image) -> np.ndarray:
        # Box-filter each channel in float ("F" mode): the exact area mean, no uint8 rounding.
        rgb = np.asarray(crop.convert("RGB"), dtype=np.float32) / 255.0
        channels = [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(rgb[:, :, c]), mode="F").resize(
                    (self.size, self.size), Image.Resampling.BOX
                )
            )
            for c in range(3)
        ]
        return np.stack(channels, axis=-1).reshape(-1)


class RiceViTFeatures:
    """A RiceViT encoder on each crop at native resolution (its own `ImageProcessor`),
    pooled with `pool` ("cls": class token + post-layernorm when present; "mean": patch mean),
    L2-normalised. Crops are packed into encode calls of at most `max_batch_patches` patches."""

    def __init__(
        self,
        model: Any,
        processor: ImageProcessor | None = None,
        *,
        pool: Literal["cls", "mean"] = "cls",
        max_batch_patches: int = 16384,
        description: str = "rice-vit",
    ) -> None:
        self.model = model.eval()
        self.processor = processor or ImageProcessor()
        self.pool = pool
        self.max_batch_patches = max_batch_patches
        self._description = f"{description}:pool={pool}:{self.processor}"

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path,
        *,
        processor: ImageProcessor | None = None,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        pool: Literal["cls", "mean"] = "cls",
        max_batch_patches: int = 16384,
    ) -> "RiceViTFeatures":
        """Load a checkpoint folder (MLCD or LLaVA-OV layout); the processor defaults to the
        folder's `preprocessor_config.json` when there is one."""
        from rice_vit.model import RiceViT

        folder = Path(checkpoint)
        if processor is None and (folder / "preprocessor_config.json").is_file():
            processor = ImageProcessor.from_pretrained(folder)
        model = RiceViT.from_pretrained(folder, dtype=dtype, device=device)
        return cls(
            model,
            processor,
            pool=pool,
            max_batch_patches=max_batch_patches,
            description=f"rice-vit:{folder.resolve()}",
        )

    @property
    def dim(self) -> int:
        """The encoder's hidden size."""
        return self.model.config.hidden_size

    @property
    def description(self) -> str:
        """Checkpoint, pooling and processor settings."""
        return self._description

    def encode(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        """(n, hidden) unit rows, float32 on the CPU."""
        out: list[torch.Tensor] = []
        pending: list[tuple[np.ndarray, tuple[int, int, int]]] = []
        patches = 0
        for position, crop in enumerate(crops):
            rows, grid = self.processor.process_one(crop, name=f"crop {position}")
            if pending and patches + len(rows) > self.max_batch_patches:
                out.append(self._encode_packed(pending))
                pending, patches = [], 0
            pending.append((rows, grid))
            patches += len(rows)
        if pending:
            out.append(self._encode_packed(pending))
        if not out:
            return torch.empty(0, self.dim)
        return l2_normalise(torch.cat(out))

    def _encode_packed(self, items: list[tuple[np.ndarray, tuple[int, int, int]]]) -> torch.Tensor:
        parameter = next(self.model.parameters())
        pixel_values = torch.from_numpy(np.concatenate([rows for rows, _ in items]))
        grid_thw = torch.tensor([grid for _, grid in items], dtype=torch.int64)
        with torch.inference_mode():
            output = self.model.encode(pixel_values.to(parameter.device, parameter.dtype), grid_thw)
            pooled = self.model.pool(output, self.pool)
        return pooled.float().cpu()


class ClipFeatures:
    """An open_clip-format CLIP image tower (`ov_concepts.clip`, imported on construction: a
    clear error when ov_concepts is not installed), L2-normalised image features."""

    def __init__(
        self,
        checkpoint: str | Path,
        model: str | Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 64,
    ) -> None:
        try:
            from ov_concepts.clip import load_clip_encoder
        except ImportError as error:
            raise FeatureError(
                "ClipFeatures needs ov_concepts' CLIP towers (pip install 'ov-concepts[clip]'); "
                f"import failed: {error}"
            ) from None
        self.encoder = load_clip_encoder(Path(checkpoint), model, device=device, dtype=dtype)
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        """The CLIP embedding size."""
        return int(self.encoder.dim)

    @property
    def description(self) -> str:
        """ov_concepts' description of the checkpoint (config, file name and size, dtype)."""
        return f"clip-image:{self.encoder.description}"

    def encode(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        """(n, embed_dim) unit rows."""
        if not crops:
            return torch.empty(0, self.dim)
        parts = [
            torch.from_numpy(self.encoder.encode_images(list(crops[i : i + self.batch_size])))
            for i in range(0, len(crops), self.batch_size)
        ]
        return l2_normalise(torch.cat(parts))


# ---------------------------------------------------------------- the chunked job


@dataclass(frozen=True, kw_only=True)
class FeatureJobConfig:
    """How the feature job cuts and batches its work."""

    chunk_regions: int = 8192
    """Feature rows per chunk file (the most a kill loses)."""
    batch_regions: int = 256
    """Crops per `encode` call."""
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        for name in ("chunk_regions", "batch_regions", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise FeatureError(f"FeatureJobConfig.{name} must be >= 1")


@dataclass(frozen=True)
class RegionFeatures:
    """A completed feature folder: `index` (n, 2) int64 (manifest row, region index) of each
    feature row, and the features in chunk files (`load()` concatenates them)."""

    directory: Path
    index: np.ndarray
    dim: int
    encoder: str
    chunk_regions: int

    @property
    def num_regions(self) -> int:
        """Feature rows."""
        return int(self.index.shape[0])

    def chunk_paths(self) -> list[Path]:
        """The chunk files in row order."""
        count = math.ceil(self.num_regions / self.chunk_regions)
        return [_chunk_path(self.directory, c) for c in range(count)]

    def iter_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 (rows, dim)) per chunk, in order, one chunk in memory at a time."""
        for number, path in enumerate(self.chunk_paths()):
            yield number * self.chunk_regions, np.load(path)

    def load(self) -> np.ndarray:
        """All features, float32 (n, dim)."""
        if self.num_regions == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.concatenate([chunk for _, chunk in self.iter_chunks()])


def extract_region_features(
    manifest: RegionManifest,
    encoder: RegionFeatureEncoder,
    directory: str | Path,
    *,
    config: FeatureJobConfig | None = None,
    progress: bool = True,
) -> RegionFeatures:
    """Embed every valid region of `manifest` into `directory` (module docstring), resuming a
    previous run of the same job; returns the completed `RegionFeatures`."""
    config = config or FeatureJobConfig()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index = manifest.region_index()
    meta = {
        "format": _FORMAT_VERSION,
        "encoder": encoder.description,
        "dim": int(encoder.dim),
        "num_regions": int(index.shape[0]),
        "chunk_regions": config.chunk_regions,
        "regions_digest": _regions_digest(manifest),
    }
    meta_path = directory / FEATURES_META
    if meta_path.exists():
        previous = json.loads(meta_path.read_text(encoding="utf-8"))
        changed = [k for k in meta if previous.get(k) != meta[k]]
        if changed:
            raise FeatureError(
                f"{directory} holds features of another job ({', '.join(changed)} differ: "
                f"{', '.join(f'{k} {previous.get(k)!r} != {meta[k]!r}' for k in changed)}); "
                "use a new folder or delete it"
            )
    else:
        _atomic_save(directory / INDEX_FILE, index)
        _atomic_write(meta_path, (json.dumps(meta, indent=2) + "\n").encode())
    regions = [(image, region) for image in manifest.images for region in image.regions]
    chunks = math.ceil(len(regions) / config.chunk_regions)
    todo = [c for c in range(chunks) if not _chunk_path(directory, c).exists()]
    bar = tqdm(
        total=len(regions),
        initial=len(regions) - sum(_chunk_rows(c, len(regions), config) for c in todo),
        unit="region",
        desc="region features",
        disable=not progress,
    )
    with bar:
        for number in todo:
            start = number * config.chunk_regions
            part = regions[start : start + config.chunk_regions]
            features = _encode_chunk(part, encoder, config)
            _atomic_save(_chunk_path(directory, number), features)
            bar.update(len(part))
    return open_region_features(directory)


def open_region_features(directory: str | Path) -> RegionFeatures:
    """A completed feature folder; raises `FeatureError` when a chunk is missing or
    mis-shaped (an unfinished job: rerun it)."""
    directory = Path(directory)
    meta_path = directory / FEATURES_META
    if not meta_path.is_file():
        raise FeatureError(f"{directory}: no {FEATURES_META}; not a region feature folder")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    index = np.load(directory / INDEX_FILE)
    features = RegionFeatures(
        directory, index, int(meta["dim"]), str(meta["encoder"]), int(meta["chunk_regions"])
    )
    for number, path in enumerate(features.chunk_paths()):
        if not path.is_file():
            raise FeatureError(f"{path}: missing; the feature job did not finish (rerun it)")
        rows = min(features.chunk_regions, features.num_regions - number * features.chunk_regions)
        shape = np.load(path, mmap_mode="r").shape
        if shape != (rows, features.dim):
            raise FeatureError(f"{path}: shape {shape}, expected {(rows, features.dim)}")
    return features


def _encode_chunk(
    part: list, encoder: RegionFeatureEncoder, config: FeatureJobConfig
) -> np.ndarray:
    crops: list[Image.Image] = []
    decoded: dict[int, Image.Image] = {}
    for image, region in part:
        if image.row not in decoded:
            decoded.clear()  # regions of one image are contiguous: keep one image at a time
            decoded[image.row] = decode_image(
                image.path, max_image_pixels=config.max_image_pixels, mode="RGB"
            )
        crops.append(crop_region(decoded[image.row], region.box))
    out = np.empty((len(part), encoder.dim), dtype=np.float32)
    for start in range(0, len(crops), config.batch_regions):
        batch = crops[start : start + config.batch_regions]
        features = encoder.encode(batch)
        if tuple(features.shape) != (len(batch), encoder.dim):
            raise FeatureError(
                f"{encoder.description}: encode returned shape {tuple(features.shape)} for "
                f"{len(batch)} crops, expected ({len(batch)}, {encoder.dim})"
            )
        features = features.detach().float().cpu().numpy()
        bad = ~np.isfinite(features).all(axis=1)
        if bad.any():
            image, region = part[start + int(np.flatnonzero(bad)[0])]
            raise FeatureError(
                f"{encoder.description}: NaN/inf feature for {image.source} {image.image} "
                f"region {region.index} ({int(bad.sum())} in this batch); the encoder is broken"
            )
        out[start : start + len(batch)] = features
    return out


def _regions_digest(manifest: RegionManifest) -> str:
    digest = hashlib.sha256()
    for image in manifest.images:
        for region in image.regions:
            digest.update(
                json.dumps([image.row, image.image, region.index, list(region.box)]).encode()
            )
    return digest.hexdigest()


def _chunk_rows(number: int, total: int, config: FeatureJobConfig) -> int:
    return min(config.chunk_regions, total - number * config.chunk_regions)


def _chunk_path(directory: Path, number: int) -> Path:
    return directory / f"chunk-{number:06d}.npy"


def _atomic_save(path: Path, array: np.ndarray) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npy")
    try:
        with os.fdopen(handle, "wb") as file:
            np.save(file, array)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write(path: Path, data: bytes) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
