"""The text tokenizer: a `tokenizer.json` read with the `tokenizers` library, no transformers.

LLaVA-OneVision-1.5 uses the Qwen byte-level BPE tokenizer. The processor needs seven of its
special tokens (`SPECIAL_TOKEN_STRINGS`); they are looked up by their string, never by a hard-coded
id, because the real Qwen tokenizer puts them at 151643.. while the tiny tokenizers of the tests
put them right after a few hundred BPE tokens. A tokenizer lacking one is refused at load time,
naming the file and the token, rather than failing later on the first image.

`build_tokenizer` trains a small Qwen-like tokenizer (Qwen's pre-tokenizer regex, byte-level BPE,
NFC, the 14 Qwen-VL special tokens in Qwen's order) on given texts, offline and in milliseconds:
the tests and the training quickstart use it instead of downloading the 151k-token original.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import tokenizers
from tokenizers import (
    AddedToken,
    Regex,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from ov_model.processor_errors import TokenizerError

TOKENIZER_FILE = "tokenizer.json"

# Qwen2's pre-tokenizer split (tokenizer.json of Qwen2/Qwen2.5/Qwen3).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The Qwen2-VL special tokens in id order (151643..151656 in the real tokenizer).
QWEN_VL_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

SPECIAL_TOKEN_STRINGS = {
    "endoftext": "<|endoftext|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
    "image_pad": "<|image_pad|>",
    "video_pad": "<|video_pad|>",
}
"""Field of `SpecialTokenIds` -> the token string it is looked up by."""


@dataclass(frozen=True, kw_only=True)
class SpecialTokenIds:
    """Ids of the special tokens the processor and the model use."""

    endoftext: int
    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    image_pad: int
    video_pad: int


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> tokenizers.Tokenizer:
    """Train a Qwen-like byte-level BPE tokenizer on `texts` and add the Qwen-VL special tokens.

    `vocab_size` bounds the BPE vocabulary (256 byte symbols + merges); the 14 special tokens
    get the ids right after it, in Qwen's order. Deterministic for the same texts."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 256:
        raise TokenizerError(
            f"build_tokenizer: vocab_size must be an integer >= 256 (the byte alphabet), "
            f"got {vocab_size!r}"
        )
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in QWEN_VL_SPECIAL_TOKENS]
    )
    return tokenizer


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the ids of the special tokens the processor needs.

    `source` names where it came from in error messages."""

    def __init__(self, backend: tokenizers.Tokenizer, *, source: str = "in-memory tokenizer"):
        self.backend = backend
        self.source = source
        ids: dict[str, int] = {}
        missing: list[str] = []
        for field_name, token in SPECIAL_TOKEN_STRINGS.items():
            token_id = backend.token_to_id(token)
            if token_id is None:
                missing.append(token)
            else:
                ids[field_name] = token_id
        if missing:
            raise TokenizerError(
                f"{source}: missing special token(s) {', '.join(missing)}; the LLaVA-OV "
                f"processor needs all of {', '.join(SPECIAL_TOKEN_STRINGS.values())}"
            )
        self.special = SpecialTokenIds(**ids)
        # Every special added token: text containing one would be parsed as that token.
        self.special_token_strings = frozenset(
            added.content for added in backend.get_added_tokens_decoder().values() if added.special
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "TextTokenizer":
        """Load a `tokenizer.json` (a file, or a folder holding one)."""
        file = Path(path)
        if file.is_dir():
            file = file / TOKENIZER_FILE
        if not file.is_file():
            raise TokenizerError(f"{file}: no such file (a tokenizers-format tokenizer.json)")
        try:
            backend = tokenizers.Tokenizer.from_file(str(file))
        except Exception as error:  # the Rust side raises a bare Exception for any parse error
            raise TokenizerError(f"{file}: not a readable tokenizer.json ({error})") from None
        return cls(backend, source=str(file))

    def save(self, path: str | Path) -> Path:
        """Write `tokenizer.json` (into `path` if it is a folder); returns the file written."""
        file = Path(path)
        if file.is_dir():
            file = file / TOKENIZER_FILE
        self.backend.save(str(file))
        return file

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in it become their ids; no BOS/EOS."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_segments(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, tokenized separately (no merge across texts)."""
        # One call per text, not `encode_batch`: a sample has a handful of segments, and the
        # batch call starts the Rust thread pool, which makes every later fork of a data-loader
        # worker print a warning and drop to one thread.
        return [self.encode(text) for text in texts]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of token ids."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
