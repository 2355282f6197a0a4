# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ordering hosts the way Nova's weight handler does, fast: pools, bounded rescans and Nova's tie-breaking.

Nova weighs every candidate for every server. A batch of 10,000 servers on 1,000 hosts cannot afford that in
Python, so hosts are kept in pools, one per request shape (static filters) and flavor size, with

* ``lists``: the members sorted by each weigher's value, for the normalization's minimum and maximum;
* ``rank``: the members sorted by their total score under reference normalization parameters ``ref``.

A placement changes one host, so only that host is re-sorted. When the current parameters drift from ``ref``, a
host's score moves by at most a bound computed from the drift (every term is affine in its value, so the largest
change is at the ends of the value range); scanning ``rank`` from the top can stop once no host further down can
reach the k-th best score. Scans that had to look far rebuild ``rank`` under the current parameters.

Ties: Nova sorts with Python's stable sort, so hosts with equal weight keep the order of the list it sorted, which
is the host list for the first server of a request and the previous server's sorted list (the chosen host moved
to its front) for the later ones. :func:`tie_order` reproduces that order from the request's history without
keeping the whole sorted list.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from functools import cmp_to_key

from ansible_collections.virtfleet.compute.plugins.module_utils._scheduler import weighers as W


class Pool:
    """The hosts that passed a request shape's static filters and fitted one flavor size when a request started."""

    __slots__ = ("res", "members", "order", "lists", "keys", "ref", "rank", "s0", "excess", "seen", "unfit",
                 "sorted_lists")
    # lists: [(slot, _HEAP or _SORTED, entries)]

    def __init__(self, res):
        self.res = res
        self.members = set()
        self.order = []  # member indexes, ascending
        self.lists = []  # [(slot, kind, entries)]: a max-heap [(-value, idx)] or a sorted list [(value, idx)]
        self.keys = {}  # idx -> its value in each sorted list (None for heaps), to find and remove it
        self.ref = None  # ((slot, lo, range), ...) that ``s0`` was computed with
        self.rank = []  # [(-s0, idx)], best first
        self.s0 = []  # per host index, its score under ``ref`` (a list: faster and smaller than a dict)
        self.excess = 0  # hosts scored beyond the k needed since ``rank`` was last rebuilt
        self.seen = 0  # position in the scheduler's change log already applied
        self.unfit = set()  # members that stopped fitting during the current request: dropped when the next starts
        self.sorted_lists = False  # whether any of ``lists`` is a sorted list (else all are heaps)


class Step:
    """One server of a request, as the tie-breaking needs it: its normalization and the host put first."""

    __slots__ = ("params", "soft", "front")

    def __init__(self, params, soft, front):
        self.params = params
        self.soft = soft
        self.front = front


def score(s, params, soft, i, vec=None):
    """Host ``i``'s total weight: ``sum(multiplier * (value - lo) / range)`` in ``weighers.ORDER``, soft last.

    ``vec`` (the weigher values of an earlier step) replaces the current values. Every score of the scheduler
    comes from this one expression, so equal inputs give bit-identical totals, as Nova's do.
    """
    mult = s.t.mult
    total = 0.0
    if vec is None:
        xv = s.xv
        for slot, lo, rng in params:
            total += mult[slot][i] * ((xv[slot][i] - lo) / rng)
        if soft is not None:
            which, sign, lo, rng = soft
            total += s.t.soft_mult[i][which] * ((sign * s.group_count(i) - lo) / rng)
    else:
        for slot, lo, rng in params:
            total += mult[slot][i] * ((vec[slot] - lo) / rng)
        if soft is not None:
            which, sign, lo, rng = soft
            total += s.t.soft_mult[i][which] * ((sign * vec[-1] - lo) / rng)
    return total


def params_over(s, hosts, soft_info):
    """Nova's normalization over ``hosts``: ``((slot, lo, range), ...)`` of the weighers that add something."""
    params = []
    xv = s.xv
    for slot in s.slots:
        values = [xv[slot][i] for i in hosts]
        found = W.normalize_params(slot, values)
        if found is not None:
            params.append((slot,) + found)
    soft = None
    if soft_info is not None:
        which, sign = soft_info
        values = [sign * s.group_count(i) for i in hosts]
        lo, hi = min(values), max(values)
        if hi != lo:
            soft = (which, sign, float(lo), float(hi) - float(lo))
    return tuple(params), soft


