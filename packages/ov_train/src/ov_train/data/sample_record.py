"""The per-sample JSON of normalised source tars and packed shards.

`prepare` writes every accepted sample as a webdataset sample `<key>.json` + `<key>.img0.<ext>`,
`<key>.img1.<ext>`, ...; ov_packing's writer carries these files into the packed shards unchanged
(renamed `s<position>.json`, `s<position>.img0.<ext>`, ...), so the loader reads back exactly this
record next to the image bytes:

    {"id": "original sample id", "source": "file#row or tar:key",
     "conversation": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}],
     "images": ["img0.jpg", ...], "max_length": 8192 or null}

`images` lists the image files' extensions in placeholder order; `max_length` is set when the
sample was measured with truncation, so the loader truncates it the same way. Keys are written in
sorted order (msgspec `order="sorted"`), so the bytes depend on the content alone.
"""

import msgspec

RECORD_EXT = "json"


class SampleRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a packed sub-sample's JSON holds (see the module docstring)."""

    id: str
    source: str
    conversation: list[dict[str, str]]
    images: list[str]
    max_length: int | None

    def encode(self) -> bytes:
        """Compact JSON with sorted keys."""
        return msgspec.json.encode(self, order="sorted")


def image_ext(index: int, format_ext: str) -> str:
    """The webdataset extension of a sample's image `index` (`img0.jpg`)."""
    return f"img{index}.{format_ext}"
