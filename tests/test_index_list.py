"""The one index-list grammar (`config.parse_index_list`) of edit.indices, edit.targets and
dip.indices: what parses, and that everything else is a UserError naming the setting."""

import pytest

from diffusion_jax.config import parse_index_list
from diffusion_jax.errors import UserError


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0-7", list(range(8))),
        ("3,5,9", [3, 5, 9]),
        (" 0-1 , 4, ", [0, 1, 4]),
        ("2-2", [2]),
        ("5,0-1", [5, 0, 1]),  # in the order written
        ((1, 2), [1, 2]),
        (["0-2", 7], [0, 1, 2, 7]),
        (3, [3]),
        ("", []),
    ],
)
def test_what_parses(value, expected):
    assert parse_index_list(value, "config.edit.indices") == expected


@pytest.mark.parametrize(
    "value, match",
    [
        ("a-b", "give image indices like '0-7'"),
        ("-1", "give image indices like"),  # no negative indices or classes
        ("1.5", "give image indices like"),
        (True, "give image indices like"),
        ("7-3", "the range 7-3 is empty"),
    ],
)
def test_what_is_refused(value, match):
    with pytest.raises(UserError, match=match) as err:
        parse_index_list(value, "config.dip.indices")
    assert str(err.value).startswith(f"config.dip.indices={value!r}: ")
