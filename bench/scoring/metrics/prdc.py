"""Precision, recall, density and coverage (Naeem et al. 2020), chunked, with ``prdc``'s semantics.

``prdc(real, fake, nearest_k)`` returns what ``prdc.compute_prdc(real, fake, nearest_k)`` returns
(same keys, same strict ``<`` comparisons, same k-NN radii) without ever holding an N x N matrix:
memory is O(chunk x N) on top of the inputs (30,000 x 2,048 per set: 1.6 GiB peak RSS for the
whole process, imports and inputs included; ``python -m bench benchmark prdc-large``).

Exactness. ``compute_prdc`` measures distances with ``sklearn.metrics.pairwise_distances``, whose
numerics decide every tie: the squared distance is ``(-2 x.y + |x|^2) + |y|^2`` in float64 (float32
inputs are upcast chunk-wise), it is rounded to float32 when both inputs are float32, clipped at 0,
and its square root is taken in that dtype; self-distances are set to exactly 0. Here each
distance that can change a result is computed with that same formula, so ties resolve the same way
(up to float64 last-bit differences between BLAS libraries, which only matter in the
one-in-10^8 case where they cross a float32 rounding boundary).

Speed. On CPU the distance matrices are first *estimated* with a float32 GEMM, together with a
rigorous bound on the estimate's error (``|fl(x.y) - x.y| <= gamma_d |x||y|`` for any summation
order; see ``_bound_coefficient``). A comparison ``D < r`` whose outcome the bound already decides is
taken from the estimate; only the few undecided pairs, and the k-NN radii those pairs compare
with, are recomputed exactly in float64. The radius matrices are symmetric, so only their upper
block triangle is multiplied. On CUDA the estimate itself is float64 (fast on data-centre GPUs and
immune to TF32 settings), so almost nothing needs refining.

Radius of point i: the distance to its k-th nearest *other* point, i.e. ``compute_prdc``'s
(k+1)-th smallest entry of row i including the zero self-distance.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from bench.core.errors import UsageError

log = logging.getLogger(__name__)

_CHUNK_BYTES = 64 << 20      # one [chunk, n] estimate matrix
_PAIR_BATCH = 8192           # pairs per exact float64 refinement batch
_F64_COPY_BYTES = 128 << 20  # keep a float64 copy of a feature set up to this size
_KNN_PAD = 4                 # extra k-NN candidates taken from the estimate


@dataclass(frozen=True)
class _Cloud:
    """One feature set on the compute device."""

    src: torch.Tensor      # [n, d] the values as given (float32, or float64 for any other dtype)
    est: torch.Tensor      # [n, d] in the estimate dtype (may alias src)
    sq: torch.Tensor       # [n] float64 squared norms (sklearn row_norms of the float64 values)
    sq_est: torch.Tensor   # [n] sq in the estimate dtype
    is_f32: bool
    src64: torch.Tensor | None  # float64 copy of src when small (faster exact refinement)

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
    if not np.isfinite(arr).all():
        raise UsageError(f"{what} features contain NaN or infinite values")
    return arr


def _row_norms64(x: np.ndarray, rows: int = 4096) -> np.ndarray:
    """``sklearn.utils.extmath.row_norms(x.astype(float64), squared=True)``, chunked (no full copy)."""
    out = np.empty(x.shape[0], dtype=np.float64)
    for start in range(0, x.shape[0], rows):
        block = x[start:start + rows].astype(np.float64, copy=False)
        out[start:start + rows] = np.einsum("ij,ij->i", block, block)
    return out


def _cloud(x: np.ndarray, device: torch.device, est_dtype: torch.dtype) -> _Cloud:
    src = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    est = src if src.dtype == est_dtype else src.to(est_dtype)
    sq = torch.from_numpy(_row_norms64(x)).to(device)
    if src.dtype == torch.float64:
        src64 = src
    elif x.shape[0] * x.shape[1] * 8 <= _F64_COPY_BYTES:
        src64 = src.to(torch.float64)
    else:
        src64 = None
    return _Cloud(src, est, sq, sq.to(est_dtype), x.dtype == np.float32, src64)


def _unit_roundoff(dtype: torch.dtype) -> float:
    return 2.0 ** -24 if dtype == torch.float32 else 2.0 ** -53


def _bound_coefficient(dim: int, est_dtype: torch.dtype) -> float:
    """c such that |estimate - exact| <= c * (|x|^2 + |y|^2) for every pair, where "exact" is the
    float64 value sklearn's formula gives.

    The estimate is s = fl(fl(-2 fl(x.y) + |y|^2) + |x|^2) in the estimate dtype (u its unit
    roundoff). For any summation order, FMA and blocked GEMMs included,
    |fl(x.y) - x.y| <= gamma_d sum_k |x_k y_k| <= gamma_d (|x|^2 + |y|^2) / 2 with
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


