"""One provider's side of the shared breaker state: what to publish, what to adopt, trial leases.

Used by :mod:`resilience._export.shared_state`. Each sync sends one Lua script per
provider (:data:`SYNC_SCRIPT`, atomic in Redis) that publishes this replica's
local transition, if any, by compare-and-set on the provider's ``version``,
answers the shared state after it, and claims, renews or releases this
replica's half-open trial leases. The replica then adopts a shared state
newer than the one it last saw, unless a local transition happened meanwhile
(that one is published by the next sync instead).

A version means something only together with the hash's ``epoch``, a random
token written when the hash is created: a Redis that restarted empty counts
versions from 1 again, so the script compares-and-sets both, and a replica
adopts a shared state whose version or epoch differs from the one it saw. A
publication made against the lost hash competes by the rules below.

A publication whose ``version`` is stale (another replica published first)
still wins when its kind says so: ``manual`` control (force open, disable,
reset) always; a ``trip`` over ``closed``, ``half_open`` or ``open`` (a
failure seen anywhere opens the breaker everywhere; two trips keep the later
reopening time); ``recovered`` (half-open to closed) only over ``half_open``;
``half_open`` never. A replica whose publication lost adopts the shared state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from resilience._core.breaker import DISABLED, FORCED_OPEN, HALF_OPEN, OPEN, STATES, Breaker
from resilience._core.clock import Clock
from resilience._core.provider import Provider
from resilience._core.window import REJECTED

log = logging.getLogger("resilience")

SYNC_SCRIPT = """
-- KEYS[1]: the provider's state hash {state, open_until, version, epoch, origin, updated, lease_seq}
-- KEYS[2]: its half-open trial leases, a sorted set of '<replica>|<n>' scored by expiry (server time)
-- ARGV: kind, expected_version, state, open_until, replica, now, want, max_trials, lease_seconds,
--       expected_epoch, new_epoch (the hash's epoch if this call creates it)
local kind, expected = ARGV[1], tonumber(ARGV[2])
local cur = redis.call('HMGET', KEYS[1], 'state', 'open_until', 'version', 'epoch')
local state, open_until, version, epoch = cur[1], cur[2], tonumber(cur[3]) or 0, cur[4] or ''
local apply = not state
if apply then epoch = ARGV[11] end  -- a new hash (first use, or Redis lost it): versions restart
if kind ~= 'none' and not apply then
  if (version == expected and epoch == ARGV[10]) or kind == 'manual' then
    apply = true
  elseif kind == 'trip' then
    apply = state == 'closed' or state == 'half_open' or state == 'open'
  elseif kind == 'recovered' then
    apply = state == 'half_open'
  end
end
local applied = 0
if apply then
  local new_until = ARGV[4]
  if ARGV[3] == 'open' and state == 'open' and (tonumber(open_until) or 0) > tonumber(new_until) then
    new_until = open_until
  end
  version = version + 1
  state, open_until, applied = ARGV[3], new_until, 1
  redis.call('HSET', KEYS[1], 'state', state, 'open_until', open_until, 'version', version,
             'epoch', epoch, 'origin', ARGV[5], 'updated', ARGV[6])
end
local want, max_trials = tonumber(ARGV[7]), tonumber(ARGV[8])
local time = redis.call('TIME')  -- leases run on the server's clock: replicas' clocks may differ
local server_now = tonumber(time[1]) + tonumber(time[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', server_now)
if state ~= 'half_open' then want = 0 end
local prefix = ARGV[5] .. '|'
local mine = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(member, 1, #prefix) == prefix then mine[#mine + 1] = member end
end
while #mine > want do redis.call('ZREM', KEYS[2], table.remove(mine)) end
local free = max_trials - redis.call('ZCARD', KEYS[2])
while #mine < want and free > 0 do
  mine[#mine + 1] = prefix .. redis.call('HINCRBY', KEYS[1], 'lease_seq', 1)
  free = free - 1
end
local lease_until = server_now + tonumber(ARGV[9])
for _, member in ipairs(mine) do redis.call('ZADD', KEYS[2], lease_until, member) end
if #mine > 0 then redis.call('PEXPIRE', KEYS[2], math.ceil(tonumber(ARGV[9]) * 1000)) end
return {applied, version, state, open_until or '', #mine, epoch}
"""
"""Publish (compare-and-set with the rules above), read back, and lease trial slots, atomically."""

MANUAL, TRIP, RECOVERED, NONE = "manual", "trip", "recovered", "none"


def transition_kind(old: str, new: str) -> str:
    """How a local transition competes with other replicas': manual, trip, recovered or half_open."""
    if new in (FORCED_OPEN, DISABLED):
        return MANUAL
    if new == OPEN:
        return TRIP
    if new == HALF_OPEN:
        return HALF_OPEN
    return RECOVERED if old == HALF_OPEN else MANUAL  # closed: after trials, or a reset


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class Plan(NamedTuple):
    """What one sync sends for one provider."""

    sync: ProviderSync
    generation: int
    kind: str
    state: str
    open_until: float  # wall-clock epoch seconds; 0 unless open
    want: int  # trial leases wanted


class ProviderSync:
    """What one replica knows about one provider's shared state."""

    def __init__(self, provider: Provider, wake: Callable[[], None]) -> None:
        self.provider = provider
        breaker = provider._breaker
        self.synced_generation = breaker.generation  # local and shared agreed at this generation
        self.synced_state: str = breaker._state
        self.seen_version = -1  # the shared version last seen; -1: none yet (adopt it)
        self.seen_epoch = ""  # the epoch of the hash that version belongs to
        self.last: tuple[str, str] | None = None  # the last transition a hook reported
        self.leases = 0
        self._rejected = self._attempts = self._unmet = 0
        self._wake = wake
        breaker.transition_hooks.append(self.hook)

    def hook(self, breaker: Breaker, old: str, new: str) -> None:
        """The breaker's transition hook: note the transition and wake the sync loop."""
        self.last = (old, new)
        self._wake()

    def detach(self) -> None:
        """Remove the hook and give the breaker its own trial limit back."""
        breaker = self.provider._breaker
        if self.hook in breaker.transition_hooks:
            breaker.transition_hooks.remove(self.hook)
        breaker.trial_limit = None
        self.leases = 0

    def plan(self, now: float, wall: float) -> Plan:
        """Read the local breaker; lower its trial limit first if leases are to be released."""
        provider, breaker = self.provider, self.provider._breaker
        _ = provider.state  # an open breaker whose time is up moves to half_open (and notifies)
        with provider._lock:
            generation, state, until = breaker.generation, breaker._state, breaker._open_until
            in_flight, rejected = breaker._trial_in_flight, provider._requests_total[REJECTED]
            attempts = sum(provider._requests_total) - rejected
        kind = NONE if generation == self.synced_generation else self._kind(state)
        demand = rejected - self._rejected + self._unmet  # trials turned away, and leases still owed
        want = self._want(state, in_flight, demand, attempts != self._attempts)
        self._rejected, self._attempts = rejected, attempts
        if want < self.leases:  # stop admitting on leases before they are given back
            self.leases = breaker.trial_limit = want
        return Plan(self, generation, kind, state, wall + (until - now) if state is OPEN else 0.0, want)

    def _kind(self, state: str) -> str:
        last = self.last
        old = last[0] if last is not None and last[1] == state else self.synced_state
        return transition_kind(old, state)

    def _want(self, state: str, in_flight: int, demand: int, active: bool) -> int:
        """Leases to hold: more for trials turned away, the same while trials run, none when idle.

        A replica asks only when it has trials to run, so an idle one never keeps
        the slots from the others; it lets go after one sync without a trial.
        """
        if state != HALF_OPEN:
            return 0
        limit = self.provider.policy.breaker.half_open_max_calls
        if demand > 0:
            return min(limit, max(self.leases, in_flight) + demand)
        return self.leases if active or in_flight else 0

    def settle(self, plan: Plan, reply: list[Any], clock: Clock, wall: Clock) -> None:
        """Take the script's answer: note a publication, adopt a newer shared state, set the leases."""
        applied, version, state, until = int(reply[0]), int(reply[1]), _text(reply[2]), _float(reply[3])
        seen = (version, _text(reply[5]))
        if applied:
            (self.seen_version, self.seen_epoch), self.synced_generation = seen, plan.generation
            self.synced_state = state
            if state == OPEN and until > plan.open_until:  # another trip's later reopening was kept
                self.adopt(state, until, seen, plan.generation, clock, wall)
        elif seen != (self.seen_version, self.seen_epoch):  # newer, or of a hash Redis re-created
            self.adopt(state, until, seen, plan.generation, clock, wall)
        self.leases = int(reply[4])
        self.provider._breaker.trial_limit = self.leases
        self._unmet = max(0, plan.want - self.leases)

    def adopt(
        self, state: str, open_until: float, seen: tuple[int, str], generation: int, clock: Clock, wall: Clock
    ) -> bool:
        """Apply a shared state (``seen``: version, epoch) unless the breaker moved since ``generation``."""
        if state not in STATES:
            log.warning("shared breaker state of %r is %r, not a state; ignored", self.provider.name, state)
            return False
        provider, breaker = self.provider, self.provider._breaker
        with provider._lock:
            if breaker.generation != generation:
                return False  # a local transition: the next sync publishes it
            now = clock()
            breaker.apply_remote_locked(state, now + (open_until - wall()), now)
            self.synced_generation = breaker.generation
        (self.seen_version, self.seen_epoch), self.synced_state = seen, state
        breaker.notify()
        return True

    def fall_back(self) -> None:
        """Redis is unreachable: count it and run on the local breaker alone."""
        self.provider._breaker.trial_limit = None
        self.leases = 0
        self.provider.count_error("shared_state_unavailable")


def _float(value: Any) -> float:
    try:
        return float(_text(value))
    except ValueError:
        return 0.0

