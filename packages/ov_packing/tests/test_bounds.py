"""Lower bounds: the C++ ceil(total / capacity) against an exact Python computation, and the bound
over every budget against brute-force optima."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ov_packing import lower_bound_bins, packing_lower_bound


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


def _optimal_bins(tokens, capacity, patches, patch_capacity, max_per_bin) -> int:
    """Fewest bins by brute force over every assignment (a handful of samples only)."""
    best = len(tokens)

    def place(index, bins):
        nonlocal best
        if len(bins) >= best:
            return
        if index == len(tokens):
            best = len(bins)
            return
        for members in bins:
            members.append(index)
            fits = sum(tokens[i] for i in members) <= capacity and len(members) <= max_per_bin
            if patches is not None:
                fits = fits and sum(patches[i] for i in members) <= patch_capacity
            if fits:
                place(index + 1, bins)
            members.pop()
        bins.append([index])
        place(index + 1, bins)
        bins.pop()

    place(0, [])
    return best


@given(data=st.data())
def test_packing_lower_bound_never_exceeds_the_optimum(data):
    capacity = data.draw(st.integers(1, 40))
    count = data.draw(st.integers(0, 7))
    tokens = data.draw(st.lists(st.integers(1, capacity), min_size=count, max_size=count))
    with_patches = data.draw(st.booleans())
    patch_capacity = data.draw(st.integers(1, 30)) if with_patches else None
    patches = (
        data.draw(st.lists(st.integers(0, patch_capacity), min_size=count, max_size=count))
        if with_patches
        else None
    )
    max_per_bin = data.draw(st.none() | st.integers(1, 4))
    bound = packing_lower_bound(
        tokens, capacity, patches=patches, patch_capacity=patch_capacity, max_per_bin=max_per_bin
    )
    optimum = _optimal_bins(tokens, capacity, patches, patch_capacity, max_per_bin or count + 1)
    assert bound.bins <= optimum
    assert bound.bins == max(bound.terms.values(), default=0)


@pytest.mark.parametrize(
    ("kwargs", "terms", "deciding"),
    [
        # 25 tokens in bins of 10, two samples over half the capacity
        ({"tokens": [6, 4, 7, 3, 5], "capacity": 10}, {"tokens": 3, "large_tokens": 2}, "tokens"),
        # three samples of 6 cannot share bins of 10: 3 bins though 18 tokens fit in 2
        ({"tokens": [6, 6, 6], "capacity": 10}, {"tokens": 2, "large_tokens": 3}, "large_tokens"),
        (
            {"tokens": [1, 1, 1], "capacity": 10, "patches": [7, 7, 2], "patch_capacity": 8},
            {"tokens": 1, "large_tokens": 0, "patches": 2, "large_patches": 2},
            "patches",
        ),
        (
            {"tokens": [1] * 5, "capacity": 10, "max_per_bin": 2},
            {"tokens": 1, "large_tokens": 0, "samples": 3},
            "samples",
        ),
    ],
)
def test_packing_lower_bound_terms_on_hand_worked_cases(kwargs, terms, deciding):
    tokens = kwargs.pop("tokens")
    bound = packing_lower_bound(tokens, **kwargs)
    assert bound.terms == terms
    assert bound.deciding_term == deciding
    assert bound.bins == terms[deciding]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patches": [1, 2]}, "together"),
        ({"patches": [1], "patch_capacity": 4}, "1 patch counts for 2 samples"),
        ({"patches": [1, 9], "patch_capacity": 4}, "index 1 is 9, outside"),
        ({"max_per_bin": 0}, "max_per_bin must be >= 1"),
    ],
)
def test_packing_lower_bound_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        packing_lower_bound([3, 4], 10, **kwargs)
