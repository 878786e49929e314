"""The loss curve: a PNG of one or several runs, smoothed without start-up bias."""

import pytest

from ov_train.loss_plot import exponential_average, plot_loss_curves, smoothing_weight

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_moving_average_has_no_start_up_bias():
    assert exponential_average([2.0] * 5, 0.9) == pytest.approx([2.0] * 5)
    assert exponential_average([1.0, 3.0], 0.5) == pytest.approx([1.0, (0.25 + 1.5) / 0.75])
    assert smoothing_weight(40) == 0.6
    assert smoothing_weight(100) == pytest.approx(0.8)
    assert smoothing_weight(10_000) == 0.98


def test_several_runs_are_drawn_into_one_png(tmp_path):
    series = {
        "stage1": [(s, 5.0 - s / 50) for s in range(1, 60)],
        "stage2": [(s, 3.0) for s in range(1, 4)],
        "empty": [],
    }
    path = plot_loss_curves(series, tmp_path / "plots" / "loss.png", title="stages")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
