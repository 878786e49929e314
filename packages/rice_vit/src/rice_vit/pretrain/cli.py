"""`rice-vit pretrain ...`: RICE region pretraining, one subcommand per step.

    rice-vit pretrain features MANIFEST -o feats       # validate, embed object-region crops
    rice-vit pretrain kmeans feats -k 1000 -o clusters  # k-means of the features (resumable)
    rice-vit pretrain labels MANIFEST --features feats --centroids clusters -o labelled
    rice-vit pretrain train --config run.toml -o runs/rice   # resumable; torchrun-compatible
    rice-vit pretrain export runs/rice --layout llava-ov -o rice-vit-continued
    rice-vit pretrain synthetic -o demo                  # all of it on a synthetic set

Heavy imports (torch) happen inside the commands, so `--help` answers at once. Each step
writes a folder the next one names; the resumable steps (`features`, `kmeans`, `train`)
continue their own earlier run in `--out` and start over with `--overwrite`.
"""

import json
import sys
from pathlib import Path

import click

from rice_vit.cli_conventions import (
    claim_output,
    device_option,
    max_shard_size_option,
    out_option,
    overwrite_option,
    progress_bar,
    quiet_option,
    seed_option,
)

_CONTEXT = {"show_default": True, "help_option_names": ["-h", "--help"]}
_MANIFEST = click.Path(exists=True, dir_okay=False, path_type=Path)
_FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


@click.group(context_settings=_CONTEXT)
def pretrain() -> None:
    """RICE pretraining: region cluster discrimination with region attention (features, kmeans,
    labels, train, export; synthetic runs them all on a generated set)."""


def _image_root_option():
    return click.option(
        "--image-root",
        type=_FOLDER,
        default=None,
        help="Folder the manifest's image paths are relative to. Default: the manifest's folder.",
    )


@pretrain.command()
@click.argument("manifest", type=_MANIFEST)
@out_option("Feature folder (chunked .npy, index.npy, features.json, report.json).")
@overwrite_option("Start over instead of continuing the job already in --out.")
@_image_root_option()
@click.option(
    "--encoder",
    type=click.Choice(["pixels", "rice-vit", "clip"]),
    default="pixels",
    help="pixels: the downsampled RGB crop (no model); rice-vit: a RICE-ViT checkpoint's "
    "class token (--model); clip: an open_clip CLIP tower via ov_concepts (--model, "
    "--clip-config).",
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="The encoder's checkpoint (a RICE-ViT folder, or a CLIP .bin/.safetensors file).",
)
@click.option(
    "--clip-config", default=None, help="open_clip config name of the CLIP tower (clip only)."
)
@click.option(
    "--pixel-size",
    type=click.IntRange(min=1),
    default=8,
    help="Crop side for --encoder pixels.",
)
@click.option(
    "--min-box-side",
    type=click.FloatRange(min=0),
    default=1.0,
    help="Exclude boxes whose shorter side (clipped, pixels) is below this (RICE used 128).",
)
@click.option(
    "--chunk-regions",
    type=click.IntRange(min=1),
    default=8192,
    help="Feature rows per chunk file (the most a kill loses).",
)
@device_option("Where a model encoder runs.")
@quiet_option()
def features(
    manifest: Path,
    out: Path,
    overwrite: bool,
    image_root: Path | None,
    encoder: str,
    model_path: Path | None,
    clip_config: str | None,
    pixel_size: int,
    min_box_side: float,
    chunk_regions: int,
    device: str,
    quiet: bool,
) -> None:
    """Validate MANIFEST (bad boxes counted and reported) and embed the crop of every valid
    object region; resumable."""
    from rice_vit.pretrain.features import (
        ClipFeatures,
        FeatureJobConfig,
        PixelFeatures,
        RiceViTFeatures,
    )
    from rice_vit.pretrain.pipeline import compute_features

    claim_output(out, overwrite, resumable=True, keep=(manifest,))
    if encoder != "pixels" and model_path is None:
        raise click.UsageError(f"--encoder {encoder} needs --model")
    if encoder == "pixels":
        region_encoder = PixelFeatures(pixel_size)
    elif encoder == "rice-vit":
        region_encoder = RiceViTFeatures.from_pretrained(model_path, device=device)
    else:
        if clip_config is None:
            raise click.UsageError("--encoder clip needs --clip-config (an open_clip config name)")
        region_encoder = ClipFeatures(model_path, clip_config, device=device)
    validated, found = compute_features(
        manifest,
        region_encoder,
        out,
        image_root=image_root,
        min_box_side=min_box_side,
        job=FeatureJobConfig(chunk_regions=chunk_regions),
        progress=not quiet,
    )
    click.echo(validated.report.format(), err=True)
    click.echo(
        f"wrote {out}: {found.num_regions} object-region features of dim {found.dim}", err=True
    )


