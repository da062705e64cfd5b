"""The metrics registry: complete, consistent with what the warehouse can count."""

from __future__ import annotations

import pytest

from analysis import METRICS, Direction, UnknownMetricError, get_metric

REQUIRED = {
    "thumbs_down_rate",
    "rating_rate",
    "retry_rate",
    "refusal_rate",
    "session_turns",
    "session_seconds",
    "task_completion_rate",
    "retention_d7",
}


def test_every_metric_the_issue_names_is_registered():
    assert set(METRICS) >= REQUIRED
    for m in METRICS.values():
        assert m.numerator != m.denominator
        assert 0 < m.threshold < 1
        assert m.owner and m.description


def test_rollup_metrics_count_columns_the_rollups_have(wh):
    columns = set(
        wh.query_frame(
            "SELECT name FROM system.columns WHERE database = currentDatabase()"
            " AND table IN ('rollup_hourly', 'sessions_hourly')"
        )["name"]
    )
    for m in METRICS.values():
        if m.name != "retention_d7":  # a per-user cohort count, not an hourly rollup
            assert {m.numerator, m.denominator} <= columns, m.name


def test_direction_decides_what_worse_means():
    assert get_metric("thumbs_down_rate").better is Direction.LOWER_IS_BETTER
    assert get_metric("thumbs_down_rate").is_worse(0.08)
    assert not get_metric("task_completion_rate").is_worse(0.02)
    assert get_metric("task_completion_rate").is_worse(-0.02)


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(UnknownMetricError, match="thumbs_down_rate"):
        get_metric("thumbs_down")


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        METRICS["x"] = METRICS["retry_rate"]  # type: ignore[index]


def test_docs_describe_every_metric():
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
    for m in METRICS.values():
        assert f"`{m.name}`" in doc and f"`{m.numerator}`" in doc
