"""Precision, recall, density and coverage (Naeem et al. 2020), chunked, with ``prdc``'s semantics.

``prdc(real, fake, nearest_k)`` returns what ``prdc.compute_prdc(real, fake, nearest_k)`` returns
(same keys, same strict ``<`` comparisons, same k-NN radii) without ever holding an N x N matrix:
memory is O(chunk x N) on top of the inputs (``python -m bench benchmark prdc-large`` prints the
peak resident memory at 30,000 x 2,048 per set).

Exactness. ``compute_prdc`` measures distances with ``sklearn.metrics.pairwise_distances``, whose
numerics decide every tie: the squared distance is ``(-2 x.y + |x|^2) + |y|^2`` in float64 (float32
inputs are upcast chunk-wise), it is rounded to float32 when both inputs are float32, clipped at 0,
and its square root is taken in that dtype; self-distances are set to exactly 0. Here each
distance that can change a result is computed with that same formula, so ties resolve the same way
for float32 features: the float64 dot products may differ from sklearn's GEMM in the last bit
(another summation order), which matters only where that bit crosses a float32 rounding boundary
(about one pair in 10^8 for generic features; more often for coarsely quantized clusters, where
some exact distances sit on such boundaries). With float64 features no rounding absorbs that last bit: pairs whose
distances tie mathematically but not in float64 (non-integer data with repeated offsets) may be
ordered differently than in ``compute_prdc`` (integer-valued data, whose sums are exact, are not).

Speed. The distance matrices are first *estimated* with a float32 GEMM (float64 on CUDA: fast on
data-centre GPUs and immune to TF32 settings), together with a rigorous bound on the estimate's
error (``|fl(x.y) - x.y| <= gamma_d |x||y|`` for any summation order; see ``_bound_coefficient``).
A comparison ``D < r`` whose outcome the bound already decides is taken from the estimate; only
the few undecided pairs, and the k-NN radii those pairs compare with, are recomputed exactly in
float64. The radius matrices are symmetric, so only their upper block triangle is multiplied
(the diagonal blocks by SYRK, which numpy uses for ``x @ x.T``, at half the cost).
Beyond the GEMMs, each estimate block costs about two single passes: the k-NN lists take only the
entries below a row's current k+pad-th smallest value (a handful per row and block), and the
real x fake blocks yield only the pairs that may lie inside some radius. The block kernels
(GEMM, comparisons, selections) run in numpy on CPU and in torch on CUDA; the bookkeeping on the
few selected entries is numpy. On CPU numpy is the faster choice: OpenBLAS's SGEMM beats torch's
MKL SGEMM on AMD CPUs, numpy's comparison / nonzero passes beat torch's broadcasting kernels, and
numpy's single-threaded small operations do not stall when other processes load the cores (torch's
multi-threaded ones did, by an order of magnitude).

Radius of point i: the distance to its k-th nearest *other* point, i.e. ``compute_prdc``'s
(k+1)-th smallest entry of row i including the zero self-distance.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Union

import numpy as np
import torch

from bench.core.errors import UsageError

log = logging.getLogger(__name__)

_CHUNK_BYTES = 64 << 20      # one estimate block
_PAIR_BATCH = 256            # pairs per exact refinement batch (small: gathered rows stay in cache)
_KNN_PAD = 8                  # extra k-NN candidates kept per row

Array = Union[np.ndarray, torch.Tensor]  # numpy on the host, torch on CUDA
Rows = Union[slice, np.ndarray]


def _host_kernels(device: torch.device) -> bool:
    """Whether the block kernels run in numpy (CPU) rather than torch (CUDA)."""
    return device.type == "cpu"


@dataclass(frozen=True)
class _Cloud:
    """One feature set: block-kernel arrays (numpy on the host, torch on CUDA) and host norms."""

    src: Array            # [n, d] the values as given (float32, or float64 for any other dtype)
    est: Array            # [n, d] in the estimate dtype (may alias src)
    half_sq: Array        # [n] |x|^2 / 2 in the estimate dtype
    sq: np.ndarray        # [n] float64 squared norms (sklearn row_norms of the float64 values)
    dtype: np.dtype       # the estimate dtype
    is_f32: bool
    host: bool

    @property
    def n(self) -> int:
        return self.src.shape[0]


def _as_array(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise UsageError(f"{what} features must be a 2-D [N, dim] array, got shape {arr.shape}")
    if arr.dtype != np.float32:
        arr = arr.astype(np.float64)  # what sklearn does with anything not float32
    return np.ascontiguousarray(arr)


def _row_norms64(x: np.ndarray, what: str) -> np.ndarray:
    """``sklearn.utils.extmath.row_norms(x.astype(float64), squared=True)``, chunked through one
    small float64 buffer (no full copy, no fresh pages per chunk). Also the finiteness check: a
    NaN or infinite value makes its row's norm non-finite."""
    out = np.empty(x.shape[0], dtype=np.float64)
    rows = max(1, (4 << 20) // (8 * max(1, x.shape[1])))
    buffer = np.empty((min(rows, x.shape[0]), x.shape[1]), dtype=np.float64)
    for start in range(0, x.shape[0], rows):
        block = buffer[:min(rows, x.shape[0] - start)]
        np.copyto(block, x[start:start + rows])
        out[start:start + rows] = np.einsum("ij,ij->i", block, block)
    if not np.isfinite(out).all():
        if not all(np.isfinite(x[start:start + rows]).all() for start in range(0, x.shape[0], rows)):
            raise UsageError(f"{what} features contain NaN or infinite values")
        raise UsageError(f"{what} features are too large: their squared norms overflow float64")
    return out


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.float32 if dtype == np.float32 else torch.float64


def _cloud(x: np.ndarray, what: str, device: torch.device, est_dtype: np.dtype) -> _Cloud:
    sq = _row_norms64(x, what)
    half_sq = (sq * 0.5).astype(est_dtype)
    is_f32 = x.dtype == np.float32
    if _host_kernels(device):
        return _Cloud(x, x.astype(est_dtype, copy=False), half_sq, sq, est_dtype, is_f32, True)
    src = torch.from_numpy(x).to(device)
    est = src.to(_torch_dtype(est_dtype))
    return _Cloud(src, est, torch.from_numpy(half_sq).to(device), sq, est_dtype, is_f32, False)


# ----------------------------------------------------------------------------------------------
# bounds


def _unit_roundoff(dtype: np.dtype) -> float:
    return 2.0 ** -24 if dtype == np.float32 else 2.0 ** -53


def _bound_coefficient(dim: int, est_dtype: np.dtype) -> float:
    """c such that |estimate - exact| <= c * (|x|^2 + |y|^2) for every pair, where "exact" is the
    float64 value sklearn's formula gives.

    The estimate is s = fl(fl(-2 fl(x.y) + |y|^2) + |x|^2) in the estimate dtype (u its unit
    roundoff; it is held halved, which is exact). For any summation order, FMA and blocked GEMMs
    included, |fl(x.y) - x.y| <= gamma_d sum_k |x_k y_k| <= gamma_d (|x|^2 + |y|^2) / 2 with
    gamma_d = d u / (1 - d u); rounding float64 inputs and norms to the estimate dtype and the two
    additions add at most 7 u (|x|^2 + |y|^2). The float64 reference value obeys the same bound
    with u = 2^-53. 25% slack covers the second-order terms.
    """
    total = 0.0
    for u in (_unit_roundoff(est_dtype), 2.0 ** -53):
        du = (dim + 16) * u
        if du >= 0.5:
            raise UsageError(f"feature dimension {dim} is too large for the {est_dtype} distance estimate")
        total += du / (1.0 - du)
    return 1.25 * total


def _bounds(r_lo: np.ndarray, r_hi: np.ndarray, out_f32: bool, est_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Squared thresholds (lo, hi), float64, for a radius r in [r_lo, r_hi]: an exact squared
    distance < lo implies D < r, and >= hi implies D >= r, whatever the rounding of D (float32
    rounding and square root)."""
    m = 4.0 * (2.0 ** -24 if out_f32 else 2.0 ** -53) + 8.0 * _unit_roundoff(est_dtype)
    return (r_lo * (1.0 - m)) ** 2 * (1.0 - m), (r_hi * (1.0 + m)) ** 2 * (1.0 + m)


# ----------------------------------------------------------------------------------------------
# block kernels: numpy on the host, torch on CUDA; results come back as numpy


def _take(values: Array, rows: Rows) -> Array:
    if isinstance(rows, slice) or isinstance(values, np.ndarray):
        return values[rows]
    return values[torch.from_numpy(rows).to(values.device)]


def _host(x: Array) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else x.cpu().numpy()


def _estimate(a: _Cloud, rows: Rows, b: _Cloud, cols: Rows, work: Array) -> Array:
    """Half the estimated squared distances a[rows] x b[cols] in the estimate dtype, written into
    (a view of) the workspace ``work``: h = fl(fl(|y|^2/2 - fl(x.y)) + |x|^2/2), which is exactly
    half of s = fl(fl(|y|^2 - 2 fl(x.y)) + |x|^2) because halving is exact."""
    x, y = _take(a.est, rows), _take(b.est, cols)
    hx, hy = _take(a.half_sq, rows), _take(b.half_sq, cols)
    h = work[:x.shape[0] * y.shape[0]].reshape(x.shape[0], y.shape[0])
    if a.host:
        np.matmul(x, y.T, out=h)
        np.subtract(hy[None, :], h, out=h)
        np.add(h, hx[:, None], out=h)
    else:
        torch.mm(x, y.T, out=h)
        torch.sub(hy[None, :], h, out=h)
        h.add_(hx[:, None])
    return h


def _fill_diagonal(block: Array, value: float) -> None:
    if isinstance(block, np.ndarray):
        np.fill_diagonal(block, value)
    else:
        block.diagonal().fill_(value)


def _hits(h: Array, thr: np.ndarray, limit: int, *, strict: bool = True,
          by_rows: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (owner, other, values) for the entries of h below thr (``<`` when ``strict``, else
    ``<=``; thr broadcasts against h): owner is the entry's row (``by_rows``) or column, other its
    column or row, in ascending owner order. Batches cover ranges of owners holding about ``limit``
    entries at most (one batch unless h is dense with hits: memory stays O(block))."""
    if not isinstance(h, np.ndarray):  # CUDA: one batch, O(block) device memory
        t = torch.from_numpy(thr).to(h.device)
        mask = h < t if strict else h <= t
        owner, other = (mask if by_rows else mask.T).nonzero(as_tuple=True)
        if owner.numel():
            values = h[owner, other] if by_rows else h[other, owner]
            yield _host(owner), _host(other), _host(values)
        return
    mask = np.less(h, thr) if strict else np.less_equal(h, thr)
    total = int(np.count_nonzero(mask))
    if total == 0:
        return
    owners = h.shape[0] if by_rows else h.shape[1]
    bounds = [0, owners]
    if total > limit:
        per_owner = np.cumsum(np.count_nonzero(mask, axis=1 if by_rows else 0))
        cuts = np.searchsorted(per_owner, np.arange(limit, total, limit), side="right")
        bounds = [0, *cuts.tolist(), owners]
    for o0, o1 in zip(bounds[:-1], bounds[1:]):
        if o1 > o0:  # flat indices: numpy's fast 1-D nonzero
            sub = mask[o0:o1] if by_rows else mask[:, o0:o1]
            row, col = np.divmod(np.flatnonzero(sub), sub.shape[1])
            if by_rows:
                yield row + o0, col, h[row + o0, col]
            else:
                order = np.argsort(col, kind="stable")
                row, col = row[order], col[order] + o0
                yield col, row, h[row, col]


def _group_bound(block: Array, count: int, by_rows: bool) -> np.ndarray | None:
    """Per row (``by_rows``) or column of ``block``: an upper bound on its ``count``-th smallest
    entry, the largest of the minima of ``count`` disjoint groups of its entries (``count``
    distinct entries lie at or below it). Groups of 2 entries or more, so one infinite (self) entry
    per row does no harm. None when the block is too small."""
    size = (block.shape[1] if by_rows else block.shape[0]) // count
    if size < 2:
        return None
    if by_rows:
        g = block[:, :count * size].reshape(block.shape[0], count, size)
        return g.min(axis=2).max(axis=1) if isinstance(g, np.ndarray) else _host(g.amin(2).amax(1))
    g = block[:count * size].reshape(count, size, block.shape[1])
    return g.min(axis=1).max(axis=0) if isinstance(g, np.ndarray) else _host(g.amin(1).amax(0))


def _finish(t: np.ndarray, out_f32: bool) -> np.ndarray:
    """Squared float64 distances -> distances as sklearn returns them, held in float64."""
    if out_f32:
        return np.sqrt(np.maximum(t.astype(np.float32), np.float32(0))).astype(np.float64)
    return np.sqrt(np.maximum(t, 0.0))


def _rows64(c: _Cloud, index: np.ndarray) -> Array:
    return c.src[index].astype(np.float64, copy=False) if c.host else _take(c.src, index).to(torch.float64)


def _exact_pairs(a: _Cloud, ia: np.ndarray, b: _Cloud, jb: np.ndarray, out_f32: bool) -> np.ndarray:
    """sklearn's distance for the pairs (a[ia[p]], b[jb[p]]), in float64."""
    out = np.empty(ia.shape[0], dtype=np.float64)
    for start in range(0, ia.shape[0], _PAIR_BATCH):
        i, j = ia[start:start + _PAIR_BATCH], jb[start:start + _PAIR_BATCH]
        if a.host:  # float64 products and sums of the gathered rows
            dot = np.einsum("ij,ij->i", a.src[i], b.src[j], dtype=np.float64)
        else:
            x, y = _rows64(a, i), _rows64(b, j)
            dot = _host(torch.bmm(x.unsqueeze(1), y.unsqueeze(2)).view(-1))
        out[start:start + _PAIR_BATCH] = _finish(-2.0 * dot + a.sq[i] + b.sq[j], out_f32)
    return out


def _exact_rows(a: _Cloud, rows: np.ndarray, b: _Cloud, cols: np.ndarray, out_f32: bool,
                batch: int = 512) -> np.ndarray:
    """sklearn's distances from a[rows] to b[cols]: [len(rows), len(cols)] float64."""
    x = _rows64(a, rows)
    out = np.empty((rows.shape[0], cols.shape[0]), dtype=np.float64)
    for start in range(0, cols.shape[0], batch):
        j = cols[start:start + batch]
        dot = _host(x @ _rows64(b, j).T)
        out[:, start:start + batch] = _finish(-2.0 * dot + a.sq[rows, None] + b.sq[None, j], out_f32)
    return out


def _kth_smallest(block: Array, k: int) -> np.ndarray:
    if isinstance(block, np.ndarray):
        return np.partition(block, k - 1, axis=1)[:, k - 1]
    return _host(block.kthvalue(k, dim=1).values)


def _exclude_self(block: Array, rows: np.ndarray) -> None:
    """Set entry (r, rows[r]) of each row r to infinity."""
    if isinstance(block, np.ndarray):
        block[np.arange(rows.size), rows] = np.inf
    else:
        block[torch.arange(rows.size, device=block.device), torch.from_numpy(rows).to(block.device)] = float("inf")


def _columns_at_most(block: Array, thr: np.ndarray) -> np.ndarray:
    """Indices of the columns holding an entry <= its row's threshold (``thr`` in the block's dtype)."""
    if isinstance(block, np.ndarray):
        return np.flatnonzero((block <= thr[:, None]).any(axis=0))
    return _host((block <= torch.from_numpy(thr).to(block.device)[:, None]).any(dim=0).nonzero()[:, 0])


# ----------------------------------------------------------------------------------------------
# k-NN radii


def _merge(vals: np.ndarray, idx: np.ndarray, owner: np.ndarray, new_idx: np.ndarray, new_vals: np.ndarray) -> None:
    """Merge new entries (``owner`` ascending: the list each belongs to) into the running lists
    of the smallest entries ``vals``/``idx`` [n, cand], in place."""
    if owner.size == 0:
        return
    cand = vals.shape[1]
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    counts = np.diff(np.r_[starts, owner.shape[0]])
    seg = np.repeat(np.arange(starts.shape[0]), counts)
    pos = cand + np.arange(owner.shape[0]) - starts[seg]
    rows = owner[starts]
    all_v = np.full((rows.shape[0], cand + int(counts.max())), np.inf, dtype=vals.dtype)
    all_i = np.zeros(all_v.shape, dtype=np.int64)
    all_v[:, :cand], all_i[:, :cand] = vals[rows], idx[rows]
    all_v[seg, pos], all_i[seg, pos] = new_vals, new_idx
    keep = np.argpartition(all_v, cand - 1, axis=1)[:, :cand]
    vals[rows] = np.take_along_axis(all_v, keep, axis=1)
    idx[rows] = np.take_along_axis(all_i, keep, axis=1)


def _merge_block(block: Array, vals: np.ndarray, idx: np.ndarray, first: int, offset: int, by_rows: bool,
                 limit: int) -> None:
    """Merge the entries of ``block`` into the lists of its rows (``by_rows``) or columns, which
    are lists ``first``.. of ``vals``/``idx``; ``offset`` + the other index is an entry's point.

    Only entries at or below a list's current largest value can enter it, and those are few: one
    pass picks them out. While lists are still filling (infinite entries) the threshold is
    :func:`_group_bound` instead."""
    cand = vals.shape[1]
    owners = block.shape[0] if by_rows else block.shape[1]
    tau = vals[first:first + owners].max(axis=1)
    if np.isinf(tau).any():
        bound = _group_bound(block, cand, by_rows)
        if bound is not None:
            tau = np.minimum(tau, bound)
    thr = tau[:, None] if by_rows else tau[None, :]
    for owner, other, values in _hits(block, thr, limit, strict=False, by_rows=by_rows):
        _merge(vals, idx, owner + first, other + offset, values)


def _knn_candidates(p: _Cloud, cand: int, chunk: int, work: Array, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """For every point, the ``cand`` smallest estimated half squared distances to other points
    (ascending, in the estimate dtype) and their indices.

    The estimate matrix is symmetric, so only its upper block triangle is computed, block row by
    block row: the diagonal block [i0, i1)^2 (numpy multiplies X X^T by SYRK, at half the cost),
    then the block right of it, [i0, i1) x [i1, n), which also serves, transposed, as columns of
    the later rows; their running lists are merged as blocks go by.
    """
    n = p.n
    vals = np.full((n, cand), np.inf, dtype=p.dtype)
    idx = np.zeros((n, cand), dtype=np.int64)
    for i0 in range(0, n, chunk):
        i1 = min(i0 + chunk, n)
        h = _estimate(p, slice(i0, i1), p, slice(i0, i1), work)
        _fill_diagonal(h, np.inf)  # self
        _merge_block(h, vals, idx, i0, i0, True, limit)
        if i1 < n:
            h = _estimate(p, slice(i0, i1), p, slice(i1, n), work)
            _merge_block(h, vals, idx, i0, i1, True, limit)
            _merge_block(h, vals, idx, i1, i0, False, limit)
    order = np.argsort(vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(idx, order, axis=1)


class _Radii:
    """Distance of every point to its k-th nearest other point, with sklearn's numerics.

    Known first as an interval [lo, hi] from the estimate; :meth:`exact` computes the exact value
    of the rows that a comparison really needs. Per row, the estimate's k+pad smallest values
    v_0 <= v_1 <= ... each hold the exact value within +-e. Neighbours whose intervals chain
    together (gaps <= 2e) form groups whose order relative to each other is certain; the radius is
    a known rank inside the group around position k-1 (usually the k-th neighbour alone), so it
    lies in [v_left - e, v_right + e] and its exact value needs only that group. A row whose
    group reaches the end of the candidate list gets a whole-row search instead.
    """

    def __init__(self, p: _Cloud, k: int, chunk: int, coeff: float, work: Array, limit: int) -> None:
        n = p.n
        self.p, self.k, self.q = p, k, k - 1
        cand = min(k + _KNN_PAD, n - 1)
        half, self.idx = _knn_candidates(p, cand, chunk, work, limit)
        vals = 2.0 * half.astype(np.float64)  # squared distances (doubling is exact)
        self.value = np.full(n, np.nan)
        self.known = np.zeros(n, dtype=bool)
        self._positions = np.arange(cand)
        q, positions = self.q, self._positions
        err = coeff * (p.sq + p.sq.max())                       # bound for every pair of the row
        sep = (vals[:, 1:] - vals[:, :-1]) > 2.0 * err[:, None]  # sep[:, j]: gap between j and j+1
        # group of position q: from after the last gap before q to the first gap at or after q
        self.left = np.where(sep[:, :q], positions[1:q + 1], 0).max(axis=1) if q > 0 else np.zeros(n, np.int64)
        right_sep = sep[:, q:]
        if cand == n - 1:  # every other point is a candidate: the list is complete
            right_sep = np.concatenate([right_sep, np.ones((n, 1), dtype=bool)], axis=1)
        complete = right_sep.any(axis=1)
        self.right = q + right_sep.argmax(axis=1)  # first gap at or after q
        rows = np.arange(n)
        self.lo = np.sqrt(np.maximum(vals[rows, self.left] - err, 0.0))
        self.hi = np.sqrt(vals[rows, self.right] + err)
        bad = np.flatnonzero(~complete)
        if bad.size:
            log.debug("prdc: %d of %d rows needed a whole-row k-NN search", bad.size, n)
            for start in range(0, bad.size, chunk):
                batch = bad[start:start + chunk]
                self._set(batch, self._whole_row_radii(batch, err[batch], work))

    def _whole_row_radii(self, rows: np.ndarray, err: np.ndarray, work: Array) -> np.ndarray:
        """Exact radii of ``rows`` from their whole estimate rows: with v the k-th smallest
        estimate (self excluded), only points estimated at or below v + 2e can be closer than the
        k-th neighbour (the k smallest estimates are exactly at most v + e), so the exact distances
        to those columns decide."""
        p, k = self.p, self.k
        h = _estimate(p, rows, p, slice(None), work)  # half squared distances
        _exclude_self(h, rows)
        thr = _kth_smallest(h, k).astype(np.float64) + err  # (2 v + 2 e) / 2
        thr += np.abs(thr) * 2.0 ** -20  # so that rounding it to the estimate dtype cannot lower it
        cols = _columns_at_most(h, thr.astype(p.dtype))
        d = _exact_rows(p, rows, p, cols, p.is_f32)
        d[cols[None, :] == rows[:, None]] = np.inf  # self
        return np.partition(d, k - 1, axis=1)[:, k - 1]

    def _set(self, rows: np.ndarray, values: np.ndarray) -> None:
        self.value[rows] = values
        self.lo[rows] = values
        self.hi[rows] = values
        self.known[rows] = True

    def exact(self, rows: np.ndarray) -> np.ndarray:
        """Exact radii of ``rows`` (computed once, from the row's group of candidates)."""
        todo = np.unique(rows)
        todo = todo[~self.known[todo]]
        if todo.size:
            p, q = self.p, self.q
            left, right, idx = self.left[todo], self.right[todo], self.idx[todo]
            group = (self._positions >= left[:, None]) & (self._positions <= right[:, None])
            r_loc, c_loc = np.nonzero(group)
            exact = np.full(group.shape, np.inf)
            exact[r_loc, c_loc] = _exact_pairs(p, todo[r_loc], p, idx[r_loc, c_loc], p.is_f32)
            self._set(todo, np.sort(exact, axis=1)[np.arange(todo.size), q - left])
        return self.value[rows]


# ----------------------------------------------------------------------------------------------
# real x fake


@dataclass
class _Tally:
    """What the real x fake blocks accumulate."""

    in_some_ball: np.ndarray  # [m] fake: inside some real ball
    covered: np.ndarray       # [n] real: some fake inside its ball
    recalled: np.ndarray      # [n] real: inside some fake ball
    ball_hits: int = 0        # (real, fake) pairs with D < r_real
    refined: int = 0          # pairs recomputed exactly


def _scan_balls(h: Array, start: int, lo: np.ndarray, hi: np.ndarray, radii: _Radii, real: _Cloud, fake: _Cloud,
                real_ball: bool, same_object: bool, out_f32: bool, limit: int, tally: _Tally) -> None:
    """Count the pairs of block h (real rows start.., all fakes) with D < r, r the radius of the
    pair's real point (``real_ball``) or of its fake point. ``lo``/``hi`` broadcast against h:
    h < lo decides D < r, h >= hi decides D >= r, and the pairs in between are recomputed exactly."""
    for i, j, v in _hits(h, hi, limit):
        inside = v < (lo[i, 0] if real_ball else lo[0, j])
        i = i + start
        undecided = np.flatnonzero(~inside)
        if undecided.size:
            tally.refined += undecided.size
            iu, ju = i[undecided], j[undecided]
            d = _exact_pairs(real, iu, fake, ju, out_f32)
            if same_object:
                d[iu == ju] = 0.0
            inside[undecided] = d < radii.exact(iu if real_ball else ju)
        if real_ball:
            tally.ball_hits += int(np.count_nonzero(inside))
            tally.in_some_ball[j[inside]] = True
            tally.covered[i[inside]] = True
        else:
            tally.recalled[i[inside]] = True


def prdc(real_features, fake_features, nearest_k: int = 5, *, chunk_size: int | None = None,
         device: str | torch.device | None = None) -> dict[str, float]:
    """Precision, recall, density and coverage; the same dict as ``prdc.compute_prdc``.

    ``real_features`` [N, dim], ``fake_features`` [M, dim]: numpy arrays or tensors. float32 inputs
    keep sklearn's float32 distance semantics, anything else is treated as float64 (as sklearn
    does). ``chunk_size``: rows per block (default: blocks of about 64 MiB). ``device``: default
    CUDA when available, else CPU.
    """
    if isinstance(nearest_k, bool) or not isinstance(nearest_k, (int, np.integer)) or nearest_k < 1:
        raise UsageError(f"nearest_k must be a positive integer, got {nearest_k!r}")
    k = int(nearest_k)
    same_object = real_features is fake_features
    real = _as_array(real_features, "real")
    fake = real if same_object else _as_array(fake_features, "fake")
    if real.shape[1] != fake.shape[1]:
        raise UsageError(f"real and fake features differ in dimension: {real.shape[1]} vs {fake.shape[1]}")
    if real.shape[0] <= k or fake.shape[0] <= k:
        raise UsageError(f"PRDC with nearest_k={k} needs more than {k} real and fake samples; "
                         f"got {real.shape[0]} real and {fake.shape[0]} fake")
    # sklearn computes a mixed float32/float64 pair in float64
    pair_f32 = real.dtype == np.float32 and fake.dtype == np.float32
    if chunk_size is not None and chunk_size < 1:
        raise UsageError(f"chunk_size must be >= 1, got {chunk_size}")

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    # float32 estimates on CPU; torch's "high"/"medium" float32 matmul precision (TF32/bf16 on
    # CUDA) asks for less than IEEE float32, so it selects the float64 estimate there too
    fast_ok = device.type == "cpu" and torch.get_float32_matmul_precision() == "highest"
    est_dtype = np.dtype(np.float32 if fast_ok else np.float64)
    n, m, dim = real.shape[0], fake.shape[0], real.shape[1]
    coeff = _bound_coefficient(dim, est_dtype)

    def rows_per_block(cols: int) -> int:
        if chunk_size is not None:
            return chunk_size
        return min(4096, max(64, _CHUNK_BYTES // (est_dtype.itemsize * cols)))

    with torch.no_grad():
        R = _cloud(real, "real", device, est_dtype)
        F = R if same_object else _cloud(fake, "fake", device, est_dtype)
        # one workspace for every estimate block
        size = max(min(rows_per_block(n), n) * n, min(rows_per_block(m), n) * m, min(rows_per_block(m), m) * m)
        work = np.empty(size, est_dtype) if R.host else torch.empty(size, dtype=_torch_dtype(est_dtype), device=device)
        limit = max(1 << 16, size // 8)  # selected entries per batch (more only in dense blocks)
        real_radii = _Radii(R, k, rows_per_block(n), coeff, work, limit)
        fake_radii = real_radii if same_object else _Radii(F, k, rows_per_block(m), coeff, work, limit)

        # thresholds on h = s / 2: h < lo -> certainly D < r; h >= hi -> certainly not
        lo_r, hi_r = _bounds(real_radii.lo, real_radii.hi, pair_f32, est_dtype)
        lo_f, hi_f = _bounds(fake_radii.lo, fake_radii.hi, pair_f32, est_dtype)
        err_r, err_f = coeff * R.sq, coeff * F.sq
        err_r_max, err_f_max = float(err_r.max()), float(err_f.max())
        row_lo = (0.5 * (lo_r - err_r - err_f_max)).astype(est_dtype)[:, None]
        row_hi = (0.5 * (hi_r + err_r + err_f_max)).astype(est_dtype)[:, None]
        col_lo = (0.5 * (lo_f - err_f - err_r_max)).astype(est_dtype)[None, :]
        col_hi = (0.5 * (hi_f + err_f + err_r_max)).astype(est_dtype)[None, :]

        tally = _Tally(np.zeros(m, dtype=bool), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool))
        chunk = rows_per_block(m)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            h = _estimate(R, slice(start, stop), F, slice(None), work)
            if same_object:  # sklearn zeroes the diagonal when both arguments are one array
                _fill_diagonal(h[:, start:], 0.0)
            _scan_balls(h, start, row_lo[start:stop], row_hi[start:stop], real_radii, R, F, True,
                        same_object, pair_f32, limit, tally)
            _scan_balls(h, start, col_lo, col_hi, fake_radii, R, F, False, same_object, pair_f32, limit, tally)
        log.debug("prdc: refined %d of %d real-fake pairs exactly", tally.refined, n * m)

    precision = int(np.count_nonzero(tally.in_some_ball)) / m
    recall = int(np.count_nonzero(tally.recalled)) / n
    density = (1.0 / float(k)) * (tally.ball_hits / m)
    coverage = int(np.count_nonzero(tally.covered)) / n
    return dict(precision=precision, recall=recall, density=density, coverage=coverage)