@pretrain.command()
@click.argument("features_dir", metavar="FEATURES", type=_FOLDER)
@out_option("Folder for centroids.safetensors and the per-iteration k-means checkpoint.")
@overwrite_option("Start over instead of continuing the k-means already in --out.")
@click.option("-k", "--clusters", type=click.IntRange(min=1), required=True, help="K centres.")
@click.option("--iterations", type=click.IntRange(min=0), default=20, help="Lloyd iterations.")
@click.option(
    "--backend",
    type=click.Choice(["torch", "faiss"]),
    default="torch",
    help="torch: blocked, CPU or CUDA; faiss: faiss-cpu (the rice-vit[faiss] extra).",
)
@click.option(
    "--block-rows", type=click.IntRange(min=1), default=65536, help="Rows per distance block."
)
@seed_option("Seeds the initial centres.")
@device_option("Where the torch backend runs.")
@quiet_option()
def kmeans(
    features_dir: Path,
    out: Path,
    overwrite: bool,
    clusters: int,
    iterations: int,
    backend: str,
    block_rows: int,
    seed: int,
    device: str,
    quiet: bool,
) -> None:
    """K-means of the region features in FEATURES into K centres; resumable per iteration."""
    from rice_vit.pretrain.pipeline import compute_centroids

    claim_output(out, overwrite, resumable=True, keep=(features_dir,))
    bar = progress_bar(desc="kmeans", total=iterations, unit="iter", enabled=not quiet)
    with bar:

        def progress(iteration: int, inertia: float) -> None:
            bar.n = iteration
            bar.set_postfix_str(f"inertia {inertia:.4g}")
            bar.refresh()

        compute_centroids(
            features_dir,
            out,
            clusters,
            iterations=iterations,
            seed=seed,
            backend=backend,
            device=device,
            block_rows=block_rows,
            progress=progress,
        )
    click.echo(f"wrote {out / 'centroids.safetensors'}: {clusters} centres", err=True)


@pretrain.command()
@click.argument("manifest", type=_MANIFEST)
@click.option("--features", "features_dir", type=_FOLDER, required=True, help="Feature folder.")
@click.option(
    "--centroids",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="The kmeans folder (or its centroids.safetensors).",
)
@out_option("Folder for the labelled manifest.jsonl and labels.json.")
@overwrite_option()
@_image_root_option()
@click.option(
    "--ocr-tokenizer",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A tokenizer.json whose token ids label OCR regions. Default: UTF-8 bytes (256 classes).",
)
def labels(
    manifest: Path,
    features_dir: Path,
    centroids: Path,
    out: Path,
    overwrite: bool,
    image_root: Path | None,
    ocr_tokenizer: Path | None,
) -> None:
    """Label each object region of MANIFEST with its nearest centre and write the labelled
    manifest (OCR regions keep their text: their labels are its tokens)."""
    from rice_vit.pretrain.pipeline import LABELS_FILE, write_labelled_manifest

    claim_output(out, overwrite, keep=(manifest, features_dir, centroids))
    info = write_labelled_manifest(
        manifest, features_dir, centroids, out, image_root=image_root, ocr_tokenizer=ocr_tokenizer
    )
    report = json.loads((out / LABELS_FILE).read_text("utf-8"))["ocr_report"]
    bad = sum(report["bad"].values())
    note = f"; {bad} OCR regions left out (no token: see labels.json)" if bad else ""
    click.echo(
        f"wrote {out}: {info.num_clusters} clusters + {info.ocr_classes} OCR classes = "
        f"{info.num_classes} classes{note}",
        err=True,
    )


