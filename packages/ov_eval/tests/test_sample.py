"""Sample: validated at construction, read-only metadata, images decoded to RGB on demand."""

import io

import pytest
from PIL import Image

from ov_eval.sample import Sample


def test_images_decode_to_rgb(make_png):
    buffer = io.BytesIO()
    Image.new("L", (5, 2), 128).save(buffer, format="PNG")
    sample = Sample(id="1", question="q", images=(make_png(), buffer.getvalue()), answers=("a",))
    decoded = sample.open_images()
    assert [image.mode for image in decoded] == ["RGB", "RGB"]
    assert [image.size for image in decoded] == [(4, 3), (5, 2)]


def test_metadata_is_read_only():
    sample = Sample(id="1", question="q", images=(), answers=("a",), metadata={"k": 1})
    with pytest.raises(TypeError):
        sample.metadata["k"] = 2  # type: ignore[index]


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"id": ""}, ValueError),
        ({"answers": ["a"]}, TypeError),
        ({"images": (b"",)}, TypeError),
        ({"options": (1,)}, TypeError),
    ],
)
def test_invalid_samples_are_refused(fields, error):
    with pytest.raises(error):
        Sample(**({"id": "1", "question": "q", "images": (), "answers": ("a",)} | fields))
