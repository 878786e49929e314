"""`PackedDataLoader`: packed shards -> this rank's micro-batches of the global stream.

What a rank yields is fixed by (packed data, seed, token budget, rank, world size) and the
starting state, nothing else (`bin_order.py` has the rules):

1. per epoch a permutation of all bins from (seed, epoch), cut greedily into micro-batches of at
   most `micro_batch_tokens` LLM tokens (a bin is never split); the epochs concatenated form one
   global stream that does not depend on the world size;
2. rank r of W reads global micro-batches p + r, p + r + W, ... from the world's position p, and
   reads only the bins of those micro-batches (random access through the bin table,
   `bin_table.py`);
3. every sub-sample is re-processed with the processor from its shard record (`SampleRecord`:
   conversation, image bytes, truncation length): ids, labels, pixel patches; its token count
   and supervised-target count must equal those `prepare` recorded, or the loader stops naming
   the bin and sample (a processor with other image settings would overfill bins; a wrong
   supervised count would mis-normalise the loss);
4. all samples of a micro-batch concatenated into one `ov_model.PackedBatch` (`cu_seqlens`
   separates them; no padding tokens) with its host metadata (positions, supervised rows, image
   placement for the model's image token and merge size), computed here in the worker so the
   forward reads nothing back from the device; and, when no sample of the row has an image, a
   padding sample with one tiny zero image appended (one image token over one merge x merge
   block of zero patches, label -100: the loss and the supervised count are unchanged). Under
   data parallelism every rank then runs the vision tower on every micro-batch, so the ranks'
   collectives stay in the same order; `pad_imageless_rows=False` turns it off.

Supervised targets before building: `upcoming_supervised_targets(n)` reads the next n
micro-batches' counts from the bin table's `supervised_targets` column (written by `prepare`),
so a trainer normalises a step's loss without holding its micro-batches.

State and resume: the state is the *world's* position in the global stream, (epoch, index of the
next round's first micro-batch), with the seed, budget, bin count and data fingerprint it must
be resumed with. After every micro-batch a rank yields, the world's position advances by W; all
ranks that yielded the same number of micro-batches (the trainer's steps guarantee it) hold the
same state. A loader given that state at any world size W' continues at the same global
micro-batch: its rank r' reads p + r'. So a run saved on N ranks resumes on M ranks exactly.

Iteration (the `ov_train.source.MicroBatchSource` contract): `iter(loader)` yields this rank's
micro-batches of one epoch, the epoch of its next micro-batch, from the current position, then
ends; the next `iter(loader)` is the rank's share of the next epoch. Around an epoch's end a
rank's share may be a few micro-batches shorter or longer than another's; `StepBatches` simply
continues into the next epoch, so no rank ever waits.

Workers and throughput: with `num_workers = K` (the recipe's default is 2), this rank's
micro-batch j (counted from where the pipeline started) is built by worker j mod K, and torch's
DataLoader returns the workers' outputs in order, so the stream is identical for every K (tested
for 0, 1, 2). The pipeline is one DataLoader iterator over this rank's endless stream, started at
the first `iter()` and kept across epochs: workers stay alive and keep prefetching through an
epoch's end (this is what `persistent_workers` would give, without restarting workers at each
epoch); `load_state_dict` restarts it at the new position. Each worker holds at most
`prefetch_factor` built micro-batches; with `pin_memory` (default: when CUDA is available) a
micro-batch's tensors are copied to page-locked memory in a background thread so the copy to the
GPU can be asynchronous. The loader counts what it has *yielded*, not what workers prefetched.
One iteration at a time: two live iterators of the same loader share one pipeline.

Workers are forked processes by default; the processor is not picklable as such (its chat
template holds compiled jinja2 code), so for other start methods (`multiprocessing_context=
"spawn"`) it travels as its saved files and is loaded again in each worker.
"""

import dataclasses
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ov_model.errors import InputError
from ov_model.packing import IGNORE_INDEX, PackedBatch, pad_row
from ov_model.processor import OVProcessor, ProcessedSample
from ov_model.processor_errors import SampleError
from ov_packing.shards import PackedBin, PackedSample
from ov_train.data.bin_order import EpochPlans, StreamPosition
from ov_train.data.bin_table import SUPERVISED_TARGETS, BinTable, load_bin_table, read_bin
from ov_train.data.errors import LoaderError
from ov_train.data.images import decode_image
from ov_train.data.sample_record import RECORD_EXT, SampleRecord

