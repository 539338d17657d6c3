"""Other ways to compute λ, the largest finite H0 death of a Vietoris–Rips filtration.

Every peer has the signature of ``obce.fast_death_radii`` without options: it takes the array of
a benchmark case as given and returns λ per cloud as a float64 numpy array. The array is either a
2-D ``(n_points, n_neurons)`` activation matrix (each column is a 1-D cloud, the layout a BERT
layer gives) or a 3-D ``(n_clouds, n_points, dim)`` stack. Conversions a user would have to write
(a column to an ``(n, 1)`` cloud, float32 to float64) are part of each peer and of its time.

The registry ``PEERS`` maps a tool name to a :class:`Peer`; tools whose package is missing are
left out of it, and ``MISSING`` says why; ``ALL`` holds every peer, installed or not.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def clouds(acts):
    """Yield each cloud of ``acts`` as an ``(n_points, dim)`` array.

    Parameters
    ----------
    acts : numpy.ndarray
        ``(n_points, n_neurons)`` (each column a 1-D cloud) or ``(n_clouds, n_points, dim)``.

    Yields
    ------
    numpy.ndarray
        One cloud, ``(n_points, 1)`` for a 2-D input.
    """
    if acts.ndim == 2:
        for j in range(acts.shape[1]):
            yield acts[:, j : j + 1]
    elif acts.ndim == 3:
        yield from acts
    else:
        raise ValueError(f"expected (n_points, n_neurons) or (n_clouds, n_points, dim), got {acts.shape}")


def n_clouds(acts) -> int:
    """Number of clouds in a case's array (columns of a 2-D one, first axis of a 3-D one)."""
    return acts.shape[1] if acts.ndim == 2 else acts.shape[0]


def subset(acts, k: int):
    """The first ``k`` clouds of ``acts``, in the same layout."""
    return acts[:, :k] if acts.ndim == 2 else acts[:k]


def _per_cloud(one: Callable[[np.ndarray], float]) -> Callable[[np.ndarray], np.ndarray]:
    """Turn a function of one ``(n_points, dim)`` cloud into a peer (a Python loop over clouds)."""

    def peer(acts):
        return np.fromiter((one(x) for x in clouds(acts)), dtype=np.float64, count=n_clouds(acts))

    peer.__name__ = one.__name__
    peer.__doc__ = one.__doc__
    return peer


def _max_finite_death(dgm0) -> float:
    deaths = np.asarray(dgm0, dtype=np.float64)[:, 1]
    return float(deaths[np.isfinite(deaths)].max())


# --- persistent homology libraries -------------------------------------------------------------


@_per_cloud
def ripser(x):
    """ripser.py, one cloud at a time, ``maxdim=0``: the largest finite death of ``dgms[0]``."""
    from ripser import ripser as _ripser

    return _max_finite_death(_ripser(x, maxdim=0)["dgms"][0])


@_per_cloud
def giotto_ph(x):
    """giotto-ph's ``ripser_parallel``, one cloud at a time, ``maxdim=0``, all cores."""
    from gph import ripser_parallel

    return _max_finite_death(ripser_parallel(x, maxdim=0, n_threads=-1)["dgms"][0])


@_per_cloud
def gudhi(x):
    """gudhi's ``RipsComplex`` (1-skeleton), dimension-0 persistence, one cloud at a time."""
    import gudhi as _gudhi

    tree = _gudhi.RipsComplex(points=x).create_simplex_tree(max_dimension=1)
    tree.compute_persistence()
    return _max_finite_death(tree.persistence_intervals_in_dimension(0))


# --- minimum spanning trees and single linkage -------------------------------------------------


@_per_cloud
def scipy_mst(x):
    """scipy: dense ``pdist`` + ``csgraph.minimum_spanning_tree``, the longest tree edge.

    Coincident points give zero distances, which csgraph reads as missing edges; the tree loses
    those zero-length edges only, so its longest edge is still λ.
    """
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import pdist, squareform

    return float(minimum_spanning_tree(squareform(pdist(x))).data.max(initial=0.0))


@_per_cloud
def scipy_linkage(x):
    """scipy ``cluster.hierarchy.linkage(method="single")``: λ is the last merge height."""
    from scipy.cluster.hierarchy import linkage

    return float(linkage(x, method="single")[-1, 2])


@_per_cloud
def fastcluster(x):
    """fastcluster ``linkage_vector(method="single")`` (O(n) memory): the last merge height."""
    import fastcluster as _fastcluster

    return float(_fastcluster.linkage_vector(x, method="single")[-1, 2])


