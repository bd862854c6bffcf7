"""PtsUnwrapper: 32-bit RTP timestamps become a monotonic 64-bit clock."""

from __future__ import annotations

from media.pts_unwrapper import PtsUnwrapper


def test_wrap_and_reorder() -> None:
    u = PtsUnwrapper()
    raw = [2**32 - 1920, 2**32 - 960, 0, 960, 0, 1920]  # wrap, then a reordered frame
    assert [u.unwrap(p) for p in raw] == [2**32 - 1920, 2**32 - 960, 2**32, 2**32 + 960, 2**32, 2**32 + 1920]
    assert u.wraps == 1


def test_reordered_frame_across_the_wrap() -> None:
    u = PtsUnwrapper()
    assert [u.unwrap(p) for p in [2**32 - 960, 0, 2**32 - 1920, 960]] == [2**32 - 960, 2**32, 2**32 - 1920, 2**32 + 960]
    assert u.wraps == 1


def test_non_wrapping_values_pass_through_and_reset() -> None:
    u = PtsUnwrapper()
    vals = [5 * 2**32 + i * 3000 for i in range(5)]  # already 64-bit (a file), never wraps
    assert [u.unwrap(v) for v in vals] == vals
    u.reset()
    assert u.unwrap(7) == 7
