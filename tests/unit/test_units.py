import pytest

from reconciler.units import format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MiB", 512 * 1024**2),
        ("20GiB", 20 * 1024**3),
        ("1G", 1024**3),
        ("1GB", 1000**3),
        ("1.5GiB", 1536 * 1024**2),
        ("100B", 100),
        ("4K", 4096),
        ("2TiB", 2 * 1024**4),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["1 GB", "-1GiB", "1", "GiB", "1gib", "1.GiB", ""])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("2m", 120), ("1m30s", 90), ("1h", 3600), ("250ms", 0.25)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["90", "1 s", "s", "-5s", "1d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_format_size_round_trips() -> None:
    for text in ("20GiB", "1536MiB", "4KiB", "1023B"):
        assert format_size(parse_size(text)) == text
