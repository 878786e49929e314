"""`ov-model serve MODEL_DIR`: put a checkpoint behind the OpenAI-compatible HTTP API.

The command only parses flags; FastAPI, uvicorn and torch are imported when it runs, so `ov-model
--help` stays instant and ov_model works without the `serve` extra (the command then says, in one
line, how to install it). The model and processor load as `ov-model chat` loads them, the engine
thread starts, uvicorn serves until interrupted, and the engine is closed on the way out.
"""

from pathlib import Path

import click

from rice_vit.cli_conventions import device_option, dtype_option

DEFAULT_MAX_IMAGE_PIXELS = 2**25
"""Largest image accepted by default (33.5 megapixels: a 48 MP photo is refused, an 8K frame
is not)."""


def _missing_extra(error: ImportError) -> click.ClickException:
    missing = error.name or str(error)
    line = click.ClickException(
        f"ov-model serve needs the serve extra (missing: {missing}); install it with "
        f"pip install 'ov-model[serve]'"
    )
    line.exit_code = 2
    return line


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.argument(
    "model_dir", metavar="MODEL_DIR", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, help="TCP port.")
@device_option()
@dtype_option("Compute dtype; auto: the checkpoint's stored dtype.")
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=8,
    help="Requests generated together (continuous batching).",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=0),
    default=64,
    help="Requests waiting beyond --max-batch; more get 429.",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=512,
    help="Largest max_tokens a request may ask; the budget when it asks none.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=None,
    help="Resize images above this many pixels (the processor's max_pixels); "
    "default: the checkpoint's preprocessor_config.",
)
@click.option(
    "--max-image-pixels",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_IMAGE_PIXELS,
    help="Refuse images above this many pixels (width x height), before decoding.",
)
@click.option("--max-images", type=click.IntRange(min=0), default=8, help="Images per request.")
@click.option(
    "--image-root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder whose files requests may name (file:// or plain paths); without it, "
    "images come only as data: URLs.",
)
def serve(
    model_dir: Path,
    host: str,
    port: int,
    device: str,
    dtype: str,
    max_batch: int,
    max_queue: int,
    max_new_tokens: int,
    max_pixels: int | None,
    max_image_pixels: int,
    max_images: int,
    image_root: Path | None,
) -> None:
    """Serve MODEL_DIR over an OpenAI-compatible API (POST /v1/chat/completions, GET /v1/models,
    GET /health) with a chat page at /."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as error:
        raise _missing_extra(error) from None
    import torch

    from ov_model.model import LlavaOV
    from ov_model.processor import OVProcessor
    from ov_model.serve.app import ServeSettings, create_app
    from ov_model.serve.content import ImageLimits
    from ov_model.serve.engine import Engine

    processor = OVProcessor.from_pretrained(model_dir, max_pixels=max_pixels)
    torch_dtype = None if dtype == "auto" else getattr(torch, dtype)
    model = LlavaOV.from_pretrained(model_dir, dtype=torch_dtype, device=device)
    settings = ServeSettings(
        model_name=model_dir.resolve().name,
        max_new_tokens=max_new_tokens,
        max_context=model.config.text.max_position_embeddings,
        limits=ImageLimits(
            max_images=max_images, max_image_pixels=max_image_pixels, image_root=image_root
        ),
    )
    engine = Engine(model, max_batch=max_batch, max_queue=max_queue)
    engine.start()
    try:
        app = create_app(engine, processor, settings)
        click.echo(
            f"serving {settings.model_name} ({model.num_parameters():,} parameters, {device}) at "
            f"http://{host}:{port}/  (OpenAI API: http://{host}:{port}/v1)",
            err=True,
        )
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        engine.close()
