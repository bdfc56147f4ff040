"""Exercise: the replay window (RFC 6479; WireGuard paper, section 5.4.6).

The student writes a class with ``check(counter)`` and ``accept(counter)``, the
interface of :class:`vpnedu.protocol.replay.ReplayWindow`.  The check then

* compares it, operation by operation, with the real window on hidden traces
  (reordering, duplicates, jumps larger than the window, the exact edge), and
* plugs it into two real :class:`~vpnedu.protocol.device.Device` objects (every
  session's ``TransportSession`` gets the student's window instead of the real one) and
  replays, reorders and delays real encrypted packets on the simulated wire:
  a replay must end as ``packet.dropped`` with reason ``replay``.

Why the window matters: the counter is the AEAD's nonce, so a replayed packet
decrypts perfectly -- authentication alone cannot stop it.  Only remembering
which counters were seen can, and a window (not "counter must be last + 1")
because UDP reorders.
"""

from __future__ import annotations

import contextlib
import random

from ..packet import ip as _ip
from ..protocol import replay as _real
from ..protocol import session as _session
from .checking import Case, expect

TITLE = "replay window"
PARTS = ("window",)
WINDOW_SIZE = _real.WINDOW_SIZE

HINT_EDGE = (f"accept a counter up to WINDOW_SIZE - 1 = {WINDOW_SIZE - 1} below the greatest one seen; "
             f"exactly WINDOW_SIZE below is too old")


def _fresh(window):
    w = window()
    expect(hasattr(w, "accept") and hasattr(w, "check"),
           "your class needs two methods, check(counter) and accept(counter)")
    return w


def _accept_all(w, counters, want=True, what="accept"):
    for c in counters:
        got = w.accept(c)
        expect(bool(got) == want, f"{what}({c}) returned {got!r}, expected {want}")


def _first(window):
    w = _fresh(window)
    got = w.accept(0)
    expect(got is True, f"a fresh window: accept(0) returned {got!r}, expected True",
           "the very first counter of a session is 0, and nothing has been seen yet")


def _in_order(window):
    w = _fresh(window)
    _accept_all(w, range(300))


def _replayed(window):
    w = _fresh(window)
    _accept_all(w, range(6))
    got = w.accept(5)
    expect(got is False, f"after accepting 0..5, accept(5) again returned {got!r}, expected False",
           "remember every counter you accepted (a bit per counter), and refuse one whose bit is set")
    got = w.accept(2)
    expect(got is False, f"accept(2) a second time returned {got!r}, expected False")


def _check_is_pure(window):
    w = _fresh(window)
    _accept_all(w, range(3))
    for _ in range(2):
        expect(w.check(7) is True, "check(7) before 7 was accepted should be True (and change nothing)")
    expect(w.accept(7) is True, "accept(7) after two check(7) calls returned False",
           "check() only looks; the device calls it before decrypting, and accept() after")
    expect(w.check(7) is False, "check(7) after accept(7) should be False")
    expect(w.check(5) is True, "check(5): 5 was never accepted (only 0, 1, 2, 7), expected True")


def _reordered(window):
    w = _fresh(window)
    _accept_all(w, [0, 1, 2, 4, 3, 9, 5, 8, 6, 7])
    _accept_all(w, [3, 9, 0], want=False)


def _edge(window):
    w = _fresh(window)
    top = 20_000
    expect(w.accept(top) is True, f"accept({top}) (a jump forward) returned False")
    expect(w.check(top - WINDOW_SIZE + 1) is True, f"check({top - WINDOW_SIZE + 1}) should be True", HINT_EDGE)
    expect(w.accept(top - WINDOW_SIZE + 1) is True,
           f"accept({top - WINDOW_SIZE + 1}), WINDOW_SIZE-1 below the greatest, returned False", HINT_EDGE)
    expect(w.check(top - WINDOW_SIZE) is False, f"check({top - WINDOW_SIZE}) should be False", HINT_EDGE)
    expect(w.accept(top - WINDOW_SIZE) is False,
           f"accept({top - WINDOW_SIZE}), exactly WINDOW_SIZE below the greatest, returned True", HINT_EDGE)


def _big_jump(window):
    w = _fresh(window)
    _accept_all(w, range(1, 101))
    far = 100 + 3 * WINDOW_SIZE + 17
    expect(w.accept(far) is True, f"accept({far}) (a jump of more than the window) returned False")
    expect(w.accept(100) is False, "accept(100) after a jump of 3 windows returned True: it is too old")
    for c in (far - 1, far - 64, far - WINDOW_SIZE + 1, far - 100):
        expect(w.accept(c) is True, f"accept({c}) after the jump returned False: it was never seen and is "
               "inside the window", "when the window moves forward, the counters it passes over were never "
               "seen: their bits must be clear (RFC 6479 clears the blocks it slides over)")


def _jump_keeps_bits(window):
    w = _fresh(window)
    _accept_all(w, range(64))
    expect(w.accept(5000) is True, "accept(5000) returned False")
    expect(w.accept(10) is False, "accept(10) after 0..63 and 5000 returned True: 10 was already seen",
           "moving the window forward by less than its size must keep the bits still inside it")
    expect(w.accept(64) is True, "accept(64) returned False: 64 was never seen and is inside the window")


def _huge_counters(window):
    w = _fresh(window)
    top = 2 ** 64 - 1
    _accept_all(w, [top - 2, top, top - 1])
    _accept_all(w, [top, top - 2], want=False)