@_per_cloud
def mlpack_emst(x):
    """mlpack's dual-tree Borůvka Euclidean MST (``mlpack.emst``): the longest tree edge."""
    import mlpack

    return float(mlpack.emst(input_=np.asarray(x, dtype=np.float64))["output"][:, 2].max())


# --- what a user would write -------------------------------------------------------------------


def numpy_sort_diff(acts):
    """1-D clouds only: sort each column, the largest gap between neighbours.

    Works on the ``(n_points, n_neurons)`` matrix as given (sort along axis 0).
    """
    if acts.ndim != 2:
        raise ValueError(f"numpy_sort_diff takes 1-D clouds as (n_points, n_neurons), got {acts.shape}")
    return np.diff(np.sort(acts, axis=0), axis=0).max(axis=0).astype(np.float64)


def numpy_sort_rows(acts):
    """1-D clouds only: the same with each cloud made contiguous first, as a user who knows numpy would.

    Copies the matrix transposed (one row per neuron), sorts the rows in place, and takes the
    largest gap of each row; the copy is part of the time.
    """
    if acts.ndim != 2:
        raise ValueError(f"numpy_sort_rows takes 1-D clouds as (n_points, n_neurons), got {acts.shape}")
    rows = np.ascontiguousarray(acts.T)
    rows.sort(axis=1)
    return (rows[:, 1:] - rows[:, :-1]).max(axis=1).astype(np.float64)


def _build_numba_prim():
    import numba

    @numba.njit(fastmath=True, cache=False)
    def prim_one(x):
        # O(n) memory: squared distances computed on the fly from the last vertex added.
        n, d = x.shape
        best = np.full(n, np.inf, dtype=np.float32)
        done = np.zeros(n, dtype=np.bool_)
        done[0] = True
        cur = 0
        lam = np.float32(0.0)
        for _ in range(n - 1):
            nxt = -1
            nearest = np.float32(np.inf)
            for j in range(n):
                if done[j]:
                    continue
                s = np.float32(0.0)
                for k in range(d):
                    t = x[cur, k] - x[j, k]
                    s += t * t
                best[j] = min(best[j], s)
                if best[j] < nearest:
                    nearest = best[j]
                    nxt = j
            done[nxt] = True
            cur = nxt
            lam = max(lam, nearest)
        return np.sqrt(lam)

    @numba.njit(parallel=True, fastmath=True, cache=False)
    def prim_batch(x):
        out = np.empty(x.shape[0], dtype=np.float64)
        for i in numba.prange(x.shape[0]):
            out[i] = prim_one(x[i])
        return out

    return prim_batch


_numba_prim_batch = None


def numba_prim(acts):
    """Prim's algorithm compiled with numba: float32, distances on the fly, ``prange`` over clouds.

    The first call compiles (the benchmark warms up before timing). A 2-D matrix is transposed to
    one contiguous ``(n_points, 1)`` cloud per neuron first, as a user would.
    """
    global _numba_prim_batch
    if _numba_prim_batch is None:
        _numba_prim_batch = _build_numba_prim()
    x = np.ascontiguousarray(acts.T[:, :, None] if acts.ndim == 2 else acts, dtype=np.float32)
    return _numba_prim_batch(x)


# --- torch, for CUDA tensors (they also run on CPU tensors, which the tests use) ---------------


def _as_tensor(acts):
    import torch

    return acts if isinstance(acts, torch.Tensor) else torch.from_numpy(np.asarray(acts))


def torch_sort_diff_tensor(x):
    """λ of the columns of a ``(n_points, n_neurons)`` tensor, on its device: sort, diff, max."""
    if x.ndim != 2:
        raise ValueError(f"torch_sort_diff takes 1-D clouds as (n_points, n_neurons), got {tuple(x.shape)}")
    import torch

    s = torch.sort(x, dim=0).values
    return (s[1:] - s[:-1]).amax(dim=0)