# ---------------------------------------------------------------------------------------------------------------------
# ties

def tie_order(s, hosts):
    """``hosts`` (all of equal weight now) in the order Nova's stable sort leaves them."""
    if len(hosts) < 2:
        return list(hosts)
    if not s.run_steps:
        return sorted(hosts)
    return sorted(hosts, key=cmp_to_key(lambda g, h: _compare(s, g, h)))


def _compare(s, g, h):
    """-1 when ``g`` comes before ``h`` in the previous server's sorted list, going back as far as needed."""
    steps = s.run_steps
    j = len(steps) - 1
    same_mult = s.same_multipliers(g, h)
    while j >= 0:
        step = steps[j]
        if step.front == g:
            return -1
        if step.front == h:
            return 1
        vg, vh = s.vector_at(g, j), s.vector_at(h, j)
        if same_mult and vg == vh:
            # Equal inputs weigh the same at every step back to the last one that moved or led with either host.
            j = max(s.last_event(g, j), s.last_event(h, j))
            continue
        sg, sh = score(s, step.params, step.soft, g, vg), score(s, step.params, step.soft, h, vh)
        if sg != sh:
            return -1 if sg > sh else 1
        j -= 1
    return -1 if g < h else 1


def _by_weight(item):
    return -item[0]


def ordered(s, scored):
    """``[(score, idx)]`` sorted as Nova sorts: by weight, highest first, ties by the request's history."""
    scored = sorted(scored, key=_by_weight)
    if len({value for value, _i in scored}) == len(scored):
        return scored  # no ties
    out = []
    start = 0
    while start < len(scored):
        end = start + 1
        while end < len(scored) and scored[end][0] == scored[start][0]:
            end += 1
        group = [i for _score, i in scored[start:end]]
        out.extend((scored[start][0], i) for i in tie_order(s, group))
        start = end
    return out


# ---------------------------------------------------------------------------------------------------------------------
# pools

def _rebuild(s, pool, params):
    # In the order of the last ranking: the new one is nearly the same, and Python's sort is fast on nearly sorted
    # input. Ties are broken by host index either way.
    order = [i for _neg, i in pool.rank] if len(pool.rank) == len(pool.order) else pool.order
    totals = [0.0] * len(order)
    mult, xv = s.t.mult, s.xv
    # Column by column, with the additions in score()'s order: the same floats, a third of the time.
    for slot, lo, rng in params:
        m, x = mult[slot], xv[slot]
        uniform = s.uniform[slot]
        # The same floats as score(): x - 0.0 is x, and one multiplier for every host is that multiplier.
        if uniform is not None and lo == 0.0:
            totals = [t + uniform * (x[i] / rng) for t, i in zip(totals, order)]
        else:
            totals = [t + m[i] * ((x[i] - lo) / rng) for t, i in zip(totals, order)]
    pool.ref = params
    s0 = [0.0] * s.n
    for i, total in zip(order, totals):
        s0[i] = total
    pool.s0 = s0
    pool.rank = sorted(zip([-t for t in totals], order))
    pool.excess = 0


def _heap_of(s, slot, order):
    heap = [(-s.xv[slot][i], i) for i in order]
    heapq.heapify(heap)
    return heap


def _remove(pool, idx):
    if pool.sorted_lists:
        for (_slot, kind, entries), key in zip(pool.lists, pool.keys.pop(idx)):
            if kind is _SORTED:
                del entries[bisect_left(entries, (key, idx))]
    # heaps drop the host lazily: it is no member any more
    if pool.ref is not None:
        del pool.rank[bisect_left(pool.rank, (-pool.s0[idx], idx))]
    pool.members.discard(idx)
    pool.unfit.discard(idx)
    del pool.order[bisect_left(pool.order, idx)]


# How a pool follows each weigher's range: weighers normalized from 0 (Nova's minval = 0) only need the maximum,
# kept in a max-heap whose outdated entries are dropped when they surface; the others need both ends, kept in a
# sorted list.
_HEAP, _SORTED = "heap", "sorted"


