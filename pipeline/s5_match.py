"""Match: the tracker's association round, compiled (numba): prediction, the five passes of
pipeline.s5_track, duplicates, the minimum-cost assignment where motion is ambiguous.

Why compiled: a round is a few hundred small array operations whatever the batch (costs per pass,
masks, conflicts); as numpy calls they cost 1-3 us each, which held one process to about 3,000
frames/s on 2 cores with the tracker the largest share (issue 34, docs/BENCHMARKS.md). Here the
same arithmetic runs as loops per camera, one call a round.

The decisions are those of the array tracker it replaces (the same operations in the same order,
in float64), with one exception: where two assignments cost exactly the same, lap.lapjv and the
solver here (`_assign`: the Hungarian method with potentials on the matrix lapjv extends, pairs
costing the limit or more never chosen) may pick different ones. lapjv cannot be called from
compiled code, and a Python call per conflicted camera and pass would cost more than the round.

The track state's columns (one float64 row per track) are laid out here; pipeline.s5_track owns the
rows.
"""
from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np
from numba.core.caching import NullCache

from pipeline.logs import log_event

log = logging.getLogger(__name__)

# the columns of a track's row: the motion is a constant-velocity Kalman filter of the box as
# (cx, cy, w, h), each with its rate per second; with diagonal noise the four coordinates are
# independent filters of (value, rate), so each keeps its 2x2 covariance as three numbers
X, V = slice(0, 4), slice(4, 8)  # cx, cy, w, h and their rates
P00, P01, P11 = slice(8, 12), slice(12, 16), slice(16, 20)
T = 20  # media time of the motion state
LAST = slice(21, 25)  # where it was last seen (xyxy)
SEEN_PTS, FIRST, LAST_SEEN, HITS = 25, 26, 27, 28  # media time and capture times of its sightings; how many
CONFIRMED, PUBLISHED, OCCLUDED, CLASS, ID = 29, 30, 31, 32, 33
MISSED = 34  # frames in a row unseen
SPEED_SEEN = 35  # its speed when last seen (px/s): an unseen track's own speed decays
COLUMNS = 36

# Kalman noise, relative to the box's size, per 1/25 s (ByteTrack's weights, made time-based)
STD_POSITION = 1 / 20
STD_VELOCITY = 1 / 160
STEP_S = 1 / 25
BUFFER = 0.5  # boxes grown by this much of their size on each side, for the passes that need slack
STEADY_HITS = 3  # sightings that make a track trusted to be looked for with grown boxes
CLASS_MISMATCH = 0.3  # association cost of a detection of another class than the track's (IoU units)
DECAY_S = 0.4  # an unseen track's speed falls by e every this long: a stopped object's prediction stops
DIRECTION_WEIGHT = 0.2  # association cost of a box straight behind a moving track (OC-SORT's momentum)
MOVING = 0.5  # a track is moving at this many of its sizes per second or faster
NEAR = 0.5  # a box this many of the track's sizes from where it was last seen, or more, counts fully
DUPLICATE_IOU = 0.5  # a new box this much over a box matched this frame is the same object again
OVERLAP_IOU = 0.3  # a new box this much over a live track is published only once seen again
LOOK_KEEP = 0.7  # a track's look: this much its old average, the rest the new sighting's
LOOK_WEIGHT = 0.5  # where two tracks want one box: the cost of looks with nothing in common (IoU units)
REFIND_LOOK = 0.7  # least similarity of looks to find a lost track again (Bhattacharyya coefficient)
GATE_IOU = 0.5  # a pair overlapping less than this is not by motion alone the same object: its looks must
GATE_LOOK = 0.15  # be this alike or more (Bhattacharyya coefficient), where both are known
JUMP_TRAVEL = 1.5  # a steady track seen in the frame before is matched to no box farther from where it
# is predicted than half its size plus this many times the way its speed takes it in the gap
REFIND_PASS = 4  # the pass that finds lost tracks again by their looks
REACH = 1.0  # a lost track is looked for this many of its sizes per second away, plus
REACH_SPEED = 0.75  # this much of the speed it had when last seen (its own decays while unseen), per second
REFIND_HITS = 5  # a track seen fewer times is not looked for by its look: a false box's look is the
# background's, and so is the next false box's (a square counted twice, tracking seed 4x3, 25 fps)