def torch_prim_tensor(x, max_bytes: int = 4 << 30):
    """λ of each cloud of a ``(n_clouds, n_points, dim)`` tensor, on its device.

    ``torch.cdist`` gives each cloud's distance matrix, then one Prim step per point runs on all
    clouds of a chunk at once (argmin over the frontier, relax with the new vertex's row). Chunks
    keep the distance matrices under ``max_bytes``.
    """
    if x.ndim != 3:
        raise ValueError(f"torch_prim takes (n_clouds, n_points, dim), got {tuple(x.shape)}")
    import torch

    c, n, _ = x.shape
    out = torch.empty(c, dtype=x.dtype, device=x.device)
    chunk = max(1, max_bytes // (n * n * x.element_size()))
    for start in range(0, c, chunk):
        xb = x[start : start + chunk]
        dist = torch.cdist(xb, xb)
        rows = torch.arange(xb.shape[0], device=x.device)
        best = dist[:, 0, :].clone()
        done = torch.zeros(best.shape, dtype=torch.bool, device=x.device)
        done[:, 0] = True
        lam = torch.zeros(xb.shape[0], dtype=x.dtype, device=x.device)
        for _ in range(n - 1):
            nearest, nxt = best.masked_fill(done, float("inf")).min(dim=1)
            lam = torch.maximum(lam, nearest)
            done[rows, nxt] = True
            best = torch.minimum(best, dist[rows, nxt])
        out[start : start + xb.shape[0]] = lam
    return out


def torch_sort_diff(acts):
    """torch sort + diff + max along the points axis (1-D clouds, BERT layout), on the input's device."""
    return torch_sort_diff_tensor(_as_tensor(acts)).double().cpu().numpy()


def torch_prim(acts):
    """torch ``cdist`` + a batched Prim loop (d > 1), on the input's device."""
    return torch_prim_tensor(_as_tensor(acts)).double().cpu().numpy()


# --- registry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A tool the benchmark compares with obce.

    Attributes
    ----------
    name : str
        Name in tables and JSON.
    fn : callable
        The peer: case array in, float64 numpy λ out.
    package : str
        Distribution whose version is recorded.
    module : str
        Module it imports (its absence leaves the peer out).
    threads : int or None
        CPU threads it computes on; None for all cores.
    kinds : tuple of str
        Which cases it takes: ``"1d"`` (2-D activation matrix), ``"nd"`` (3-D stack).
    per_cloud : bool
        A Python loop over clouds: timed on a subset of clouds and scaled up linearly.
    device : str
        ``"cpu"`` or ``"cuda"`` (takes a CUDA tensor and is timed with CUDA events).
    tensor_fn : callable or None
        For CUDA peers: the same computation returning a tensor on the device, which is what is timed.
    """

    name: str
    fn: Callable
    package: str
    module: str
    threads: int | None = 1
    kinds: tuple = ("1d", "nd")
    per_cloud: bool = False
    device: str = "cpu"
    tensor_fn: Callable | None = None

    @property
    def version(self) -> str:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"


_ALL = [
    Peer("ripser", ripser, "ripser", "ripser", per_cloud=True),
    Peer("giotto-ph", giotto_ph, "giotto-ph", "gph", threads=None, per_cloud=True),
    Peer("gudhi", gudhi, "gudhi", "gudhi", per_cloud=True),
    Peer("scipy-mst", scipy_mst, "scipy", "scipy", per_cloud=True),
    Peer("scipy-linkage", scipy_linkage, "scipy", "scipy", per_cloud=True),
    Peer("fastcluster", fastcluster, "fastcluster", "fastcluster", per_cloud=True),
    Peer("mlpack-emst", mlpack_emst, "mlpack", "mlpack", per_cloud=True),
    Peer("numpy-sort-diff", numpy_sort_diff, "numpy", "numpy", kinds=("1d",)),
    Peer("numpy-sort-rows", numpy_sort_rows, "numpy", "numpy", kinds=("1d",)),
    Peer("numba-prim", numba_prim, "numba", "numba", threads=None),
    Peer(
        "torch-sort-diff",
        torch_sort_diff,
        "torch",
        "torch",
        kinds=("1d",),
        device="cuda",
        tensor_fn=torch_sort_diff_tensor,
    ),
    Peer("torch-prim", torch_prim, "torch", "torch", kinds=("nd",), device="cuda", tensor_fn=torch_prim_tensor),
]


def _available():
    # find_spec, not import: torch alone takes a second to import; a broken install shows up
    # when the benchmark warms each peer up.
    found, missing = {}, {}
    for peer in _ALL:
        if importlib.util.find_spec(peer.module) is None:
            missing[peer.name] = f"module {peer.module!r} not installed"
        else:
            found[peer.name] = peer
    return found, missing


PEERS, MISSING = _available()
ALL = {peer.name: peer for peer in _ALL}  # installed or not
