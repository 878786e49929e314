"""The encoder protocol and the precomputed-embedding encoder."""

import numpy as np
import pytest

from ov_concepts.embeddings import EmbeddingMatrix
from ov_concepts.encoders import Encoder, PrecomputedEncoder
from ov_concepts.errors import EmbeddingError
from ov_concepts.vocabulary import Vocabulary


@pytest.fixture
def files(tmp_path):
    images = np.arange(40, dtype=np.float32).reshape(10, 4)
    texts = -np.arange(16, dtype=np.float32).reshape(4, 4) - 1
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "texts.npy", texts)
    return EmbeddingMatrix(tmp_path / "images.npy"), EmbeddingMatrix(tmp_path / "texts.npy")


def test_precomputed_encoder_serves_rows_and_concepts(files):
    images, texts = files
    vocabulary = Vocabulary.from_strings(["dog", "cat", "dog", "sky"])  # entry 2 is a duplicate
    encoder = PrecomputedEncoder(images=images, texts=texts, vocabulary=vocabulary)
    assert isinstance(encoder, Encoder)
    assert encoder.dim == 4
    assert encoder.description.startswith("precomputed:")
    np.testing.assert_array_equal(encoder.encode_images([3, 4, 5]), images.read(3, 6))
    reordered = np.concatenate([images.read(7, 8), images.read(1, 2)])
    np.testing.assert_array_equal(encoder.encode_images([7, 1]), reordered)
    sky_and_dog = encoder.encode_texts(["sky", "dog"])
    np.testing.assert_array_equal(sky_and_dog, np.stack([texts.read(3, 4)[0], texts.read(0, 1)[0]]))
    assert encoder.encode_images([]).shape == (0, 4)


def test_precomputed_encoder_errors(files):
    images, texts = files
    with pytest.raises(EmbeddingError, match=r"needs image or text"):
        PrecomputedEncoder()
    with pytest.raises(EmbeddingError, match=r"need their vocabulary"):
        PrecomputedEncoder(texts=texts)
    with pytest.raises(EmbeddingError, match=r"4 rows but the vocabulary .* has 3 entries"):
        PrecomputedEncoder(texts=texts, vocabulary=Vocabulary.from_strings(["a", "b", "c"]))
    encoder = PrecomputedEncoder(texts=texts, vocabulary=Vocabulary.from_strings(list("abcd")))
    with pytest.raises(EmbeddingError, match=r"concept 'zebra' is not in the vocabulary"):
        encoder.encode_texts(["a", "zebra"])
    with pytest.raises(EmbeddingError, match=r"no image embeddings"):
        encoder.encode_images([0])
    with pytest.raises(EmbeddingError, match=r"rows outside 0..9"):
        PrecomputedEncoder(images=images).encode_images([9, 10])
    with pytest.raises(EmbeddingError, match=r"no concept embeddings"):
        PrecomputedEncoder(images=images).encode_texts(["a"])


def test_image_and_text_files_must_share_a_dimension(tmp_path, files):
    images, _ = files
    np.save(tmp_path / "wide.npy", np.ones((2, 5), np.float32))
    wide = EmbeddingMatrix(tmp_path / "wide.npy")
    with pytest.raises(EmbeddingError, match=r"has 4 dimensions but .*wide.npy has 5"):
        PrecomputedEncoder(
            images=images, texts=wide, vocabulary=Vocabulary.from_strings(["a", "b"])
        )
