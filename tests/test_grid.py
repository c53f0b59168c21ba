import pytest

from evalkit.core.errors import ConfigError
from evalkit.core.grid import parse_lengths, parse_percentages


def test_lengths():
    assert parse_lengths("512") == [512]
    assert parse_lengths("1k,2k,8k") == [1024, 2048, 8192]
    assert parse_lengths("1k..8k") == [1024, 2048, 4096, 8192]
    assert parse_lengths("1k..3k") == [1024, 2048, 3072]
    assert parse_lengths("2k,1k,2k") == [1024, 2048]


@pytest.mark.parametrize("bad", ["", "abc", "1x", "-5", "8k..1k", "1"])
def test_bad_lengths(bad):
    with pytest.raises(ConfigError):
        parse_lengths(bad)


def test_percentages():
    assert parse_percentages("0:100:25") == [0, 25, 50, 75, 100]
    assert parse_percentages("0,50") == [0, 50]
    with pytest.raises(ConfigError):
        parse_percentages("0:200:50")
