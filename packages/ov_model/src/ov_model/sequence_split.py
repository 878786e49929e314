"""The seam for splitting one packed row's decoder sequence over ranks (context parallelism).

A packed row can be longer than one device's activation memory allows. Context parallelism
gives each rank a share of the row's tokens inside the decoder; the model stays single-device
code and asks an installed `SequenceSplit` (set by a trainer on `LlavaOV.sequence_split`) how:

1. the whole row is embedded, image features written in, on every rank (the vision tower sees
   whole images: it runs unsplit);
2. `RowSplit.local` keeps this rank's rows of the embeddings and of the position ids (positions
   stay those of the whole row, restarting at every sample);
3. every decoder layer attends through `RowSplit.attend`: this rank's queries against the keys
   of the whole row, causal within samples by position in the row (the implementation fetches
   the other ranks' keys);
4. the loss sums over `RowSplit.supervised_rows`, the supervised rows this rank holds: each
   rank's `loss_sum` is a partial sum; `num_supervised` stays the row's whole count.

Nothing here imports torch.distributed: implementations live with the trainer.
"""

from typing import Protocol

import torch

from ov_model.packed_metadata import PackedMetadata


class RowSplit(Protocol):
    """One row's split, as this rank holds it."""

    @property
    def supervised_rows(self) -> torch.Tensor:
        """(n,) int64 host indices, into this rank's rows, of the supervised rows it holds."""
        ...

    @property
    def supervised_targets(self) -> torch.Tensor:
        """(n,) int64 host: the next-token target of each of those rows."""
        ...

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a (tokens, ...) tensor of the whole row, differentiably (the
        gradient lands in those rows of `x`)."""
        ...

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention of this rank's q (local tokens, heads, head_dim) against the whole
        row's keys, given this rank's k and v (local tokens, kv_heads, head_dim)."""
        ...


class SequenceSplit(Protocol):
    """Splits each packed row (installed on `LlavaOV.sequence_split`)."""

    def split(self, metadata: PackedMetadata) -> RowSplit:
        """This rank's share of the row `metadata` describes."""
        ...