def _trace(seed: int, kind: str) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    ops, top = [], 0
    for _ in range(2500):
        r = rng.random()
        if kind == "reorder":
            c = max(0, top + rng.randint(-40, 8))
        elif kind == "jumps":
            c = top + rng.choice([1, 2, WINDOW_SIZE, WINDOW_SIZE + 1, 2 * WINDOW_SIZE + 5]) if r < 0.08 else \
                max(0, top - rng.randint(0, WINDOW_SIZE + 64))
        else:  # the edge: counters around greatest - WINDOW_SIZE
            c = max(0, top - WINDOW_SIZE + rng.randint(-3, 3)) if r < 0.5 else top + rng.randint(0, 70)
        top = max(top, c)
        ops.append(("check" if rng.random() < 0.25 else "accept", c))
    return ops


def _compare(seed: int, kind: str):
    def run(window):
        w, real = _fresh(window), _real.ReplayWindow()
        for i, (op, c) in enumerate(_trace(seed, kind)):
            want, got = getattr(real, op)(c), getattr(w, op)(c)
            expect(bool(got) == want, f"step {i}: {op}({c}) returned {got!r}, the real window says {want} "
                   f"(greatest counter so far: {real.greatest})")
    return run


# -------------------------------------------------------------------- inside real devices
@contextlib.contextmanager
def student_window_in_devices(window):
    """Every TransportSession created inside the block uses ``window`` instead of the real ReplayWindow."""
    saved = _session.ReplayWindow
    _session.ReplayWindow = window
    try:
        yield
    finally:
        _session.ReplayWindow = saved


def _pair(window):
    from ..sim import make_pair
    with student_window_in_devices(window):
        pair = make_pair()
        pair.handshake()
    kp = pair.client_peer.current or pair.client_peer.next
    expect(kp is not None and isinstance(kp.replay, window), "the devices did not complete a handshake")
    return pair


def _ping(n: int) -> bytes:
    return _ip.build_icmp_echo("10.0.0.2", "10.0.0.1", seq=n)


def _send_held(pair, n: int, hold: set[int]):
    """The client sends pings 0..n-1; the datagrams of those in ``hold`` are kept off the wire."""
    held = {}
    for i in range(n):
        grams = pair.client.send_packet(_ping(i), pair.now)
        for data, dest in grams:
            if i in hold:
                held[i] = data
            else:
                pair.net.inject(data, pair.client_ep, dest)
        pair.net.run()
    return held


def _delivered(pair) -> list[bytes]:
    return [p for _, p in pair.net.delivered[pair.server_ep]]


def _device_replay(window):
    pair = _pair(window)
    _send_held(pair, 3, set())
    last = pair.net.capture[-1].data
    before = pair.server.counters["dropped.replay"]
    pair.net.inject(last, pair.client_ep, pair.server_ep)
    pair.net.run()
    expect(pair.server.counters["dropped.replay"] == before + 1 and len(_delivered(pair)) == 3,
           "a real server with your window accepted a replayed transport packet",
           "the device asks check() before decrypting and accept() after; both must refuse a seen counter")


def _device_reorder(window):
    pair = _pair(window)
    held = _send_held(pair, 6, {1, 3})
    for i in (3, 1):
        pair.net.inject(held[i], pair.client_ep, pair.server_ep)
    pair.net.run()
    got = _delivered(pair)
    expect(len(got) == 6 and set(got) == {_ping(i) for i in range(6)},
           f"a real server with your window delivered {len(got)} of 6 pings sent out of order",
           "a late packet whose counter was never seen is new, not a replay")
    expect(pair.server.counters["dropped.replay"] == 0, "late but new packets were dropped as replays")


def _device_too_old(window):
    pair = _pair(window)
    held = _send_held(pair, 3, {2})
    kp = pair.server_peer.current
    kp.send_counter += WINDOW_SIZE + 10   # the client sent (and lost) a whole window's worth of packets
    _send_held(pair, 1, set())
    pair.net.inject(held[2], pair.client_ep, pair.server_ep)
    pair.net.run()
    expect(pair.server.counters["dropped.replay"] == 1,
           "a real server with your window accepted a packet older than the window", HINT_EDGE)


def cases() -> list[Case]:
    return [
        Case("a fresh window accepts counter 0", _first,
             "before anything was seen, every counter is new"),
        Case("counters in order are accepted", _in_order,
             "a counter greater than the greatest seen is always new: move the window forward"),
        Case("a replayed counter is dropped", _replayed,
             "remember every counter you accepted (a bit per counter), and refuse one whose bit is set"),
        Case("check() does not change the window", _check_is_pure,
             "check() only looks at the window; only accept() may set bits or move it"),
        Case("reordered but new counters are accepted", _reordered,
             "keep one bit per counter inside the window; a counter below the greatest can still be new"),
        Case("the window edge", _edge, HINT_EDGE),
        Case("a jump larger than the window", _big_jump,
             "after a jump of a whole window or more, nothing old is remembered: start from empty bits"),
        Case("a jump inside the window keeps what was seen", _jump_keeps_bits,
             "shift the bits by the distance moved instead of clearing them all"),
        Case("64-bit counters near 2**64", _huge_counters,
             "Python ints do not overflow; do not mask counters to 32 bits"),
        Case("hidden trace: reordering and duplicates", _compare(6479, "reorder"),
             "compare with the small cases above: which rule does this step break?"),
        Case("hidden trace: jumps larger than the window", _compare(8192, "jumps"), HINT_EDGE),
        Case("hidden trace: counters at the window edge", _compare(2048, "edge"), HINT_EDGE),
        Case("in a real Device: a replayed packet is dropped (reason 'replay')", _device_replay,
             "the device asks check() before decrypting and accept() after; both must refuse a seen counter"),
        Case("in a real Device: reordered packets are delivered", _device_reorder,
             "a late packet whose counter was never seen is new, not a replay"),
        Case("in a real Device: a packet older than the window is dropped", _device_too_old, HINT_EDGE),
    ]
