"""Population-shift decomposition: exact identity, Simpson's paradox, planted rate changes."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings

from analysis import InsufficientDataError, decompose_population_shift


def simulate_users(
    rng: np.random.Generator,
    *,
    share_new: float,
    rate_new: float,
    rate_old: float,
    users: int = 2000,
    after: bool,
) -> pl.DataFrame:
    """Users with a cohort, several rated responses each, and a per-user propensity."""
    is_new = rng.random(users) < share_new
    rated = rng.integers(1, 12, users)
    base = np.where(is_new, rate_new, rate_old)
    propensity = np.clip(base + rng.normal(0, 0.05, users), 0.01, 0.99)
    down = rng.binomial(rated, propensity)
    return pl.DataFrame(
        {
            "after": [after] * users,
            "cohort": np.where(is_new, "new", "established"),
            "thumbs_down": down,
            "ratings": rated,
            "user_id": [f"{'a' if after else 'b'}{i}" for i in range(users)],
        }
    )


def decompose(frame: pl.DataFrame, **kw):
    return decompose_population_shift(
        frame,
        window="after",
        segments=["cohort"],
        numerator="thumbs_down",
        denominator="ratings",
        cluster="user_id",
        metric="thumbs_down_rate",
        **kw,
    )


def test_simpsons_paradox_is_attributed_to_the_mix():
    """Within each cohort the rate improves slightly; the aggregate worsens only because the
    share of new users (who rate things down more) doubles."""
    rng = np.random.default_rng(3)
    before = simulate_users(rng, share_new=0.2, rate_new=0.45, rate_old=0.25, after=False)
    after = simulate_users(rng, share_new=0.5, rate_new=0.44, rate_old=0.245, after=True)
    result = decompose(pl.concat([before, after]))
    assert result.after > result.before  # the aggregate got worse
    assert result.composition.ci_low > 0  # because of the mix
    assert result.rate.ci_low <= 0 <= result.rate.ci_high or result.rate.ci_high < 0
    assert result.composition.value > 0.8 * result.total.value
    text = result.summary()
    assert "composition (mix)" in text and "within-segment rate" in text


def test_a_planted_rate_change_is_found_and_the_mix_is_not_blamed():
    rng = np.random.default_rng(5)
    before = simulate_users(rng, share_new=0.3, rate_new=0.40, rate_old=0.25, after=False)
    after = simulate_users(rng, share_new=0.3, rate_new=0.46, rate_old=0.31, after=True)
    result = decompose(pl.concat([before, after]))
    assert result.rate.ci_low <= 0.06 <= result.rate.ci_high
    assert result.composition.ci_low <= 0 <= result.composition.ci_high


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.booleans(),
            st.sampled_from(["a", "b", "c"]),
            st.integers(0, 5),
            st.integers(1, 6),
            st.integers(0, 30),
        ),
        min_size=4,
        max_size=60,
    )
)
def test_parts_add_up_to_the_observed_change_exactly(rows):
    frame = pl.DataFrame(
        [(w, s, min(n, d), d, f"u{u}") for w, s, n, d, u in rows],
        schema=["after", "cohort", "thumbs_down", "ratings", "user_id"],
        orient="row",
    )
    if frame["after"].n_unique() < 2:
        with pytest.raises(InsufficientDataError):
            decompose(frame, n_boot=5)
        return
    result = decompose(frame, n_boot=5)
    assert result.composition.value + result.rate.value == pytest.approx(
        result.after - result.before, abs=1e-12
    )
    assert result.total.value == pytest.approx(result.after - result.before, abs=1e-12)
