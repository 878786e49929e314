"""Embedding matrices on disk: .npy, .safetensors, embedding directories, and their errors."""

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from ov_concepts.embeddings import EmbeddingMatrix, normalise_rows
from ov_concepts.errors import EmbeddingError, ManifestError


def test_npy_is_read_in_row_ranges_as_float32(tmp_path):
    data = np.arange(30, dtype=np.float16).reshape(10, 3)
    np.save(tmp_path / "e.npy", data)
    matrix = EmbeddingMatrix(tmp_path / "e.npy")
    assert (matrix.rows, matrix.dim) == (10, 3)
    block = matrix.read(2, 5)
    assert block.dtype == np.float32
    assert block.flags.c_contiguous
    assert block.flags.writeable
    np.testing.assert_array_equal(block, data[2:5].astype(np.float32))
    starts = [first for first, _ in matrix.blocks(4)]
    assert starts == [0, 4, 8]
    assert np.concatenate([rows for _, rows in matrix.blocks(4)]).shape == (10, 3)


def test_safetensors_bf16_tensor_is_chosen_by_name(tmp_path):
    from safetensors.torch import save_file as save_torch

    data = torch.randn(6, 4)
    save_torch(
        {"img": data.to(torch.bfloat16), "other": torch.zeros(2)}, tmp_path / "e.safetensors"
    )
    matrix = EmbeddingMatrix(tmp_path / "e.safetensors", tensor="img")
    assert matrix.name.endswith("e.safetensors:img")
    np.testing.assert_array_equal(matrix.read(1, 4), data[1:4].to(torch.bfloat16).float().numpy())
    with pytest.raises(EmbeddingError, match=r"holds 2 tensors"):
        EmbeddingMatrix(tmp_path / "e.safetensors")
    with pytest.raises(EmbeddingError, match=r"no tensor 'x'"):
        EmbeddingMatrix(tmp_path / "e.safetensors", tensor="x")
    with pytest.raises(EmbeddingError, match=r"expected a 2-D tensor"):
        EmbeddingMatrix(tmp_path / "e.safetensors", tensor="other")


@pytest.mark.parametrize(
    ("writer", "message"),
    [
        (lambda p: np.save(p / "e.npy", np.zeros((3, 2, 2), np.float32)), "2-D array"),
        (lambda p: np.save(p / "e.npy", np.zeros((3, 2), np.int64)), "dtype int64"),
        (lambda p: np.save(p / "e.npy", np.zeros((0, 4), np.float32)), "empty embedding"),
        (lambda p: (p / "e.npy").write_bytes(b"not numpy"), "not a readable .npy"),
        (lambda p: np.save(p / "e.npy", np.array([{}], dtype=object)), "not a readable .npy"),
    ],
)
def test_bad_npy_files_are_refused_with_the_file_named(tmp_path, writer, message):
    writer(tmp_path)
    with pytest.raises(EmbeddingError, match=message) as error:
        EmbeddingMatrix(tmp_path / "e.npy")
    assert "e.npy" in str(error.value)


def test_bad_paths_and_formats(tmp_path):
    with pytest.raises(EmbeddingError, match=r"no such file"):
        EmbeddingMatrix(tmp_path / "missing.npy")
    (tmp_path / "e.csv").write_text("1,2\n")
    with pytest.raises(EmbeddingError, match=r"unknown embedding format"):
        EmbeddingMatrix(tmp_path / "e.csv")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(EmbeddingError, match=r"not a readable safetensors"):
        EmbeddingMatrix(tmp_path / "bad.safetensors")
    save_file({"a": np.zeros((2, 2), np.int32)}, tmp_path / "int.safetensors")
    with pytest.raises(EmbeddingError, match=r"dtype I32"):
        EmbeddingMatrix(tmp_path / "int.safetensors")
    np.save(tmp_path / "ok.npy", np.ones((2, 2), np.float32))
    with pytest.raises(EmbeddingError, match=r"only to .safetensors"):
        EmbeddingMatrix(tmp_path / "ok.npy", tensor="a")
    with pytest.raises(EmbeddingError, match=r"outside"):
        EmbeddingMatrix(tmp_path / "ok.npy").read(1, 3)
    (tmp_path / "plain").mkdir()
    with pytest.raises(EmbeddingError, match=r"not an ov-concepts embedding directory"):
        EmbeddingMatrix(tmp_path / "plain")


def test_unfinished_embedding_directory_is_refused(tmp_path):
    from ov_concepts.manifest import EmbeddingManifest, write_manifest

    write_manifest(tmp_path, EmbeddingManifest("images", "x", 4, "float32", 10, "d", 5))
    with pytest.raises(ManifestError, match=r"not finished"):
        EmbeddingMatrix(tmp_path)


def test_normalise_rows_names_nan_and_zero_rows():
    rows = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    torch.testing.assert_close(normalise_rows(rows, "x"), torch.tensor([[0.6, 0.8], [1.0, 0.0]]))
    bad = torch.ones(14, 2)
    bad[[3, 5], 1] = float("nan")
    with pytest.raises(EmbeddingError, match=r"images.npy: rows 103, 105 contain NaN or inf"):
        normalise_rows(bad, "images.npy", first_row=100)
    zeros = torch.zeros(13, 2)
    with pytest.raises(EmbeddingError, match=r"rows 0, 1, .*, 9 and 3 more have zero norm"):
        normalise_rows(zeros, "e")
    with pytest.raises(EmbeddingError, match=r"row cat.jpg has zero norm"):
        normalise_rows(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), "e", labels=["dog.jpg", "cat.jpg"])
    with pytest.raises(EmbeddingError, match=r"row 0 contains NaN or inf"):
        normalise_rows(torch.tensor([[float("inf"), 0.0]]), "e")
