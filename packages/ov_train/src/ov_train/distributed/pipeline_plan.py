"""Which decoder layers each pipeline stage runs, which stages each rank holds, and what a
schedule needs of the micro-batch count: plain arithmetic, checked before anything is built.

Stages: `parallel.pipeline_stages` = pp x pp_stages_per_rank virtual stages, in model order.
Stage 0 also runs the ViT, the projector and the token embedding; the last stage the final norm,
the output head and the loss. `parallel.pp_layers` gives each stage's decoder-layer count
(uneven splits balance a heavy ViT on stage 0 or the head on the last); empty means as even as
possible, the remainder going to the stages after the first (stage 0 carries the ViT). A stage
between the first and the last must hold a layer: with none it would only pass its input on.

Ranks: the looped schedules (1F1B, Interleaved1F1B, InterleavedZeroBubble) give pipeline rank r
the stages r, r + pp, r + 2 pp, ...; the V schedule (ZBVZeroBubble) gives it r and 2 pp - 1 - r,
so rank 0 holds both the first and the last stage and the turn at the bottom of the V stays on
one rank.

Micro-batches: a step's micro-batches (the data-parallel rank's share of the global batch) are
the pipeline's micro-batches. 1F1B needs at least as many as stages, the V schedule 2 pp - 1;
the interleaved schedules split them into rounds of about pp and need a whole number of rounds
(torch's rules, checked here with a message that says what to change).
"""

from dataclasses import dataclass

from ov_model.config import LlavaOVConfig
from ov_train.config import MULTI_STAGE_SCHEDULES, ParallelConfig
from ov_train.errors import RecipeError

V_SCHEDULES = ("ZBVZeroBubble",)


@dataclass(frozen=True)
class StagePlan:
    """What one virtual stage runs."""

    index: int
    count: int
    """Stages of the whole pipeline."""
    layers: range
    """Indices of its decoder layers in the full model."""

    @property
    def is_first(self) -> bool:
        """Runs the ViT, projector and embeddings."""
        return self.index == 0

    @property
    def is_last(self) -> bool:
        """Runs the final norm, the head and the loss."""
        return self.index == self.count - 1


def stage_layers(parallel: ParallelConfig, num_layers: int) -> list[range]:
    """The decoder layers of every stage, in order (see the module docstring); RecipeError when
    `pp_layers` does not fit the model or a middle stage would be empty."""
    stages = parallel.pipeline_stages
    counts = list(parallel.pp_layers)
    if counts:
        if len(counts) != stages:
            raise RecipeError(
                f"parallel.pp_layers gives {len(counts)} stages, the pipeline has {stages} "
                f"(pp {parallel.pp} x pp_stages_per_rank {parallel.pp_stages_per_rank})"
            )
        if sum(counts) != num_layers:
            raise RecipeError(
                f"parallel.pp_layers {counts} sum to {sum(counts)} decoder layers, but the model "
                f"has {num_layers}"
            )
    else:
        if num_layers < stages:
            raise RecipeError(
                f"parallel: {stages} pipeline stages for a model of {num_layers} decoder layers; "
                "lower pp or pp_stages_per_rank"
            )
        base, extra = divmod(num_layers, stages)
        counts = [base + (1 if 0 < index <= extra else 0) for index in range(stages)]
    empty = [index for index in range(1, stages - 1) if counts[index] == 0]
    if empty:
        raise RecipeError(
            f"parallel.pp_layers {counts}: stages {empty} hold no decoder layer; only the first "
            "and the last stage may (they run the ViT, or the head and loss)"
        )
    ranges, start = [], 0
    for count in counts:
        ranges.append(range(start, start + count))
        start += count
    return ranges


def rank_stages(parallel: ParallelConfig, pp_rank: int) -> list[int]:
    """The virtual stages pipeline rank `pp_rank` holds, in order of model position."""
    pp, per_rank = parallel.pp, parallel.pp_stages_per_rank
    if parallel.pp_schedule in V_SCHEDULES:
        return [pp_rank, 2 * pp - 1 - pp_rank]
    return [pp_rank + k * pp for k in range(per_rank)]


def stage_plans(parallel: ParallelConfig, config: LlavaOVConfig, pp_rank: int) -> list[StagePlan]:
    """The stages rank `pp_rank` holds, with their layers; RecipeError for what cannot be split."""
    if parallel.pp_schedule in MULTI_STAGE_SCHEDULES and parallel.pp_stages_per_rank < 2:
        raise RecipeError(
            f"parallel.pp_schedule {parallel.pp_schedule} holds several stages per rank: set "
            "pp_stages_per_rank >= 2 (2 for ZBVZeroBubble)"
        )
    if parallel.pp_schedule in V_SCHEDULES and parallel.pp_stages_per_rank != 2:
        raise RecipeError("parallel.pp_schedule ZBVZeroBubble needs pp_stages_per_rank = 2")
    if parallel.pp_schedule not in MULTI_STAGE_SCHEDULES and parallel.pp_stages_per_rank != 1:
        raise RecipeError(
            f"parallel.pp_schedule {parallel.pp_schedule} runs one stage per rank: set "
            "pp_stages_per_rank = 1, or choose Interleaved1F1B"
        )
    if config.text.tie_word_embeddings:
        raise RecipeError(
            "pipeline parallelism with tied word embeddings (text_config.tie_word_embeddings): "
            "the embedding on the first stage and the head on the last would be one tensor on "
            "two ranks; train this model with pp = 1"
        )
    if parallel.cp > 1:
        raise RecipeError(
            "pipeline parallelism with context parallelism (pp > 1 and cp > 1) is not supported "
            "yet; choose one of them"
        )
    layers = stage_layers(parallel, config.text.num_hidden_layers)
    count = len(layers)
    return [StagePlan(i, count, layers[i]) for i in rank_stages(parallel, pp_rank)]


def check_micro_batches(parallel: ParallelConfig, micro_batches: int) -> None:
    """RecipeError unless `micro_batches` per step and pipeline suit the schedule."""
    pp, stages = parallel.pp, parallel.pipeline_stages
    schedule = parallel.pp_schedule
    where = (
        f"parallel.pp_schedule {schedule} with pp {pp} gets {micro_batches} micro-batches per "
        "step (train.grad_accumulation / the data-parallel ranks)"
    )
    if schedule == "1F1B" and micro_batches < stages:
        raise RecipeError(f"{where}; it needs at least {stages}, one per stage")
    if schedule in ("Interleaved1F1B", "InterleavedZeroBubble"):
        rounds = max(1, micro_batches // pp)
        if micro_batches % rounds:
            raise RecipeError(
                f"{where}; it runs them in rounds of about pp and needs a whole number of "
                f"rounds ({rounds}): use a multiple of {pp}"
            )
    if schedule == "ZBVZeroBubble" and micro_batches < 2 * pp - 1:
        raise RecipeError(f"{where}; it needs at least 2 pp - 1 = {2 * pp - 1}")
