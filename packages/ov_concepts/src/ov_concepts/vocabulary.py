"""Concept vocabularies: one concept per line (.txt) or one JSON object per line (.jsonl).

A vocabulary is the ordered list of concept strings whose position is the concept id used in every
later file (assignments, counts, reports). Loading normalises each entry the same way every time
(Unicode NFC, surrounding whitespace stripped, inner runs of whitespace collapsed to one space) and
keeps the first occurrence of each normalised concept; later duplicates are dropped and reported,
because two ids for one string would split that concept's frequency in two. Case is preserved:
MetaCLIP's metadata distinguishes "Apple" from "apple", and a case-folding text encoder simply
embeds both alike.

Blank lines are skipped. `entries` counts the file's non-blank entries and `source_rows[i]` is the
0-based position of concept i among them: precomputed concept embeddings have one row per entry
(duplicates included), and that is how their rows are matched to concept ids.
"""

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ov_concepts.errors import VocabularyError

_WHITESPACE = re.compile(r"\s+")


def normalise_concept(text: str) -> str:
    """The canonical form of a concept string: NFC, stripped, inner whitespace collapsed."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A dropped entry: its 1-based file line, its normalised text and the line it repeats."""

    line: int
    concept: str
    first_line: int


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """An ordered, duplicate-free list of concepts; a concept's index is its id."""

    concepts: tuple[str, ...]
    source_rows: tuple[int, ...]
    entries: int
    duplicates: tuple[Duplicate, ...] = ()
    path: Path | None = None

    def __post_init__(self) -> None:
        if not self.concepts:
            raise VocabularyError(f"{self.path or 'vocabulary'}: no concepts")
        if len(self.source_rows) != len(self.concepts):
            raise VocabularyError("source_rows must have one entry per concept")
        if self.entries < len(self.concepts):
            raise VocabularyError(f"entries ({self.entries}) < concepts ({len(self.concepts)})")
        seen: dict[str, int] = {}
        for index, concept in enumerate(self.concepts):
            if not concept or concept != normalise_concept(concept):
                raise VocabularyError(f"concept {index} is not normalised: {concept!r}")
            if concept in seen:
                raise VocabularyError(
                    f"concept {concept!r} appears at ids {seen[concept]} and {index}"
                )
            seen[concept] = index

    def __len__(self) -> int:
        return len(self.concepts)

    @classmethod
    def from_strings(cls, entries: list[str]) -> "Vocabulary":
        """Build a vocabulary from in-memory strings (normalised and deduplicated like a file)."""
        return _build([(index + 1, text) for index, text in enumerate(entries)], None)

    def index(self) -> dict[str, int]:
        """Map each concept to its id."""
        return {concept: index for index, concept in enumerate(self.concepts)}

    def write_text(self, path: Path) -> None:
        """Write one concept per line (a .txt vocabulary that reloads to the same ids)."""
        for concept in self.concepts:
            if "\n" in concept or "\r" in concept:  # pragma: no cover - normalisation removes them
                raise VocabularyError(f"concept {concept!r} cannot be written one per line")
        path.write_text("".join(f"{concept}\n" for concept in self.concepts), encoding="utf-8")


def load_vocabulary(path: Path) -> Vocabulary:
    """Load a .txt (one concept per line) or .jsonl ({"concept": str, ...}) vocabulary."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise VocabularyError(f"{path}: cannot read ({error.strerror or error})") from error
    is_jsonl = path.suffix.lower() in {".jsonl", ".ndjson"}
    entries: list[tuple[int, str]] = []
    decoder = msgspec.json.Decoder()
    for line_number, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise VocabularyError(
                f"{path} line {line_number}: not UTF-8 ({error.reason})"
            ) from None
        if not text.strip():
            continue
        if is_jsonl:
            text = _concept_from_json(decoder, text, path, line_number)
        entries.append((line_number, text))
    return _build(entries, path)


def _concept_from_json(decoder: msgspec.json.Decoder, text: str, path: Path, line: int) -> str:
    try:
        record = decoder.decode(text)
    except msgspec.DecodeError as error:
        raise VocabularyError(f"{path} line {line}: invalid JSON ({error})") from None
    if not isinstance(record, dict):
        raise VocabularyError(f"{path} line {line}: expected a JSON object, got {text[:60]!r}")
    if "concept" not in record:
        raise VocabularyError(f"{path} line {line}: missing the 'concept' field")
    concept = record["concept"]
    if not isinstance(concept, str):
        raise VocabularyError(f"{path} line {line}: 'concept' must be a string, got {concept!r}")
    return concept


def _build(entries: list[tuple[int, str]], path: Path | None) -> Vocabulary:
    where = path or "vocabulary"
    concepts: list[str] = []
    source_rows: list[int] = []
    duplicates: list[Duplicate] = []
    first_line: dict[str, int] = {}
    for row, (line, text) in enumerate(entries):
        concept = normalise_concept(text)
        if not concept:
            raise VocabularyError(f"{where} line {line}: empty concept {text!r}")
        if concept in first_line:
            duplicates.append(Duplicate(line, concept, first_line[concept]))
            continue
        first_line[concept] = line
        concepts.append(concept)
        source_rows.append(row)
    if not concepts:
        raise VocabularyError(f"{where}: no concepts (the vocabulary is empty)")
    return Vocabulary(tuple(concepts), tuple(source_rows), len(entries), tuple(duplicates), path)
