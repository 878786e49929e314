"""Measure one raw sample exactly as training will see it, or say why it cannot be trained on.

The counts come from `OVProcessor.measure`: the real chat template and tokenizer, and each image's
token count from its (height, width) through rice_vit's smart_resize, so `llm_tokens` is exactly
`len(processor(conversation, images).input_ids)` without a pixel being processed. Packing on
these numbers is what keeps every bin within its capacity at training time (the loader checks
it again, sample by sample).

Over-length samples: by default a sample longer than `max_length` is rejected (`too_long`), as
the original release did. With `truncate=True` it is cut to `max_length` by the processor's own
policy (never inside an image, never down to no supervised token) and the loader cuts it the
same way; only samples that cannot be cut are rejected. A cut sample records its length before
the cut (`truncated_from`), so the report can list it: training on it drops the end of its
answer. Every sample is measured whole first; only one longer than `max_length` is measured a
second time, with the cut.

Supervised targets: the trainer normalises a step's loss by its supervised next-token targets
before building it, so `prepare` records each sample's count with the shards (the bin table
column `supervised_targets`). A target is a supervised label at any position but the sample's
first (`ov_model.packing.shifted_targets` never predicts the first token): the processor's
`SampleLength.supervised_targets`. The loader checks it against the processed labels, sample by
sample, and stops naming the sample if they ever differ.

Every `SampleError` of the processor maps to one `Reason`; anything else is a bug and propagates.
"""

from dataclasses import dataclass

from ov_model.processor import OVProcessor, SampleLength
from ov_model.processor_errors import (
    ImageCountError,
    NoSupervisedTokensError,
    SampleError,
    SampleImageError,
    SampleTooLongError,
)
from ov_train.data.images import EncodedImage, ImageProblem, read_image
from ov_train.data.raw_sample import BadSample, RawSample, Reason


@dataclass(frozen=True, slots=True)
class MeasuredSample:
    """A sample that will be packed: its raw form, its images read, its exact sizes."""

    sample: RawSample
    images: tuple[EncodedImage, ...]
    length: SampleLength
    truncated_from: int | None = None
    """LLM tokens before truncation, for a sample cut to `max_length`; None when whole."""

    @property
    def supervised_targets(self) -> int:
        """Supervised next-token targets (see the module docstring)."""
        return self.length.supervised_targets


def measure_sample(
    sample: RawSample,
    processor: OVProcessor,
    *,
    max_length: int,
    truncate: bool,
    verify_images: bool,
) -> MeasuredSample | BadSample:
    """Read the sample's images and count its tokens; a BadSample with the reason if unusable."""
    images = []
    for index, ref in enumerate(sample.images):
        try:
            images.append(
                read_image(
                    ref,
                    max_pixels=processor.image_processor.max_image_pixels,
                    verify=verify_images,
                    name=f"image {index}",
                )
            )
        except ImageProblem as problem:
            return BadSample(sample.id, sample.source, problem.reason, problem.detail)
    sizes = [(image.height, image.width) for image in images]
    conversation = list(sample.conversation)
    try:
        length = processor.measure(conversation, sizes, None, sample_id=sample.id)
        if length.llm_tokens <= max_length:
            return MeasuredSample(sample, tuple(images), length)
        if truncate:
            cut = processor.measure(conversation, sizes, max_length, sample_id=sample.id)
            return MeasuredSample(sample, tuple(images), cut, truncated_from=length.llm_tokens)
    except SampleError as error:
        return BadSample(sample.id, sample.source, _reason(error), str(error))
    return BadSample(
        sample.id,
        sample.source,
        Reason.TOO_LONG,
        f"{length.llm_tokens} tokens > max_length {max_length}",
    )


def _reason(error: SampleError) -> Reason:
    if isinstance(error, ImageCountError):
        return Reason.IMAGE_COUNT_MISMATCH
    if isinstance(error, NoSupervisedTokensError):
        return Reason.NO_SUPERVISED_TOKENS
    if isinstance(error, SampleTooLongError):
        return Reason.TOO_LONG
    if isinstance(error, SampleImageError):
        return Reason.UNUSABLE_IMAGE
    return Reason.MALFORMED_CONVERSATION  # ConversationError and any other text problem
