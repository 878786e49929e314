"""Reading a benchmark split from a Hugging Face dataset directory, without the `datasets` library.

Benchmarks are published on the Hugging Face Hub as parquet shards in a fixed layout, e.g.
`DocVQA/validation-00000-of-00006.parquet` or `data/test-00000-of-00001.parquet`. A task names
its split with glob patterns relative to the dataset directory (as written by `huggingface-cli
download <repo> --repo-type dataset --local-dir DIR`); the shards are read in sorted name order,
which is the order the Hub's `datasets` loader uses, so sample order (and ids made from it) is
stable.

pyarrow reads only the columns a task asks for, in record batches, so a `--limit 10` run touches
one batch instead of gigabytes of images, and nothing here needs network access or a cache.
Image columns arrive as the Hub's `Image` struct `{"bytes": ..., "path": ...}`; `rows.get_image`
unpacks them.
"""

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ov_eval.errors import DatasetError
from ov_eval.rows import RowLocation

_BATCH_ROWS = 64


def find_split_files(directory: Path, patterns: Sequence[str]) -> list[Path]:
    """The files of the first pattern (relative to `directory`) that matches any, sorted by name."""
    if not directory.is_dir():
        raise DatasetError(f"{directory}: not a directory (expected a downloaded dataset)")
    for pattern in patterns:
        files = sorted(path for path in directory.glob(pattern) if path.is_file())
        if files:
            return files
    raise DatasetError(
        f"{directory}: no file matches {', '.join(patterns)} "
        "(expected the dataset's parquet files in the layout published on the Hugging Face Hub)"
    )


def iter_parquet_rows(
    files: Sequence[Path], columns: Sequence[str], optional_columns: Sequence[str] = ()
) -> Iterator[tuple[dict, RowLocation]]:
    """Yield (row as a dict, its location) for every row of `files`, in order.

    Every column in `columns` must exist in every file; `optional_columns` are read when present.
    Stop iterating early to stop reading.
    """
    for path in files:
        try:
            parquet = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as error:
            raise DatasetError(f"{path}: not a readable parquet file ({error})") from error
        present = set(parquet.schema_arrow.names)
        missing = [column for column in columns if column not in present]
        if missing:
            raise DatasetError(
                f"{path}: missing column(s) {', '.join(missing)}; "
                f"the file has {', '.join(parquet.schema_arrow.names)}"
            )
        wanted = list(columns) + [column for column in optional_columns if column in present]
        row = 0
        try:
            for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=wanted):
                for record in batch.to_pylist():
                    yield record, RowLocation(path, row)
                    row += 1
        except (OSError, pa.ArrowException) as error:
            raise DatasetError(f"{path}: unreadable after row {row} ({error})") from error
