"""CLIP tokenisation into fixed-length id rows, from a Hugging Face `tokenizer.json`.

open_clip's rule: [start-of-text] + BPE(clean(text)) + [end-of-text], truncated to the context
length with the last id forced to end-of-text, zero-padded. clean() is HTML unescaping (twice),
whitespace collapsing and lower-casing; ftfy's mojibake repair is not applied (see the package
docstring). The tokenizer file's own special-token post-processing is bypassed so the start and end
tokens are added exactly once, here.
"""

import html
import re
from pathlib import Path

import torch

from ov_concepts.errors import CheckpointError

START = "<|startoftext|>"
END = "<|endoftext|>"
_WHITESPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """open_clip's 'lower' cleaning, without ftfy."""
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


class ClipTokenizer:
    """Tokenises texts into (N, context_length) int64 rows the way open_clip does."""

    def __init__(self, path: Path, context_length: int) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:  # pragma: no cover - exercised only without the extra
            raise CheckpointError(
                "text encoding needs the `tokenizers` package: pip install ov-concepts[clip]"
            ) from None
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception for bad files
            raise CheckpointError(f"{path}: not a tokenizer.json file ({error})") from None
        start, end = self._tokenizer.token_to_id(START), self._tokenizer.token_to_id(END)
        if start is None or end is None:
            raise CheckpointError(f"{path}: no {START} / {END} tokens: not a CLIP tokenizer")
        self.path = Path(path)
        self.start, self.end = start, end
        self.context_length = context_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """Token id rows for `texts`."""
        rows = torch.zeros((len(texts), self.context_length), dtype=torch.int64)
        encodings = self._tokenizer.encode_batch(
            [clean_text(text) for text in texts], add_special_tokens=False
        )
        for row, encoding in enumerate(encodings):
            ids = [self.start, *encoding.ids, self.end]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.end
            rows[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return rows