def get_pool(s, req, at_start):
    """The request's pool, brought up to date with the placements since it was last used.

    At the start of a request the members that no longer fit leave (Nova: placement no longer offers them);
    during a request they stay, weighed but never claimed (Nova keeps weighing them, the claim skips them).
    """
    key = (req.static_key(), req.res)
    pool = s.pools.get(key)
    xv = s.xv
    if pool is None:
        pool = Pool(req.res)
        pool.order = [i for i in s.static_candidates(req) if s.fits(i, req.res) and s.counts_pass(i)]
        pool.members = set(pool.order)
        keys = {i: [] for i in pool.order}
        for slot in s.slots:
            x = xv[slot]
            if slot in W.MINVAL_ZERO:
                pool.lists.append((slot, _HEAP, _heap_of(s, slot, pool.order)))
                for i in pool.order:
                    keys[i].append(None)
                continue
            entries = sorted((x[i], i) for i in pool.order)
            for value, i in entries:
                keys[i].append(value)
            pool.lists.append((slot, _SORTED, entries))
        pool.sorted_lists = any(kind is _SORTED for _slot, kind, _entries in pool.lists)
        pool.keys = {i: tuple(v) for i, v in keys.items()} if pool.sorted_lists else {}
        pool.seen = len(s.log)
        s.pools[key] = pool
        return pool
    if at_start and pool.unfit:
        for idx in list(pool.unfit):
            if not s.fits(idx, pool.res):
                _remove(pool, idx)
        pool.unfit.clear()
    if pool.seen != len(s.log):
        changed = set(s.log[pool.seen:])
        pool.seen = len(s.log)
        members, ref, rank, s0 = pool.members, pool.ref, pool.rank, pool.s0
        push = heapq.heappush
        sorted_lists = pool.sorted_lists
        heaps = [(xv[slot], entries) for slot, kind, entries in pool.lists if kind is _HEAP]
        # score() inlined, as in top()
        columns = [(s.t.mult[slot], xv[slot], lo, rng) for slot, lo, rng in ref or ()]
        counts = s.ninst_filter or s.io_filter
        for idx in changed:
            if idx not in members:
                continue
            fits = s.fits(idx, pool.res)
            if (counts and not s.counts_pass(idx)) or (at_start and not fits):
                # Instance and I/O counts only grow within a batch: a host they filter out stays out.
                _remove(pool, idx)
                continue
            if not fits:
                pool.unfit.add(idx)
            if sorted_lists:
                new = []
                for (slot, kind, entries), old in zip(pool.lists, pool.keys[idx]):
                    value = xv[slot][idx]
                    if kind is _HEAP:
                        push(entries, (-value, idx))  # the old entry no longer matches the host's value: outdated
                        new.append(None)
                        continue
                    del entries[bisect_left(entries, (old, idx))]
                    insort(entries, (value, idx))
                    new.append(value)
                pool.keys[idx] = tuple(new)
            else:
                for x, entries in heaps:
                    push(entries, (-x[idx], idx))
            if ref is not None:
                del rank[bisect_left(rank, (-s0[idx], idx))]
                value = 0.0
                for m, x, lo, rng in columns:
                    value += m[idx] * ((x[idx] - lo) / rng)
                s0[idx] = value
                insort(rank, (-value, idx))
        for slot, kind, entries in pool.lists:
            if kind is _HEAP and len(entries) > 3 * len(members) + 64:
                entries[:] = _heap_of(s, slot, pool.order)
    return pool


def _heap_max(s, pool, slot, heap, excluded):
    """The largest current value of a member not ``excluded`` (0 when there is none), dropping outdated entries."""
    x, members = s.xv[slot], pool.members
    aside = []
    found = 0
    while heap:
        neg, i = heap[0]
        if i not in members or -neg != x[i]:
            heapq.heappop(heap)
            continue
        if i in excluded:
            aside.append(heapq.heappop(heap))
            continue
        found = -neg
        break
    for entry in aside:
        heapq.heappush(heap, entry)
    return found


def _ends(s, pool, excluded):
    """Per weigher of the pool: (slot, lowest, highest value) over the members not ``excluded``."""
    out = []
    for slot, kind, entries in pool.lists:
        if kind is _HEAP:
            out.append((slot, 0, _heap_max(s, pool, slot, entries, excluded)))
        elif excluded:
            out.append((slot, next(value for value, idx in entries if idx not in excluded),
                        next(value for value, idx in reversed(entries) if idx not in excluded)))
        else:
            out.append((slot, entries[0][0], entries[-1][0]))
    return out


