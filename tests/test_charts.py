"""The figures' axes: accuracy axes that do not blow a 0.6-point change up to the whole chart,
and whole-epoch axes on which a 1-epoch run is a marker at epoch 1."""
from __future__ import annotations

import pandas as pd
import pytest

from app_lib.charts import MIN_SPAN, accuracy_figure, accuracy_range, error_line_figure


@pytest.mark.parametrize("values, expected", [
    ([97.9, 98.5], None),  # 0.6 points: widened to MIN_SPAN around them
    ([99.8, 99.9], None),  # near the top: shifted down, never past 100
    ([1.0, 2.0], None),  # near the bottom: never below 0
    ([11.0, 98.0], [0.0, 100.0]),  # a wide spread: the whole scale
])
def test_accuracy_ranges_span_at_least_a_few_points(values, expected):
    lo, hi = accuracy_range(values)
    if expected:
        assert [lo, hi] == expected
        return
    assert hi - lo >= MIN_SPAN and 0.0 <= lo <= min(values) and max(values) <= hi <= 100.0


def test_the_epoch_accuracy_chart_is_not_auto_zoomed():
    epochs = pd.DataFrame({"epoch": [1, 2, 3], "test_acc": [0.979, 0.983, 0.985]})
    fig = accuracy_figure(epochs)
    lo, hi = fig.layout.yaxis.range
    assert hi - lo >= MIN_SPAN and fig.layout.xaxis.range == (0.5, 3.5)


def test_a_one_epoch_run_is_a_marker_at_epoch_one():
    fig = accuracy_figure(pd.DataFrame({"epoch": [1], "test_acc": [0.9688]}))
    assert fig.layout.xaxis.range == (0.5, 1.5) and fig.layout.xaxis.dtick == 1
    assert list(fig.data[0].y) == [pytest.approx(96.88)] and "markers" in fig.data[0].mode


def test_the_sweep_lines_leave_room_for_their_error_bars():
    summary = pd.DataFrame({"conv_layers": [1, 2], "kernel_size": [3, 3], "mean": [0.97, 0.98], "sd": [0.01, 0.002],
                            "n": [3, 3], "text": ["", ""]})
    lo, hi = error_line_figure(summary, "conv_layers", "kernel_size", "t").layout.yaxis.range
    assert lo <= 96.0 and hi >= 98.2 and hi - lo >= MIN_SPAN
