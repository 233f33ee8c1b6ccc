import pytest

from lipar.errors import LiparError
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


@pytest.mark.parametrize("text", ["inf", "nan", "400,,250", "400,350,", ",400", "400.9,350.2", "400.0", "4e2",
                                  "400 350", "400;350", "0x190", "0", "-5", "1000,0", "1e309", "   "])
def test_parse_steps_rejects_anything_but_clean_integer_lists(text):
    with pytest.raises(LiparError) as e:
        parse_steps(text)
    msg = str(e.value)
    assert "'400,350,250'" in msg and "'1000,750,500,250'" in msg, msg   # shows valid examples


def test_parse_steps_accepts_spaces_and_integer_sequences():
    assert parse_steps(" 1000 , 750,500 ,250 ") == GENERATION_STEPS
    assert parse_steps([400, 350, 250]) == EDITING_STEPS
    assert parse_steps((400.0, 350.0)) == (400, 350)          # integral floats are whole numbers
    assert all(type(v) is int for v in parse_steps((400.0, 350.0)))


@pytest.mark.parametrize("seq", [[400.5, 350], [True], [float("inf")], [float("nan")], ["400"], 400, b"400", [None]])
def test_parse_steps_rejects_non_integral_sequences(seq):
    with pytest.raises(LiparError, match="400,350,250"):
        parse_steps(seq)
