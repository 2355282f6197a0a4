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

    __slots__ = ("res", "members", "order", "lists", "keys", "ref", "rank", "s0", "excess", "seen", "unfit")

    def __init__(self, res):
        self.res = res
        self.members = set()
        self.order = []  # member indexes, ascending
        self.lists = []  # [(slot, [(value, idx), ...])]
        self.keys = {}  # idx -> its value in each of ``lists``, to find and remove it
        self.ref = None  # ((slot, lo, range), ...) that ``s0`` was computed with
        self.rank = []  # [(-s0, idx)], best first
        self.s0 = {}  # idx -> score under ``ref``
        self.excess = 0  # hosts scored beyond the k needed since ``rank`` was last rebuilt
        self.seen = 0  # position in the scheduler's change log already applied
        self.unfit = set()  # members that stopped fitting during the current request: dropped when the next starts


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


def ordered(s, scored):
    """``[(score, idx)]`` sorted as Nova sorts: by weight, highest first, ties by the request's history."""
    scored = sorted(scored, key=lambda item: -item[0])
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
    order = pool.order
    totals = [0.0] * len(order)
    mult, xv = s.t.mult, s.xv
    # Column by column, with the additions in score()'s order: the same floats, a third of the time.
    for slot, lo, rng in params:
        m, x = mult[slot], xv[slot]
        totals = [t + m[i] * ((x[i] - lo) / rng) for t, i in zip(totals, order)]
    pool.ref = params
    pool.s0 = dict(zip(order, totals))
    pool.rank = sorted(zip([-t for t in totals], order))
    pool.excess = 0


def _remove(pool, idx):
    for (_slot, entries), key in zip(pool.lists, pool.keys[idx]):
        del entries[bisect_left(entries, (key, idx))]
    if pool.ref is not None:
        del pool.rank[bisect_left(pool.rank, (-pool.s0[idx], idx))]
        del pool.s0[idx]
    pool.members.discard(idx)
    pool.unfit.discard(idx)
    del pool.keys[idx]
    del pool.order[bisect_left(pool.order, idx)]


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
            entries = sorted((x[i], i) for i in pool.order)
            for value, i in entries:
                keys[i].append(value)
            pool.lists.append((slot, entries))
        pool.keys = {i: tuple(v) for i, v in keys.items()}
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
        members, ref = pool.members, pool.ref
        for idx in changed:
            if idx not in members:
                continue
            fits = s.fits(idx, pool.res)
            if not s.counts_pass(idx) or (at_start and not fits):
                # Instance and I/O counts only grow within a batch: a host they filter out stays out.
                _remove(pool, idx)
                continue
            if not fits:
                pool.unfit.add(idx)
            for (_slot, entries), key in zip(pool.lists, pool.keys[idx]):
                del entries[bisect_left(entries, (key, idx))]
            new = []
            for slot, entries in pool.lists:
                value = xv[slot][idx]
                insort(entries, (value, idx))
                new.append(value)
            pool.keys[idx] = tuple(new)
            if ref is not None:
                del pool.rank[bisect_left(pool.rank, (-pool.s0[idx], idx))]
                value = pool.s0[idx] = score(s, ref, None, idx)
                insort(pool.rank, (-value, idx))
    return pool


def pool_params(s, pool, excluded):
    """The current normalization over the pool's members minus ``excluded``, from the sorted lists' ends."""
    params = []
    for slot, entries in pool.lists:
        if excluded:
            lo = next(value for value, idx in entries if idx not in excluded)
            hi = next(value for value, idx in reversed(entries) if idx not in excluded)
        else:
            lo, hi = entries[0][0], entries[-1][0]
        found = W.normalize_params(slot, (lo, hi))
        if found is not None:
            params.append((slot,) + found)
    return tuple(params)


def top(s, pool, excluded, params, soft, group_on, k):
    """Every member (not ``excluded``) whose score is at least the k-th best, as ``[(score, idx)]`` unsorted.

    Scores under the current parameters differ from the reference scores ``s0`` by at most ``delta``; scanning
    ``rank`` best first, no host left can reach the k-th best once its ``s0 + delta`` falls below it.
    """
    if pool.ref is None or pool.excess > len(pool.members):
        _rebuild(s, pool, params)
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
    cur = {p[0]: p for p in params}
    ref = {p[0]: p for p in pool.ref}
    delta = 0.0
    for slot, entries in pool.lists:
        c, r = cur.get(slot), ref.get(slot)
        if c is None and r is None:
            continue
        gap = 0.0
        for x in (entries[0][0], entries[-1][0]):
            t = (x - c[1]) / c[2] if c else 0.0
            t0 = (x - r[1]) / r[2] if r else 0.0
            gap = max(gap, abs(t - t0))
        delta += s.mabs[slot] * gap
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
    for neg, i in pool.rank:
        if len(heap) >= k and limit - neg < heap[0]:
            break
        if i in seen:
            continue
        scanned += 1
        value = score(s, params, soft, i)
        scored.append((value, i))
        if len(heap) < k:
            heapq.heappush(heap, value)
        elif value > heap[0]:
            heapq.heapreplace(heap, value)
    pool.excess += max(scanned - k, 0)
    if len(heap) >= k:
        threshold = heap[0]
        scored = [item for item in scored if item[0] >= threshold]
    return scored
