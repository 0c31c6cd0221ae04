"""Hands each encoded packet to every viewer, without letting one slow the rest.

Every viewer has a ``Subscription``: a bounded queue of packets that its
WebRTC sender drains. ``publish`` never waits; it puts the same packet object
into every queue (packets are immutable once encoded, so sharing is safe).

Drop policy, per subscription:

- A subscription starts *waiting for a keyframe*: until one arrives it
  drops everything, because a decoder cannot start from a delta frame.
- When its queue is full (the viewer is ``queue_frames`` frames behind),
  the new packet is dropped and so is everything after it up to the next
  keyframe: dropping a single delta frame would corrupt every picture until
  then, while skipping to a keyframe gives a clean jump forward. The packets
  already queued are still sent; they are a consistent prefix.
- Either way the subscription asks for a keyframe, and the encoder makes one
  as soon as ``keyframe_wanted`` says so.

``keyframe_wanted`` coalesces requests (many viewers joining at once cost
one keyframe) and spaces forced keyframes at least ``min_keyframe_gap_s``
apart, so a flapping viewer cannot make everyone's stream all-keyframes.

This module does no I/O and reads no clock: callers pass ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

PacketT = TypeVar("PacketT")


@dataclass
class SubscriptionStats:
    queued: int = 0
    delivered: int = 0
    dropped_waiting: int = 0
    dropped_full: int = 0


class Subscription(Generic[PacketT]):
    """One viewer's queue. ``receive`` is called by its sender, nobody else."""

    def __init__(self, broadcast: Broadcast[PacketT], name: str, capacity: int) -> None:
        self.name = name
        self.stats = SubscriptionStats()
        self._broadcast = broadcast
        self._send, self._receive = trio.open_memory_channel[PacketT](capacity)
        self._waiting_for_keyframe = True
        self._active = False

    async def receive(self) -> PacketT:
        """Return the next packet, waiting for one.

        The first call activates the subscription: packets published before
        it are not queued, so a sender that takes a while to connect starts
        from a fresh keyframe instead of a stale backlog. Raises
        ``trio.EndOfChannel`` once the subscription is closed.
        """
        if not self._active:
            self._active = True
            self._broadcast.request_keyframe()
        packet = await self._receive.receive()
        self.stats.delivered += 1
        return packet

    def offer(self, packet: PacketT, is_keyframe: bool) -> None:
        if not self._active:
            return
        if self._waiting_for_keyframe and not is_keyframe:
            self.stats.dropped_waiting += 1
            return
        try:
            self._send.send_nowait(packet)
        except trio.WouldBlock:
            self.stats.dropped_full += 1
            self._waiting_for_keyframe = True
            self._broadcast.request_keyframe()
            return
        except trio.ClosedResourceError:
            return
        self.stats.queued += 1
        self._waiting_for_keyframe = False

    @property
    def active(self) -> bool:
        return self._active

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._active and self._waiting_for_keyframe

    def close(self) -> None:
        """Stop receiving packets; a pending ``receive`` ends with EndOfChannel."""
        self._broadcast._subscriptions.discard(self)
        self._send.close()


class Broadcast(Generic[PacketT]):
    """The set of subscriptions one encoder feeds."""

    def __init__(self, *, queue_frames: int = 8, min_keyframe_gap_s: float = 0.25):
        self._queue_frames = queue_frames
        self._min_keyframe_gap_s = min_keyframe_gap_s
        self._subscriptions: set[Subscription[PacketT]] = set()
        self._keyframe_requested = False
        self._last_keyframe_at = float("-inf")
        self.published = 0

    def subscribe(self, name: str) -> Subscription[PacketT]:
        subscription = Subscription(self, name, self._queue_frames)
        self._subscriptions.add(subscription)
        return subscription

    def request_keyframe(self) -> None:
        """Ask for a keyframe soon (a joiner, a dropped backlog, or a PLI)."""
        self._keyframe_requested = True

    def keyframe_wanted(self, now: float) -> bool:
        """Whether the next frame should be a keyframe; ``now`` in seconds."""
        if not self._keyframe_requested:
            return False
        return now - self._last_keyframe_at >= self._min_keyframe_gap_s

    def publish(self, packet: PacketT, is_keyframe: bool, now: float) -> None:
        """Give ``packet`` to every subscription; never blocks."""
        if is_keyframe:
            # This keyframe serves every request made so far; a queue that
            # overflows while taking it asks again.
            self._last_keyframe_at = now
            self._keyframe_requested = False
        self.published += 1
        for subscription in list(self._subscriptions):
            subscription.offer(packet, is_keyframe)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    @property
    def receiving_count(self) -> int:
        """Subscriptions whose sender has started pulling packets."""
        return sum(subscription.active for subscription in self._subscriptions)
