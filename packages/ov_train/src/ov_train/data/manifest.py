"""`manifest.jsonl`: one row per input sample, what was measured and what became of it.

    {"id": "...", "source": "file#row", "status": "packed", "reason": null, "detail": null,
     "key": "s000003-000042", "copies": 1, "image_sizes": [[480, 640]], "text_tokens": 57,
     "llm_tokens": 449, "vit_patches": 1568, "supervised_tokens": 21, "truncated_from": null}

- `status`: `packed` (in `copies` bins), `rejected` (`reason` and `detail` say why; a value of
  `raw_sample.Reason`), or `not_selected` (measured and fine, but the selection hook did not draw
  it);
- `key`: the sample's key in the normalised source tars and the packed shards (the bin JSON's
  `id`), null if it was never accepted;
- sizes are null for samples rejected before they could be measured; `image_sizes` are
  (height, width) in pixels, `text_tokens` = `llm_tokens` minus image tokens;
- `truncated_from`: for a sample cut to `max_length` (`prepare --truncate`), its LLM tokens
  before the cut (the sizes are those after it); null for a sample packed whole.

Rows are in input order (inputs in the order given, rows in file order), field order fixed, so
the file is byte-identical across runs on the same inputs.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import msgspec

MANIFEST_NAME = "manifest.jsonl"

Status = Literal["packed", "rejected", "not_selected"]


class ManifestRow(msgspec.Struct, frozen=True, kw_only=True):
    """One sample of the manifest (see the module docstring)."""

    id: str
    source: str
    status: Status
    reason: str | None = None
    detail: str | None = None
    key: str | None = None
    copies: int = 0
    image_sizes: list[tuple[int, int]] | None = None
    text_tokens: int | None = None
    llm_tokens: int | None = None
    vit_patches: int | None = None
    supervised_tokens: int | None = None
    truncated_from: int | None = None


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(ManifestRow)


def encode_row(row: ManifestRow) -> bytes:
    """One JSONL line (with its newline)."""
    return _ENCODER.encode(row) + b"\n"


def read_manifest(path: str | Path) -> Iterator[ManifestRow]:
    """The rows of a manifest file, in order; ValueError naming the line if one is malformed."""
    path = Path(path)
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            try:
                yield _DECODER.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                raise ValueError(f"{path}:{number}: not a manifest row ({error})") from None
