"""The steps of `rice-vit pretrain` as functions: features -> k-means -> labels -> training data.

1. `compute_features`: validate the manifest (the `RegionReport` is printed by the CLI and
   written as `report.json`), then embed every valid OBJECT region's crop with a
   `RegionFeatureEncoder` (`features.extract_region_features`: resumable chunks). OCR regions
   are not clustered: their labels are their text's tokens.
2. `compute_centroids`: k-means of those features into K centres (`kmeans.kmeans`, torch or
   faiss, resumable per iteration), written as `centroids.safetensors`.
3. `write_labelled_manifest`: label = the nearest centre of each object region
   (`kmeans.assign_labels`), written into the manifest's `cluster` fields (a labelled manifest,
   same format), plus `labels.json`: K (clusters), the OCR labeller (a tokenizer.json or UTF-8
   bytes), the total number of classes the loss's centre matrix needs, and the OCR regions left
   out because their text gives no class (blank, or no token with that tokenizer), counted with
   examples.
4. `training_data`: what `train.train` needs from a config: the labelled manifest validated, a
   `RegionBatches` factory per rank, and the class count.

Every step's output is a folder the next step names, so a step can be rerun (or run on another
machine) alone.
"""

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rice_vit.errors import ConfigError
from rice_vit.pretrain.batches import RegionBatches
from rice_vit.pretrain.config import PretrainConfig
from rice_vit.pretrain.features import (
    FeatureJobConfig,
    RegionFeatureEncoder,
    RegionFeatures,
    extract_region_features,
    open_region_features,
)
from rice_vit.pretrain.kmeans import assign_labels, kmeans
from rice_vit.pretrain.ocr_labels import OcrLabeler, OcrLabelReport
from rice_vit.pretrain.region_manifest import (
    ManifestRow,
    RegionManifest,
    attach_clusters,
    load_region_manifest,
    read_manifest,
    write_manifest,
)
from rice_vit.processor import ImageProcessor

CENTROIDS_FILE = "centroids.safetensors"
LABELS_FILE = "labels.json"
REPORT_FILE = "report.json"
MANIFEST_FILE = "manifest.jsonl"


def objects_only(manifest: RegionManifest) -> RegionManifest:
    """The manifest's images with their object regions only (images without one left out); row
    numbers and region indices stay those of the full manifest."""
    images = []
    for image in manifest.images:
        objects = tuple(region for region in image.regions if region.kind == "object")
        if objects:
            images.append(replace(image, regions=objects))
    return RegionManifest(tuple(images), manifest.report)


def compute_features(
    manifest_path: str | Path,
    encoder: RegionFeatureEncoder,
    out: str | Path,
    *,
    image_root: str | Path | None = None,
    min_box_side: float = 1,
    job: FeatureJobConfig | None = None,
    progress: bool = True,
) -> tuple[RegionManifest, RegionFeatures]:
    """Validate the manifest (report written to `out/report.json`) and embed its object
    regions into `out` (resumable). Returns the validated manifest and the features."""
    manifest = load_region_manifest(manifest_path, image_root=image_root, min_box_side=min_box_side)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest.report.write_json(out / REPORT_FILE)
    objects = objects_only(manifest)
    if objects.num_regions == 0:
        raise ConfigError(f"{manifest_path}: no valid object region to compute features of")
    features = extract_region_features(objects, encoder, out, config=job, progress=progress)
    return manifest, features