def _finish(t: torch.Tensor, out_f32: bool) -> torch.Tensor:
    """Squared float64 distances -> distances as sklearn returns them, held in float64."""
    if out_f32:
        return t.to(torch.float32).clamp_(min=0).sqrt_().to(torch.float64)
    return t.clamp(min=0).sqrt_()


def _rows64(c: _Cloud, index: torch.Tensor) -> torch.Tensor:
    if c.src64 is not None:
        return c.src64.index_select(0, index)
    return c.src.index_select(0, index).to(torch.float64)


def _exact_pairs(a: _Cloud, ia: torch.Tensor, b: _Cloud, jb: torch.Tensor, out_f32: bool) -> torch.Tensor:
    """sklearn's distance for the pairs (a[ia[p]], b[jb[p]]), in float64."""
    out = torch.empty(ia.shape[0], dtype=torch.float64, device=a.src.device)
    for start in range(0, ia.shape[0], _PAIR_BATCH):
        i = ia[start:start + _PAIR_BATCH]
        j = jb[start:start + _PAIR_BATCH]
        x = _rows64(a, i).unsqueeze(1)
        y = _rows64(b, j).unsqueeze(2)
        t = torch.bmm(x, y).view(-1).mul_(-2.0).add_(a.sq[i]).add_(b.sq[j])
        out[start:start + _PAIR_BATCH] = _finish(t, out_f32)
    return out


def _exact_rows(a: _Cloud, rows: torch.Tensor, b: _Cloud, out_f32: bool, cols: int = 8192) -> torch.Tensor:
    """sklearn's distances from a[rows] to every point of b: [len(rows), b.n] float64."""
    x = _rows64(a, rows)
    out = torch.empty(rows.shape[0], b.n, dtype=torch.float64, device=a.src.device)
    for start in range(0, b.n, cols):
        y = b.src64[start:start + cols] if b.src64 is not None else b.src[start:start + cols].to(torch.float64)
        t = (x @ y.T).mul_(-2.0).add_(a.sq[rows, None]).add_(b.sq[None, start:start + cols])
        out[:, start:start + cols] = _finish(t, out_f32)
    return out


def _estimate(a: _Cloud, rows: slice, b: _Cloud, cols: slice = slice(None)) -> torch.Tensor:
    """Estimated squared distances a[rows] x b[cols] in the estimate dtype."""
    s = torch.mm(a.est[rows], b.est[cols].T)
    torch.add(b.sq_est[cols].unsqueeze(0), s, alpha=-2.0, out=s)  # fl(|y|^2 - 2 fl(x.y)): -2 is exact
    return s.add_(a.sq_est[rows, None])


def _merge_smallest(vals: torch.Tensor, idx: torch.Tensor, new_vals: torch.Tensor, new_idx: torch.Tensor,
                    count: int) -> tuple[torch.Tensor, torch.Tensor]:
    v = torch.cat([vals, new_vals], dim=1)
    j = torch.cat([idx, new_idx], dim=1)
    v, order = torch.topk(v, count, dim=1, largest=False, sorted=True)
    return v, j.gather(1, order)


def _knn_candidates(p: _Cloud, cand: int, chunk: int):
    """Yield (start, stop, vals, idx): for rows start..stop, the ``cand`` smallest estimated squared
    distances to other points (ascending) and their indices.

    The estimate matrix is symmetric, so only its upper block triangle is computed: block row
    [i0, i1) against columns [i0, n); the part right of the diagonal block also serves, transposed,
    as columns of the later rows, whose running candidate lists are merged as blocks go by.
    """
    n, device = p.n, p.src.device
    best_v = torch.full((n, cand), float("inf"), dtype=p.est.dtype, device=device)
    best_i = torch.zeros((n, cand), dtype=torch.long, device=device)
    for i0 in range(0, n, chunk):
        i1 = min(i0 + chunk, n)
        c = i1 - i0
        s = _estimate(p, slice(i0, i1), p, slice(i0, n))
        local = torch.arange(c, device=device)
        s[local, local] = float("inf")  # self
        v, j = torch.topk(s, min(cand, n - i0), dim=1, largest=False, sorted=False)
        vals, idx = _merge_smallest(best_v[i0:i1], best_i[i0:i1], v, j + i0, cand)
        if i1 < n:
            vt, jt = torch.topk(s[:, c:], min(cand, c), dim=0, largest=False, sorted=False)
            best_v[i1:], best_i[i1:] = _merge_smallest(best_v[i1:], best_i[i1:], vt.T, jt.T + i0, cand)
        del s
        yield i0, i1, vals, idx