def pool_params(s, pool, excluded):
    """The current normalization over the pool's members minus ``excluded``, and the value ranges over all its
    members (for the drift bound): ``(params, ends)``."""
    ends = _ends(s, pool, excluded)
    params = []
    for slot, lo, hi in ends:
        found = W.normalize_params(slot, (hi,) if slot in W.MINVAL_ZERO else (lo, hi))
        if found is not None:
            params.append((slot,) + found)
    return tuple(params), (ends if not excluded else None)


REBUILD_DRIFT = 0.01


def _drift(s, pool, params, ends):
    """How far any member's score can have moved since ``pool.ref``: each term is affine in its value, so the
    largest change is at the ends of the value range."""
    cur = {p[0]: p for p in params}
    ref = {p[0]: p for p in pool.ref}
    delta = 0.0
    for slot, lo, hi in ends if ends is not None else _ends(s, pool, ()):
        c, r = cur.get(slot), ref.get(slot)
        if c is None and r is None:
            continue
        gap = 0.0
        for x in (lo, hi):
            t = (x - c[1]) / c[2] if c else 0.0
            t0 = (x - r[1]) / r[2] if r else 0.0
            gap = max(gap, abs(t - t0))
        delta += s.mabs[slot] * gap
    return delta


def top(s, pool, excluded, params, soft, group_on, k, ends=None):
    """Every member (not ``excluded``) whose score is at least the k-th best, as ``[(score, idx)]`` unsorted.

    Scores under the current parameters differ from the reference scores ``s0`` by at most ``delta``; scanning
    ``rank`` best first, no host left can reach the k-th best once its ``s0 + delta`` falls below it.
    """
    if pool.ref is None or pool.excess > len(pool.members):
        _rebuild(s, pool, params)
    delta = 0.0 if params == pool.ref else _drift(s, pool, params, ends)
    if delta > REBUILD_DRIFT * s.span:
        # A drift this large (typically the I/O weigher's maximum going up by one) would have the scan score a
        # good part of the pool: ranking it afresh costs less.
        _rebuild(s, pool, params)
        delta = 0.0
    scored = []
    if soft is None and params == pool.ref:
        # The reference scores are the scores: take the first k, and whoever ties with the k-th.
        for neg, i in pool.rank:
            if i in excluded:
                continue
            if len(scored) >= k and -neg < scored[-1][0]:
                break
            scored.append((-neg, i))
        return scored
    limit = delta + s.eps
    heap = []  # the k best scores so far
    seen = set(excluded)
    if soft is not None:
        # Hosts without group members all have the soft value 0; the members are scored up front.
        which, sign, lo, rng = soft
        limit += max(s.smax[which], 0.0) * ((0 - lo) / rng)
        for i in group_on:
            seen.add(i)
            value = score(s, params, soft, i)
            scored.append((value, i))
            if len(heap) < k:
                heapq.heappush(heap, value)
            elif value > heap[0]:
                heapq.heapreplace(heap, value)
    scanned = 0
    # score() inlined for the hosts without group members (soft value 0): this loop is the scheduler's hot spot.
    columns = [(s.t.mult[slot], s.xv[slot], lo, rng) for slot, lo, rng in params]
    soft_mult = s.t.soft_mult
    soft_zero = None if soft is None else (soft[0], (0 - soft[2]) / soft[3])
    push, replace = heapq.heappush, heapq.heapreplace
    for neg, i in pool.rank:
        if len(heap) >= k and limit - neg < heap[0]:
            break
        if i in seen:
            continue
        scanned += 1
        value = 0.0
        for m, x, lo, rng in columns:
            value += m[i] * ((x[i] - lo) / rng)
        if soft_zero is not None:
            value += soft_mult[i][soft_zero[0]] * soft_zero[1]
        scored.append((value, i))
        if len(heap) < k:
            push(heap, value)
        elif value > heap[0]:
            replace(heap, value)
    pool.excess += max(scanned - k, 0)
    if len(heap) >= k:
        threshold = heap[0]
        scored = [item for item in scored if item[0] >= threshold]
    return scored
