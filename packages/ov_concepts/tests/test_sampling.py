"""Weighted sampling: exact size, determinism, inclusion probabilities, edge weights."""

import numpy as np
import pytest

from ov_concepts.sampling import (
    inclusion_scale,
    multinomial_sample_into,
    pareto_sample_into,
    uniforms,
)


def test_uniforms_are_a_pure_function_of_seed_stream_and_index():
    whole = uniforms(7, 1, 0, 10000)
    np.testing.assert_array_equal(
        whole, np.concatenate([uniforms(7, 1, 0, 37), uniforms(7, 1, 37, 10000)])
    )
    assert whole.min() > 0
    assert whole.max() < 1
    assert abs(whole.mean() - 0.5) < 0.01
    assert not np.array_equal(whole, uniforms(8, 1, 0, 10000))
    assert not np.array_equal(whole, uniforms(7, 2, 0, 10000))
    assert uniforms(2**64 - 1, 1, 5, 6)[0] != uniforms(0, 1, 5, 6)[0]


def test_inclusion_scale_caps_heavy_items_at_one():
    weights = np.array([100.0, 50.0, 1.0, 1.0, 1.0, 1.0, 0.0, 2.0])
    scale = inclusion_scale(weights, 4)
    inclusion = np.minimum(1.0, scale * weights)
    assert inclusion.sum() == pytest.approx(4)
    assert inclusion[0] == inclusion[1] == 1.0
    np.testing.assert_allclose(inclusion[2:6], 2 / 6)
    plain = np.array([1.0, 2.0, 3.0, 4.0])
    assert inclusion_scale(plain, 2) == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"target 8 outside 1..7"):
        inclusion_scale(weights, 8)


def _pareto(weights, target, seed):
    out = np.zeros(target, dtype=np.int64)
    pareto_sample_into(out, weights, inclusion_scale(weights, target), seed)
    return out


def test_pareto_sample_has_exact_size_sorted_distinct_and_respects_zero_and_certain_items():
    rng = np.random.default_rng(0)
    weights = rng.pareto(1.5, 9000) + 0.01
    weights[::7] = 0.0
    weights[5] = 1e9  # inclusion 1: always drawn
    for seed in range(5):
        chosen = _pareto(weights, 3000, seed)
        assert len(chosen) == 3000
        assert len(np.unique(chosen)) == 3000
        assert np.all(np.diff(chosen) > 0)
        assert 5 in chosen
        assert not np.any(weights[chosen] == 0)


def test_pareto_sample_is_deterministic_for_a_seed():
    weights = np.random.default_rng(1).random(10000)
    first = _pareto(weights, 777, 42)
    assert first.tobytes() == _pareto(weights, 777, 42).tobytes()
    assert not np.array_equal(first, _pareto(weights, 777, 43))


def test_pareto_inclusion_frequencies_match_the_target_probabilities():
    weights = np.array([8.0, 4.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.0] * 6)
    target = 12
    inclusion = np.minimum(1.0, inclusion_scale(weights, target) * weights)
    seeds = 2000
    frequency = np.zeros(len(weights))
    for seed in range(seeds):
        frequency[_pareto(weights, target, seed)] += 1
    frequency /= seeds
    np.testing.assert_allclose(frequency, inclusion, atol=0.035)
    assert frequency[9::10].sum() == 0


def test_ties_at_inclusion_one_go_to_the_lowest_indices():
    weights = np.ones(10)
    np.testing.assert_array_equal(_pareto(weights, 10, 3), np.arange(10))


def _multinomial(weights, target, seed):
    out = np.zeros(target, dtype=np.int64)
    multinomial_sample_into(out, weights, seed)
    return out


def test_multinomial_sample_has_exact_size_and_follows_the_weights():
    rng = np.random.default_rng(2)
    weights = rng.random(10000)  # three sampling blocks
    weights[:4096] *= 3
    weights[100:200] = 0
    chosen = _multinomial(weights, 50000, 9)
    assert len(chosen) == 50000
    assert np.all(np.diff(chosen) >= 0)
    assert not np.any((chosen >= 100) & (chosen < 200))
    share_first_block = np.mean(chosen < 4096)
    expected = weights[:4096].sum() / weights.sum()
    assert share_first_block == pytest.approx(expected, abs=0.01)
    assert chosen.tobytes() == _multinomial(weights, 50000, 9).tobytes()
    assert not np.array_equal(chosen, _multinomial(weights, 50000, 10))


def test_multinomial_can_draw_more_than_there_are_items_and_refuses_all_zero():
    chosen = _multinomial(np.array([0.0, 1.0, 3.0]), 400, 0)
    assert set(np.unique(chosen)) == {1, 2}
    assert np.mean(chosen == 2) == pytest.approx(0.75, abs=0.07)
    with pytest.raises(ValueError, match=r"every weight is zero"):
        _multinomial(np.zeros(5), 3, 0)
