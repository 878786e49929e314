"""`PackedDataLoader`: packed shards -> micro-batches of whole bins, deterministic and resumable.

What one iteration yields is fixed by (packed data, seed, rank, world size, token budget) and the
starting state, nothing else (`bin_order.py` has the rules):

1. bins in a per-epoch permutation of (seed, epoch); rank r of W takes permuted positions
   r, r + W, ...;
2. consecutive bins grouped greedily into micro-batches of at most `micro_batch_tokens` LLM
   tokens (at least one bin; a bin is never split, so an oversized bin is a micro-batch alone);
3. every sub-sample re-processed with the processor from its shard record (`SampleRecord`:
   conversation, image bytes, truncation length): ids, labels, pixel patches; the token count
   must equal the one the plan was built with, or the loader stops naming the bin and sample
   (a processor with other image settings than at preparation would overfill bins);
4. all samples of a micro-batch concatenated into one `ov_model.PackedBatch` (`cu_seqlens`
   separates them; no padding).

Workers: with `num_workers = K`, micro-batch j (counted from where the iteration started) is
built by worker j mod K, and torch's DataLoader returns the workers' outputs round-robin, so the
stream is identical for every K (tested for 0, 1, 2). Each worker reads only its own bins, by
random access (`bin_table.py`).

Epochs and resume (the `ov_train.source.MicroBatchSource` contract): each `iter(loader)` yields
the rest of the current epoch and ends; the next `iter(loader)` is the next epoch, in its new
permutation. The loader counts what it has *yielded* (not what workers prefetched):
`state_dict()` is the epoch and the rank-local position of the next bin, (epoch + 1, 0) after an
epoch's last micro-batch. Because micro-batch cuts depend only on the bins from a cut onwards, a
new loader given that state yields exactly the rest of the uninterrupted stream, mid-epoch
included. One iteration at a time: two live iterators of the same loader would interleave their
state updates.

Workers are forked processes by default; the processor is not picklable as such (its chat
template holds compiled jinja2 code), so for other start methods (`multiprocessing_context=
"spawn"`) it travels as its saved files and is loaded again in each worker.
"""

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ov_model.packing import PackedBatch
from ov_model.processor import OVProcessor, ProcessedSample
from ov_model.processor_errors import SampleError
from ov_packing.shards import PackedBin, PackedSample
from ov_train.data.bin_order import bins_per_rank, micro_batch_spans, rank_bins
from ov_train.data.bin_table import BinTable, read_bin, scan_bin_table
from ov_train.data.errors import LoaderError
from ov_train.data.images import decode_image
from ov_train.data.sample_record import RECORD_EXT, SampleRecord

STATE_VERSION = 1


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch: whole bins concatenated, and where it sits in the data order."""

    batch: PackedBatch
    num_bins: int
    num_samples: int
    num_tokens: int
    num_supervised: int
    """Labels that are not -100, summed over the samples (`ProcessedSample.num_supervised`)."""
    epoch: int
    position: int
    """Rank-local position of its first bin in the epoch's order."""
    bins: tuple[int, ...]
    """Indices of its bins in the packed directory, in order."""


