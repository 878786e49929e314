"""The `parallel` section: mesh degrees, what cannot combine, row padding, model fit."""

import dataclasses

import pytest

from ov_model import PRESETS
from ov_train.config import MeshShape, ParallelConfig
from ov_train.distributed.mesh import check_layout
from ov_train.errors import RecipeError


def test_degrees_fill_dp_shard_with_what_the_other_dims_leave():
    shape = ParallelConfig(tp=2, cp=2, pp=2).degrees(16)
    assert shape == MeshShape(pp=2, dp_replicate=1, dp_shard=2, cp=2, tp=2)
    assert shape.data_parallel == 2
    assert ParallelConfig(dp_replicate=2, tp=4).degrees(128) == MeshShape(1, 2, 16, 1, 4)
    with pytest.raises(RecipeError, match="pp 1 x dp_replicate 1 x cp 1 x tp 3 = 3"):
        ParallelConfig(tp=3).degrees(8)
    with pytest.raises(RecipeError, match="x dp_shard 2 = 8 processes, but the run has 16"):
        ParallelConfig(tp=4, dp_shard=2).degrees(16)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tp": 0}, "parallel.tp must be >= 1"),
        ({"cp_attention": "tree"}, "parallel.cp_attention must be one of"),
        ({"pp_schedule": "GPipe"}, "parallel.pp_schedule must be one of"),
        ({"pp": 2, "pp_schedule": "Interleaved1F1B"}, "pp_stages_per_rank must be >= 2"),
        ({"pp": 2, "pp_stages_per_rank": 2}, "pp_stages_per_rank must be 1 with pp_schedule 1F1B"),
        (
            {"pp": 2, "pp_schedule": "ZBVZeroBubble", "pp_stages_per_rank": 3},
            "must be 2 with ZBVZeroBubble",
        ),
        ({"pp": 2, "pp_layers": (1, 1, 1)}, "one layer count per stage \\(2 x 1\\)"),
        ({"pp": 2, "pp_layers": (3, -1)}, "pp_layers must be >= 0 each"),
    ],
)
def test_settings_that_cannot_combine_name_the_key(settings, message):
    with pytest.raises(RecipeError, match=message):
        ParallelConfig(**settings)


def test_rows_are_padded_for_sequence_and_context_parallel_splits():
    assert ParallelConfig().row_multiple() == 1
    assert ParallelConfig(tp=4).row_multiple() == 4
    assert ParallelConfig(tp=4, sequence_parallel=False).row_multiple() == 1
    assert ParallelConfig(cp=2).row_multiple() == 4  # zigzag: 2 chunks per cp rank
    assert ParallelConfig(tp=2, cp=3).row_multiple() == 6
    assert ParallelConfig().static_row_tokens(8192) is None
    # budget + the padding image's token, rounded up to the multiple
    assert ParallelConfig(pp=2).static_row_tokens(8192) == 8193
    assert ParallelConfig(pp=2, tp=2).static_row_tokens(8192) == 8194


def test_the_layout_must_fit_the_model():
    tiny = PRESETS["tiny"]  # 4 heads, 2 KV heads, 2 layers, vocabulary 512
    check_layout(ParallelConfig(tp=2), tiny, 2)
    with pytest.raises(RecipeError, match="2 KV heads are not divisible"):
        check_layout(ParallelConfig(tp=4), tiny, 4)
    with pytest.raises(RecipeError, match="4 attention heads are not divisible"):
        check_layout(ParallelConfig(tp=8), tiny, 8)
    odd_vocabulary = dataclasses.replace(tiny, text=dataclasses.replace(tiny.text, vocab_size=511))
    with pytest.raises(RecipeError, match="511 vocabulary entries"):
        check_layout(ParallelConfig(tp=2), odd_vocabulary, 2)
    narrow_mlp = dataclasses.replace(
        tiny, text=dataclasses.replace(tiny.text, intermediate_size=129)
    )
    with pytest.raises(RecipeError, match=r"129 MLP width \(intermediate_size\)"):
        check_layout(ParallelConfig(tp=2), narrow_mlp, 2)
    with pytest.raises(RecipeError, match=r"4 pipeline stages .* a model of 2 decoder layers"):
        check_layout(
            ParallelConfig(pp=2, pp_schedule="Interleaved1F1B", pp_stages_per_rank=2), tiny, 2
        )
    with pytest.raises(RecipeError, match="sum to 3 decoder layers, but the model has 2"):
        check_layout(ParallelConfig(pp=2, pp_layers=(1, 2)), tiny, 2)
    check_layout(ParallelConfig(pp=2, pp_layers=(0, 2)), tiny, 2)