STATE_VERSION = 2


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch: whole bins concatenated, and where it sits in the global stream."""

    batch: PackedBatch
    num_bins: int
    num_samples: int
    """Samples of the bins (the padding sample not counted)."""
    num_tokens: int
    """Tokens of the packed row (the padding sample's included)."""
    num_supervised: int
    """Labels that are not -100, summed over the samples (`ProcessedSample.num_supervised`)."""
    supervised_targets: int
    """Supervised next-token targets (what the loss sums over; `source.supervised_targets`)."""
    padded: bool
    """Whether a padding sample with an image was appended (the bins had no image)."""
    epoch: int
    index: int
    """Its index among the epoch's global micro-batches."""
    bins: tuple[int, ...]
    """Indices of its bins in the packed directory, in order."""

    def pin_memory(self) -> "MicroBatch":
        """The same micro-batch with its tensors in page-locked memory (torch's DataLoader calls
        this in its pinning thread; `PackedBatch.pin_memory` says which tensors)."""
        return dataclasses.replace(self, batch=self.batch.pin_memory())


@dataclass(frozen=True)
class PaddingSpec:
    """What a padding sample needs from the model (`ov_model.packing.pad_row`): the image
    placeholder and pad tokens, the patch row width and the merge size (one merge x merge patch
    block = one LLM token). The image token and merge size also let `PackedBatch.from_samples`
    place the images on the host."""

    image_token_id: int
    pad_token_id: int
    patch_dim: int
    merge_size: int

    @classmethod
    def of(cls, processor: OVProcessor) -> "PaddingSpec":
        """The values of the model `processor` belongs to."""
        images = processor.image_processor
        return cls(
            image_token_id=processor.image_token_id,
            pad_token_id=processor.tokenizer.special.endoftext,
            patch_dim=3 * images.patch_size**2,
            merge_size=images.merge_size,
        )


class PackedDataLoader:
    """Streams this rank's micro-batches from an ov_packing shard directory (module docstring).

    `shards_dir`: the `shards/` folder `prepare` wrote; `processor`: the one it measured with;
    `micro_batch_tokens`: the token budget of a micro-batch; `seed`: the data order's seed;
    `rank`/`world_size`: this process's share, plain integers (nothing distributed is imported
    here); `num_workers`: DataLoader worker processes (0: build in this process);
    `prefetch_factor`: micro-batches each worker builds ahead; `pin_memory`: page-locked output
    (None: when CUDA is available); `pad_imageless_rows`: append a padding sample with one image
    to rows without images; `pad_multiple`: pad every row to a multiple of this many tokens
    (sequence / context parallelism split rows evenly); `pad_length`: pad every row to exactly
    this many tokens (pipeline parallelism's static shapes; a longer row is an error naming its
    bins); `multiprocessing_context` goes to the DataLoader.
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
        pin_memory: bool | None = None,
        pad_imageless_rows: bool = True,
        pad_multiple: int = 1,
        pad_length: int | None = None,
        multiprocessing_context: str | None = None,
    ) -> None:
        for name, value, minimum in (
            ("micro_batch_tokens", micro_batch_tokens, 1),
            ("seed", seed, 0),
            ("world_size", world_size, 1),
            ("rank", rank, 0),
            ("num_workers", num_workers, 0),
            ("prefetch_factor", prefetch_factor, 1),
            ("pad_multiple", pad_multiple, 1),
            ("pad_length", 1 if pad_length is None else pad_length, 1),
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
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.image_spec = PaddingSpec.of(processor)
        self.pad_imageless_rows = pad_imageless_rows
        self.pad_multiple = pad_multiple
        self.pad_length = pad_length
        self.multiprocessing_context = multiprocessing_context
        self.table = load_bin_table(shards_dir)
        if self.table.num_bins == 0:
            raise LoaderError(f"{shards_dir}: the packed directory holds no bin")
        self.plans = EpochPlans(self.table.tokens, seed, micro_batch_tokens)
        self._world = StreamPosition(0, 0)
        self._pipeline: Iterator[MicroBatch] | None = None

    @property
    def num_bins(self) -> int:
        """Bins in the packed directory (all ranks)."""
        return self.table.num_bins

    def micro_batches_in_epoch(self, epoch: int) -> int:
        """Global micro-batches of `epoch` (all ranks together)."""
        return len(self.plans[epoch])

    def next_position(self) -> StreamPosition:
        """Where this rank's next micro-batch lies in the global stream."""
        return self.plans.advance(self._world, self.rank)

    def __iter__(self) -> Iterator[MicroBatch]:
        """This rank's share of one epoch from the current position (module docstring)."""
        epoch = self.next_position().epoch
        while (position := self.next_position()).epoch == epoch:
            try:
                micro_batch = next(self._batches())
            except BaseException:
                self.close()  # a failed pipeline is not resumed: the next iter() restarts it
                raise
            if (micro_batch.epoch, micro_batch.index) != (position.epoch, position.index):
                raise LoaderError(  # a bug, never data: the pipeline lost its place
                    f"the pipeline yielded micro-batch {micro_batch.index} of epoch "
                    f"{micro_batch.epoch} where {position} was due"
                )
            self._world = self.plans.advance(self._world, self.world_size)
            yield micro_batch

    def upcoming_supervised_targets(self, count: int) -> list[int]:
        """Supervised next-token targets of this rank's next `count` micro-batches, across epoch
        ends, from the bin table (nothing is read or built)."""
        column = self.table.columns.get(SUPERVISED_TARGETS)
        if column is None:
            raise LoaderError(
                f"{self.table.shards_dir}: the bin table has no {SUPERVISED_TARGETS!r} column "
                "(shards packed by an older `ov-train prepare`, or by `ov-pack write` alone), so "
                "a step's supervised targets cannot be known before building it; run "
                "`ov-train prepare` again"
            )
        stream = self.plans.rank_positions(self._world, self.rank, self.world_size)
        positions = islice(stream, count)
        return [int(column[self.plans[p.epoch].bins(p.index)].sum()) for p in positions]

    def state_dict(self) -> dict[str, Any]:
        """The world's position in the global stream, and what it must be resumed with."""
        return {
            "version": STATE_VERSION,
            "epoch": self._world.epoch,
            "index": self._world.index,
            "seed": self.seed,
            "micro_batch_tokens": self.micro_batch_tokens,
            "num_bins": self.table.num_bins,
            "data_fingerprint": self.table.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (from `state_dict()` of a loader over the same data, seed and
        budget, at any world size); LoaderError naming the mismatch otherwise."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise LoaderError(
                f"not a version-{STATE_VERSION} PackedDataLoader state (version 1 states held a "
                f"per-rank position and cannot be resumed by the global stream): {state!r}"
            )
        expected = self.state_dict()
        for name in ("seed", "micro_batch_tokens", "num_bins", "data_fingerprint"):
            if state.get(name) != expected[name]:
                raise LoaderError(
                    f"loader state has {name}={state.get(name)!r}, this loader has "
                    f"{expected[name]!r}; a state only resumes the same data order"
                )
        epoch, index = state.get("epoch"), state.get("index")
        if not (isinstance(epoch, int) and epoch >= 0):
            raise LoaderError(f"loader state epoch must be an integer >= 0, got {epoch!r}")
        if not (isinstance(index, int) and 0 <= index < len(self.plans[epoch])):
            raise LoaderError(
                f"loader state index {index!r} is outside epoch {epoch}'s "
                f"{len(self.plans[epoch])} micro-batches"
            )
        self.close()
        self._world = StreamPosition(epoch, index)

    def close(self) -> None:
        """Stop the worker processes (a later `iter()` starts them again where the state is)."""
        pipeline, self._pipeline = self._pipeline, None
        shutdown = getattr(pipeline, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def _batches(self) -> Iterator[MicroBatch]:
        if self._pipeline is None:
            stream = _RankStream(self, self._world)
            if self.num_workers == 0 and not self.pin_memory:
                self._pipeline = iter(stream)
            else:
                self._pipeline = iter(
                    DataLoader(
                        stream,
                        batch_size=None,
                        num_workers=self.num_workers,
                        collate_fn=_unchanged,
                        pin_memory=self.pin_memory,
                        prefetch_factor=self.prefetch_factor if self.num_workers else None,
                        multiprocessing_context=(
                            self.multiprocessing_context if self.num_workers else None
                        ),
                    )
                )
        return self._pipeline


def _unchanged(item: MicroBatch) -> MicroBatch:
    return item


class _RankStream(IterableDataset):
    """This rank's micro-batches from world position `world` on, endlessly; worker k of K builds
    those numbered j = k mod K."""

    def __init__(self, loader: PackedDataLoader, world: StreamPosition) -> None:
        super().__init__()
        self.table: BinTable = loader.table
        self.processor = loader.processor
        self.budget = loader.micro_batch_tokens
        self.seed = loader.seed
        self.rank = loader.rank
        self.world_size = loader.world_size
        self.image_spec = loader.image_spec
        self.pad_imageless_rows = loader.pad_imageless_rows
        self.pad_multiple = loader.pad_multiple
        self.pad_length = loader.pad_length
        self.world = world

    def __iter__(self) -> Iterator[MicroBatch]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        plans = EpochPlans(self.table.tokens, self.seed, self.budget)
        positions = plans.rank_positions(self.world, self.rank, self.world_size)
        for number, position in enumerate(positions):
            if number % workers == worker:
                bins = plans[position.epoch].bins(position.index)
                yield self._build(position, [int(index) for index in bins])

    def _build(self, position: StreamPosition, bins: list[int]) -> MicroBatch:
        samples: list[ProcessedSample] = []
        for index in bins:
            packed = read_bin(self.table, index)
            for number, sample in enumerate(packed.samples):
                samples.append(self._process(packed, number, sample))
        spec = self.image_spec
        packed_row = PackedBatch.from_samples(
            samples, image_token_id=spec.image_token_id, merge_size=spec.merge_size
        )
        try:  # a padding sample: one zero image when the row has none, pad tokens
            batch = pad_row(
                packed_row,
                image_token_id=spec.image_token_id,
                pad_token_id=spec.pad_token_id,
                patch_dim=spec.patch_dim,
                merge_size=spec.merge_size,
                ensure_image=self.pad_imageless_rows,
                multiple_of=self.pad_multiple,
                length=self.pad_length,
            )
        except InputError as error:
            raise LoaderError(f"{self.table.shards_dir}: bins {bins}: {error}") from None
        return MicroBatch(
            batch=batch,
            num_bins=len(bins),
            num_samples=len(samples),
            num_tokens=int(batch.input_ids.shape[1]),
            num_supervised=sum(sample.num_supervised for sample in samples),
            supervised_targets=sum(_targets(sample) for sample in samples),
            padded=batch is not packed_row,
            epoch=position.epoch,
            index=position.index,
            bins=tuple(bins),
        )

    def _process(self, packed: PackedBin, number: int, sample: PackedSample) -> ProcessedSample:
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
        recorded = self.table.sample_columns.get(SUPERVISED_TARGETS)
        if recorded is not None and self.table.first_sample is not None:
            expected = int(recorded[int(self.table.first_sample[packed.index]) + number])
            if _targets(processed) != expected:
                raise LoaderError(
                    f"{where}: has {_targets(processed)} supervised targets, prepare recorded "
                    f"{expected}; the processor or its chat template differs from prepare's, or "
                    "the template makes a sample's first token supervised"
                )
        return processed

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["processor"] = _processor_files(self.processor)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["processor"] = _load_processor(state["processor"])
        self.__dict__.update(state)


def _targets(sample: ProcessedSample) -> int:
    """Supervised next-token targets of one sample: supervised labels but the first token's."""
    return int((sample.labels.reshape(-1)[1:] != IGNORE_INDEX).sum())


def _processor_files(processor: OVProcessor) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory(prefix="ov-train-processor-") as folder:
        processor.save_pretrained(folder)
        return {path.name: path.read_bytes() for path in Path(folder).iterdir() if path.is_file()}


def _load_processor(files: dict[str, bytes]) -> OVProcessor:
    with tempfile.TemporaryDirectory(prefix="ov-train-processor-") as folder:
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        return OVProcessor.from_pretrained(folder)
