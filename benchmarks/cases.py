"""Benchmark cases for the λ kernel and their seeded data.

1-D cases hold activations the way a BERT layer gives them, ``(n_points, n_neurons)``: one row per
sentence, each column one neuron's 1-D point cloud. Cases with ``dim > 1`` are stacks
``(n_clouds, n_points, dim)`` (attention heads are ``dim = 64``). All data is float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Peers that hold a whole distance matrix or the full Rips 1-skeleton: not run on one cloud of
# 20,000 points (2·10^8 pairs).
_DENSE_SKIPS = {
    "ripser": "dense distance matrix (1.6 GB) + full dim-0 reduction over 2·10^8 edges: "
    "minutes (1.7 s at 3,000 points, ×44 at 20,000)",
    "giotto-ph": "dense distance matrix + 2·10^8 edges: minutes (0.7 s at 3,000 points, ×44)",
    "gudhi": "stores the whole 1-skeleton, 2·10^8 edges in a simplex tree: > 20 GB",
    "scipy-mst": "squareform 20,000² float64 (3.2 GB) + its CSR copy; 1.6 s at 3,000 points, ×44",
}


@dataclass(frozen=True)
class Case:
    """One benchmark case.

    Attributes
    ----------
    name : str
        Identifier used in tables, JSON and on the command line.
    n_clouds, n_points, dim : int
        Shape of the problem; ``dim == 1`` cases are stored ``(n_points, n_clouds)``.
    seed : int
        Seed of the data generator.
    group : str
        ``"main"``, or the scaling series (``"scale-points-1d"``, ...) the case belongs to.
    data : str
        Generator: ``"bert"`` (GELU activations, per-neuron shift and scale), ``"heads"``
        (anisotropic Gaussians per cloud), ``"clusters"`` (Gaussian blobs, one λ between blobs).
    tools : tuple of str or None
        Only these peers (scaling series keep to obce's fastest peers); None means every peer.
    skip : dict
        Peer name -> why it is not run on this case.
    targets : tuple of (str, float)
        (peer, least obce speedup) pairs the table checks; peer ``"best"`` is the fastest peer run.
    memory : bool
        Measure each tool's peak RSS in a separate process.
    """

    name: str
    n_clouds: int
    n_points: int
    dim: int
    seed: int
    group: str = "main"
    data: str = "heads"
    tools: tuple | None = None
    skip: dict = field(default_factory=dict)
    targets: tuple = ()
    memory: bool = False

    @property
    def kind(self) -> str:
        return "1d" if self.dim == 1 else "nd"

    @property
    def shape(self) -> tuple:
        if self.dim == 1:
            return (self.n_points, self.n_clouds)
        return (self.n_clouds, self.n_points, self.dim)

    @property
    def describe(self) -> str:
        if self.dim == 1:
            return f"{self.n_clouds:,} neurons × {self.n_points:,} points, 1-D, (n_points, n_neurons)"
        clouds = "1 cloud" if self.n_clouds == 1 else f"{self.n_clouds:,} clouds"
        return f"{clouds} × {self.n_points:,} points, d = {self.dim}"

    @property
    def pair_flops(self) -> float:
        """n_clouds · n_points² · dim: the FLOPs of a GEMM (SYRK) giving half of each cloud's pair products."""
        return float(self.n_clouds) * self.n_points**2 * self.dim

    def generate(self) -> np.ndarray:
        """The case's float32 array, identical for a given seed."""
        return GENERATORS[self.data](self)


def _gelu(z):
    return 0.5 * z * (1.0 + np.tanh(np.float32(0.7978846) * (z + np.float32(0.044715) * z**3)))


def _bert(case: Case) -> np.ndarray:
    rng = np.random.default_rng(case.seed)
    out = np.empty(case.shape, dtype=np.float32)
    step = 8192  # columns at a time keep temporaries small for the 221,184-neuron case
    for start in range(0, case.n_clouds, step):
        m = min(step, case.n_clouds - start)
        shift = rng.normal(-0.5, 0.7, m).astype(np.float32)
        scale = rng.lognormal(-0.3, 0.4, m).astype(np.float32)
        z = rng.standard_normal((case.n_points, m), dtype=np.float32) * scale + shift
        out[:, start : start + m] = _gelu(z)
    return out


def _heads(case: Case) -> np.ndarray:
    rng = np.random.default_rng(case.seed)
    x = rng.standard_normal(case.shape, dtype=np.float32)
    x *= rng.lognormal(0.0, 0.5, (case.n_clouds, 1, case.dim)).astype(np.float32)
    x += rng.normal(0.0, 0.5, (case.n_clouds, 1, case.dim)).astype(np.float32)
    return x


def _clusters(case: Case, n_blobs: int = 16) -> np.ndarray:
    rng = np.random.default_rng(case.seed)
    centers = rng.normal(0.0, 3.0, (case.n_clouds, n_blobs, case.dim)).astype(np.float32)
    label = rng.integers(0, n_blobs, (case.n_clouds, case.n_points))
    x = rng.standard_normal(case.shape, dtype=np.float32)
    x += np.take_along_axis(centers, label[:, :, None], axis=1)
    return x


GENERATORS = {"bert": _bert, "heads": _heads, "clusters": _clusters}

_D64_TARGETS = (("ripser", 100.0), ("numba-prim", 1.0))

MAIN = [
    Case(
        "1d-bert-layer",
        3072,
        150,
        1,
        seed=1,
        data="bert",
        memory=True,
        targets=(("ripser", 5000.0), ("numpy-sort-diff", 3.0)),
    ),
    Case("1d-bert-base", 82_944, 150, 1, seed=2, data="bert", memory=True),
    Case("1d-bert-large", 221_184, 150, 1, seed=3, data="bert", memory=True),
    Case(
        "1d-768x3000",
        768,
        3000,
        1,
        seed=4,
        data="bert",
        memory=True,
        targets=(("numpy-sort-diff", 3.0),),
    ),
    Case("d64-144x150", 144, 150, 64, seed=5, targets=_D64_TARGETS),
    Case("d64-144x1500", 144, 1500, 64, seed=6, memory=True, targets=_D64_TARGETS),
    Case("d64-12x3000", 12, 3000, 64, seed=7, memory=True, targets=_D64_TARGETS),
    Case(
        "d8-1x20000",
        1,
        20_000,
        8,
        seed=8,
        data="clusters",
        memory=True,
        skip=_DENSE_SKIPS,
        targets=(("best", 1.0),),
    ),
    Case(
        "d64-1x20000",
        1,
        20_000,
        64,
        seed=9,
        data="clusters",
        memory=True,
        skip={
            **_DENSE_SKIPS,
            "mlpack-emst": "dual-tree Borůvka prunes nothing at d = 64: 4.5 s at 3,000 points, minutes at 20,000",
        },
        targets=(("best", 1.0),),
    ),
]

_SIZES = (150, 500, 1500, 5000, 20_000)

SCALING = (
    [
        Case(
            f"scale-points-1d-{n}",
            768,
            n,
            1,
            seed=100 + i,
            group="scale-points-1d",
            data="bert",
            tools=("numpy-sort-diff", "numba-prim"),
        )
        for i, n in enumerate(_SIZES)
    ]
    + [
        Case(
            f"scale-points-d64-{n}",
            1,
            n,
            64,
            seed=110 + i,
            group="scale-points-d64",
            tools=("numba-prim", "fastcluster"),
        )
        for i, n in enumerate(_SIZES)
    ]
    + [
        Case(
            f"scale-clouds-1d-{c}",
            c,
            150,
            1,
            seed=120 + i,
            group="scale-clouds-1d",
            data="bert",
            tools=("numpy-sort-diff", "numba-prim"),
        )
        for i, c in enumerate((768, 3072, 12_288, 49_152, 196_608))
    ]
    + [
        Case(
            f"scale-clouds-d64-{c}",
            c,
            150,
            64,
            seed=130 + i,
            group="scale-clouds-d64",
            tools=("numba-prim", "fastcluster"),
        )
        for i, c in enumerate((1, 12, 144, 1728, 6912))
    ]
)

ALL = MAIN + SCALING

# What each scaling series varies, for tables and the plot.
SERIES = {
    "scale-points-1d": ("n_points", "768 neurons, 1-D"),
    "scale-points-d64": ("n_points", "1 cloud, d = 64"),
    "scale-clouds-1d": ("n_clouds", "150 points, 1-D"),
    "scale-clouds-d64": ("n_clouds", "150 points, d = 64"),
}


def by_name(name: str) -> Case:
    """The case called ``name``; ValueError listing the known ones otherwise."""
    for case in ALL:
        if case.name == name:
            return case
    raise ValueError(f"unknown case {name!r}; known: {', '.join(c.name for c in ALL)}")