@pretrain.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A TOML config (sections model, data, loss, optim, train). Default: every default, "
    "which needs --set data.manifest=...",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override one config value (repeatable), e.g. --set train.steps=100.",
)
@out_option("Run folder (config.toml, loss.jsonl, loss.png, checkpoints/).")
@overwrite_option("Start over instead of resuming the run already in --out.")
@quiet_option()
def train(
    config_path: Path | None, overrides: tuple[str, ...], out: Path, overwrite: bool, quiet: bool
) -> None:
    """Pretrain (or resume pretraining) a RICE-ViT with region cluster discrimination.

    Runs under torchrun as is (`torchrun --nproc-per-node 8 -m rice_vit pretrain train ...`):
    DDP over the encoder, class centres sharded over the ranks."""
    import os

    from rice_vit.pretrain.config import PretrainConfig, apply_overrides, load_config
    from rice_vit.pretrain.pipeline import training_data
    from rice_vit.pretrain.train import train as run_training

    config = (
        load_config(config_path, list(overrides))
        if config_path is not None
        else apply_overrides(PretrainConfig(), list(overrides))
    )
    if int(os.environ.get("RANK", "0")) == 0:
        claim_output(out, overwrite, resumable=True)
    data = training_data(config)
    result = run_training(
        config,
        out,
        make_batches=lambda rank, world_size: data.make_batches(
            rank=rank, world_size=world_size, config=config
        ),
        num_classes=data.labels.num_classes,
        progress=not quiet,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(
            f"{result.steps} steps (from {result.start_step}), final loss "
            f"{result.final_loss:.4f}: {result.checkpoint}; loss plot {out / 'loss.png'}",
            err=True,
        )


@pretrain.command()
@click.argument("run", type=_FOLDER)
@out_option("Folder for the exported encoder (config.json + safetensors).")
@overwrite_option()
@click.option(
    "--layout",
    type=click.Choice(["llava-ov", "mlcd"]),
    default="llava-ov",
    help="llava-ov: visual.* names (what `ov-model init --vit` also reads); mlcd: MLCDVisionModel.",
)
@max_shard_size_option("Shard above this size.")
def export(run: Path, out: Path, overwrite: bool, layout: str, max_shard_size: int) -> None:
    """Write the encoder of RUN's newest checkpoint (or of a checkpoint folder) in a released
    layout, ready for `ov-model init --vit`."""
    from rice_vit.pretrain.train import export_encoder

    claim_output(out, overwrite, keep=(run,))
    dropped = export_encoder(run, out, layout, max_shard_size=max_shard_size, overwrite=overwrite)
    if dropped:
        click.echo(f"note: the {layout} layout has no place for {', '.join(dropped)}", err=True)
    click.echo(f"wrote {out} ({layout})", err=True)


@pretrain.command()
@out_option("Folder for the data, the run, the exported encoder and evaluation.json.")
@overwrite_option()
@click.option("--images", type=click.IntRange(min=8), default=480, help="Training images drawn.")
@click.option(
    "--eval-images", type=click.IntRange(min=4), default=160, help="Held-out images drawn."
)
@click.option("--steps", type=click.IntRange(min=1), default=1200, help="Training steps.")
@click.option("--clusters", type=click.IntRange(min=1), default=24, help="K-means centres.")
@seed_option("Seeds the drawing, the init, the k-means and the training.")
@quiet_option()
def synthetic(
    out: Path,
    overwrite: bool,
    images: int,
    eval_images: int,
    steps: int,
    clusters: int,
    seed: int,
    quiet: bool,
) -> None:
    """The whole pipeline on a generated set: draw shapes and words, pixel features, k-means,
    labels, pretrain a tiny encoder from a random init, and evaluate region retrieval and a
    linear probe before vs after (printed as a table, written to evaluation.json)."""
    from rice_vit.pretrain.demo import DemoSettings, run_demo

    claim_output(out, overwrite)
    settings = DemoSettings(
        images=images, eval_images=eval_images, steps=steps, clusters=clusters, seed=seed
    )
    result = run_demo(
        out, settings, progress=not quiet, log=lambda line: click.echo(line, err=True)
    )
    click.echo(result.table)
    sys.stdout.flush()
