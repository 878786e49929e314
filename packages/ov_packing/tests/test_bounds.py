"""lower_bound_bins: the C++ ceil(total / capacity) against an exact Python computation."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ov_packing import lower_bound_bins


@given(
    capacity=st.integers(1, 1 << 20),
    data=st.data(),
)
def test_equals_ceil_of_total_over_capacity(capacity, data):
    lengths = data.draw(st.lists(st.integers(1, capacity), max_size=200))
    expected = -(-sum(lengths) // capacity)
    assert lower_bound_bins(np.array(lengths, dtype=np.int64), capacity) == expected


def test_empty_input_needs_no_bins():
    assert lower_bound_bins(np.zeros(0, dtype=np.int32), 8192) == 0


def test_total_beyond_int32_does_not_overflow():
    lengths = np.full(1_000_000, 65_536, dtype=np.int32)  # total 6.5e10 tokens
    assert lower_bound_bins(lengths, 1 << 20) == 62_500


def test_release_failure_cases_at_capacity_8192():
    assert lower_bound_bins([2048, 2048, 8192, 8192], 8192) == 3
    assert lower_bound_bins([1024] * 3 + [4096] * 3, 8192) == 2
    assert lower_bound_bins([100, 200, 300], 8192) == 1
    assert lower_bound_bins([8192], 8192) == 1


@pytest.mark.parametrize(
    ("lengths", "capacity", "message"),
    [
        ([10, 0, 3], 8192, "index 1 is 0"),
        ([10, 3, -5], 8192, "index 2 is -5"),
        ([8193], 8192, "index 0 is 8193, above the capacity 8192"),
        ([1], 0, "capacity must be positive"),
        ([1.5], 8, "must be integers"),
        ([1 << 40], 1 << 50, "outside the int32 range"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_sample(lengths, capacity, message):
    with pytest.raises(ValueError, match=message):
        lower_bound_bins(lengths, capacity)


def test_two_dimensional_input_is_rejected():
    with pytest.raises(ValueError, match="one-dimensional"):
        lower_bound_bins(np.ones((2, 2), dtype=np.int32), 8)
