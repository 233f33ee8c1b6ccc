import pytest

from lipar.schedule import EDITING_STEPS, GENERATION_STEPS, parse_steps, sigmas, warp


def test_warped_timesteps_match_published_formula():
    # s = 5u / (1 + 4u), u = t / 1000
    assert sigmas(GENERATION_STEPS) == pytest.approx([1.0, 0.9375, 5 * 0.5 / 3, 5 * 0.25 / 2])
    assert sigmas(EDITING_STEPS) == pytest.approx([2.0 / 2.6, 1.75 / 2.4, 1.25 / 2.0])
    assert [round(1000 * s, 4) for s in sigmas(GENERATION_STEPS)] == [1000.0, 937.5, 833.3333, 625.0]
    assert warp(0) == 0 and warp(1000, shift=1.0) == 1.0


def test_parse_steps():
    assert parse_steps("400, 350,250") == (400, 350, 250)
    for bad in ("", "400,400", "abc", "1001"):
        with pytest.raises(ValueError):
            parse_steps(bad)