class PackedDataLoader:
    """Streams micro-batches from an ov_packing shard directory (see the module docstring).

    `shards_dir`: the `shards/` folder `prepare` wrote; `processor`: the one it measured with;
    `micro_batch_tokens`: the token budget of a micro-batch; `seed`: the data order's seed;
    `rank`/`world_size`: this process's share, plain integers (nothing distributed is imported
    here); `num_workers`: torch DataLoader worker processes (0: build in this process);
    `prefetch_factor` and `multiprocessing_context` go to the DataLoader.
    """

    def __init__(
        self,
        shards_dir: str | Path,
        processor: OVProcessor,
        *,
        micro_batch_tokens: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        multiprocessing_context: str | None = None,
    ) -> None:
        for name, value, minimum in (
            ("micro_batch_tokens", micro_batch_tokens, 1),
            ("seed", seed, 0),
            ("world_size", world_size, 1),
            ("rank", rank, 0),
            ("num_workers", num_workers, 0),
            ("prefetch_factor", prefetch_factor, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise LoaderError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if rank >= world_size:
            raise LoaderError(f"rank {rank} is not below world_size {world_size}")
        self.processor = processor
        self.micro_batch_tokens = micro_batch_tokens
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self.table = scan_bin_table(shards_dir)
        if bins_per_rank(self.table.num_bins, rank, world_size) == 0:
            raise LoaderError(
                f"{shards_dir}: {self.table.num_bins} bins cannot feed {world_size} ranks (rank "
                f"{rank} would get none); pack smaller bins or use fewer ranks"
            )
        self._epoch = 0
        self._position = 0

    @property
    def num_bins(self) -> int:
        """Bins in the packed directory (all ranks)."""
        return self.table.num_bins

    @property
    def bins_per_epoch(self) -> int:
        """Bins this rank reads per epoch."""
        return bins_per_rank(self.table.num_bins, self.rank, self.world_size)

    def micro_batches_in_epoch(self, epoch: int) -> int:
        """How many micro-batches this rank yields in `epoch` (from its start)."""
        order = rank_bins(self.table.num_bins, self.seed, epoch, self.rank, self.world_size)
        return sum(1 for _ in micro_batch_spans(self.table.tokens[order], self.micro_batch_tokens))

    def __iter__(self) -> Iterator[MicroBatch]:
        """The rest of the current epoch (see the module docstring)."""
        stream = _MicroBatchStream(self, self._epoch, self._position)
        if self.num_workers == 0:
            batches: Any = iter(stream)
        else:
            batches = iter(
                DataLoader(
                    stream,
                    batch_size=None,
                    num_workers=self.num_workers,
                    collate_fn=_unchanged,
                    prefetch_factor=self.prefetch_factor,
                    multiprocessing_context=self.multiprocessing_context,
                )
            )
        for micro_batch in batches:
            end = micro_batch.position + micro_batch.num_bins
            if end == self.bins_per_epoch:
                self._epoch, self._position = micro_batch.epoch + 1, 0
            else:
                self._epoch, self._position = micro_batch.epoch, end
            yield micro_batch

    def state_dict(self) -> dict[str, Any]:
        """Where the next micro-batch starts, and what it must be resumed with."""
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "position": self._position,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_bins": self.table.num_bins,
            "data_fingerprint": self.table.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (from `state_dict()` of a loader over the same data, seed,
        rank and world size); LoaderError naming the mismatch otherwise. The token budget may
        differ: the data order stays the same, only the cuts change."""
        expected = self.state_dict()
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise LoaderError(f"not a version-{STATE_VERSION} PackedDataLoader state: {state!r}")
        for name in ("seed", "rank", "world_size", "num_bins", "data_fingerprint"):
            if state.get(name) != expected[name]:
                raise LoaderError(
                    f"loader state has {name}={state.get(name)!r}, this loader has "
                    f"{expected[name]!r}; a state only resumes the same data order"
                )
        epoch, position = state.get("epoch"), state.get("position")
        if not (isinstance(epoch, int) and epoch >= 0):
            raise LoaderError(f"loader state epoch must be an integer >= 0, got {epoch!r}")
        if not (isinstance(position, int) and 0 <= position < self.bins_per_epoch):
            raise LoaderError(
                f"loader state position {position!r} is outside this rank's "
                f"{self.bins_per_epoch} bins per epoch"
            )
        self._epoch, self._position = epoch, position


def _unchanged(item: MicroBatch) -> MicroBatch:
    return item


class _MicroBatchStream(IterableDataset):
    """The micro-batches of `epoch` from bin `position` on; worker k of K builds those numbered
    j = k mod K."""

    def __init__(self, loader: PackedDataLoader, epoch: int, position: int) -> None:
        super().__init__()
        self.table: BinTable = loader.table
        self.processor = loader.processor
        self.budget = loader.micro_batch_tokens
        self.seed = loader.seed
        self.rank = loader.rank
        self.world_size = loader.world_size
        self.epoch = epoch
        self.position = position

    def __iter__(self) -> Iterator[MicroBatch]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        order = rank_bins(self.table.num_bins, self.seed, self.epoch, self.rank, self.world_size)
        spans = micro_batch_spans(self.table.tokens[order], self.budget, self.position)
        for number, (begin, end) in enumerate(spans):
            if number % workers == worker:
                yield self._build(self.epoch, begin, [int(index) for index in order[begin:end]])

    def _build(self, epoch: int, position: int, bins: list[int]) -> MicroBatch:
        samples: list[ProcessedSample] = []
        for index in bins:
            packed = read_bin(self.table, index)
            samples.extend(self._process(packed, sample) for sample in packed.samples)
        batch = PackedBatch.from_samples(samples)
        return MicroBatch(
            batch=batch,
            num_bins=len(bins),
            num_samples=len(samples),
            num_tokens=int(batch.input_ids.shape[1]),
            num_supervised=sum(sample.num_supervised for sample in samples),
            epoch=epoch,
            position=position,
            bins=tuple(bins),
        )

    def _process(self, packed: PackedBin, sample: PackedSample) -> ProcessedSample:
        where = f"{self.table.shards_dir}: bin {packed.index}, sample {sample.id!r}"
        try:
            record = msgspec.json.decode(sample.files[RECORD_EXT], type=SampleRecord)
        except (KeyError, msgspec.DecodeError, msgspec.ValidationError) as error:
            raise LoaderError(f"{where}: no readable sample record ({error})") from None
        where = f"{where} (id {record.id!r}, {record.source})"
        limit = self.processor.image_processor.max_image_pixels
        images = []
        for ext in record.images:
            if ext not in sample.files:
                raise LoaderError(f"{where}: image file {ext!r} is not in the bin")
            try:
                images.append(decode_image(sample.files[ext], max_pixels=limit))
            except ValueError as error:
                raise LoaderError(f"{where}: image {ext!r}: {error}") from None
        try:
            processed = self.processor(
                record.conversation, images, record.max_length, sample_id=record.id
            )
        except SampleError as error:
            raise LoaderError(f"{where}: {error}") from None
        if processed.input_ids.numel() != sample.tokens:
            raise LoaderError(
                f"{where}: processed to {processed.input_ids.numel()} tokens, but it was packed "
                f"as {sample.tokens}; the processor differs from the one used by prepare (image "
                "settings, tokenizer or template)"
            )
        return processed

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["processor"] = _processor_files(self.processor)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["processor"] = _load_processor(state["processor"])
        self.__dict__.update(state)


def _processor_files(processor: OVProcessor) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory(prefix="ov-train-processor-") as folder:
        processor.save_pretrained(folder)
        return {path.name: path.read_bytes() for path in Path(folder).iterdir() if path.is_file()}


def _load_processor(files: dict[str, bytes]) -> OVProcessor:
    with tempfile.TemporaryDirectory(prefix="ov-train-processor-") as folder:
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        return OVProcessor.from_pretrained(folder)
