"""Multi-positive class labels of OCR regions: the token ids of their text.

RICE labels an OCR region with the set of token ids of its recognised text (the paper does not
name the tokenizer). Here the user names one: a Hugging Face `tokenizers` tokenizer.json (e.g.
the LLM's own), encoded without special tokens; with none, the UTF-8 bytes of the text (256
classes, no file needed, any script). Class ids follow the K object clusters: class = K + token
id, so the loss's centre matrix is [K cluster centres; vocab_size token centres].

A token that occurs several times in a text is one positive (duplicates removed; ids returned
sorted). A text that is empty, blank, or gives no token is a bad region: `__call__` returns no
class for it and `label_texts` counts it in its `OcrLabelReport` (reason and example: the
region's position and text), never silently dropping it.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rice_vit.errors import ConfigError

BYTE_CLASSES = 256
BAD_REASONS = ("empty_text", "no_tokens")


@dataclass
class OcrLabelReport:
    """Counts of OCR texts labelled and of bad ones by reason, with up to `max_examples`
    examples per reason ({"reason", "region", "text"})."""

    labelled: int = 0
    bad: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAD_REASONS, 0))
    examples: list[dict[str, Any]] = field(default_factory=list)
    max_examples: int = 5

    def note(self, reason: str, region: Any, text: str) -> None:
        """Count one bad text; keep it as an example while fewer than `max_examples` are kept."""
        self.bad[reason] += 1
        if sum(1 for e in self.examples if e["reason"] == reason) < self.max_examples:
            self.examples.append({"reason": reason, "region": region, "text": text})

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {"labelled": self.labelled, "bad": dict(self.bad), "examples": list(self.examples)}

    def format(self) -> str:
        """A human-readable summary."""
        lines = [f"OCR texts labelled: {self.labelled}, bad: {sum(self.bad.values())}"]
        for reason in BAD_REASONS:
            lines.append(f"  {reason:<11} {self.bad[reason]}")
            lines += [
                f"    region {e['region']}: {e['text']!r}"
                for e in self.examples
                if e["reason"] == reason
            ]
        return "\n".join(lines)


@dataclass(frozen=True)
class OcrLabels:
    """Positive classes of many texts in CSR form (the loss's `positives_offsets` /
    `positives_classes` layout): text i's classes are classes[offsets[i]:offsets[i + 1]]
    (none for a bad text), plus the report."""

    offsets: torch.Tensor
    classes: torch.Tensor
    report: OcrLabelReport


class OcrLabeler:
    """Text -> sorted unique class ids `offset + token id`.

    tokenizer: a tokenizer.json path (Hugging Face `tokenizers`), or None for UTF-8 bytes.
    offset: K, the number of object clusters whose ids come first.
    """

    def __init__(self, tokenizer: str | Path | None, *, offset: int) -> None:
        if offset < 0:
            raise ConfigError(f"offset (the cluster count K) must be >= 0, got {offset}")
        self.offset = offset
        self.tokenizer_path = None if tokenizer is None else Path(tokenizer)
        self._tokenizer = None if tokenizer is None else _load_tokenizer(Path(tokenizer))
        self.vocab_size = (
            BYTE_CLASSES
            if self._tokenizer is None
            else self._tokenizer.get_vocab_size(with_added_tokens=True)
        )

    @property
    def num_classes(self) -> int:
        """offset + vocab_size: the rows of the centre matrix."""
        return self.offset + self.vocab_size

    def token_ids(self, text: str) -> list[int]:
        """The token ids of `text` in order (UTF-8 bytes without a tokenizer), duplicates kept."""
        if self._tokenizer is None:
            return list(text.encode("utf-8"))
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def __call__(self, text: str) -> tuple[int, ...]:
        """Sorted unique class ids of `text`; () for a blank text or one that gives no token."""
        if not text.strip():
            return ()
        return tuple(sorted({self.offset + token for token in self.token_ids(text)}))

    def label_texts(self, texts: Iterable[str], regions: Sequence[Any] | None = None) -> OcrLabels:
        """Labels of many texts, bad ones counted by reason in the report (`regions[i]` names
        text i in examples; its position when None)."""
        report = OcrLabelReport()
        offsets, classes = [0], []
        for i, text in enumerate(texts):
            name = regions[i] if regions is not None else i
            labels = self(text)
            if not text.strip():
                report.note("empty_text", name, text)
            elif not labels:
                report.note("no_tokens", name, text)
            else:
                report.labelled += 1
            classes.extend(labels)
            offsets.append(len(classes))
        return OcrLabels(
            torch.tensor(offsets, dtype=torch.int64),
            torch.tensor(classes, dtype=torch.int64),
            report,
        )


def _load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    if not path.is_file():
        raise ConfigError(f"OCR tokenizer {path}: no such file (a tokenizers tokenizer.json)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a plain Exception on a bad file
        try:
            json.loads(path.read_text("utf-8"))
            problem = str(error)
        except (UnicodeDecodeError, json.JSONDecodeError) as parse_error:
            problem = f"not JSON ({parse_error})"
        raise ConfigError(f"OCR tokenizer {path}: cannot be read: {problem}") from error
