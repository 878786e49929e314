"""Shared fixtures of the serve tests: a tiny checkpoint, a running server, reference answers.

One server per test module: a tiny random model (float32, CPU) written by
`ov_model.tiny.create_tiny_model`, the continuous-batching engine over it, and the FastAPI app
under uvicorn on 127.0.0.1 (a free port chosen by the OS) in a background thread. The limits are
small so that every refusal is cheap to provoke: 3 images per request, 160 x 160 pixels per
image, a context of 512 tokens, 256 new tokens, 1 MiB bodies. `reference_answer` is what
`LlavaOV.generate` gives for the same rendered prompt alone, decoded the same way: the answer
the server must return for a greedy request.
"""

import base64
import contextlib
import io
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn) is not installed")

import uvicorn
from PIL import Image

from ov_model.model import LlavaOV
from ov_model.processor import OVProcessor
from ov_model.serve.app import ServeSettings, create_app
from ov_model.serve.content import ImageLimits
from ov_model.serve.engine import Engine, EngineRequest, RequestHandle
from ov_model.tiny import create_tiny_model

TEXTS = [
    "what colour is the square? the square is red. a blue circle sits beside a green triangle.",
    "describe the picture: two cats sleep on a sofa near the window in the afternoon sun.",
] * 8
MAX_IMAGES = 3
MAX_IMAGE_PIXELS = 160 * 160
MAX_CONTEXT = 512
MAX_NEW_TOKENS = 256
MAX_BODY_BYTES = 2**20


def png_bytes(width: int = 40, height: int = 30, seed: int = 0) -> bytes:
    """A small RGB PNG with varied pixels."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 7 + seed * 31) % 256, (y * 11) % 256, (x * y + seed) % 256], axis=-1)
    image = Image.fromarray(pixels.astype(np.uint8), mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    """`data` as a base64 data: URL."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def image_of(data: bytes) -> Image.Image:
    """The RGB image of encoded bytes (what the server decodes)."""
    return Image.open(io.BytesIO(data)).convert("RGB")


@dataclass
class Served:
    """A running test server and what is needed to check its answers."""

    url: str
    model_dir: Path
    image_root: Path
    engine: Engine
    processor: OVProcessor
    reference_model: LlavaOV
    handles: list[RequestHandle]
    """Every handle the engine gave out, in order (to check cancellation)."""

    @property
    def model_name(self) -> str:
        return self.model_dir.name

    def reference_answer(
        self, conversation: Sequence[dict], images: Sequence[Image.Image] = (), max_tokens: int = 8
    ) -> tuple[str, int, int]:
        """(text, prompt tokens, completion tokens) of `LlavaOV.generate` for the processor's
        rendering of `conversation` (processor-style dicts), greedy, alone."""
        prompt = self.processor.prompt(list(conversation), list(images) or None)
        special = self.processor.tokenizer.special
        tokens = self.reference_model.generate(
            [prompt.input_ids],
            pixel_values=prompt.pixel_values,
            image_grid_thw=prompt.image_grid_thw,
            max_new_tokens=max_tokens,
            stop_token_ids=(special.im_end, special.endoftext),
        )[0]
        return self.processor.decode(tokens), int(prompt.input_ids.numel()), len(tokens)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny checkpoint folder (tokenizer, config, weights, processor files)."""
    folder = tmp_path_factory.mktemp("serve") / "tiny-ov"
    create_tiny_model(folder, TEXTS)
    return folder


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """The server's --image-root, holding `cat.png` and `sub/dog.png`."""
    root = tmp_path_factory.mktemp("images")
    (root / "cat.png").write_bytes(png_bytes(seed=1))
    (root / "sub").mkdir()
    (root / "sub" / "dog.png").write_bytes(png_bytes(seed=2))
    return root


@pytest.fixture(scope="module")
def serve_settings(model_dir, image_root) -> ServeSettings:
    """The test server's settings (small limits; see the module docstring)."""
    return ServeSettings(
        model_name=model_dir.name,
        max_new_tokens=MAX_NEW_TOKENS,
        max_context=MAX_CONTEXT,
        limits=ImageLimits(
            max_images=MAX_IMAGES, max_image_pixels=MAX_IMAGE_PIXELS, image_root=image_root
        ),
        max_body_bytes=MAX_BODY_BYTES,
    )


@contextlib.contextmanager
def _running_server(app) -> Iterator[str]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def running_server():
    """running_server(app): a context manager serving `app` with uvicorn on 127.0.0.1 (a free
    port) in a background thread; gives the base URL, stops the server on exit."""
    return _running_server


@pytest.fixture(scope="module")
def served(model_dir, image_root, serve_settings, running_server) -> Iterator[Served]:
    """The server, running for the whole module (torch on one intra-op thread meanwhile: on a
    shared CPU, OpenMP threads of the engine fighting the other threads cost 100x per step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    processor = OVProcessor.from_pretrained(model_dir)
    engine = Engine(LlavaOV.from_pretrained(model_dir), max_batch=4, max_queue=16)
    handles: list[RequestHandle] = []
    submit = engine.submit

    def recording_submit(request: EngineRequest) -> RequestHandle:
        handle = submit(request)
        handles.append(handle)
        return handle

    engine.submit = recording_submit  # type: ignore[method-assign]
    engine.start()
    app = create_app(engine, processor, serve_settings)
    try:
        with running_server(app) as url:
            yield Served(
                url=url,
                model_dir=model_dir,
                image_root=image_root,
                engine=engine,
                processor=processor,
                reference_model=LlavaOV.from_pretrained(model_dir),
                handles=handles,
            )
    finally:
        engine.close()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server_url(served) -> str:
    """Base URL of the running test server, `http://127.0.0.1:PORT`."""
    return served.url


@pytest.fixture(scope="session")
def make_png():
    """png_bytes(width=40, height=30, seed=0): a small RGB PNG with varied pixels."""
    return png_bytes


@pytest.fixture(scope="session")
def make_data_url():
    """data_url(bytes, media_type="image/png"): bytes as a base64 data: URL."""
    return data_url


@pytest.fixture(scope="session")
def decode_png():
    """image_of(bytes): the RGB image the server decodes from encoded bytes."""
    return image_of
