"""The `ov-concepts` command line interface.

Every onevision CLI is a click group configured the same way: `-h/--help` on every command,
defaults shown in the help text, `--version` on the group. Heavy imports (torch) happen inside
the commands so that `--help` answers instantly. Bad input ends the command with a one-line error
naming the file, row or value (exit status 2), never a traceback. Progress bars go to stderr.

A run from scratch:

    ov-concepts synth -o corpus
    ov-concepts assign --images corpus/images.npy --concepts corpus/concepts.npy --out assigned
    ov-concepts balance assigned --target 5000 --out balanced
    ov-concepts report balanced --vocabulary corpus/vocabulary.txt
"""

from pathlib import Path

import click

from ov_concepts import __version__
from ov_concepts.cli_conventions import (
    AliasedOption,
    Group,
    claim_output,
    device_option,
    dtype_option,
    out_option,
    overwrite_option,
    quiet_option,
    seed_option,
    store_dtype_option,
    work_unit_options,
)
from ov_concepts.errors import ConceptsError

_CONTEXT = {"show_default": True, "help_option_names": ["-h", "--help"]}
_PATH = click.Path(path_type=Path)
_FILE = click.Path(dir_okay=False, path_type=Path)
_START_OVER = "Start over: remove what an earlier run left in --out (without it, resume)."


def _usage_error(error: Exception) -> click.ClickException:
    """`error` as a one-line click error with exit status 2, the status of a bad invocation."""
    clean = click.ClickException(str(error))
    clean.exit_code = 2
    return clean


class _Group(Group):
    """Turns ov_concepts' input errors into clean CLI errors."""

    def invoke(self, ctx: click.Context):
        from ov_concepts.work_units import WorkUnitError

        try:
            return super().invoke(ctx)
        except (ConceptsError, WorkUnitError) as error:
            raise _usage_error(error) from error


def _say(message: str) -> None:
    click.echo(message, err=True)


_WORKERS_MODEL = (
    "Processes (or Ray actors) running units, each with its own copy of the model. Default: 1 "
    "locally (one model; parallelism comes from --decode-workers and the device); with --engine "
    "ray, as many actors as the cluster's CPUs/GPUs hold."
)


