"""The synthetic end-to-end run of `rice-vit pretrain synthetic`: every step of the pipeline on
a generated set, and the evidence that pretraining taught the encoder something.

1. Draw a training set and a held-out set of shapes and words (`synthetic`), ground truth aside.
2. Pixel features of the training set's object crops (`PixelFeatures`: no model), k-means
   into `clusters` centres, the labelled manifest (objects: nearest centre; words: UTF-8 bytes).
3. Pretrain a tiny RICE-ViT (`DemoSettings.model_overrides`) from a random init with the region
   cluster discrimination loss, then export it in the LLaVA-OV layout.
4. Embed every held-out region with the random init (the same seed's, "before") and with the
   exported encoder read back from disk ("after"), and compare region retrieval and a linear
   probe (`evaluate`) for objects (12 shape x colour classes) and words (8 classes).

The ground truth is never used for training: the object labels are k-means clusters of raw
pixels, which mostly follow colour and only partly shape, and the word labels are bytes shared
between words. `shuffle_clusters=True` is the control experiment: the object clusters are
permuted across regions before training (labels that carry no information about the pixels),
which the test uses to show the gain comes from the labels, not from training alone.
"""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rice_vit.model import RiceViT
from rice_vit.pretrain.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    TrainConfig,
)
from rice_vit.pretrain.evaluate import (
    compare,
    embed_regions,
    evaluate_regions,
    format_table,
    write_evaluation,
)
from rice_vit.pretrain.features import FeatureJobConfig, PixelFeatures
from rice_vit.pretrain.pipeline import (
    MANIFEST_FILE,
    compute_centroids,
    compute_features,
    training_data,
    write_labelled_manifest,
)
from rice_vit.pretrain.region_manifest import (
    load_region_manifest,
    read_manifest,
    write_manifest,
)
from rice_vit.pretrain.synthetic import SyntheticSpec, read_truth, write_synthetic_dataset
from rice_vit.pretrain.train import build_encoder, train
from rice_vit.processor import ImageProcessor

EVALUATION_FILE = "evaluation.json"


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    """The size of the synthetic run (the defaults are `rice-vit pretrain synthetic`'s)."""

    images: int = 480
    eval_images: int = 160
    steps: int = 1200
    clusters: int = 24
    batch_images: int = 16
    regions_per_image: int = 10
    seed: int = 0
    lr: float = 1e-3
    font_size: int = 30
    """Word glyph size in pixels."""
    model_overrides: dict[str, int] = field(
        default_factory=lambda: {
            "hidden_size": 64,
            "depth": 4,
            "num_heads": 4,
            "intermediate_size": 128,
            "region_layers": 2,
        }
    )
    shuffle_clusters: bool = False
    """Control run: object cluster labels permuted across regions before training."""

    def config(self, manifest: Path) -> PretrainConfig:
        """The pretraining config of the run."""
        return PretrainConfig(
            model=ModelConfig(preset="rice-vit-tiny", **self.model_overrides),
            data=DataConfig(
                manifest=str(manifest),
                regions_per_image=self.regions_per_image,
                batch_images=self.batch_images,
                max_pixels=168 * 168,
            ),
            optim=OptimConfig(lr=self.lr, warmup_fraction=0.05),
            train=TrainConfig(
                steps=self.steps,
                seed=self.seed,
                device="cpu",
                checkpoint_every=max(1, self.steps // 2),
            ),
        )


@dataclass
class DemoResult:
    """What the synthetic run measured."""

    table: str
    evaluation: dict[str, Any]
    folder: Path


def _shuffle_clusters(manifest: Path, seed: int) -> None:
    rows = read_manifest(manifest)
    clusters = [r.cluster for row in rows for r in row.regions if r.cluster is not None]
    permuted = iter(np.random.default_rng(seed).permutation(np.asarray(clusters)).tolist())
    shuffled = [
        replace(
            row,
            regions=tuple(
                replace(r, cluster=next(permuted)) if r.cluster is not None else r
                for r in row.regions
            ),
        )
        for row in rows
    ]
    write_manifest(manifest, shuffled)


def run_demo(
    out: str | Path,
    settings: DemoSettings,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Run the synthetic pipeline into `out` (see the module docstring)."""
    out = Path(out)
    began = time.perf_counter()
    train_set = write_synthetic_dataset(
        out / "data" / "train",
        SyntheticSpec(images=settings.images, font_size=settings.font_size, seed=settings.seed),
    )
    eval_set = write_synthetic_dataset(
        out / "data" / "eval",
        SyntheticSpec(
            images=settings.eval_images,
            font_size=settings.font_size,
            seed=settings.seed + 1_000_003,
        ),
    )
    log(f"drew {train_set.regions} training regions, {eval_set.regions} held-out regions")
    _, features = compute_features(
        train_set.manifest,
        PixelFeatures(8),
        out / "features",
        job=FeatureJobConfig(chunk_regions=4096),
        progress=progress,
    )
    compute_centroids(out / "features", out / "kmeans", settings.clusters, seed=settings.seed)
    labels = write_labelled_manifest(
        train_set.manifest, out / "features", out / "kmeans", out / "labelled"
    )
    if settings.shuffle_clusters:
        _shuffle_clusters(out / "labelled" / MANIFEST_FILE, settings.seed)
    log(
        f"k-means of {features.num_regions} object crops into {labels.num_clusters} clusters; "
        f"{labels.num_classes} classes with the 256 byte classes of the words"
    )
    config = settings.config(out / "labelled" / MANIFEST_FILE)
    data = training_data(config)
    held_out = load_region_manifest(eval_set.manifest)
    truth = read_truth(eval_set.truth)
    processor = ImageProcessor(min_pixels=config.data.min_pixels, max_pixels=config.data.max_pixels)

    before = evaluate_regions(
        embed_regions(build_encoder(config), held_out, truth, processor), seed=settings.seed
    )
    result = train(
        config,
        out / "run",
        make_batches=lambda rank, world_size: data.make_batches(
            rank=rank, world_size=world_size, config=config
        ),
        num_classes=labels.num_classes,
        resume=False,
        progress=progress,
    )
    from rice_vit.pretrain.train import export_encoder

    export_encoder(out / "run", out / "encoder", "llava-ov")
    trained = RiceViT.from_pretrained(out / "encoder")
    after = evaluate_regions(embed_regions(trained, held_out, truth, processor), seed=settings.seed)
    rows = compare(before, after)
    table = format_table(rows)
    seconds = time.perf_counter() - began
    evaluation = {
        "settings": {**asdict(settings)},
        "before": before,
        "after": after,
        "rows": rows,
        "final_loss": result.final_loss,
        "train_seconds": result.seconds,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
    }
    write_evaluation(out / EVALUATION_FILE, evaluation)
    log(f"done in {seconds:.0f} s (training {result.seconds:.0f} s); {out / EVALUATION_FILE}")
    return DemoResult(table, evaluation, out)
