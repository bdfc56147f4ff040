"""The replay window: RFC 6479 behaviour at its edges."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from vpnedu.protocol.replay import RING_BITS, WINDOW_SIZE, ReplayWindow


def test_window_size_is_one_constant_8192_minus_a_block():
    assert RING_BITS == 8192 and WINDOW_SIZE == 8128


def test_in_order_and_duplicates():
    w = ReplayWindow()
    for i in range(200):
        assert w.accept(i)
    for i in range(200):
        assert not w.check(i) and not w.accept(i)


def test_out_of_order_inside_the_window_is_accepted_once():
    w = ReplayWindow()
    order = list(range(5000))
    random.Random(1).shuffle(order)
    for c in order:
        assert w.accept(c)
    for c in order[:100]:
        assert not w.accept(c)


def test_too_old_is_rejected_and_edge_is_accepted():
    w = ReplayWindow()
    assert w.accept(0)
    assert w.accept(10_000)
    assert not w.accept(10_000 - WINDOW_SIZE)       # exactly one window behind: too old
    assert w.accept(10_000 - WINDOW_SIZE + 1)       # the oldest counter still inside
    assert not w.accept(1)


def test_big_jump_clears_the_ring():
    w = ReplayWindow()
    for i in range(100):
        w.accept(i)
    assert w.accept(10**12)
    # Counters just behind the new maximum were never seen: they are accepted.
    assert w.accept(10**12 - 5) and w.accept(10**12 - 64) and w.accept(10**12 - 8000)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 20_000), max_size=300))
def test_matches_a_simple_model(counters):
    """Against the obvious (slow) definition: accept once, and only within the window."""
    w = ReplayWindow()
    seen: set[int] = set()
    greatest = -1
    for c in counters:
        expected = c not in seen and (greatest < 0 or c > greatest or greatest - c < WINDOW_SIZE)
        assert w.check(c) == expected
        assert w.accept(c) == expected
        if expected:
            seen.add(c)
            greatest = max(greatest, c)