def _default_decode_workers(engine: str, workers: int | None, device: str) -> int:
    """All cores shared by the local models; on Ray, cores per GPU minus the model's."""
    import os

    cores = os.cpu_count() or 1
    if engine == "local":
        return max(1, cores // (workers or 1))
    if not device.startswith("cuda"):
        return 1
    import torch

    return max(1, cores // max(1, torch.cuda.device_count()) - 1)


def _engine(engine: str, workers: int | None, ray_address: str | None, device: str, cpus=1):
    """The work-units engine (a context manager: its processes or actors stop at the end); Ray
    actors reserve a GPU each when the device is CUDA."""
    from ov_concepts.work_units import make_engine

    if engine == "local":
        return make_engine("local", workers or 1)
    gpus = 1 if device.startswith("cuda") else 0
    return make_engine("ray", workers, ray_address, num_cpus_per_unit=cpus, num_gpus_per_unit=gpus)


@click.group(name="ov-concepts", cls=_Group, context_settings=_CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="ov-concepts")
def main() -> None:
    """Concept balancing of image corpora: embed, top-K concept assignment, inverse-frequency
    resampling, reports.
    """


@main.command()
@out_option("Directory to write.", dest="out_dir")
@overwrite_option()
@click.option("--images", type=click.IntRange(min=1), default=20000, help="Images.")
@click.option("--concepts", type=click.IntRange(min=1), default=2000, help="Vocabulary size.")
@click.option("--dim", type=click.IntRange(min=1), default=128, help="Embedding dimension.")
@click.option(
    "--per-image", type=click.IntRange(min=1), default=3, help="Planted concepts per image."
)
@click.option(
    "--synonyms", type=click.IntRange(min=1), default=4, help="Concepts per synonym group."
)
@click.option(
    "--zipf", type=click.FloatRange(min=0, min_open=True), default=1.1, help="Zipf exponent."
)
@click.option("--noise", type=click.FloatRange(min=0), default=0.5, help="Image noise level.")
@seed_option()
def synth(
    out_dir, overwrite, images, concepts, dim, per_image, synonyms, zipf, noise, seed
) -> None:
    """Write a seeded synthetic corpus with Zipf-distributed concepts: images.npy, concepts.npy,
    vocabulary.txt, planted.npy (the truth) and synthetic.json."""
    from ov_concepts.synthetic import SyntheticConfig, write_synthetic_corpus

    claim_output(out_dir, overwrite)
    config = SyntheticConfig(
        images=images,
        concepts=concepts,
        dim=dim,
        concepts_per_image=per_image,
        synonyms=synonyms,
        zipf_exponent=zipf,
        noise=noise,
        seed=seed,
    )
    write_synthetic_corpus(config, out_dir)
    _say(f"wrote {images:,} images x {concepts:,} concepts ({dim} dims) to {out_dir}")


def _encoder_options(function):
    options = [
        click.option(
            "--checkpoint",
            type=_FILE,
            help="open_clip-format CLIP checkpoint. Default: none (this or --from-embeddings).",
        ),
        click.option(
            "--clip-model",
            "--model",
            "clip_model",
            cls=AliasedOption,
            hidden_aliases=("--model",),
            default="ViT-H-14-quickgelu",
            help="Built-in open_clip model config name, or an open_clip model config JSON file.",
        ),
        click.option(
            "--from-embeddings",
            type=_PATH,
            help="Precomputed embeddings (.npy, .safetensors or an embedding directory) "
            "instead of a checkpoint. Default: none.",
        ),
        click.option(
            "--tensor", help="Tensor name in a .safetensors file. Default: its only tensor."
        ),
        device_option("Where the CLIP model runs."),
        dtype_option(
            "Dtype the CLIP weights run in; auto: bfloat16 on CUDA, float32 on CPU.",
            default="float32",
            hidden_aliases=("--model-dtype",),
        ),
        click.option(
            "--batch-size", type=click.IntRange(min=1), default=64, help="Inputs per batch."
        ),
        click.option(
            "--chunk-size", type=click.IntRange(min=1), default=8192, help="Inputs per chunk file."
        ),
        store_dtype_option(
            "Dtype of the stored embeddings.", default="float32", choices=("float32", "float16")
        ),
        out_option("Embedding directory; an existing one is resumed.", dest="out_dir"),
        overwrite_option(_START_OVER),
        quiet_option(),
    ]
    for option in reversed(options):
        function = option(function)
    return work_unit_options(_WORKERS_MODEL)(function)


def _check_source(checkpoint, from_embeddings) -> None:
    if (checkpoint is None) == (from_embeddings is None):
        raise click.UsageError("give exactly one of --checkpoint and --from-embeddings")


def _clip_dtype(dtype: str, device: str) -> str:
    """The --dtype the CLIP tower runs in; auto is bfloat16 on CUDA, float32 on CPU."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def _job_config(batch_size: int, chunk_size: int, store_dtype: str):
    from ov_concepts.embed_job import EmbedJobConfig

    return EmbedJobConfig(chunk_inputs=chunk_size, batch_size=batch_size, dtype=store_dtype)


@main.command("embed-images")
@click.option(
    "--images",
    "images_path",
    type=_PATH,
    help="Image directory (recursive) or a list file of paths, one per line. "
    "Default: none (required with --checkpoint).",
)
@click.option(
    "--decode-workers",
    type=click.IntRange(min=0),
    default=None,
    help="Processes decoding and resizing images for each model, feeding it batches in input "
    "order (0: decode in the model's process; results are the same bytes). With --engine ray, "
    "each actor reserves this many CPUs. Default: all cores / --workers locally; with Ray on "
    "CUDA, this node's cores per GPU minus one; with Ray on CPU, 1.",
)
@_encoder_options
def embed_images(
    images_path,
    decode_workers,
    checkpoint,
    clip_model,
    from_embeddings,
    tensor,
    device,
    dtype,
    batch_size,
    chunk_size,
    store_dtype,
    out_dir,
    overwrite,
    quiet,
    workers,
    engine,
    ray_address,
) -> None:
    """Embed images into a chunked, resumable embedding directory (rerun to resume).

    Corrupt images are skipped and listed in OUT/failures.jsonl; OUT/keys.txt names the image of
    each embedding row.
    """
    from ov_concepts.embed_job import run_embedding_job

    _check_source(checkpoint, from_embeddings)
    claim_output(out_dir, overwrite, resumable=True)
    if from_embeddings is not None:
        from ov_concepts.embeddings import EmbeddingMatrix
        from ov_concepts.encoders import PrecomputedImagesSpec
        from ov_concepts.inputs import EmbeddingRows

        matrix = EmbeddingMatrix(from_embeddings, tensor)
        encoder = PrecomputedImagesSpec(matrix.path, tensor)
        inputs = EmbeddingRows(matrix.rows)
    else:
        if images_path is None:
            raise click.UsageError("--images is required with --checkpoint")
        from ov_concepts.clip import ClipEncoderSpec
        from ov_concepts.inputs import ImageFiles

        inputs = ImageFiles.from_path(images_path)
        encoder = ClipEncoderSpec(
            checkpoint, clip_model, device=device, dtype=_clip_dtype(dtype, device)
        )
    if decode_workers is None:
        decode_workers = _default_decode_workers(engine, workers, device)
    with _engine(engine, workers, ray_address, device, cpus=max(1, decode_workers)) as runner:
        manifest = run_embedding_job(
            inputs,
            encoder,
            out_dir,
            _job_config(batch_size, chunk_size, store_dtype),
            progress=not quiet,
            engine=runner,
            decode_workers=decode_workers,
        )
    failed = sum(len(chunk.failed) for chunk in manifest.chunks)
    _say(f"wrote {manifest.rows:,} image embeddings ({manifest.dim} dims) to {out_dir}")
    if failed:
        _say(f"{failed:,} images could not be decoded; see {out_dir / 'failures.jsonl'}")


@main.command("embed-concepts")
@click.argument("vocabulary_path", metavar="VOCABULARY", type=_FILE)
@click.option(
    "--tokenizer",
    type=_FILE,
    help="CLIP tokenizer.json. Default: none (required with --checkpoint).",
)
@click.option("--template", default="{}", help="Prompt template; {} is the concept.")
@_encoder_options
def embed_concepts(
    vocabulary_path,
    tokenizer,
    template,
    checkpoint,
    clip_model,
    from_embeddings,
    tensor,
    device,
    dtype,
    batch_size,
    chunk_size,
    store_dtype,
    out_dir,
    overwrite,
    quiet,
    workers,
    engine,
    ray_address,
) -> None:
    """Embed the concepts of VOCABULARY (.txt, one per line, or .jsonl {"concept": ...}).

    With --from-embeddings the file holds one row per non-blank vocabulary entry. OUT/keys.txt
    lists the concepts in id order (a vocabulary for `report`).
    """
    from ov_concepts.embed_job import run_embedding_job
    from ov_concepts.inputs import ConceptTexts
    from ov_concepts.vocabulary import load_vocabulary

    _check_source(checkpoint, from_embeddings)
    vocabulary = load_vocabulary(vocabulary_path)
    claim_output(out_dir, overwrite, resumable=True)
    _say(f"vocabulary: {len(vocabulary):,} concepts from {vocabulary_path}")
    if vocabulary.duplicates:
        shown = "; ".join(
            f"line {d.line} {d.concept!r} repeats line {d.first_line}"
            for d in vocabulary.duplicates[:5]
        )
        more = "" if len(vocabulary.duplicates) <= 5 else "; ..."
        _say(f"dropped {len(vocabulary.duplicates):,} duplicates: {shown}{more}")
    if from_embeddings is not None:
        from ov_concepts.embeddings import EmbeddingMatrix
        from ov_concepts.encoders import PrecomputedTextsSpec

        matrix = EmbeddingMatrix(from_embeddings, tensor)
        encoder = PrecomputedTextsSpec(matrix.path, tensor, vocabulary_path)
        encoder.build()  # rows and vocabulary must match: checked here, before any unit
    else:
        if tokenizer is None:
            raise click.UsageError("--tokenizer is required with --checkpoint")
        from ov_concepts.clip import ClipEncoderSpec

        encoder = ClipEncoderSpec(
            checkpoint,
            clip_model,
            tokenizer=tokenizer,
            template=template,
            device=device,
            dtype=_clip_dtype(dtype, device),
        )
    with _engine(engine, workers, ray_address, device) as runner:
        manifest = run_embedding_job(
            ConceptTexts(vocabulary),
            encoder,
            out_dir,
            _job_config(batch_size, chunk_size, store_dtype),
            progress=not quiet,
            engine=runner,
        )
    _say(f"wrote {manifest.rows:,} concept embeddings ({manifest.dim} dims) to {out_dir}")


@main.command()
@click.option(
    "--images",
    "images_path",
    type=_PATH,
    required=True,
    help="Image embeddings: .npy, .safetensors or an embedding directory.",
)
@click.option(
    "--concepts",
    "concepts_path",
    type=_PATH,
    required=True,
    help="Concept embeddings, same formats.",
)
@click.option(
    "--images-tensor", help="Tensor name in an images .safetensors file. Default: its only tensor."
)
@click.option(
    "--concepts-tensor",
    help="Tensor name in a concepts .safetensors file. Default: its only tensor.",
)
@click.option("--topk", type=click.IntRange(min=1), default=10, help="Concepts per image (K).")
@click.option(
    "--min-similarity",
    type=click.FloatRange(-1, 1),
    default=None,
    help="Drop concepts scoring below this cosine (id -1). Default: keep all K.",
)
@click.option("--image-block", type=click.IntRange(min=1), default=4096, help="Images per block.")
@click.option(
    "--concept-block", type=click.IntRange(min=1), default=16384, help="Concepts per matmul block."
)
@click.option(
    "--unit-rows",
    type=click.IntRange(min=1),
    default=None,
    help="Images per work unit (resumable, atomic), a multiple of --image-block; the bytes do not "
    "depend on it. Default: 64 image blocks.",
)
@work_unit_options(
    "Processes (or Ray actors) running units, each holding the concept matrix. Default: 1 "
    "locally (the matmuls use every core already; more help on several GPUs, through Ray); "
    "with --engine ray, as many actors as the cluster holds."
)
@device_option("Where the similarities are computed.")
@dtype_option(
    "Similarity dtype; auto: bfloat16 on CUDA, float32 on CPU.",
    choices=("auto", "float32", "bfloat16"),
    hidden_aliases=("--precision",),
)
@out_option("Assignment directory; an existing one is resumed.", dest="out_dir")
@overwrite_option(_START_OVER)
@quiet_option()
def assign(
    images_path,
    concepts_path,
    images_tensor,
    concepts_tensor,
    topk,
    min_similarity,
    image_block,
    concept_block,
    unit_rows,
    workers,
    engine,
    ray_address,
    device,
    dtype,
    out_dir,
    overwrite,
    quiet,
) -> None:
    """Write the top-K concepts of every image: OUT/ids.npy (int32, best first), OUT/scores.npy
    (float16) and a manifest. Rerun the same command to resume an interrupted run."""
    import time

    from ov_concepts.assign import AssignConfig, assign_concepts
    from ov_concepts.embeddings import EmbeddingMatrix

    config = AssignConfig(
        topk=topk,
        min_similarity=min_similarity,
        image_block=image_block,
        concept_block=concept_block,
        unit_rows=unit_rows,
        device=device,
        precision={"auto": "auto", "float32": "fp32", "bfloat16": "bf16"}[dtype],
    )
    images = EmbeddingMatrix(images_path, images_tensor)
    concepts = EmbeddingMatrix(concepts_path, concepts_tensor)
    claim_output(out_dir, overwrite, resumable=True)
    started = time.perf_counter()
    with _engine(engine, workers, ray_address, device) as runner:
        manifest = assign_concepts(
            images, concepts, out_dir, config, progress=not quiet, engine=runner
        )
    seconds = time.perf_counter() - started
    _say(
        f"assigned top-{manifest.topk} of {manifest.concepts:,} concepts to {manifest.images:,} "
        f"images on {manifest.device} ({manifest.precision}) in {seconds:.1f} s -> {out_dir}"
    )


@main.command()
@click.argument("assignments_path", metavar="ASSIGNMENTS", type=_PATH)
@click.option("--target", type=click.IntRange(min=1), required=True, help="Images to select.")
@seed_option("Sampling seed.", maximum=2**64 - 1)
@click.option(
    "--rule",
    type=click.Choice(["mean", "sum", "max", "metaclip"]),
    default="mean",
    help="How an image's concept frequencies combine into its weight.",
)
@click.option(
    "--alpha",
    type=click.FloatRange(min=0),
    default=1.0,
    help="Power on the inverse frequency, count^-alpha (not used by metaclip).",
)
@click.option(
    "--threshold",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="MetaCLIP's t. Default: solved so the expected kept count equals --target.",
)
@click.option("--replace", is_flag=True, help="Sample with replacement (ids may repeat).")
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=4096),
    default=1 << 20,
    help="Rows per streamed chunk (a multiple of 4096); changes memory, not results.",
)
@out_option("Directory to write.", dest="out_dir")
@overwrite_option()
@quiet_option()
def balance(
    assignments_path,
    target,
    seed,
    rule,
    alpha,
    threshold,
    replace,
    chunk_rows,
    out_dir,
    overwrite,
    quiet,
) -> None:
    """Weight images by the inverse frequency of their concepts and sample exactly --target of
    them: OUT/selected.npy (sorted int64 indices), OUT/weights.npy, OUT/stats.json."""
    from ov_concepts.assign import Assignments
    from ov_concepts.balance import BalanceConfig
    from ov_concepts.balance import balance as run_balance
    from ov_concepts.report import stats_table

    config = BalanceConfig(
        target=target,
        seed=seed,
        rule=rule,
        alpha=alpha,
        threshold=threshold,
        replace=replace,
        chunk_rows=chunk_rows,
    )
    assignments = Assignments.open(assignments_path)
    claim_output(out_dir, overwrite)
    stats = run_balance(assignments, out_dir, config, progress=not quiet)
    _say(
        f"selected {stats.selected:,} of {stats.images:,} images ({stats.distinct_selected:,} "
        f"distinct) -> {out_dir}"
    )
    click.echo(stats_table(stats.before, stats.after))


@main.command()
@click.argument("balance_path", metavar="BALANCED", type=_PATH)
@click.option(
    "--vocabulary", type=_FILE, help="Vocabulary, to name the head concepts. Default: ids only."
)
@out_option(
    "Where to write report.md and rank_frequency.png. Default: BALANCED.",
    dest="out_dir",
    required=False,
)
@overwrite_option("Replace a report.md or rank_frequency.png already there.")
def report(balance_path, vocabulary, out_dir, overwrite) -> None:
    """Write a Markdown summary and a log-log rank-frequency plot of a `balance` run."""
    from ov_concepts.report import PLOT_NAME, REPORT_NAME, write_report
    from ov_concepts.vocabulary import load_vocabulary

    folder = balance_path if out_dir is None else out_dir
    for name in (REPORT_NAME, PLOT_NAME):
        claim_output(folder / name, overwrite, folder=False)

    loaded = load_vocabulary(vocabulary) if vocabulary is not None else None
    path = write_report(balance_path, out_dir, loaded)
    click.echo(str(path))
