"""The pipeline's stage plan: layer splits, which stages a rank holds, and the recipe errors
raised before anything is built (no processes needed)."""

import dataclasses

import pytest

from ov_model import PRESETS
from ov_train.config import ParallelConfig
from ov_train.distributed.pipeline_plan import (
    check_micro_batches,
    rank_stages,
    stage_layers,
    stage_plans,
)
from ov_train.errors import RecipeError


def parallel(**fields) -> ParallelConfig:
    return ParallelConfig(**fields)


def test_even_split_gives_the_remainder_to_the_stages_after_the_first():
    assert stage_layers(parallel(pp=2), 4) == [range(0, 2), range(2, 4)]
    assert stage_layers(parallel(pp=4), 6) == [range(0, 1), range(1, 3), range(3, 5), range(5, 6)]
    uneven = parallel(pp=2, pp_layers=(1, 3))
    assert stage_layers(uneven, 4) == [range(0, 1), range(1, 4)]
    edges = parallel(
        pp=2, pp_stages_per_rank=2, pp_schedule="Interleaved1F1B", pp_layers=(0, 2, 2, 0)
    )
    assert stage_layers(edges, 4) == [range(0, 0), range(0, 2), range(2, 4), range(4, 4)]


@pytest.mark.parametrize(
    ("fields", "layers", "message"),
    [
        ({"pp": 2, "pp_layers": (1, 2)}, 4, "sum to 3 decoder layers, but the model has 4"),
        ({"pp": 4}, 3, "4 pipeline stages for a model of 3 decoder layers"),
        ({"pp": 3, "pp_layers": (2, 0, 2)}, 4, "stages [1] hold no decoder layer"),
    ],
)
def test_splits_that_do_not_fit_the_model_are_recipe_errors(fields, layers, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        stage_layers(parallel(**fields), layers)


def test_looped_schedules_deal_stages_round_robin_and_the_v_schedule_folds_them():
    looped = parallel(pp=2, pp_stages_per_rank=2, pp_schedule="Interleaved1F1B")
    assert [rank_stages(looped, r) for r in (0, 1)] == [[0, 2], [1, 3]]
    v = parallel(pp=4, pp_stages_per_rank=2, pp_schedule="ZBVZeroBubble")
    assert [rank_stages(v, r) for r in range(4)] == [[0, 7], [1, 6], [2, 5], [3, 4]]
    plans = stage_plans(v, _layers(8), 0)
    assert [(p.index, p.is_first, p.is_last) for p in plans] == [(0, True, False), (7, False, True)]


def _layers(count: int):
    tiny = PRESETS["tiny"]
    return dataclasses.replace(tiny, text=dataclasses.replace(tiny.text, num_hidden_layers=count))


def test_tied_embeddings_and_context_parallel_are_refused():
    tied = dataclasses.replace(
        PRESETS["tiny"], text=dataclasses.replace(PRESETS["tiny"].text, tie_word_embeddings=True)
    )
    with pytest.raises(RecipeError, match="tied word embeddings"):
        stage_plans(parallel(pp=2), tied, 0)
    with pytest.raises(RecipeError, match="context parallelism"):
        stage_plans(parallel(pp=2, cp=2), PRESETS["tiny"], 0)


@pytest.mark.parametrize(
    ("fields", "micro_batches", "message"),
    [
        ({"pp": 4}, 3, "needs at least 4, one per stage"),
        (
            {"pp": 4, "pp_stages_per_rank": 2, "pp_schedule": "Interleaved1F1B"},
            9,
            "use a multiple of 4",
        ),
        (
            {"pp": 2, "pp_stages_per_rank": 2, "pp_schedule": "ZBVZeroBubble"},
            2,
            "at least 2 pp - 1",
        ),
    ],
)
def test_micro_batch_counts_a_schedule_cannot_run_are_recipe_errors(fields, micro_batches, message):
    with pytest.raises(RecipeError, match=message):
        check_micro_batches(parallel(**fields), micro_batches)
    check_micro_batches(parallel(**fields), 8)  # enough, a multiple of pp
