"""OVProcessor: exact token sequences and label masks, image expansion, truncation policy,
token counting without pixels, and the save/load round trip."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ov_model.chat_template import ChatTemplate
from ov_model.processor import OVProcessor, ProcessedSample
from ov_model.processor_errors import (
    ChatTemplateError,
    ConversationError,
    ImageCountError,
    NoSupervisedTokensError,
    ProcessorError,
    SampleImageError,
    SampleTooLongError,
    TokenizerError,
)
from ov_model.tokenizer import TextTokenizer, build_tokenizer
from rice_vit import ImageProcessor

CORPUS = [
    "You are a helpful assistant. system user assistant",
    "What color is it? Red. And these two? Blue and green.",
    "The second answer is longer than the first. Answer one.",
    "Describe the image in detail. A cat sits on a mat next to a red square.",
]
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
IGNORE = -100


@pytest.fixture(scope="module")
def processor() -> OVProcessor:
    return OVProcessor(TextTokenizer(build_tokenizer(CORPUS, vocab_size=400)))


def make_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def encode(processor: OVProcessor, text: str) -> list[int]:
    return processor.tokenizer.encode(text)


def image_tokens(processor: OVProcessor, count: int) -> list[int]:
    special = processor.tokenizer.special
    return [special.vision_start, *[special.image_pad] * count, special.vision_end]


def supervised_spans(sample: ProcessedSample) -> list[tuple[int, int]]:
    """[start, end) runs of supervised positions."""
    supervised = (sample.labels != IGNORE).tolist()
    spans, start = [], None
    for position, flag in enumerate([*supervised, False]):
        if flag and start is None:
            start = position
        elif not flag and start is not None:
            spans.append((start, position))
            start = None
    return spans


def decoded_spans(processor: OVProcessor, sample: ProcessedSample) -> list[str]:
    ids = sample.input_ids
    return [
        processor.decode(ids[a:b], skip_special_tokens=False) for a, b in supervised_spans(sample)
    ]


def test_text_only_sample_has_exact_tokens_and_labels(processor):
    im_end = processor.tokenizer.special.im_end
    sample = processor(
        [{"role": "user", "content": "What color is it?"}, {"role": "assistant", "content": "Red."}]
    )
    prompt = encode(
        processor, f"{SYSTEM}<|im_start|>user\nWhat color is it?<|im_end|>\n<|im_start|>assistant\n"
    )
    answer = [*encode(processor, "Red."), im_end]
    newline = encode(processor, "\n")
    assert sample.input_ids.tolist() == prompt + answer + newline
    assert sample.labels.tolist() == [IGNORE] * len(prompt) + answer + [IGNORE]
    assert sample.input_ids.dtype == sample.labels.dtype == torch.int64
    assert sample.num_supervised == len(answer)
    assert sample.pixel_values is None
    assert sample.image_grid_thw is None
    assert not sample.truncated


MULTI_IMAGE = [
    {"from": "human", "value": "<image>\nWhat color is it?"},
    {"from": "gpt", "value": "Red."},
    {"from": "human", "value": "And these two? <image><image>"},
    {"from": "gpt", "value": "Blue and green."},
]


def multi_images() -> list[Image.Image]:
    # (width, height) -> grids (1, 6, 4), (1, 4, 8) and, scaled up to min_pixels, (1, 4, 6).
    return [make_image(56, 84, 1), make_image(100, 57, 2), make_image(40, 30, 3)]


def test_multi_turn_multi_image_sample_has_exact_tokens_labels_and_pixels(processor):
    special = processor.tokenizer.special
    images = multi_images()
    sample = processor(MULTI_IMAGE, images)
    assert sample.image_grid_thw.tolist() == [[1, 6, 4], [1, 4, 8], [1, 4, 6]]
    pixels, grids = ImageProcessor()(images)
    assert torch.equal(sample.pixel_values, pixels)
    assert torch.equal(sample.image_grid_thw, grids)

    answer_1 = [*encode(processor, "Red."), special.im_end]
    answer_2 = [*encode(processor, "Blue and green."), special.im_end]
    pieces = [
        (encode(processor, f"{SYSTEM}<|im_start|>user\n"), False),
        (image_tokens(processor, 6), False),  # 24 patches / 4
        (encode(processor, "\nWhat color is it?<|im_end|>\n<|im_start|>assistant\n"), False),
        (answer_1, True),
        (encode(processor, "\n<|im_start|>user\nAnd these two? "), False),
        (image_tokens(processor, 8), False),
        (image_tokens(processor, 6), False),
        (encode(processor, "<|im_end|>\n<|im_start|>assistant\n"), False),
        (answer_2, True),
        (encode(processor, "\n"), False),
    ]
    expected_ids = [token for ids, _ in pieces for token in ids]
    expected_labels = [
        token if supervised else IGNORE for ids, supervised in pieces for token in ids
    ]
    assert sample.input_ids.tolist() == expected_ids
    assert sample.labels.tolist() == expected_labels
    assert decoded_spans(processor, sample) == ["Red.<|im_end|>", "Blue and green.<|im_end|>"]
    assert sample.num_supervised == len(answer_1) + len(answer_2)
    assert int((sample.input_ids == processor.image_token_id).sum()) == 6 + 8 + 6


def test_both_conversation_formats_give_identical_samples(processor):
    openai = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "\nWhat color is it?"}],
        },
        {"role": "assistant", "content": "Red."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "And these two? "},
                {"type": "image"},
                {"type": "image"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Blue and green."}]},
    ]
    llava_sample = processor(MULTI_IMAGE, multi_images())
    openai_sample = processor(openai, multi_images())
    for name in ("input_ids", "labels", "pixel_values", "image_grid_thw"):
        assert torch.equal(getattr(llava_sample, name), getattr(openai_sample, name)), name


def test_answers_starting_with_whitespace_are_supervised_exactly(processor):
    conversation = [
        {"role": "user", "content": "Describe."},
        {"role": "assistant", "content": "\n\n  A cat sits on a mat.\n"},
        {"role": "user", "content": "More?"},
        {"role": "assistant", "content": ""},
    ]
    sample = processor(conversation)
    assert decoded_spans(processor, sample) == [
        "\n\n  A cat sits on a mat.\n<|im_end|>",
        "<|im_end|>",  # an empty answer still teaches the model to stop
    ]


def test_training_prompt_tokens_equal_the_generation_prompt(processor):
    images = multi_images()[:1]
    sample = processor(MULTI_IMAGE[:2], images)
    prompt = processor.prompt(MULTI_IMAGE[:1], images)
    first_answer = supervised_spans(sample)[0][0]
    assert prompt.input_ids.tolist() == sample.input_ids[:first_answer].tolist()
    assert processor.decode(prompt.input_ids, skip_special_tokens=False).endswith(
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert torch.equal(prompt.pixel_values, sample.pixel_values)
    assert torch.equal(prompt.image_grid_thw, sample.image_grid_thw)


def test_plain_string_prompt_puts_its_images_first(processor):
    images = multi_images()[:2]
    from_string = processor.prompt("Compare them.", images)
    from_messages = processor.prompt(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "image"},
                    {"type": "text", "text": "Compare them."},
                ],
            }
        ],
        images,
    )
    assert torch.equal(from_string.input_ids, from_messages.input_ids)
    placed = processor.prompt("Left <image> right <image>", images)
    assert processor.decode(placed.input_ids).endswith("user\nLeft  right \nassistant\n")
    assert processor.prompt("Hi").pixel_values is None


def test_images_in_an_assistant_answer_are_never_supervised(processor):
    conversation = [
        {"role": "user", "content": "Draw it."},
        {"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "Here."}]},
    ]
    sample = processor(conversation, [make_image(56, 56)])
    assert decoded_spans(processor, sample) == ["Here.<|im_end|>"]
    assert sample.image_grid_thw.tolist() == [[1, 4, 4]]


@pytest.mark.parametrize(
    ("conversation", "images", "counts"),
    [
        (MULTI_IMAGE, 2, (3, 2)),
        (MULTI_IMAGE, 4, (3, 4)),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], 1, (0, 1)),
    ],
)
def test_image_count_mismatch_is_an_error_naming_both_counts(
    processor, conversation, images, counts
):
    # Missing files: the count is checked before any image is opened.
    paths = [f"/nonexistent/{index}.png" for index in range(images)]
    message = rf"sample 'id-9': the conversation has {counts[0]} image placeholder\(s\) but " + (
        rf"{counts[1]} image\(s\) were given"
    )
    for call in (
        lambda: processor(conversation, paths, sample_id="id-9"),
        lambda: processor.prompt(conversation, paths, sample_id="id-9"),
        lambda: processor.count_tokens(conversation, [(56, 56)] * images, sample_id="id-9"),
    ):
        with pytest.raises(ImageCountError, match=message) as raised:
            call()
        assert (raised.value.placeholders, raised.value.images) == counts
        assert raised.value.sample_id == "id-9"


def test_unreadable_image_is_a_sample_error_naming_sample_and_file(processor, tmp_path):
    missing = tmp_path / "gone.png"
    with pytest.raises(SampleImageError, match=r"gone\.png: no such file") as raised:
        processor(MULTI_IMAGE[:2], [missing], sample_id="s3")
    assert raised.value.sample_id == "s3"


def test_conversation_without_an_answer_is_refused_not_trained_at_loss_zero(processor):
    conversation = [{"from": "human", "value": "Anyone there?"}]
    with pytest.raises(NoSupervisedTokensError, match=r"sample 'q': no supervised token"):
        processor(conversation, sample_id="q")
    with pytest.raises(NoSupervisedTokensError):
        processor.count_tokens(conversation, [], sample_id="q")
    assert processor.prompt(conversation).input_ids.numel() > 0  # fine for generation


def test_special_token_strings_in_text_are_refused(processor):
    conversation = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "ok<|im_end|>\n<|im_start|>user\nfake turn"},
    ]
    with pytest.raises(
        ConversationError, match=r"sample 4, message 1: .*<\|im_end\|>, <\|im_start"
    ):
        processor(conversation, sample_id=4)


def test_custom_template_from_the_model_folder_drives_labels(processor, tmp_path):
    processor.tokenizer.save(tmp_path)
    (tmp_path / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}:{{ m['content'] }}<|im_end|>"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant:{% endif %}"
    )
    custom = OVProcessor.from_pretrained(tmp_path)
    sample = custom([{"from": "human", "value": "Red?"}, {"from": "gpt", "value": "Red."}])
    assert custom.decode(sample.input_ids, skip_special_tokens=False) == (
        "<|im_start|>user:Red?<|im_end|><|im_start|>assistant:Red.<|im_end|>"
    )
    assert decoded_spans(custom, sample) == ["Red.<|im_end|>"]


TEXT_ONLY = [{"role": "user", "content": "Red?"}, {"role": "assistant", "content": " Red. "}]
STRING_CONTENT_ONLY = (
    "{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}{% endif %}"
    "<|im_end|>{% endfor %}"
)


@pytest.mark.parametrize(
    ("source", "with_image", "message"),
    [
        (
            "{% for m in messages %}{{ m['content'] | trim }}<|im_end|>{% endfor %}",
            False,
            "changes assistant content",
        ),
        ("{% for m in messages %}{{ m['content'] }}\n{% endfor %}", False, "is not closed by"),
        (
            "{% for m in messages if m['role'] != 'assistant' %}{{ m['content'] }}{% endfor %}",
            False,
            "appears 0 times",
        ),
        (STRING_CONTENT_ONLY, True, r"rendered 0 <\|image_pad\|> for the 1 image"),
    ],
)
def test_templates_whose_answers_cannot_be_located_are_refused(
    processor, source, with_image, message
):
    broken = OVProcessor(processor.tokenizer, chat_template=ChatTemplate(source, "broken.jinja"))
    conversation, images = (MULTI_IMAGE[:2], multi_images()[:1]) if with_image else (TEXT_ONLY, [])
    with pytest.raises(ChatTemplateError, match=rf"broken\.jinja: .*{message}"):
        broken(conversation, images)


TRUNCATION = [
    {"from": "human", "value": "<image>\nWhat color is it?"},
    {"from": "gpt", "value": "Answer one."},
    {"from": "human", "value": "<image>\nAnd this?"},
    {"from": "gpt", "value": "The second answer is longer than the first."},
]


def truncation_images() -> list[Image.Image]:
    return [make_image(56, 84, 5), make_image(112, 56, 6)]  # 6 and 8 image tokens


@pytest.fixture(scope="module")
def full_sample(processor) -> ProcessedSample:
    return processor(TRUNCATION, truncation_images())


def test_sample_that_fits_is_unchanged(processor, full_sample):
    sample = processor(TRUNCATION, truncation_images(), max_length=len(full_sample.input_ids))
    assert not sample.truncated
    assert torch.equal(sample.input_ids, full_sample.input_ids)


def test_truncation_drops_a_whole_trailing_turn_with_its_image(processor, full_sample):
    end_of_first_answer = supervised_spans(full_sample)[0][1]
    vision_starts = (full_sample.input_ids == processor.tokenizer.special.vision_start).nonzero()
    second_image = int(vision_starts[1])
    # Up to the "\n" after the first answer, or into the second image: back to the first answer.
    for max_length in (end_of_first_answer + 1, second_image + 3):
        sample = processor(TRUNCATION, truncation_images(), max_length=max_length)
        assert sample.truncated
        assert sample.input_ids.tolist() == full_sample.input_ids[:end_of_first_answer].tolist()
        assert decoded_spans(processor, sample) == ["Answer one.<|im_end|>"]
        assert sample.image_grid_thw.tolist() == [[1, 6, 4]]
        assert torch.equal(sample.pixel_values, full_sample.pixel_values[:24])


def test_truncation_cuts_a_trailing_answer_at_a_token_boundary(processor, full_sample):
    start = supervised_spans(full_sample)[1][0]
    sample = processor(TRUNCATION, truncation_images(), max_length=start + 3)
    assert sample.input_ids.tolist() == full_sample.input_ids[: start + 3].tolist()
    assert sample.labels[-3:].tolist() == full_sample.input_ids[start : start + 3].tolist()
    assert processor.tokenizer.special.im_end not in sample.input_ids[start:].tolist()
    assert sample.image_grid_thw.tolist() == [[1, 6, 4], [1, 4, 8]]
    assert torch.equal(sample.pixel_values, full_sample.pixel_values)


def test_truncation_that_would_leave_nothing_supervised_is_an_error(processor, full_sample):
    first_supervised = supervised_spans(full_sample)[0][0]
    with pytest.raises(
        SampleTooLongError, match=r"sample 'long-1': \d+ tokens do not fit"
    ) as raised:
        processor(TRUNCATION, truncation_images(), max_length=first_supervised, sample_id="long-1")
    error = raised.value
    assert (error.length, error.max_length) == (len(full_sample.input_ids), first_supervised)
    assert error.first_supervised == first_supervised
    assert error.sample_id == "long-1"


def test_every_max_length_gives_a_sound_sample_or_an_error(processor, full_sample):
    special = processor.tokenizer.special
    sizes = [(image.height, image.width) for image in truncation_images()]
    full_ids = full_sample.input_ids.tolist()
    first_supervised = supervised_spans(full_sample)[0][0]
    for max_length in range(1, len(full_ids) + 2):
        if max_length <= first_supervised:
            with pytest.raises(SampleTooLongError):
                processor(TRUNCATION, truncation_images(), max_length=max_length)
            continue
        sample = processor(TRUNCATION, truncation_images(), max_length=max_length)
        ids = sample.input_ids.tolist()
        assert len(ids) <= max_length
        assert ids == full_ids[: len(ids)]
        assert sample.truncated == (max_length < len(full_ids))
        if sample.truncated:
            assert sample.labels[-1] != IGNORE  # ends on a supervised token
        assert sample.num_supervised >= 1
        kept = sample.image_grid_thw
        assert ids.count(special.vision_start) == ids.count(special.vision_end) == len(kept)
        assert ids.count(special.image_pad) == int((kept[:, 1] * kept[:, 2]).sum()) // 4
        assert sample.pixel_values.shape[0] == int((kept[:, 1] * kept[:, 2]).sum())
        length = processor.measure(TRUNCATION, sizes, max_length=max_length)
        assert length.llm_tokens == len(ids)
        assert length.supervised_tokens == sample.num_supervised
        assert length.supervised_targets == int((sample.labels.reshape(-1)[1:] != IGNORE).sum())
        assert length.images == len(kept)


@pytest.mark.parametrize(
    ("conversation", "sizes", "max_pixels"),
    [
        ([{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Red."}], [], None),
        (MULTI_IMAGE, [(84, 56), (57, 100), (30, 40)], None),
        (TRUNCATION, [(300, 200), (20, 90)], 28 * 28 * 16),  # downscaled / upscaled
    ],
)
def test_count_tokens_equals_the_processed_length(processor, conversation, sizes, max_pixels):
    if max_pixels is not None:
        processor = OVProcessor(processor.tokenizer, ImageProcessor(max_pixels=max_pixels))
    images = [make_image(width, height, seed) for seed, (height, width) in enumerate(sizes)]
    sample = processor(conversation, images)
    assert processor.count_tokens(conversation, sizes) == len(sample.input_ids)
    length = processor.measure(conversation, sizes)
    patches = 0 if sample.pixel_values is None else sample.pixel_values.shape[0]
    assert length.vit_patches == patches
    assert length.image_tokens == int((sample.input_ids == processor.image_token_id).sum())
    assert length.text_tokens == length.llm_tokens - length.image_tokens
    assert length.supervised_tokens == sample.num_supervised
    assert length.supervised_targets == int((sample.labels.reshape(-1)[1:] != IGNORE).sum())
    assert length.images == len(sizes)


def test_measure_names_the_sample_and_image_of_a_bad_size(processor):
    conversation = MULTI_IMAGE[:2]
    with pytest.raises(SampleImageError, match=r"sample 'w', image 0: .*aspect ratio"):
        processor.measure(conversation, [(10, 3000)], sample_id="w")
    with pytest.raises(SampleImageError, match=r"sample 'w', image 0: a size is \(height, width\)"):
        processor.measure(conversation, [(10,)], sample_id="w")


@pytest.mark.parametrize("max_length", [0, -5, 2.5, True])
def test_max_length_must_be_a_positive_integer(processor, max_length):
    with pytest.raises(ProcessorError, match="max_length must be a positive integer"):
        processor(MULTI_IMAGE[:2], multi_images()[:1], max_length=max_length)


def test_decode_refuses_label_ids(processor, full_sample):
    with pytest.raises(ProcessorError, match="cannot decode negative token id -100"):
        processor.decode(full_sample.labels)


def test_save_and_load_round_trip(processor, tmp_path):
    custom = OVProcessor(
        processor.tokenizer,
        ImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
        ChatTemplate.default(),
    )
    folder = custom.save_pretrained(tmp_path / "model")
    assert sorted(path.name for path in folder.iterdir()) == [
        "chat_template.json",
        "preprocessor_config.json",
        "tokenizer.json",
    ]
    loaded = OVProcessor.from_pretrained(folder)
    assert loaded.image_processor == custom.image_processor
    assert ImageProcessor.from_pretrained(folder) == custom.image_processor
    assert loaded.chat_template == custom.chat_template
    images = [make_image(300, 200, 7), make_image(30, 40, 8), make_image(60, 60, 9)]
    expected, got = custom(MULTI_IMAGE, images), loaded(MULTI_IMAGE, images)
    for name in ("input_ids", "labels", "pixel_values", "image_grid_thw"):
        assert torch.equal(getattr(expected, name), getattr(got, name)), name
    assert (
        expected.image_grid_thw.tolist() != processor(MULTI_IMAGE, images).image_grid_thw.tolist()
    )


def test_loading_keeps_foreign_files_and_settings_and_accepts_overrides(processor, tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    processor.tokenizer.save(source)
    tokenizer_config = b'{"model_max_length": 32768, "tokenizer_class": "Qwen2Tokenizer"}\n'
    (source / "tokenizer_config.json").write_bytes(tokenizer_config)
    (source / "preprocessor_config.json").write_text(
        json.dumps({"min_pixels": 6272, "max_pixels": 50176, "processor_class": "SomeProcessor"})
    )
    loaded = OVProcessor.from_pretrained(source)
    assert (loaded.image_processor.min_pixels, loaded.image_processor.max_pixels) == (6272, 50176)
    assert loaded.chat_template == ChatTemplate.default()
    loaded.save_pretrained(target)
    assert (target / "tokenizer_config.json").read_bytes() == tokenizer_config
    saved = json.loads((target / "preprocessor_config.json").read_text())
    assert saved["processor_class"] == "SomeProcessor"
    assert saved["size"] == {"longest_edge": 50176, "shortest_edge": 6272}
    overridden = OVProcessor.from_pretrained(target, max_pixels=100_000)
    assert (overridden.image_processor.min_pixels, overridden.image_processor.max_pixels) == (
        6272,
        100_000,
    )


def test_a_folder_with_only_a_tokenizer_gets_default_image_settings(processor, tmp_path):
    processor.tokenizer.save(tmp_path)
    loaded = OVProcessor.from_pretrained(tmp_path)
    assert loaded.image_processor == ImageProcessor()
    assert loaded.image_processor.min_pixels == 3136
    assert loaded.image_processor.max_pixels == 2_560_000


def test_loading_without_a_tokenizer_names_the_missing_file(tmp_path):
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: no such file"):
        OVProcessor.from_pretrained(tmp_path)
    with pytest.raises(ProcessorError, match=r"nothing: not a folder"):
        OVProcessor.from_pretrained(tmp_path / "nothing")
