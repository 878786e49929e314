"""ov_concepts: Concept balancing of image corpora: embed, top-K concept assignment, inverse-
frequency resampling, reports.

One module per step; import what you need from it (importing the package itself loads no torch):

- `vocabulary`: concept lists from .txt/.jsonl (normalised, deduplicated);
- `embeddings`, `encoders`, `inputs`, `embed_job`: embedding matrices on disk, the encoder
  protocol, precomputed embeddings, resumable chunked embedding jobs; `clip` runs open_clip-format
  CLIP checkpoints (extra `ov-concepts[clip]`);
- `topk`, `assign`: exact blocked top-K and the assignment job;
- `rules`, `sampling`, `balance`: frequencies, weights, exact-size streaming sampling;
- `statistics`, `report`: before/after statistics, plot and Markdown;
- `synthetic`: a seeded Zipf corpus; `cli`: the `ov-concepts` command.
"""

from importlib.metadata import version

__version__ = version("ov-concepts")
__all__ = ["__version__"]
