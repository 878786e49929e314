"""OCR labels: class = K + token id (tokenizer.json or UTF-8 bytes), duplicates removed, bad
texts counted."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from rice_vit.errors import ConfigError
from rice_vit.pretrain.ocr_labels import OcrLabeler

VOCAB = {"[UNK]": 0, "[CLS]": 1, "open": 2, "shop": 3, "now": 4, "café": 5}


@pytest.fixture
def tokenizer_json(tmp_path):
    """A word-level tokenizer.json that prepends [CLS] as a special token."""
    tokenizer = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", special_tokens=[("[CLS]", 1)]
    )
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def test_utf8_bytes_without_a_tokenizer():
    labeler = OcrLabeler(None, offset=100)
    assert labeler.vocab_size == 256
    assert labeler.num_classes == 356
    assert labeler("OPEN") == (100 + ord("E"), 100 + ord("N"), 100 + ord("O"), 100 + ord("P"))
    assert labeler("aaa") == (100 + 97,)  # one positive per distinct token
    assert labeler("é") == (100 + 0xA9, 100 + 0xC3)  # UTF-8 bytes (C3 A9) of a non-ASCII letter
    assert labeler.token_ids("aba") == [97, 98, 97]


def test_tokenizer_json_ids_without_special_tokens(tokenizer_json):
    labeler = OcrLabeler(tokenizer_json, offset=10)
    assert labeler.vocab_size == 6
    assert labeler.num_classes == 16
    assert labeler.token_ids("open shop open") == [2, 3, 2]  # no [CLS]
    assert labeler("open shop open") == (12, 13)
    assert labeler("café now") == (14, 15)
    assert labeler("closed") == (10,)  # unknown word: the tokenizer's [UNK]


def test_bad_texts_are_counted_with_examples():
    labeler = OcrLabeler(None, offset=5)
    labels = labeler.label_texts(
        ["ab", "", "   ", "b"], regions=["img0#0", "img0#1", "img1#0", "x"]
    )
    assert labels.offsets.tolist() == [0, 2, 2, 2, 3]
    assert labels.classes.tolist() == [5 + 97, 5 + 98, 5 + 98]
    assert labels.report.labelled == 2
    assert labels.report.bad == {"empty_text": 2, "no_tokens": 0}
    assert [e["region"] for e in labels.report.examples] == ["img0#1", "img1#0"]
    assert "empty_text  2" in labels.report.format()


def test_text_without_tokens_is_counted(tmp_path):
    tokenizer = Tokenizer(models.WordLevel({"a": 0}, unk_token="a"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("-", behavior="removed")
    path = tmp_path / "t.json"
    tokenizer.save(str(path))
    labels = OcrLabeler(path, offset=0).label_texts(["---", "b"])
    assert labels.report.bad["no_tokens"] == 1
    assert labels.offsets.tolist() == [0, 0, 1]


def test_missing_or_broken_tokenizer_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        OcrLabeler(tmp_path / "missing.json", offset=0)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match=r"broken\.json: cannot be read: not JSON"):
        OcrLabeler(broken, offset=0)
    with pytest.raises(ConfigError, match="offset"):
        OcrLabeler(None, offset=-1)
