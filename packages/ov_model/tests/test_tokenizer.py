"""The tokenizer: tiny Qwen-like tokenizers built offline, special tokens by string, file IO."""

import json

import pytest
import tokenizers

from ov_model.processor_errors import TokenizerError
from ov_model.tokenizer import (
    QWEN_VL_SPECIAL_TOKENS,
    SPECIAL_TOKEN_STRINGS,
    TextTokenizer,
    build_tokenizer,
)

CORPUS = [
    "You are a helpful assistant.",
    "What is in the image? A red square on a white background.",
    "Describe the picture in detail. There are two cats sitting on a mat.",
    "Numbers like 12345 and symbols like (a + b) * c = d.",
]


@pytest.fixture(scope="module")
def backend() -> tokenizers.Tokenizer:
    return build_tokenizer(CORPUS, vocab_size=320)


def test_special_tokens_follow_the_bpe_vocabulary_in_qwen_order(backend):
    tokenizer = TextTokenizer(backend)
    first = backend.token_to_id("<|endoftext|>")
    assert [backend.token_to_id(token) for token in QWEN_VL_SPECIAL_TOKENS] == list(
        range(first, first + len(QWEN_VL_SPECIAL_TOKENS))
    )
    assert first + len(QWEN_VL_SPECIAL_TOKENS) == tokenizer.vocab_size
    # The same offsets as the real tokenizer (151643 <|endoftext|> ... 151655 <|image_pad|>).
    special = tokenizer.special
    offsets = {name: getattr(special, name) - special.endoftext for name in SPECIAL_TOKEN_STRINGS}
    assert offsets == {
        "endoftext": 0,
        "im_start": 1,
        "im_end": 2,
        "vision_start": 9,
        "vision_end": 10,
        "image_pad": 12,
        "video_pad": 13,
    }
    assert set(QWEN_VL_SPECIAL_TOKENS) == tokenizer.special_token_strings


def test_text_round_trips_through_encode_and_decode_including_non_ascii(backend):
    tokenizer = TextTokenizer(backend)
    text = "A red square, 42 cats\n\n  and ümlauts, 日本語, emoji 🐈."
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_token_strings_encode_to_their_single_ids_and_decode_is_optional(backend):
    tokenizer = TextTokenizer(backend)
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == tokenizer.special.im_start
    assert ids[-1] == tokenizer.special.im_end
    assert tokenizer.decode(ids) == "user\nhi"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nhi<|im_end|>"


def test_encode_segments_does_not_merge_across_segments(backend):
    tokenizer = TextTokenizer(backend)
    # " square" is a merge of this corpus; tokenized apart, " " and "square" stay apart.
    joined = tokenizer.encode(" square")
    apart = tokenizer.encode_segments([" ", "square"])
    assert apart == [tokenizer.encode(" "), tokenizer.encode("square")]
    assert len(joined) < len(apart[0]) + len(apart[1])
    assert tokenizer.encode_segments([]) == []


def test_build_is_deterministic():
    assert build_tokenizer(CORPUS, 300).to_str() == build_tokenizer(CORPUS, 300).to_str()


def test_build_refuses_a_vocabulary_smaller_than_the_byte_alphabet():
    with pytest.raises(TokenizerError, match="vocab_size must be an integer >= 256"):
        build_tokenizer(CORPUS, vocab_size=100)


def test_save_and_load_round_trip(backend, tmp_path):
    tokenizer = TextTokenizer(backend)
    written = tokenizer.save(tmp_path)
    assert written == tmp_path / "tokenizer.json"
    loaded = TextTokenizer.from_file(tmp_path)
    assert loaded.source == str(written)
    assert loaded.special == tokenizer.special
    assert loaded.vocab_size == tokenizer.vocab_size
    text = "<|vision_start|><|image_pad|><|vision_end|>What is in the image?"
    assert loaded.encode(text) == tokenizer.encode(text)
    assert TextTokenizer.from_file(written).encode(text) == tokenizer.encode(text)


def test_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: no such file"):
        TextTokenizer.from_file(tmp_path)


def test_unreadable_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: not a readable tokenizer\.json"):
        TextTokenizer.from_file(tmp_path / "tokenizer.json")


def test_a_missing_special_token_is_an_error_naming_the_file_and_the_token(backend, tmp_path):
    data = json.loads(backend.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|image_pad|>"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(
        TokenizerError, match=r"tokenizer\.json: missing special token\(s\) <\|image_pad\|>"
    ):
        TextTokenizer.from_file(tmp_path)