def _jit(fn):
    """numba.njit, cached in numba's cache folder (beside this file where writable, else the
    user's cache or NUMBA_CACHE_DIR); compiled at each start where no folder is writable."""
    try:
        compiled = numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        compiled = numba.njit(nogil=True)(fn)
    _COMPILED.append(compiled)
    return compiled


_COMPILED: list = []  # every compiled function of this module (their caches are one)


# ---------------------------------------------------------------------- small pieces
@_jit
def _box_iou(a0, a1, a2, a3, b0, b1, b2, b3):
    """(intersection, IoU) of two xyxy boxes."""
    w = min(a2, b2) - max(a0, b0)
    h = min(a3, b3) - max(a1, b1)
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a2 - a0) * (a3 - a1) + (b2 - b0) * (b3 - b1) - inter
    return inter, (inter / union if union > 0 else 0.0)


@_jit
def _grown_box(box, buffer, out):
    """`box` (xyxy) grown by `buffer` of its width and height on each side, into `out`."""
    pw, ph = (box[2] - box[0]) * buffer, (box[3] - box[1]) * buffer
    out[0], out[1], out[2], out[3] = box[0] - pw, box[1] - ph, box[2] + pw, box[3] + ph


@_jit
def _bhattacharyya(a, b):
    """Bhattacharyya coefficient of two looks (pipeline.s5_looks.similarity: NaN where either is
    unknown), summed as numpy sums (eight partial sums, then the rest), so it is the same number."""
    n = a.shape[0]
    if n < 8:
        total = 0.0
        for i in range(n):
            total += math.sqrt(a[i] * b[i])
        return total
    r = np.empty(8)
    for k in range(8):
        r[k] = math.sqrt(a[k] * b[k])
    i = 8
    while i + 8 <= n:
        for k in range(8):
            r[k] += math.sqrt(a[i + k] * b[i + k])
        i += 8
    total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    while i < n:
        total += math.sqrt(a[i] * b[i])
        i += 1
    return total


