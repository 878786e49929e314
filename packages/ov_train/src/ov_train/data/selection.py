"""The selection hook of `prepare`: which measured samples to pack, and how many times each.

Between measuring and packing, `prepare` can hand the accepted samples (their manifest rows, in
manifest order) to a `SelectFn`. It returns a `Selection`: the ids to pack, an id given k times is
packed k times (oversampling), an id not given is left out (`not_selected` in the manifest), and a
summary recorded in the report. That is all concept balancing needs (ov_concepts draws a
resampled list of images, with or without replacement), and any other curation (a quality filter,
a dedup list, a per-source mixture) fits the same hook.

The packing order does not depend on the order of the returned ids: items are packed in manifest
order, each repeated its number of times, so the same selection always gives the same plan. Ids
that are not among the accepted samples (rejected ones, typos) are counted in the report, not an
error: a selection is often computed on the raw corpus before bad samples are known.

Three selectors are provided:
- `ids_file_selector(path)`: one id per line (blank lines skipped), e.g. the output of any
  external tool;
- `balanced_dir_selector(balanced, keys)`: the result of `ov-concepts balance` (its
  `selected.npy` image indices and `stats.json`), where image row i is the sample whose id is
  line i of the text file `keys`;
- `concept_balance_selector(assignments, keys, config)`: the same, running
  `ov_concepts.balance.balance` in-process on a finished assignment directory.
"""

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from ov_train.data.errors import PrepareError
from ov_train.data.manifest import ManifestRow


@dataclass(frozen=True)
class Selection:
    """Sample ids to pack (repeats = packed several times) and a summary for the report."""

    ids: Sequence[str]
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.ids, str):
            raise PrepareError("Selection.ids must be a sequence of ids, not one string")
        for position, sample_id in enumerate(self.ids):
            if not isinstance(sample_id, str):
                raise PrepareError(
                    f"Selection.ids[{position}] is a {type(sample_id).__name__}, not an id string"
                )


SelectFn = Callable[[Sequence[ManifestRow]], Selection]
"""Accepted samples (manifest order) -> the Selection to pack."""


def ids_file_selector(path: str | Path) -> SelectFn:
    """A selector packing the ids listed in `path`, one per line, as often as listed."""
    path = Path(path)

    def select(rows: Sequence[ManifestRow]) -> Selection:
        del rows
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PrepareError(f"{path}: selection file not found") from None
        except UnicodeDecodeError as error:
            raise PrepareError(f"{path}: selection file is not UTF-8 ({error})") from None
        ids = [line.strip() for line in text.splitlines() if line.strip()]
        return Selection(ids, {"method": "ids_file", "file": str(path), "listed": len(ids)})

    return select


def balanced_dir_selector(balanced: str | Path, keys: str | Path) -> SelectFn:
    """A selector packing what `ov-concepts balance` drew into `balanced` (`selected.npy`,
    `stats.json`); image row i is the sample whose id is line i of `keys`."""
    from ov_concepts.balance import SELECTED_NAME, STATS_NAME, load_stats

    balanced, keys = Path(balanced), Path(keys)

    def select(rows: Sequence[ManifestRow]) -> Selection:
        del rows
        stats = load_stats(balanced / STATS_NAME)
        names = _read_keys(keys, stats.images, balanced)
        try:
            indices = np.load(balanced / SELECTED_NAME, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise PrepareError(f"{balanced / SELECTED_NAME}: unreadable ({error})") from None
        return Selection(
            _ids_of(indices, names, balanced / SELECTED_NAME),
            _balance_summary(stats, str(balanced), keys),
        )

    return select


def concept_balance_selector(
    assignments: str | Path,
    keys: str | Path,
    config: Any,
    *,
    work_dir: str | Path | None = None,
) -> SelectFn:
    """A selector running ov_concepts' balancing (`config`: an `ov_concepts.balance.
    BalanceConfig`) on the assignment directory `assignments`, whose row i is the sample whose
    id is line i of the text file `keys`. Balance outputs go to `work_dir` (default: a temporary
    folder, removed afterwards)."""
    from ov_concepts.assign import Assignments
    from ov_concepts.balance import SELECTED_NAME, balance

    assignments, keys = Path(assignments), Path(keys)

    def select(rows: Sequence[ManifestRow]) -> Selection:
        del rows
        opened = Assignments.open(assignments)
        names = _read_keys(keys, opened.images, assignments)

        def run(out_dir: Path) -> Selection:
            stats = balance(opened, out_dir, config)
            indices = np.load(out_dir / SELECTED_NAME, allow_pickle=False)
            return Selection(
                _ids_of(indices, names, out_dir / SELECTED_NAME),
                _balance_summary(stats, str(assignments), keys),
            )

        if work_dir is not None:
            return run(Path(work_dir))
        with tempfile.TemporaryDirectory(prefix="ov-train-balance-") as folder:
            return run(Path(folder))

    return select


def _read_keys(keys: Path, rows: int, of: Path) -> list[str]:
    try:
        names = keys.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PrepareError(f"{keys}: keys file of {of} not found") from None
    if len(names) != rows:
        raise PrepareError(f"{keys}: {len(names)} ids for the {rows} image rows of {of}")
    return names


def _ids_of(indices: np.ndarray, names: list[str], where: Path) -> list[str]:
    if indices.ndim != 1 or indices.dtype.kind not in "iu":
        raise PrepareError(f"{where}: expected a 1-D integer array, got {indices.dtype}")
    if indices.size and (indices.min() < 0 or indices.max() >= len(names)):
        raise PrepareError(f"{where}: indices outside 0..{len(names) - 1}")
    return [names[index] for index in indices.tolist()]


def _balance_summary(stats: Any, balanced: str, keys: Path) -> dict[str, Any]:
    return {
        "method": "ov_concepts.balance",
        "from": balanced,
        "keys": str(keys),
        "settings": msgspec.to_builtins(stats.settings),
        "images": stats.images,
        "selected": stats.selected,
        "distinct_selected": stats.distinct_selected,
        "effective_concepts_before": stats.before.effective_concepts,
        "effective_concepts_after": stats.after.effective_concepts,
    }
