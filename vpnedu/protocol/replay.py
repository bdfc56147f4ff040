"""The receive-side replay window (RFC 6479 style, as Linux and wireguard-go do it).

Every transport message carries a 64-bit counter that the sender increments.
UDP may reorder, drop or duplicate datagrams, so the receiver cannot insist on
``counter == last + 1``.  It keeps a sliding window of the most recent
``WINDOW_SIZE`` counters: a counter newer than everything seen moves the window
forward; one inside the window is accepted once (its bit is then set); one that
is older than the window, or whose bit is already set, is a replay.

RFC 6479 stores the window as a ring of machine words ("blocks") instead of
one long bit string, so moving the window forward only clears the blocks it
passes over instead of shifting every bit.

Why 8192 bits: a packet can be delayed behind thousands of others (several
cores encrypting in parallel, queues on the path).  With the 2048 bits of the
first WireGuard paper, fast links dropped such late packets as "too old";
the Linux kernel and wireguard-go moved to 8192, and we keep the same so that
a vpnedu peer accepts whatever a kernel peer would.  One block of the ring is
always being reused, so the usable window is ``8192 - 64 = 8128`` counters.
"""

from __future__ import annotations

#: Total bits in the ring; the single knob of this module.
RING_BITS = 8192
BLOCK_BITS = 64
_BLOCKS = RING_BITS // BLOCK_BITS
_BLOCK_MASK = _BLOCKS - 1
_BIT_MASK = BLOCK_BITS - 1
_BLOCK_SHIFT = 6  # log2(BLOCK_BITS)
#: How far behind the greatest counter a packet may still be accepted.
WINDOW_SIZE = RING_BITS - BLOCK_BITS


class ReplayWindow:
    """Sliding-window replay filter for one session's receive direction."""

    __slots__ = ("greatest", "_ring", "_seen_any")

    def __init__(self) -> None:
        self.greatest = 0
        self._ring = [0] * _BLOCKS
        self._seen_any = False

    def check(self, counter: int) -> bool:
        """Would ``counter`` be accepted?  Does not change the window.

        Used before decrypting, to drop obvious replays cheaply; the real
        decision is :meth:`accept`, made only after the packet authenticated.
        """
        if not self._seen_any or counter > self.greatest:
            return True
        if self.greatest - counter >= WINDOW_SIZE:
            return False
        block = (counter >> _BLOCK_SHIFT) & _BLOCK_MASK
        return not (self._ring[block] >> (counter & _BIT_MASK)) & 1

    def accept(self, counter: int) -> bool:
        """Mark ``counter`` as received; False if it is a replay or too old."""
        ring = self._ring
        block = counter >> _BLOCK_SHIFT
        if not self._seen_any or counter > self.greatest:
            current = self.greatest >> _BLOCK_SHIFT
            # Clear the blocks the window slides over (at most the whole ring);
            # a fresh window is all zeros already.
            diff = block - current if self._seen_any else 0
            for i in range(1, min(diff, _BLOCKS) + 1):
                ring[(current + i) & _BLOCK_MASK] = 0
            self.greatest = counter
            self._seen_any = True
        elif self.greatest - counter >= WINDOW_SIZE:
            return False
        index = block & _BLOCK_MASK
        bit = 1 << (counter & _BIT_MASK)
        if ring[index] & bit:
            return False
        ring[index] |= bit
        return True