@_jit
def _assign(cost, limit):
    """Minimum-cost matching of the rows of `cost` [R, C] to its columns, a pair costing `limit`
    or more never matched -> each row's column, -1 for none. The problem lap.lapjv solves when
    it extends the matrix (a row or column left out costs limit / 2), as its equivalent: each
    row takes a column at cost - limit, or one of R free columns at 0 (left out); the Hungarian
    method with potentials on that R x (C + R) matrix (Kuhn-Munkres, O(R^2 (C + R)))."""
    rows, cols = cost.shape
    n, m = rows, cols + rows
    a = np.zeros((n + 1, m + 1))  # 1-based; the columns after `cols` are the free ones
    for i in range(1, n + 1):
        for j in range(1, cols + 1):
            c = cost[i - 1, j - 1]
            a[i, j] = c - limit if c < limit else 1.0  # (an infinite cost too: never matched)
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    p, way = np.zeros(m + 1, np.int64), np.zeros(m + 1, np.int64)
    minv, used = np.empty(m + 1), np.empty(m + 1, np.bool_)
    for i in range(1, n + 1):
        p[0], j0 = i, 0
        minv[:], used[:] = np.inf, False
        while True:
            used[j0] = True
            i0, delta, j1 = p[j0], np.inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = a[i0, j] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(m + 1):
                if used[j]:
                    u[p[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    col_of = np.full(rows, -1, np.int64)
    for j in range(1, cols + 1):
        i = p[j]
        if i >= 1 and cost[i - 1, j - 1] < limit:
            col_of[i - 1] = j - 1
    return col_of


# ---------------------------------------------------------------------- the round
@_jit
def _predict(state, at):
    """Move each track's motion on to media time at[i] (pipeline.s5_track: an unseen track keeps
    its size, and its speed decays unless a detection covered it)."""
    for i in range(state.shape[0]):
        s = state[i]
        unseen = s[SEEN_PTS] < s[T]
        if unseen:
            s[6] = 0.0
            s[7] = 0.0
        dt = at[i] - s[T]
        s[T] = max(at[i], s[T])
        if not dt > 0:
            continue
        if unseen and s[OCCLUDED] == 0:
            s[4] *= math.exp(-dt / DECAY_S)
            s[5] *= math.exp(-dt / DECAY_S)
        steps = dt / STEP_S
        w, h = max(s[2], 1.0), max(s[3], 1.0)
        qw, qh = (STD_POSITION * w) ** 2 * steps, (STD_POSITION * h) ** 2 * steps  # process noise per scale
        rw, rh = (STD_VELOCITY * w / STEP_S) ** 2 * steps, (STD_VELOCITY * h / STEP_S) ** 2 * steps
        for k in range(4):
            q, r = (qw, rw) if k % 2 == 0 else (qh, rh)
            a, b, c = s[8 + k], s[12 + k], s[16 + k]
            s[k] += s[4 + k] * dt
            s[8 + k] = a + 2 * dt * b + dt * dt * c + q
            s[12 + k] = b + dt * c
            s[16 + k] = c + r
        s[2], s[3] = max(s[2], 1.0), max(s[3], 1.0)


@_jit
def _cost(iou, other, moving, dets, last, velocity, speed, size):
    """[tracks, detections]: 1 - IoU, plus CLASS_MISMATCH for another class and up to
    DIRECTION_WEIGHT for a box behind a moving track (from where it was last seen, against its
    velocity: OC-SORT's momentum), `dets` the boxes the IoU was of."""
    nt, nd = iou.shape
    cost = np.empty((nt, nd))
    for i in range(nt):
        for j in range(nd):
            c = 1 - iou[i, j] + CLASS_MISMATCH * other[i, j]
            if moving[i] and iou[i, j] > 0:
                d = dets[j]
                dx = (d[0] + d[2]) / 2 - (last[i, 0] + last[i, 2]) / 2
                dy = (d[1] + d[3]) / 2 - (last[i, 1] + last[i, 3]) / 2
                dist = math.hypot(dx, dy)
                cos = (dx * velocity[i, 0] + dy * velocity[i, 1]) / max(dist * speed[i], 1e-9)
                c = c + DIRECTION_WEIGHT * ((1 - cos) / 2 * min(1.0, dist / (NEAR * size[i])))
            cost[i, j] = c
    return cost


@_jit
def _refind_cost(wanted, ts, ds, free_high, last, dets, size, seen_speed, unseen_for, other, tlooks, dlooks):
    """[tracks, detections]: 1 - the similarity of looks of each `wanted` track (lost, with a look)
    and free confident box, plus CLASS_MISMATCH for another class; infinite for a box out of the
    track's reach (from where it was last seen: REACH of its size per second unseen, plus
    REACH_SPEED of the speed it had then), of another size (half or twice its size or more) or
    with no look."""
    nt, nd = other.shape
    cost = np.full((nt, nd), np.inf)
    for i in range(nt):
        if not wanted[i]:
            continue
        gap = unseen_for[ts + i]
        reach = size[i] * (1 + REACH * gap) + REACH_SPEED * seen_speed[i] * gap
        for j in range(nd):
            if not free_high[ds + j]:
                continue
            b, l = dets[j], last[i]
            dist = math.hypot((b[0] + b[2] - l[0] - l[2]) / 2, (b[1] + b[3] - l[1] - l[3]) / 2)
            ratio = math.sqrt(max((b[2] - b[0]) * (b[3] - b[1]), 1.0)) / size[i]
            alike = _bhattacharyya(tlooks[ts + i], dlooks[ds + j])
            if dist <= reach and ratio > 0.5 and ratio < 2 and not math.isnan(alike):
                cost[i, j] = 1 - alike + CLASS_MISMATCH * other[i, j]
    return cost


@_jit
def _match(cost, rows, cols, limit, confident, looks, step, ts, ds, tlooks, dlooks, free_track, free_high,
           matched, pass_of):
    """Match the tracks `rows` with the detections `cols` of one camera by minimum total cost,
    pairs costing `limit` or more excluded. Where no track nor detection has two pairs under the
    limit those pairs are the matching; else an assignment, where unlike looks add up to
    LOOK_WEIGHT to a pair's cost (`looks`)."""
    nt, nd = cost.shape
    allowed = np.zeros((nt, nd), np.bool_)
    per_row, per_col = np.zeros(nt, np.int64), np.zeros(nd, np.int64)
    simple = True
    for i in range(nt):
        if rows[i]:
            for j in range(nd):
                if cols[j] and cost[i, j] < limit:
                    allowed[i, j] = True
                    per_row[i] += 1
                    per_col[j] += 1
                    simple = simple and per_row[i] <= 1 and per_col[j] <= 1
    pairs_r, pairs_c = np.full(nt, -1, np.int64), np.full(nt, -1, np.int64)
    if simple:
        for i in range(nt):
            for j in range(nd):
                if allowed[i, j]:
                    pairs_r[i], pairs_c[i] = i, j
    else:
        r, c = np.flatnonzero(per_row), np.flatnonzero(per_col)  # (a track or box with no pair under the limit stays out)
        sub, most = np.empty((len(r), len(c))), limit
        if looks:
            most = limit + LOOK_WEIGHT
        for a in range(len(r)):
            for b in range(len(c)):
                i, j = r[a], c[b]
                if not looks:
                    sub[a, b] = cost[i, j]
                elif allowed[i, j]:
                    unlike = 1 - _bhattacharyya(tlooks[ts + i], dlooks[ds + j])
                    sub[a, b] = cost[i, j] + LOOK_WEIGHT * (0.0 if math.isnan(unlike) else unlike)
                else:
                    sub[a, b] = most + 1
        col_of = _assign(sub, most)
        for a in range(len(r)):
            if col_of[a] >= 0:
                pairs_r[r[a]], pairs_c[r[a]] = r[a], c[col_of[a]]
    for i in range(nt):
        j = pairs_c[i]
        if j >= 0:
            free_track[ts + i] = False
            pass_of[ts + i] = step
            if confident:
                free_high[ds + j] = False
            matched[ds + j] = ts + i


@_jit
def _over_any(nd, dets, which, over):
    """[detections of one camera]: which of the boxes `which` lie over one of the boxes `over` by
    DUPLICATE_IOU or more (both masks over the camera's detections)."""
    found = np.zeros(nd, np.bool_)
    for j in range(nd):
        if which[j]:
            for k in range(nd):
                if over[k]:
                    a, c = dets[j], dets[k]
                    if _box_iou(a[0], a[1], a[2], a[3], c[0], c[1], c[2], c[3])[1] >= DUPLICATE_IOU:
                        found[j] = True
                        break
    return found


@_jit
def _drop_duplicates(ds, nd, dets, high, free_high, dup):
    """Confident detections left over a confident one matched by DUPLICATE_IOU or more: dropped."""
    taken, free = np.zeros(nd, np.bool_), free_high[ds:ds + nd]
    for j in range(nd):
        taken[j] = high[ds + j] and not free_high[ds + j] and not dup[ds + j]
    if not (taken.any() and free.any()):
        return
    again = _over_any(nd, dets, free, taken)
    for j in range(nd):
        if again[j]:
            free_high[ds + j] = False
            dup[ds + j] = True


@_jit
def _weak_left(ds, nd, dets, high, low, free_high):
    """[detections of one camera]: the weak ones not over a confident one matched so far by
    DUPLICATE_IOU or more (those are the matched object again)."""
    matched = np.zeros(nd, np.bool_)
    for k in range(nd):
        matched[k] = high[ds + k] and not free_high[ds + k]
    left = low[ds:ds + nd].copy()
    again = _over_any(nd, dets, left, matched)
    for j in range(nd):
        left[j] = left[j] and not again[j]
    return left


@_jit
def _camera(b, state, tstart, recent, unseen_for, tlooks, boxes, classes, high, low, valid, dstart, dlooks,
            match_lim, low_lim, before, any_look, matched, free_high, dup, free_track, pass_of, covered):
    """One camera's share of a round: the five passes of pipeline.s5_track over its tracks
    state[tstart[b]:tstart[b + 1]] and detections boxes[dstart[b]:dstart[b + 1]]."""
    ts, ds = tstart[b], dstart[b]
    nt, nd = tstart[b + 1] - ts, dstart[b + 1] - ds
    if nt == 0 or nd == 0:
        return
    dets = np.zeros((nd, 4))  # a box that is not valid is never near anything
    grown_dets = np.empty((nd, 4))
    for j in range(nd):
        if valid[ds + j]:
            dets[j] = boxes[ds + j]
        _grown_box(dets[j], BUFFER, grown_dets[j])
    predicted, grown, grown_last = np.empty((nt, 4)), np.empty((nt, 4)), np.empty((nt, 4))
    last, velocity = np.empty((nt, 4)), np.empty((nt, 2))
    speed, size, seen_speed, jump2 = np.empty(nt), np.empty(nt), np.empty(nt), np.full(nt, np.inf)
    confirmed, steady, lost, has_look, moving = (np.zeros(nt, np.bool_), np.zeros(nt, np.bool_),
                                                 np.zeros(nt, np.bool_), np.zeros(nt, np.bool_),
                                                 np.zeros(nt, np.bool_))
    for i in range(nt):
        s = state[ts + i]
        cx, cy, w, h = s[0], s[1], s[2], s[3]
        predicted[i, 0], predicted[i, 1], predicted[i, 2], predicted[i, 3] = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        _grown_box(predicted[i], BUFFER, grown[i])
        last[i] = s[LAST]
        _grown_box(last[i], BUFFER, grown_last[i])
        velocity[i, 0], velocity[i, 1] = s[4], s[5]
        speed[i] = math.hypot(s[4], s[5])
        seen_speed[i] = s[SPEED_SEEN]
        size[i] = math.sqrt(max(w * h, 1.0))
        confirmed[i], steady[i] = s[CONFIRMED] > 0, s[HITS] >= STEADY_HITS
        lost[i] = s[SEEN_PTS] < before[b]  # unseen in the frame before this one too
        has_look[i] = not math.isnan(tlooks[ts + i, 0])
        moving[i] = steady[i] and speed[i] >= MOVING * size[i]
        if steady[i] and not lost[i]:
            jump2[i] = (2 * (0.5 * size[i] + JUMP_TRAVEL * speed[i] * unseen_for[ts + i])) ** 2
    iou, iou_grown, iou_where = np.empty((nt, nd)), np.empty((nt, nd)), np.empty((nt, nd))
    other = np.empty((nt, nd))
    least = 1 - match_lim[b]  # the least IoU of a pair passes 1, 3 and 5 may match
    for i in range(nt):
        p, g, gl = predicted[i], grown[i], grown_last[i]
        area = max((p[2] - p[0]) * (p[3] - p[1]), 1e-9)
        most = 0.0
        for j in range(nd):
            d, e = dets[j], grown_dets[j]
            inter, iou[i, j] = _box_iou(p[0], p[1], p[2], p[3], d[0], d[1], d[2], d[3])
            if valid[ds + j]:
                most = max(most, inter)
            iou_grown[i, j] = _box_iou(g[0], g[1], g[2], g[3], e[0], e[1], e[2], e[3])[1]
            # pass 3: a steady track at its predicted box, a lost one where it was last seen, one
            # both at whichever fits better
            where = iou_grown[i, j] if steady[i] else 0.0
            if lost[i]:
                where = max(where, _box_iou(gl[0], gl[1], gl[2], gl[3], e[0], e[1], e[2], e[3])[1])
            iou_where[i, j] = where
            # an object does not jump: where a steady track seen in the frame before would have
            # to, it is another object that came out from behind it or that it hid (three large
            # discs on occluder seed 49: IDF1 0.822 -> 0.880 at 10 fps, 0.824 -> 0.921 at 5)
            dx, dy = d[0] + d[2] - p[0] - p[2], d[1] + d[3] - p[1] - p[3]  # (twice the centres' offset)
            if iou_grown[i, j] > 0 and dx * dx + dy * dy > jump2[i]:
                iou[i, j], iou_where[i, j] = 0.0, 0.0
            # a pair that motion hardly holds (IoU with the prediction under GATE_IOU) and whose
            # looks have next to nothing in common is two objects: a track whose object went
            # behind another takes no box of another colour beside it
            elif any_look and iou[i, j] < GATE_IOU and max(iou[i, j], iou_where[i, j], 0.0 if confirmed[i] else
                                                            iou_grown[i, j]) >= least:  # (else never matched)
                if _bhattacharyya(tlooks[ts + i], dlooks[ds + j]) < GATE_LOOK:
                    iou[i, j], iou_grown[i, j], iou_where[i, j] = 0.0, 0.0, 0.0
            other[i, j] = 1.0 if state[ts + i, CLASS] != classes[ds + j] else 0.0
        covered[ts + i] = most / area
    wanted = np.empty(nt, np.bool_)
    # only tracks seen within max_age_s are matched by where they are or were (1-3, 5); a lost
    # track (unseen longer) is only found again by its look (4)
    # 1: confirmed tracks seen within max_age_s against the confident detections
    plain = _cost(iou, other, moving, dets, last, velocity, speed, size)
    for i in range(nt):
        wanted[i] = confirmed[i] and recent[ts + i] and free_track[ts + i]
    _match(plain, wanted, free_high[ds:ds + nd], match_lim[b], True, any_look, 1, ts, ds, tlooks, dlooks,
           free_track, free_high, matched, pass_of)
    # 2: those still unmatched against the weak detections: a partly hidden object is often seen
    # only weakly (ByteTrack's second pass); a weak box over a confident one matched in pass 1 is
    # that object again (the detector's other class for it), not the one hidden behind it (two
    # large look-alikes one over the other swapped ids through such boxes: occluder seed 45, 10
    # fps, IDF1 0.757 -> 0.821; the tracking and breaker scenes within 0.001)
    for i in range(nt):
        wanted[i] = confirmed[i] and recent[ts + i] and free_track[ts + i]
    _match(plain, wanted, _weak_left(ds, nd, dets, high, low, free_high), low_lim[b], False, any_look, 2, ts, ds, tlooks, dlooks,
           free_track, free_high, matched, pass_of)
    # a confident box left over an object matched so far is that object again (the detector's
    # other class for it): the passes with grown boxes below must not give it to a neighbour
    _drop_duplicates(ds, nd, dets, high, free_high, dup)
    # 3: steady and lost tracks against the confident detections left, boxes grown by half their
    # size (C-BIoU, Yang et al. 2023): an object hidden behind another is seen shrinking before it
    # goes, so its prediction lags or turns back, and it comes out ahead of it (tracking scenes:
    # IDF1 0.92 -> 0.96 on average over 25/10/7/5 fps, line-crossing errors 22 -> 10 of 376); only
    # tracks seen 3+ times, a young one's speed is noise. A lost track (unseen in the frame before
    # this one too) is also looked for where it was last seen: whichever place fits a box better
    for i in range(nt):
        wanted[i] = confirmed[i] and recent[ts + i] and (steady[i] or lost[i]) and free_track[ts + i]
    if wanted.any():
        _match(_cost(iou_where, other, moving, grown_dets, last, velocity, speed, size), wanted,
               free_high[ds:ds + nd], match_lim[b], True, any_look, 3, ts, ds, tlooks, dlooks, free_track, free_high,
               matched, pass_of)
    # 4: lost confirmed tracks with a look against the confident detections left, by their looks,
    # within the reach of their motion: an object that came out from behind a larger one far from
    # where it went in, or stood hidden longer than max_age_s (issue 35); before the tentative
    # tracks, which would take its box: a track started on it a frame before, when the detector
    # gave it another class (occluder seed 45, 10 fps: IDF1 0.860 -> 0.897)
    for i in range(nt):
        wanted[i] = (confirmed[i] and lost[i] and has_look[i] and free_track[ts + i]
                     and state[ts + i, HITS] >= REFIND_HITS)
    if wanted.any():
        refind = _refind_cost(wanted, ts, ds, free_high, last, dets, size, seen_speed, unseen_for, other, tlooks,
                              dlooks)
        _match(refind, wanted, free_high[ds:ds + nd], 1 - REFIND_LOOK, True, False, REFIND_PASS, ts, ds, tlooks, dlooks,
               free_track, free_high, matched, pass_of)
    _drop_duplicates(ds, nd, dets, high, free_high, dup)
    # 5: tentative tracks against the confident detections left, boxes grown: a new track has no
    # speed yet, and a small fast object sampled at a few fps moves further than its own size
    for i in range(nt):
        wanted[i] = not confirmed[i] and free_track[ts + i]
    if wanted.any():
        _match(_cost(iou_grown, other, moving, grown_dets, last, velocity, speed, size), wanted,
               free_high[ds:ds + nd], match_lim[b], True, any_look, 5, ts, ds, tlooks, dlooks, free_track, free_high,
               matched, pass_of)
    _drop_duplicates(ds, nd, dets, high, free_high, dup)


@_jit
def _round_kernel(state, tstart, at, recent, unseen_for, tlooks, boxes, classes, high, low, valid, dstart, dlooks,
                  match_lim, low_lim, before, any_look):
    state_rows, n_dets = state.shape[0], boxes.shape[0]
    _predict(state, at)
    matched, free_high, dup = np.full(n_dets, -1, np.int64), high.copy(), np.zeros(n_dets, np.bool_)
    free_track, pass_of, covered = np.ones(state_rows, np.bool_), np.zeros(state_rows, np.int64), np.zeros(state_rows)
    for b in range(len(tstart) - 1):
        _camera(b, state, tstart, recent, unseen_for, tlooks, boxes, classes, high, low, valid, dstart, dlooks,
                match_lim, low_lim, before, any_look, matched, free_high, dup, free_track, pass_of, covered)
    return matched, free_high, dup, free_track, pass_of, covered


@_jit
def _over_live(state, tstart, live, boxes, valid, dstart, fresh):
    """[detections]: the fresh ones over a live track (its box as it is now) by OVERLAP_IOU or more."""
    out = np.zeros(boxes.shape[0], np.bool_)
    for b in range(len(tstart) - 1):
        for j in range(dstart[b], dstart[b + 1]):
            if not fresh[j]:
                continue
            d = boxes[j] if valid[j] else np.zeros(4)
            for i in range(tstart[b], tstart[b + 1]):
                if live[i]:
                    cx, cy, w, h = state[i, 0], state[i, 1], state[i, 2], state[i, 3]
                    if _box_iou(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, d[0], d[1], d[2], d[3])[1] >= OVERLAP_IOU:
                        out[j] = True
                        break
    return out


@_jit
def _correct(s, box):
    """Correct a track's motion (its row `s`) with a measured box."""
    x1, y1, x2, y2 = box[0], box[1], box[2], box[3]
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    rw, rh = (STD_POSITION * w) ** 2, (STD_POSITION * h) ** 2  # measurement noise per scale
    z0, z1 = (x1 + x2) / 2, (y1 + y2) / 2
    for k in range(4):
        z = z0 if k == 0 else z1 if k == 1 else w if k == 2 else h
        r = rw if k % 2 == 0 else rh
        a, b, c = s[8 + k], s[12 + k], s[16 + k]
        gain = 1 / (a + r)
        k0, k1 = a * gain, b * gain
        innovation = z - s[k]
        s[k] += k0 * innovation
        s[4 + k] += k1 * innovation
        s[8 + k], s[12 + k], s[16 + k] = (1 - k0) * a, (1 - k0) * b, c - k1 * b


@_jit
def _sighted(state, rows, matched, boxes, scores, classes, owner, pts, captured, high, looks, votes, known,
             track_looks):
    """Update the matched tracks with their detections: the Kalman correction, when and where
    they were seen, their class by vote (votes[rows[t]], one column per class of `known`,
    confidence-weighted, the track's own class winning a tie), their look (track_looks[rows[t]]:
    an average over confident sightings) -> which tracks were hidden until now."""
    hidden = np.zeros(state.shape[0], np.bool_)
    for d in range(matched.shape[0]):
        t = matched[d]
        if t < 0:
            continue
        s, box = state[t], boxes[d]
        _correct(s, box)
        s[SEEN_PTS], s[LAST_SEEN] = pts[owner[d]], captured[owner[d]]
        s[SPEED_SEEN] = math.hypot(s[4], s[5])
        s[HITS] += 1
        s[CONFIRMED] = 1.0
        s[21], s[22], s[23], s[24] = box[0], box[1], box[2], box[3]
        vote = votes[rows[t]]
        vote[np.searchsorted(known, classes[d])] += scores[d]
        mine, best = vote[np.searchsorted(known, np.int64(s[CLASS]))], 0
        for k in range(1, vote.shape[0]):
            if vote[k] > vote[best]:
                best = k
        if not mine >= vote[best]:
            s[CLASS] = known[best]
        hidden[t] = s[PUBLISHED] == 0
        s[PUBLISHED] = 1.0
        if high[d] and not math.isnan(looks[d, 0]):  # a weak box is often a partly hidden object
            old = track_looks[rows[t]]
            if math.isnan(old[0]):
                old[:] = looks[d]
            else:
                for k in range(old.shape[0]):
                    old[k] = LOOK_KEEP * old[k] + (1 - LOOK_KEEP) * looks[d, k]
    return hidden


def sighted(state: np.ndarray, rows: np.ndarray, matched: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
            classes: np.ndarray, owner: np.ndarray, pts: np.ndarray, captured: np.ndarray, high: np.ndarray,
            looks: np.ndarray, votes: np.ndarray, known: np.ndarray, track_looks: np.ndarray) -> np.ndarray:
    """Update the tracks matched[d] (rows of `state`; rows[t]: their rows of `votes` and
    `track_looks`) with detection d of frame owner[d] -> [tracks]: those hidden until now (their ids
    go out from now on)."""
    return _sighted(state, rows, matched, boxes, scores, classes, owner, pts, captured, high, looks, votes, known,
                    track_looks)


def associate(state: np.ndarray, tstart: np.ndarray, at: np.ndarray, recent: np.ndarray, unseen_for: np.ndarray,
              track_looks: np.ndarray, boxes: np.ndarray, classes: np.ndarray, high: np.ndarray, low: np.ndarray,
              valid: np.ndarray, dstart: np.ndarray, det_looks: np.ndarray, match_lim: np.ndarray,
              low_lim: np.ndarray, before: np.ndarray, any_look: bool) -> tuple[np.ndarray, ...]:
    """One round of association over many cameras: camera b's tracks are the rows
    tstart[b]:tstart[b + 1] of `state` (moved on to media time `at` here, in place), its
    detections boxes[dstart[b]:dstart[b + 1]] -> matched [detections] (its track's row, -1),
    fresh [detections] (confident, unmatched, not a duplicate), dropped [detections]
    (duplicates), unmatched [tracks], pass [tracks] (1-5: the pass that matched it, 0: none),
    covered [tracks] (the largest share of its predicted box one valid detection covers)."""
    return _round_kernel(state, tstart, at, recent, unseen_for, track_looks, boxes, classes, high, low, valid, dstart,
                         det_looks, match_lim, low_lim, before, any_look)


def over_live(state: np.ndarray, tstart: np.ndarray, live: np.ndarray, boxes: np.ndarray, valid: np.ndarray,
              dstart: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """[detections]: the fresh ones over a live track of their camera (as it is now) by OVERLAP_IOU or more."""
    return _over_live(state, tstart, live, boxes, valid, dstart, fresh)


def assign(cost: np.ndarray, limit: float) -> np.ndarray:
    """Minimum-cost matching of rows to columns, pairs costing `limit` or more excluded -> each
    row's column, -1 for none (the solver inside the round)."""
    return _assign(np.ascontiguousarray(cost, np.float64), float(limit))


def warm() -> None:
    """Compile the round (or read it from numba's cache) now, on a round of one camera with a
    conflict, rather than in the first batch; once a process."""
    global _warm
    with _warm_lock:
        if not _warm:
            compile_cached(_COMPILED, _warm_round)
            _warm = True


def _warm_round() -> None:
    state = np.zeros((2, COLUMNS))
    state[:, X] = [[50, 50, 20, 20], [56, 50, 20, 20]]
    state[:, CONFIRMED] = 1
    boxes = np.array([[42.0, 40, 62, 60], [46, 40, 66, 60]])
    two, one = np.array([0, 2]), np.ones(1)
    looks = np.full((2, 20), 0.05)
    found = associate(state, two, np.zeros(2), np.ones(2, bool), np.zeros(2), looks, boxes, np.zeros(2, np.int64),
                      np.ones(2, bool), np.zeros(2, bool), np.ones(2, bool), two, looks, 0.8 * one, 0.5 * one,
                      np.full(1, np.nan), True)
    over_live(state, two, np.ones(2, bool), boxes, np.ones(2, bool), two, found[1])
    sighted(state, np.arange(2), found[0], boxes, np.ones(2), np.zeros(2, np.int64), np.zeros(2, np.int64),
            np.zeros(1), np.zeros(1), np.ones(2, bool), looks, np.zeros((2, 1)), np.zeros(1, np.int64), looks.copy())


_warm = False
_warm_lock = threading.Lock()


def compile_cached(dispatchers, call: Callable[[], object]) -> None:
    """Run `call`, which compiles `dispatchers` (numba functions) or reads them from numba's
    cache. A cache that cannot be read (numba raises on a damaged file) is removed and built
    again; where it cannot be written either (a full or read-only disk), they are compiled for
    this process alone. Either way the daemon starts, and says so once."""
    try:
        call()
        return
    except Exception as exc:  # numba raises whatever unpickling a damaged file raises
        first = exc
    removed, folder = [], str(Path(dispatchers[0].stats.cache_path))
    for fn in dispatchers:
        folder, stem = Path(fn.stats.cache_path), f"{Path(fn.py_func.__code__.co_filename).stem}.{fn.__name__}-"
        for path in folder.glob(stem + "*"):
            try:
                path.unlink()
                removed.append(path.name)
            except OSError:
                pass
    try:
        call()
        log_event(log, logging.WARNING, "compiled tracker: its cache could not be read and was built again",
                  folder=folder, removed=len(removed), error=repr(first))
        return
    except Exception as exc:
        second = exc
    for fn in dispatchers:
        fn._cache = NullCache()  # numba's own no-op cache: compile in memory, write nothing
    call()
    log_event(log, logging.WARNING, "compiled tracker: its cache can be neither read nor written; compiled for "
              "this process alone (each start takes longer)", folder=folder,
              error=repr(second))