def compute_centroids(
    features_dir: str | Path,
    out: str | Path,
    k: int,
    *,
    iterations: int = 20,
    seed: int = 0,
    backend: str = "torch",
    device: str = "cpu",
    block_rows: int = 65536,
    progress: Any = None,
) -> torch.Tensor:
    """k-means of a feature folder's rows into `k` centres, resumable in `out`; writes
    `out/centroids.safetensors` and returns the (k, D) centres."""
    features = open_region_features(features_dir)
    if not 1 <= k <= features.num_regions:
        raise ConfigError(
            f"k = {k} clusters need between 1 and {features.num_regions} (the feature rows)"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    centroids = kmeans(
        features.load(),
        k,
        iterations=iterations,
        seed=seed,
        backend=backend,
        device=device,
        block_rows=block_rows,
        checkpoint_dir=out,
        progress=progress,
    )
    meta = {"k": str(k), "iterations": str(iterations), "features": str(features_dir)}
    save_file({"centroids": centroids.contiguous()}, out / CENTROIDS_FILE, metadata=meta)
    return centroids


def read_centroids(path: str | Path) -> torch.Tensor:
    """The centres of `compute_centroids` (a folder holding centroids.safetensors, or the file)."""
    path = Path(path)
    if path.is_dir():
        path = path / CENTROIDS_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no such centroids file (run `rice-vit pretrain kmeans`)")
    return load_file(path)["centroids"]


@dataclass(frozen=True)
class LabelInfo:
    """What `labels.json` records next to a labelled manifest."""

    num_clusters: int
    ocr_tokenizer: str | None
    ocr_classes: int
    image_root: str
    """The folder the manifest's image paths are relative to (the unlabelled manifest's)."""

    @property
    def num_classes(self) -> int:
        """Rows of the loss's centre matrix: clusters, then OCR token classes."""
        return self.num_clusters + self.ocr_classes

    def labeler(self) -> OcrLabeler:
        """The OCR labeller whose class ids follow the clusters."""
        return OcrLabeler(self.ocr_tokenizer, offset=self.num_clusters)


def write_labelled_manifest(
    manifest_path: str | Path,
    features_dir: str | Path,
    centroids: str | Path,
    out: str | Path,
    *,
    image_root: str | Path | None = None,
    ocr_tokenizer: str | Path | None = None,
) -> LabelInfo:
    """Label every featured object region with its nearest centre and write the labelled
    manifest `out/manifest.jsonl` (image paths as written in the input; `labels.json` records
    the folder they are relative to, which training reads them from) and `out/labels.json`."""
    features = open_region_features(features_dir)
    centres = read_centroids(centroids)
    labels = assign_labels(features.load(), centres).numpy()
    manifest_path = Path(manifest_path)
    root = Path(image_root) if image_root is not None else manifest_path.parent
    rows = attach_clusters(
        read_manifest(manifest_path, image_root=image_root), features.index, labels
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labeler = OcrLabeler(str(ocr_tokenizer) if ocr_tokenizer else None, offset=len(centres))
    rows, ocr_report = _drop_untokenisable(rows, labeler)
    write_manifest(out / MANIFEST_FILE, rows)
    info = LabelInfo(
        len(centres),
        str(ocr_tokenizer) if ocr_tokenizer else None,
        labeler.vocab_size,
        str(root.resolve()),
    )
    record = {
        "image_root": info.image_root,
        "num_clusters": info.num_clusters,
        "ocr_tokenizer": info.ocr_tokenizer,
        "ocr_classes": info.ocr_classes,
        "num_classes": info.num_classes,
        "labelled_regions": int(labels.shape[0]),
        "cluster_sizes": np.bincount(labels, minlength=len(centres)).tolist(),
        "ocr_report": ocr_report.to_dict(),
    }
    (out / LABELS_FILE).write_text(json.dumps(record, indent=2) + "\n", "utf-8")
    return info


def _drop_untokenisable(
    rows: list[ManifestRow], labeler: OcrLabeler
) -> tuple[list[ManifestRow], OcrLabelReport]:
    """Rows without the OCR regions whose text gives no class (blank, or no token with this
    tokenizer): each counted, with examples, in the returned report, never dropped silently."""
    report = OcrLabelReport()
    kept_rows = []
    for row in rows:
        kept = []
        for index, region in enumerate(row.regions):
            if region.kind != "ocr":
                kept.append(region)
                continue
            text = region.text or ""
            if not text.strip():
                report.note("empty_text", f"{row.source} region {index}", text)
            elif not labeler(text):
                report.note("no_tokens", f"{row.source} region {index}", text)
            else:
                report.labelled += 1
                kept.append(region)
        kept_rows.append(replace(row, regions=tuple(kept)))
    return kept_rows, report


def read_label_info(manifest_path: str | Path) -> LabelInfo:
    """The `labels.json` beside a labelled manifest."""
    path = Path(manifest_path).parent / LABELS_FILE
    if not path.is_file():
        raise ConfigError(
            f"{path}: missing; data.manifest must be a labelled manifest written by "
            "`rice-vit pretrain labels` (its labels.json names the class counts)"
        )
    data = json.loads(path.read_text("utf-8"))
    return LabelInfo(
        int(data["num_clusters"]),
        data["ocr_tokenizer"],
        int(data["ocr_classes"]),
        str(data["image_root"]),
    )


@dataclass
class TrainingData:
    """What a training run reads: the validated labelled manifest and its batches."""

    manifest: RegionManifest
    labels: LabelInfo
    processor: ImageProcessor

    def make_batches(self, *, rank: int, world_size: int, config: PretrainConfig) -> RegionBatches:
        """This rank's `RegionBatches` for `config`."""
        return RegionBatches(
            self.manifest,
            batch_images=config.data.batch_images,
            processor=self.processor,
            regions_per_image=config.data.regions_per_image,
            seed=config.train.seed,
            ocr_classes=self.labels.labeler(),
            num_classes=self.labels.num_classes,
            rank=rank,
            world_size=world_size,
        )


def training_data(config: PretrainConfig) -> TrainingData:
    """The labelled manifest of `config.data`, validated, with its label info."""
    data = config.data
    labels = read_label_info(data.manifest)
    root = data.image_root if data.image_root is not None else labels.image_root
    manifest = load_region_manifest(data.manifest, image_root=root)
    processor = ImageProcessor(min_pixels=data.min_pixels, max_pixels=data.max_pixels)
    return TrainingData(manifest, labels, processor)