class _Radii:
    """Distance of every point to its k-th nearest other point, with sklearn's numerics.

    Known first as an interval [lo, hi] from the estimate; :meth:`exact` computes the exact value
    of the rows that a comparison really needs. Per row, the estimate's k+pad smallest values
    v_0 <= v_1 <= ... each hold the exact value within +-e. Neighbours whose intervals chain
    together (gaps <= 2e) form groups whose order relative to each other is certain; the radius is
    a known rank inside the group around position k-1 (usually the k-th neighbour alone), so it
    lies in [v_left - e, v_right + e] and its exact value needs only that group. A row whose
    group reaches the end of the candidate list is computed exactly in full at once.
    """

    def __init__(self, p: _Cloud, k: int, chunk: int, coeff: float) -> None:
        n, device = p.n, p.src.device
        self.p, self.k, self.q = p, k, k - 1
        cand = min(k + _KNN_PAD, n - 1)
        sq_max = float(p.sq.max())
        self.vals = torch.empty(n, cand, dtype=torch.float64, device=device)
        self.idx = torch.empty(n, cand, dtype=torch.long, device=device)
        self.value = torch.full((n,), float("nan"), dtype=torch.float64, device=device)
        self.known = torch.zeros(n, dtype=torch.bool, device=device)
        self._positions = torch.arange(cand, device=device)
        for start, stop, vals, idx in _knn_candidates(p, cand, chunk):
            self.vals[start:stop], self.idx[start:stop] = vals, idx
        # one vectorised pass over all rows (few large tensor ops rather than many small ones)
        q, positions, vals = self.q, self._positions, self.vals
        err = coeff * (p.sq + sq_max)                              # bound for every pair of the row
        sep = (vals[:, 1:] - vals[:, :-1]) > 2.0 * err[:, None]    # sep[:, j]: gap between j and j+1
        # group of position q: from after the last gap before q to the first gap at or after q
        if q > 0:
            self.left = torch.where(sep[:, :q], positions[1:q + 1], 0).amax(dim=1)
        else:
            self.left = torch.zeros(n, dtype=torch.long, device=device)
        right_sep = sep[:, q:]
        if cand == n - 1:  # every other point is a candidate: the list is complete
            right_sep = torch.cat([right_sep, torch.ones_like(right_sep[:, :1])], dim=1)
        complete = right_sep.any(dim=1)
        self.right = q + right_sep.to(torch.uint8).argmax(dim=1)  # first gap at or after q
        self.lo = (vals.gather(1, self.left[:, None]).squeeze(1) - err).clamp_(min=0).sqrt_()
        self.hi = (vals.gather(1, self.right[:, None]).squeeze(1) + err).sqrt_()
        bad = (~complete).nonzero(as_tuple=True)[0]
        if bad.numel():  # the estimate cannot isolate the k-th neighbour: whole rows, exactly
            log.debug("prdc: %d of %d rows needed an exact k-NN row", bad.numel(), n)
            for start in range(0, bad.numel(), 256):
                rows = bad[start:start + 256]
                d = _exact_rows(p, rows, p, p.is_f32)
                d[torch.arange(rows.numel(), device=device), rows] = float("inf")
                self._set(rows, d.kthvalue(k, dim=1).values)

    def _set(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        self.value[rows] = values
        self.lo[rows] = values
        self.hi[rows] = values
        self.known[rows] = True

    def exact(self, rows: torch.Tensor) -> torch.Tensor:
        """Exact radii of ``rows`` (computed once, from the row's group of candidates)."""
        todo = rows.unique()
        todo = todo[~self.known[todo]]
        if todo.numel():
            p, q = self.p, self.q
            left, right, idx = self.left[todo], self.right[todo], self.idx[todo]
            group = (self._positions >= left[:, None]) & (self._positions <= right[:, None])
            r_loc, c_loc = group.nonzero(as_tuple=True)
            exact = torch.full(group.shape, float("inf"), dtype=torch.float64, device=group.device)
            exact[r_loc, c_loc] = _exact_pairs(p, todo[r_loc], p, idx[r_loc, c_loc], p.is_f32)
            self._set(todo, exact.sort(dim=1).values.gather(1, (q - left)[:, None]).squeeze(1))
        return self.value[rows]


def _bounds(r_lo: torch.Tensor, r_hi: torch.Tensor, out_f32: bool,
            est_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared thresholds (lo, hi), float64, for a radius r in [r_lo, r_hi]: an exact squared
    distance < lo implies D < r, and >= hi implies D >= r, whatever the rounding of D (float32
    rounding and square root)."""
    m = 4.0 * (2.0 ** -24 if out_f32 else 2.0 ** -53) + 8.0 * _unit_roundoff(est_dtype)
    return (r_lo * (1.0 - m)) ** 2 * (1.0 - m), (r_hi * (1.0 + m)) ** 2 * (1.0 + m)


def prdc(real_features, fake_features, nearest_k: int = 5, *, chunk_size: int | None = None,
         device: str | torch.device | None = None) -> dict[str, float]:
    """Precision, recall, density and coverage; the same dict as ``prdc.compute_prdc``.

    ``real_features`` [N, dim], ``fake_features`` [M, dim]: numpy arrays or tensors. float32 inputs
    keep sklearn's float32 distance semantics, anything else is treated as float64 (as sklearn
    does). ``chunk_size``: rows per block (default: blocks of about 64 MiB, at most N/8 rows for the
    symmetric k-NN pass). ``device``: default CUDA when available, else CPU.
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
    # float32 GEMM estimates on CPU only while float32 matmuls are IEEE (no bf16/TF32 modes)
    fast_ok = device.type == "cpu" and torch.get_float32_matmul_precision() == "highest"
    est_dtype = torch.float32 if fast_ok else torch.float64
    n, m, dim = real.shape[0], fake.shape[0], real.shape[1]
    coeff = _bound_coefficient(dim, est_dtype)
    itemsize = 4 if est_dtype == torch.float32 else 8

    def rows_per_block(cols: int, symmetric: bool) -> int:
        if chunk_size is not None:
            return chunk_size
        rows = min(4096, max(64, _CHUNK_BYTES // (itemsize * cols)))
        return max(64, min(rows, -(-cols // 8))) if symmetric else rows

    with torch.no_grad():
        R = _cloud(real, device, est_dtype)
        F = R if same_object else _cloud(fake, device, est_dtype)
        real_radii = _Radii(R, k, rows_per_block(n, True), coeff)
        fake_radii = real_radii if same_object else _Radii(F, k, rows_per_block(m, True), coeff)

        # thresholds on the estimate s: s < lo -> certainly D < r; s >= hi -> certainly not
        lo_r, hi_r = _bounds(real_radii.lo, real_radii.hi, pair_f32, est_dtype)
        lo_f, hi_f = _bounds(fake_radii.lo, fake_radii.hi, pair_f32, est_dtype)
        err_r, err_f = coeff * R.sq, coeff * F.sq
        err_r_max, err_f_max = float(err_r.max()), float(err_f.max())
        row_lo = (lo_r - err_r - err_f_max).to(est_dtype)
        row_hi = (hi_r + err_r + err_f_max).to(est_dtype)
        col_lo = (lo_f - err_f - err_r_max).to(est_dtype).unsqueeze(0)
        col_hi = (hi_f + err_f + err_r_max).to(est_dtype).unsqueeze(0)

        in_some_ball = torch.zeros(m, dtype=torch.bool, device=device)   # fake: inside some real ball
        ball_hits = 0                                                      # (real, fake) pairs D < r_real
        covered = torch.zeros(n, dtype=torch.bool, device=device)         # real: some fake in its ball
        recalled = torch.zeros(n, dtype=torch.bool, device=device)        # real: in some fake ball
        refined = 0
        chunk = rows_per_block(m, False)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            s = _estimate(R, slice(start, stop), F)
            if same_object:  # sklearn zeroes the diagonal when both arguments are one array
                diag = torch.arange(start, stop, device=device)
                s[diag - start, diag] = 0
            in_ball = s < row_lo[start:stop, None]
            undecided = (s < row_hi[start:stop, None]) ^ in_ball
            in_fake_ball = s < col_lo
            undecided |= (s < col_hi) ^ in_fake_ball
            del s
            i_loc, j = undecided.nonzero(as_tuple=True)
            if i_loc.numel():
                refined += i_loc.numel()
                i = i_loc + start
                d = _exact_pairs(R, i, F, j, pair_f32)
                if same_object:
                    d[i == j] = 0.0
                in_ball[i_loc, j] = d < real_radii.exact(i)
                in_fake_ball[i_loc, j] = d < fake_radii.exact(j)
            ball_hits += int(in_ball.count_nonzero())
            in_some_ball |= in_ball.any(dim=0)
            covered[start:stop] = in_ball.any(dim=1)
            recalled[start:stop] = in_fake_ball.any(dim=1)
        log.debug("prdc: refined %d of %d real-fake pairs exactly", refined, n * m)

        precision = int(in_some_ball.count_nonzero()) / m
        recall = int(recalled.count_nonzero()) / n
        density = (1.0 / float(k)) * (ball_hits / m)
        coverage = int(covered.count_nonzero()) / n
    return dict(precision=precision, recall=recall, density=density, coverage=coverage)
