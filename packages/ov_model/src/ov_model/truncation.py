"""Truncation to `max_length`: keep the longest prefix that is still a sound training sample.

Policy. A sample longer than `max_length` keeps its first `cut` tokens, where `cut` is the
largest length <= `max_length` whose last kept token is supervised. Consequences:
- whole trailing turns are dropped, and the last kept assistant answer may be cut short at a token
  boundary (it then loses its `<|im_end|>`: the model is not taught to stop where the text was
  merely cut off);
- an image is never cut: image tokens (`<|vision_start|>`, the pads, `<|vision_end|>`) are never
  supervised, so a cut always falls outside every image and the kept images are exactly the
  first few, which keeps image tokens and image features in step;
- trailing prompt tokens with nothing supervised after them are not kept (they would cost compute
  and teach nothing);
- when no such prefix exists (the first answer starts beyond `max_length`, e.g. behind a large
  image), the sample is refused with `SampleTooLongError`, and a sample with no supervised token
  at all with `NoSupervisedTokensError`: both are `SampleError`s naming the sample, for the data
  pipeline to report and skip. A sample is never returned to train at loss 0.
"""

from collections.abc import Sequence

from ov_model.packing import IGNORE_INDEX
from ov_model.processor_errors import NoSupervisedTokensError, SampleTooLongError


def truncation_length(
    labels: Sequence[int], max_length: int | None, *, sample_id: str | int | None = None
) -> int:
    """How many leading tokens to keep under the policy above (all of them when they fit or
    `max_length` is None). Raises `NoSupervisedTokensError` or `SampleTooLongError`."""
    first_supervised = next(
        (position for position, label in enumerate(labels) if label != IGNORE_INDEX), None
    )
    if first_supervised is None:
        raise NoSupervisedTokensError(sample_id=sample_id)
    if max_length is None or len(labels) <= max_length:
        return len(labels)
    for cut in range(max_length, first_supervised, -1):
        if labels[cut - 1] != IGNORE_INDEX:
            return cut
    raise SampleTooLongError(
        length=len(labels),
        max_length=max_length,
        first_supervised=first_supervised,
        sample_id=sample_id,
    )


def kept_images(image_token_counts: Sequence[int], kept_image_tokens: int) -> int:
    """How many leading images `kept_image_tokens` image-pad tokens make up exactly."""
    total = 0
    for image, count in enumerate(image_token_counts):
        if total == kept_image_tokens:
            return image
        total += count
    if total != kept_image_tokens:
        raise AssertionError(
            f"{kept_image_tokens} kept image tokens do not end on an image boundary of "
            f"{list(image_token_counts)}"
        )
    return len(image_token_counts)
