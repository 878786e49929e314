"""Vocabulary loading: normalisation, duplicates, JSONL, and every malformed-input error."""

import pytest

from ov_concepts.errors import VocabularyError
from ov_concepts.vocabulary import Vocabulary, load_vocabulary, normalise_concept


def test_text_vocabulary_is_normalised_and_deduplicated_keeping_the_first(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("  golden   retriever \n\ncat\nCafe\u0301\ncat\n  golden retriever\nCat\n")
    vocabulary = load_vocabulary(path)
    assert vocabulary.concepts == ("golden retriever", "cat", "Café", "Cat")
    assert vocabulary.source_rows == (0, 1, 2, 5)
    assert vocabulary.entries == 6
    assert [(d.line, d.concept, d.first_line) for d in vocabulary.duplicates] == [
        (5, "cat", 3),
        (6, "golden retriever", 1),
    ]
    assert vocabulary.index()["Cat"] == 3


def test_jsonl_vocabulary_reads_the_concept_field_and_ignores_others(tmp_path):
    path = tmp_path / "v.jsonl"
    path.write_text('{"concept": "dog", "source": "wordnet"}\n\n{"concept": " sky "}\n')
    vocabulary = load_vocabulary(path)
    assert vocabulary.concepts == ("dog", "sky")
    assert vocabulary.source_rows == (0, 1)


def test_written_vocabulary_reloads_to_the_same_ids(tmp_path):
    vocabulary = Vocabulary.from_strings(["a b", "c", "a  b", "d"])
    vocabulary.write_text(tmp_path / "v.txt")
    assert load_vocabulary(tmp_path / "v.txt").concepts == vocabulary.concepts == ("a b", "c", "d")


def test_normalise_concept_is_idempotent():
    for text in ["  x\t y ", "e\u0301", "plain"]:
        assert normalise_concept(normalise_concept(text)) == normalise_concept(text)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", "", "no concepts"),
        ("blank.txt", "\n  \n\t\n", "no concepts"),
        ("bad.jsonl", '{"concept": "a"}\n{"concept": \n', "line 2: invalid JSON"),
        ("list.jsonl", '["a"]\n', "line 1: expected a JSON object"),
        ("missing.jsonl", '{"name": "a"}\n', "line 1: missing the 'concept' field"),
        ("number.jsonl", '{"concept": 3}\n', "line 1: 'concept' must be a string"),
        ("space.jsonl", '{"concept": "a"}\n{"concept": "   "}\n', "line 2: empty concept"),
    ],
)
def test_malformed_vocabularies_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(VocabularyError, match=message) as error:
        load_vocabulary(path)
    assert name in str(error.value)


def test_non_utf8_line_is_named(tmp_path):
    path = tmp_path / "v.txt"
    path.write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(VocabularyError, match=r"line 2: not UTF-8"):
        load_vocabulary(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(VocabularyError, match=r"nope.txt: cannot read"):
        load_vocabulary(tmp_path / "nope.txt")


def test_constructing_an_inconsistent_vocabulary_is_refused():
    with pytest.raises(VocabularyError, match=r"no concepts"):
        Vocabulary((), (), 0)
    with pytest.raises(VocabularyError, match=r"not normalised"):
        Vocabulary((" a",), (0,), 1)
    with pytest.raises(VocabularyError, match=r"appears at ids 0 and 1"):
        Vocabulary(("a", "a"), (0, 1), 2)
