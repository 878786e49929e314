"""`ov-concepts balance`: tally, weigh, resample to an exact size, and measure the effect.

Passes over an assignment directory (all streaming in `chunk_rows` rows, memory = vocabulary +
chunk + the output being written):

1. tally concept frequencies (`rules.concept_counts`);
2. (metaclip without a given t) solve the threshold, one pass per bisection step;
3. per-image weights by the chosen rule, written to `weights.npy`;
4. sampling (`sampling`): with replacement a hierarchical multinomial, without replacement
   Pareto πps sampling after solving the inclusion scale; indices written to `selected.npy`;
5. tally the concept frequencies of the selection (with multiplicity).

Outputs: `selected.npy` (int64 image indices, sorted, repeated when drawn several times),
`weights.npy` (float64 per image), `counts_before.npy` / `counts_after.npy` (int64 per concept) and
`stats.json` (settings and the before/after statistics). Same assignments + same config give the
same bytes, whatever `chunk_rows` (a multiple of 4096, so floating-point sums keep their blocks).
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import msgspec
import numpy as np

from ov_concepts import __version__
from ov_concepts.assign import Assignments
from ov_concepts.errors import BalanceError
from ov_concepts.progress import progress_bar
from ov_concepts.rules import (
    RULES,
    Rule,
    concept_counts,
    concept_table,
    expected_metaclip_size,
    image_weights,
    selection_counts,
    solve_metaclip_threshold,
)
from ov_concepts.sampling import (
    REDUCTION_BLOCK,
    inclusion_scale,
    multinomial_sample_into,
    pareto_sample_into,
)
from ov_concepts.statistics import ConceptStats, concept_stats

SELECTED_NAME = "selected.npy"
WEIGHTS_NAME = "weights.npy"
COUNTS_BEFORE_NAME = "counts_before.npy"
COUNTS_AFTER_NAME = "counts_after.npy"
STATS_NAME = "stats.json"


@dataclass(frozen=True, kw_only=True)
class BalanceConfig:
    """How to weigh and resample: rule, temper, target size, seed, replacement."""

    target: int
    seed: int = 0
    rule: Rule = "mean"
    alpha: float = 1.0
    threshold: float | None = None
    replace: bool = False
    chunk_rows: int = 1 << 20

    def __post_init__(self) -> None:
        if self.target < 1:
            raise BalanceError(f"target must be >= 1, got {self.target}")
        if not 0 <= self.seed < 1 << 64:
            raise BalanceError(f"seed must be in [0, 2**64), got {self.seed}")
        if self.rule not in RULES:
            raise BalanceError(f"rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if not (self.alpha >= 0 and np.isfinite(self.alpha)):
            raise BalanceError(f"alpha must be a finite number >= 0, got {self.alpha}")
        if self.threshold is not None:
            if self.rule != "metaclip":
                raise BalanceError("threshold applies only to the metaclip rule")
            if not (self.threshold > 0 and np.isfinite(self.threshold)):
                raise BalanceError(f"threshold must be > 0, got {self.threshold}")
        if self.chunk_rows < 1 or self.chunk_rows % REDUCTION_BLOCK:
            raise BalanceError(
                f"chunk_rows must be a positive multiple of {REDUCTION_BLOCK}, "
                f"got {self.chunk_rows}"
            )


class BalanceSettings(msgspec.Struct, frozen=True):
    """The settings recorded in stats.json."""

    target: int
    seed: int
    rule: str
    alpha: float
    threshold: float | None
    replace: bool


class BalanceStats(msgspec.Struct, frozen=True):
    """stats.json: what was done and the concept statistics before and after."""

    settings: BalanceSettings
    images: int
    images_without_concepts: int
    selected: int
    distinct_selected: int
    inclusion_scale: float | None
    expected_metaclip_size: float | None
    before: ConceptStats
    after: ConceptStats
    assignments: str
    version: str = __version__


def balance(
    assignments: Assignments, out_dir: Path, config: BalanceConfig, *, progress: bool = False
) -> BalanceStats:
    """Resample the images of `assignments` into `out_dir`; returns (and writes) the statistics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids, chunk = assignments.ids, config.chunk_rows
    counts = concept_counts(ids, assignments.concepts, chunk, progress=progress)
    threshold = config.threshold
    if config.rule == "metaclip" and threshold is None:
        threshold = solve_metaclip_threshold(ids, counts, config.target, chunk, progress=progress)
    table = concept_table(counts, config.rule, config.alpha, threshold)
    weights = np.lib.format.open_memmap(
        out_dir / WEIGHTS_NAME, mode="w+", dtype=np.float64, shape=(assignments.images,)
    )
    eligible = without_concepts = 0
    with progress_bar(assignments.images, "weights", progress) as bar:
        for start in range(0, assignments.images, chunk):
            rows = np.asarray(ids[start : start + chunk])
            block = image_weights(rows, table, config.rule)
            weights[start : start + len(block)] = block
            eligible += int(np.count_nonzero(block > 0))
            without_concepts += int(np.count_nonzero((rows < 0).all(axis=1)))
            bar.update(len(block))
    weights.flush()
    if eligible == 0:
        raise BalanceError(f"{assignments.directory}: no image has a concept; nothing to sample")
    if not config.replace and config.target > eligible:
        raise BalanceError(
            f"target {config.target} > {eligible} images with a concept; lower --target or "
            "sample with --replace"
        )
    selected = np.lib.format.open_memmap(
        out_dir / SELECTED_NAME, mode="w+", dtype=np.int64, shape=(config.target,)
    )
    scale = None
    if config.replace:
        multinomial_sample_into(selected, weights, config.seed, progress=progress)
    else:
        scale = inclusion_scale(weights, config.target, progress=progress)
        pareto_sample_into(selected, weights, scale, config.seed, progress=progress)
    selected.flush()
    after = selection_counts(ids, selected, assignments.concepts, chunk, progress=progress)
    distinct = int(np.count_nonzero(np.diff(selected)) + 1)
    np.save(out_dir / COUNTS_BEFORE_NAME, counts)
    np.save(out_dir / COUNTS_AFTER_NAME, after)
    stats = BalanceStats(
        settings=BalanceSettings(**{**_settings(config), "threshold": threshold}),
        images=assignments.images,
        images_without_concepts=without_concepts,
        selected=config.target,
        distinct_selected=distinct,
        inclusion_scale=scale,
        expected_metaclip_size=(
            None if threshold is None else expected_metaclip_size(ids, counts, threshold, chunk)
        ),
        before=concept_stats(counts),
        after=concept_stats(after),
        assignments=str(assignments.directory),
    )
    (out_dir / STATS_NAME).write_bytes(msgspec.json.format(msgspec.json.encode(stats), indent=2))
    return stats


def _settings(config: BalanceConfig) -> dict:
    fields = asdict(config)
    fields.pop("chunk_rows")
    return fields


def load_stats(path: Path) -> BalanceStats:
    """Read a stats.json written by `balance`."""
    try:
        return msgspec.json.decode(Path(path).read_bytes(), type=BalanceStats)
    except FileNotFoundError:
        raise BalanceError(f"{path}: no such file (run `ov-concepts balance` first)") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise BalanceError(f"{path}: not a balance stats file ({error})") from None
