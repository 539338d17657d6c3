"""obce.fast_death_radii and obce.h0_deaths against independent references.

References: scipy's minimum spanning tree on float64 distance matrices (its edge lengths are the
finite H0 deaths; the multiset is unique even with ties, so sorted deaths are compared), and
ripser's dgms[0]. CUDA tests compare the GPU with the CPU on the same inputs.
"""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import mst_deaths
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.stats import special_ortho_group

import obce

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def as_clouds(acts: np.ndarray) -> np.ndarray:
    """The (n_clouds, n_points, dim) view of an input: columns of a 2-D activation matrix."""
    return acts.T[:, :, None] if acts.ndim == 2 else acts


def reference(acts: np.ndarray):
    deaths = [mst_deaths(c) for c in as_clouds(acts)]
    return np.array([d[-1] for d in deaths]), np.array(deaths)


def check(acts: np.ndarray, **kwargs):
    """Both functions against the scipy reference, at the tolerance of the input's precision."""
    rtol = RTOL[np.float64 if acts.dtype == np.float64 else np.float32]
    lam_ref, deaths_ref = reference(acts)
    lam, deaths = obce.fast_death_radii(acts, **kwargs), obce.h0_deaths(acts, **kwargs)
    np.testing.assert_allclose(lam, lam_ref, rtol=rtol, atol=0)
    np.testing.assert_allclose(deaths, deaths_ref, rtol=rtol, atol=rtol * float(lam_ref.max(initial=0)))
    return lam


# ---- exact small fixtures --------------------------------------------------------------------


def test_exact_line():
    acts = np.array([[0.0, 1.0], [1.0, 1.0], [5.0, 3.0]])
    assert obce.fast_death_radii(acts).tolist() == [4.0, 2.0]
    assert obce.h0_deaths(acts).tolist() == [[1.0, 4.0], [0.0, 2.0]]


def test_exact_triangle():
    cloud = np.array([[[0.0, 0.0], [3.0, 0.0], [3.0, 4.0]]])
    assert obce.fast_death_radii(cloud).tolist() == [4.0]
    assert obce.h0_deaths(cloud).tolist() == [[3.0, 4.0]]


def test_two_points_is_their_distance():
    cloud = np.array([[[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]]])
    assert obce.fast_death_radii(cloud).tolist() == [3.0]


# ---- against scipy on random, adversarial and degenerate inputs -------------------------------

DIMS = [1, 2, 3, 17, 64]
DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("n_points", [2, 3, 7, 150, 300])
def test_random(dim, n_points, dtype):
    rng = np.random.default_rng(n_points * 100 + dim)
    check(rng.normal(size=(5, n_points, dim)).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", DIMS)
def test_clustered(dim, dtype):
    rng = np.random.default_rng(dim)
    centres = rng.normal(scale=50, size=(4, 6, dim))
    clouds = centres[:, rng.integers(0, 6, size=200)] + rng.normal(scale=0.01, size=(4, 200, dim))
    lam = check(clouds.astype(dtype))
    assert (lam > 1).all()  # the clusters are far apart: λ is a gap between clusters


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", DIMS)
def test_duplicate_heavy(dim, dtype):
    rng = np.random.default_rng(dim)
    distinct = rng.normal(size=(3, 5, dim))
    clouds = distinct[:, rng.integers(0, 5, size=120)]
    deaths = obce.h0_deaths(clouds.astype(dtype))
    assert (deaths == 0).sum(axis=1).min() >= 120 - 5  # a zero death for every duplicate
    check(clouds.astype(dtype))


def test_signed_zeros_are_zeros():
    """-0.0 and +0.0 are one value: a cloud of negatives and signed zeros has its gap at the zeros, and a zero death
    is +0 whichever zero sorts first (-0 - +0 is -0)."""
    acts = np.array([[-0.0], [-0.0], [-1.0], [0.0], [-3.0]], dtype=np.float32)
    assert obce.fast_death_radii(acts).tolist() == [2.0]
    assert obce.h0_deaths(acts).tolist() == [[0.0, 0.0, 1.0, 2.0]]
    signed = np.random.default_rng(0).choice([0.0, -0.0, 1.0], size=(50, 8))
    for x in (signed, signed[None, :, :2], torch.from_numpy(signed)):
        deaths = np.asarray(obce.h0_deaths(x))
        assert (deaths == 0).any() and not np.signbit(deaths).any()
        assert not np.signbit(np.asarray(obce.fast_death_radii(x))).any()


@pytest.mark.parametrize("dim", DIMS)
def test_all_points_equal(dim):
    clouds = np.full((2, 50, dim), 3.25)
    assert obce.fast_death_radii(clouds).tolist() == [0.0, 0.0]
    assert not obce.h0_deaths(clouds).any()


@pytest.mark.parametrize("dim", DIMS)
def test_large_offset_float32(dim):
    """Points sharing a large offset: direct differences keep float32 exact enough."""
    rng = np.random.default_rng(dim)
    clouds = (1e4 + rng.normal(scale=1e-2, size=(3, 100, dim))).astype(np.float32)
    check(clouds)


# Ranges at the ends of a float type: near its largest value hi - lo overflows (no gap does); among
# subnormals the bucket scale n / (hi - lo) does.
EXTREME_SPREADS = {"largest": lambda dtype: np.finfo(dtype).max, "subnormal": lambda dtype: np.finfo(dtype).tiny / 4}


def extreme_range(kind: str, n_points: int, dtype) -> np.ndarray:
    """1-D clouds (6 columns) over [-0.9, 0.9] * spread, each reaching both ends and 0."""
    spread = float(EXTREME_SPREADS[kind](dtype))
    acts = np.random.default_rng(n_points).uniform(-0.9, 0.9, size=(n_points, 6)) * spread
    acts[:3] = [-0.9 * spread], [0.9 * spread], [0.0]
    return acts.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_points", [3, 150, 3000])
@pytest.mark.parametrize("kind", EXTREME_SPREADS)
def test_extreme_ranges(kind, n_points, dtype):
    """The gaps, taken in the input's precision, are exact at both ends of its range."""
    acts = extreme_range(kind, n_points, dtype)
    gaps = np.diff(np.sort(acts, axis=0), axis=0)
    assert np.isfinite(gaps).all()
    assert obce.fast_death_radii(acts).tolist() == gaps.max(axis=0).tolist()
    np.testing.assert_array_equal(obce.h0_deaths(acts), np.sort(gaps.T, axis=1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gap_overflow_is_reported(dtype):
    """Two values further apart than the largest float: an infinite gap, reported, not returned."""
    top = np.finfo(dtype).max
    acts = np.array([[-0.9 * top, 1.0], [0.9 * top, 2.0]], dtype=dtype)
    for function in (obce.fast_death_radii, obce.h0_deaths):
        with pytest.raises(ValueError, match="overflow"):
            function(acts)


@pytest.mark.parametrize("dim", [1, 3, 64])
def test_float16_is_computed_in_float32(dim):
    rng = np.random.default_rng(dim)
    clouds = rng.normal(size=(4, 60, dim)).astype(np.float16)
    lam = check(clouds)
    assert lam.dtype == np.float32


def test_activation_matrix_layout():
    """A (n_points, n_neurons) matrix is read in place: each column is one 1-D cloud."""
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(150, 3072)).astype(np.float32)
    assert obce.fast_death_radii(acts).shape == (3072,)
    check(acts)


@pytest.mark.parametrize("dtype", DTYPES)
def test_either_side_of_the_pair_matrix_limit(dtype):
    """Clouds of d >= 32 whose squared distances fit in 1 MiB (points rounded up to tiles of 64) take the
    pair-matrix path; one point more, Prim on implicit distances. Both agree with the reference at the limit
    (512 points in float32, 320 in float64)."""
    limit = {np.float32: 512, np.float64: 320}[dtype]
    rng = np.random.default_rng(limit)
    for n_points in (limit, limit + 1):
        check(rng.normal(size=(2, n_points, 40)).astype(dtype))


@pytest.fixture
def two_processors(monkeypatch):
    """Two threads where asked for, even on a one-processor machine (explicit counts are capped at the
    processors)."""
    monkeypatch.setattr(obce.kernel, "_processors", lambda: 2)


def test_one_large_cloud_split_over_threads(two_processors):
    """A single cloud of over 2048 points and 2^18 coordinates shares its Prim steps among threads."""
    rng = np.random.default_rng(1)
    clouds = rng.normal(size=(1, 2500, 105))
    check(clouds, n_threads=2)
    check(clouds.astype(np.float32), n_threads=2)
    # Sharing the steps changes no distance and no choice: the same diagram as on one thread.
    assert np.array_equal(obce.h0_deaths(clouds, n_threads=2), obce.h0_deaths(clouds, n_threads=1))


def test_groups_of_1d_clouds_over_threads(two_processors):
    """1-D clouds are handed to threads 16 at a time: 40 columns make three groups, the last one short."""
    acts = np.random.default_rng(2).normal(size=(300, 40)).astype(np.float32)
    lam = check(acts, n_threads=2)
    assert np.array_equal(obce.fast_death_radii(acts, n_threads=1), lam)


SIMD_SCRIPT = """
import sys, numpy as np, obce
print(obce.build_info()["cpu_simd"], file=sys.stderr)
data = np.load(sys.argv[1])
np.savez(sys.argv[2], **{name: obce.h0_deaths(x) for name, x in data.items()})
"""


@pytest.mark.parametrize("level", ["baseline", "avx2", "avx512"])
def test_every_simd_build(level, tmp_path):
    """Each build of the distance loop that this CPU can run (OBCE_SIMD picks one; the kernel is chosen at import)."""
    rng = np.random.default_rng(11)
    # Sizes around the vector widths (2..16 lanes, blocks of 4 registers, tiles of 64) and dims around the
    # loop's 8-way split of the coordinates.
    clouds = {
        f"d{dim}-n{n}-{dtype.__name__}": rng.normal(size=(2, n, dim)).astype(dtype)
        for dim in (2, 7, 8, 9, 64)
        for n in (2, 5, 17, 63, 64, 65, 150)
        for dtype in (np.float32, np.float64)
    }
    np.savez(tmp_path / "in.npz", **clouds)
    env = {**os.environ, "OBCE_SIMD": level}
    run = subprocess.run(
        [sys.executable, "-c", SIMD_SCRIPT, tmp_path / "in.npz", tmp_path / "out.npz"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    chosen = run.stderr.strip().splitlines()[-1]
    if {"baseline": "", "avx2": "(AVX2)", "avx512": "(AVX-512)"}[level] not in chosen:
        pytest.skip(f"this CPU runs {chosen}")
    out = np.load(tmp_path / "out.npz")
    for name, x in clouds.items():
        rtol = RTOL[x.dtype.type]
        deaths_ref = reference(x)[1]
        np.testing.assert_allclose(out[name], deaths_ref, rtol=rtol, atol=rtol * deaths_ref.max(), err_msg=name)


INTERRUPT_SCRIPT = """
import os, signal, subprocess, time
import numpy as np, obce
# A process started in the background of a non-interactive shell (nohup ... &, some CI runners) ignores SIGINT,
# and Python then raises no KeyboardInterrupt: the kernel's part is what is tested.
signal.signal(signal.SIGINT, signal.default_int_handler)
rng = np.random.default_rng(0)
cases = [  # each runs for seconds uninterrupted
    ("one cloud split over threads", rng.random((1, 60000, 32), dtype=np.float32), 2),
    ("one cloud on one thread", rng.random((1, 60000, 32), dtype=np.float32), 1),
    # Too few coordinates to split: thread 1 takes it, and the calling thread asks while it waits.
    ("one unsplit cloud, two threads", rng.random((1, 130000, 2), dtype=np.float32), 2),
    ("one wide cloud", rng.random((1, 40000, 256), dtype=np.float32), 1),  # a Prim step takes milliseconds
    ("many clouds", rng.random((64, 6000, 32), dtype=np.float32), 2),
    ("a group of large 1-D clouds", rng.random((1_000_000, 16), dtype=np.float32), 1),  # 0.15 s a cloud
]
for name, clouds, threads in cases:
    # Ctrl-C from another process: a thread of this one would need the GIL to send it, on time or not.
    killer = subprocess.Popen(["sh", "-c", f"sleep 0.5; kill -INT {os.getpid()}"])
    start = time.perf_counter()
    try:
        obce.h0_deaths(clouds, n_threads=threads)
        print(name, "finished", time.perf_counter() - start)
    except KeyboardInterrupt:
        print(name, "interrupted", round(time.perf_counter() - start, 3))
    killer.wait()
small = rng.random((3, 50, 4))
print("after", obce.fast_death_radii(small, n_threads=2).tolist() == obce.fast_death_radii(small, n_threads=1).tolist())
"""


def test_ctrl_c_stops_a_long_call():
    """A long call sees Ctrl-C within about 50 ms (the kernels ask Python every 50 ms) and raises
    KeyboardInterrupt; the kernels work again after it."""
    run = subprocess.run([sys.executable, "-c", INTERRUPT_SCRIPT], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[-1] == "after True"
    for line in lines[:-1]:
        _, outcome, seconds = line.rsplit(" ", 2)
        assert outcome == "interrupted" and float(seconds) < 1.5, line


OUT_OF_MEMORY_SCRIPT = """
import resource, numpy as np, torch, obce
acts = np.random.default_rng(0).random((4, 2_000_000, 1))  # 64 MB; each thread's scratch needs 96 MB more
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + 40 * 2**20, resource.RLIM_INFINITY))  # room for a thread
huge = np.broadcast_to(np.zeros((1, 1), np.float32), (2**20, 2**20))  # a 4 TiB diagram
for call in (
    lambda: obce.fast_death_radii(acts, n_threads=2),
    lambda: obce.h0_deaths(huge),
    lambda: obce.h0_deaths(torch.from_numpy(huge)),  # torch's allocator raises RuntimeError
):
    try:
        call()
    except MemoryError as err:
        print(err)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and limits the address space")
def test_out_of_memory_is_a_memory_error():
    """A failed allocation inside the threads' region is raised after it, not a terminated process; a result too
    large for memory is a MemoryError too, from numpy or torch, and says how large it is."""
    run = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY_SCRIPT], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert len(lines) == 3, run.stdout
    assert "out of memory for 4 clouds of 2000000 points" in lines[0]
    for line in lines[1:]:
        assert "out of memory for 1048576 clouds of 1048576 points (the result takes up to 8.19e+03 GiB" in line


def _lambda_in_child(queue):
    # Two threads asked for: on a one-processor machine OpenMP's default of one would never hang.
    queue.put(obce.fast_death_radii(np.arange(64 * 150, dtype=np.float32).reshape(150, 64), n_threads=2))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_hang(two_processors):
    """GNU OpenMP's thread pool does not survive fork: a child of a parent that used threads runs on one."""
    import multiprocessing

    obce.fast_death_radii(np.random.default_rng(0).random((150, 256)), n_threads=2)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_lambda_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung in the kernel")
    np.testing.assert_array_equal(queue.get(timeout=5), np.full(64, 64, dtype=np.float32))


def test_bad_simd_level_is_refused_by_the_kernels():
    """obce still imports and says what is wrong; the CPU kernels refuse to run, with a ValueError."""
    env = {**os.environ, "OBCE_SIMD": "sse9"}
    problem = "OBCE_SIMD must be baseline, avx2 or avx512, got 'sse9'"
    script = "import numpy as np, obce; print(obce.build_info()['cpu_simd']); obce.fast_death_radii(np.zeros((3, 2)))"
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert run.stdout.strip() == problem
    assert run.returncode != 0 and run.stderr.strip().splitlines()[-1] == f"ValueError: {problem}"


def test_against_ripser():
    ripser = pytest.importorskip("ripser")
    rng = np.random.default_rng(2)
    for dim in (1, 2, 17):
        for cloud in rng.normal(size=(3, 80, dim)):
            finite = ripser.ripser(cloud, maxdim=0)["dgms"][0][:-1, 1]  # the last bar is infinite
            ours = obce.h0_deaths(cloud[None])[0]
            # ripser drops zero-persistence pairs (random points have none) and works in float32
            np.testing.assert_allclose(ours, np.sort(finite), rtol=1e-5, atol=1e-6 * finite.max())
            assert obce.fast_death_radii(cloud[None])[0] == pytest.approx(finite.max(), rel=1e-5)


# ---- properties ------------------------------------------------------------------------------

# Multiples of 1/16 in [-1000, 1000]: exact in float32 and float64, and no squared distance
# underflows (the scipy reference reads a zero distance as a missing edge).
finite_coords = st.integers(-16000, 16000).map(lambda i: i / 16)


@st.composite
def clouds(draw, max_low_dim=6):
    n_clouds = draw(st.integers(1, 4))
    n_points = draw(st.integers(2, 40))
    # low dimensions, and from 32 on, where small clouds take the pair-matrix path
    dim = draw(st.one_of(st.integers(1, max_low_dim), st.integers(32, 36)))
    # drawing from a small pool makes duplicates and ties common
    pool = draw(hnp.arrays(np.float64, draw(st.integers(1, 8)), elements=finite_coords))
    idx = draw(hnp.arrays(np.intp, (n_clouds, n_points, dim), elements=st.integers(0, len(pool) - 1)))
    noise = draw(st.booleans())
    x = pool[idx]
    if noise:
        x = x + np.random.default_rng(draw(st.integers(0, 2**32 - 1))).normal(size=x.shape)
    return x


@settings(max_examples=60, deadline=None)
@given(clouds())
def test_matches_scipy(x):
    check(x)


@settings(max_examples=40, deadline=None)
@given(clouds(), st.integers(0, 2**32 - 1))
def test_point_permutation_invariance(x, seed):
    perm = np.random.default_rng(seed).permutation(x.shape[1])
    np.testing.assert_allclose(obce.fast_death_radii(x[:, perm]), obce.fast_death_radii(x), rtol=1e-12)
    np.testing.assert_allclose(obce.h0_deaths(x[:, perm]), obce.h0_deaths(x), rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(clouds(), st.integers(0, 2**32 - 1))
def test_rigid_motion_invariance(x, seed):
    rng = np.random.default_rng(seed)
    dim = x.shape[2]
    rotation = special_ortho_group.rvs(dim, random_state=rng) if dim > 1 else np.array([[-1.0]])
    moved = x @ rotation.T + rng.normal(scale=100, size=dim)
    lam = obce.fast_death_radii(x)
    np.testing.assert_allclose(obce.fast_death_radii(moved), lam, rtol=1e-9, atol=1e-9 * (1 + np.abs(x).max()))


@settings(max_examples=40, deadline=None)
@given(clouds(), st.floats(1e-3, 1e3))
def test_scaling(x, scale):
    np.testing.assert_allclose(obce.fast_death_radii(x * scale), scale * obce.fast_death_radii(x), rtol=1e-12)


def prim_lambda(cloud: np.ndarray) -> float:
    """λ of one (n_points, dim) cloud by plain O(n^2) Prim in float64 (every edge kept, unlike scipy)."""
    reached = np.zeros(len(cloud), dtype=bool)
    reached[0] = True
    nearest = ((cloud - cloud[0]) ** 2).sum(axis=1)
    longest = 0.0
    for _ in range(len(cloud) - 1):
        j = int(np.argmin(np.where(reached, np.inf, nearest)))
        longest = max(longest, nearest[j])
        reached[j] = True
        nearest = np.minimum(nearest, ((cloud - cloud[j]) ** 2).sum(axis=1))
    return float(np.sqrt(longest))


@st.composite
def any_magnitude(draw) -> np.ndarray:
    """3 clouds at any scale of their type, subnormal to near its largest value, with or without a
    large offset; d = 1, 2, 5 or 40."""
    dtype, dim = draw(st.sampled_from(DTYPES)), draw(st.sampled_from([1, 2, 5, 40]))
    info = np.finfo(dtype)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    low, high = np.log2(info.smallest_subnormal) + 8, np.log2(info.max) - 8
    scale = 2.0 ** (low + draw(st.floats(0, 1)) * (high - low))
    offset = draw(st.sampled_from([0.0, 1.0, -1.0])) * 2.0 ** rng.uniform(low, high)
    return (rng.normal(size=(3, draw(st.integers(2, 40)), dim)) * scale + offset).astype(dtype)


@settings(max_examples=150, deadline=None)
@given(any_magnitude())
def test_any_magnitude(x):
    """λ is as a float64 reference on the same points gives it, rounded to the type (coordinates
    scaled to about 1 by a power of two, so that no square leaves float64's range)."""
    dtype, info = x.dtype.type, np.finfo(x.dtype)
    exact = x.astype(np.float64)
    exponents = np.frexp(np.abs(exact).max(axis=(1, 2)))[1]
    ref = np.ldexp([prim_lambda(c) for c in np.ldexp(exact, -exponents[:, None, None])], exponents)
    with np.errstate(over="ignore"):
        ref = ref.astype(dtype)
    if np.isinf(ref).any():
        with pytest.raises(ValueError, match="overflows"):
            obce.fast_death_radii(x)
        return
    atol = 4 * float(info.smallest_subnormal)  # a subnormal λ holds a few bits only
    np.testing.assert_allclose(obce.fast_death_radii(x), ref, rtol=RTOL[dtype], atol=atol)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=clouds())
def test_thread_count_invariance(two_processors, x):
    one = obce.fast_death_radii(x, n_threads=1)
    assert np.array_equal(obce.fast_death_radii(x, n_threads=2), one)
    assert np.array_equal(obce.fast_death_radii(x, n_threads=-1), one)


@settings(max_examples=30, deadline=None)
@given(clouds())
def test_batch_equals_loop(x):
    batch = obce.fast_death_radii(x)
    loop = np.concatenate([obce.fast_death_radii(c[None]) for c in x])
    assert np.array_equal(batch, loop)


@settings(max_examples=30, deadline=None)
@given(clouds())
def test_numpy_equals_torch(x):
    for dtype in (np.float32, np.float64):
        arr = x.astype(dtype)
        ours = obce.fast_death_radii(torch.from_numpy(arr))
        assert isinstance(ours, torch.Tensor) and ours.dtype == torch.from_numpy(arr).dtype
        assert np.array_equal(ours.numpy(), obce.fast_death_radii(arr))


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(2, 40), st.integers(1, 12)), elements=finite_coords))
def test_matrix_equals_3d_with_dim_1(acts):
    np.testing.assert_array_equal(obce.fast_death_radii(acts), obce.fast_death_radii(acts.T[:, :, None]))
    np.testing.assert_array_equal(obce.h0_deaths(acts), obce.h0_deaths(acts.T[:, :, None]))


# ---- layouts, dtypes and zero copy -----------------------------------------------------------


def test_any_strides_are_read_in_place():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(6, 90, 10))
    views = [
        base[::2],
        base[:, ::3],
        base[:, :, ::2],
        base.transpose(1, 0, 2).copy().transpose(1, 0, 2),
        base[::-1],
        np.asfortranarray(base),
    ]
    for view in views:
        np.testing.assert_array_equal(obce.fast_death_radii(view), obce.fast_death_radii(np.ascontiguousarray(view)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_unaligned_input_is_read_aligned(dtype):
    """A buffer at an odd address (np.frombuffer with an offset) is copied: the kernels read whole floats."""
    acts = np.random.default_rng(4).normal(size=(30, 7)).astype(dtype)
    unaligned = np.frombuffer(b"\0" + acts.tobytes(), dtype=dtype, offset=1).reshape(acts.shape)
    assert not unaligned.flags.aligned
    np.testing.assert_array_equal(obce.fast_death_radii(unaligned), obce.fast_death_radii(acts))
    np.testing.assert_array_equal(obce.h0_deaths(unaligned), obce.h0_deaths(acts))


def test_unaligned_torch_input_is_read_aligned(monkeypatch):
    acts = np.random.default_rng(4).normal(size=(30, 7)).astype(np.float32)
    buffer = bytearray(b"\0" + acts.tobytes())
    unaligned = torch.frombuffer(buffer, dtype=torch.float32, offset=1, count=acts.size).reshape(acts.shape)
    assert unaligned.data_ptr() % 4
    addresses = []
    to_dlpack = torch.utils.dlpack.to_dlpack
    monkeypatch.setattr(torch.utils.dlpack, "to_dlpack", lambda t: addresses.append(t.data_ptr()) or to_dlpack(t))
    np.testing.assert_array_equal(obce.fast_death_radii(unaligned).numpy(), obce.fast_death_radii(acts))
    assert addresses and all(address % 4 == 0 for address in addresses)


def test_read_only_input():
    acts = np.random.default_rng(4).normal(size=(20, 5))
    acts.flags.writeable = False
    np.testing.assert_array_equal(obce.fast_death_radii(acts), obce.fast_death_radii(acts.copy()))


def test_numpy_views_are_not_copied():
    """float32 and float64 arrays are read in place whatever their strides: numpy's allocations during the call
    stay far below the input's size."""
    import tracemalloc

    base = np.random.default_rng(5).normal(size=(2000, 500)).astype(np.float32)  # 4 MB
    read_only = base.view()
    read_only.flags.writeable = False
    for view in (base[::-1], base[:, ::-1], base.T.reshape(500, 2000, 1), np.asfortranarray(base), read_only):
        expected = obce.fast_death_radii(np.ascontiguousarray(view))
        tracemalloc.start()
        lam = obce.fast_death_radii(view)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        np.testing.assert_array_equal(lam, expected)
        assert peak < base.nbytes / 20


def test_a_refused_capsule_is_left_to_its_producer():
    """A capsule the binding refuses (here a read-only output) keeps its name, so its destructor frees the tensor."""
    acts, out = np.zeros((3, 2), dtype=np.float32), np.zeros(2, dtype=np.float32)
    out.flags.writeable = False
    before = sys.getrefcount(out)
    for _ in range(3):
        with pytest.raises(ValueError, match="read-only"):
            obce.kernel._core.death_radii(
                acts.__dlpack__(max_version=(1, 0)), out.__dlpack__(max_version=(1, 0)), 1, 0, True
            )
    assert sys.getrefcount(out) == before


def test_torch_bfloat16_and_grad():
    x = torch.randn(3, 40, 4, requires_grad=True)
    lam = obce.fast_death_radii(x.to(torch.bfloat16))
    assert lam.dtype == torch.float32
    np.testing.assert_allclose(lam.numpy(), obce.fast_death_radii(x.detach().to(torch.bfloat16).float().numpy()))
    assert obce.fast_death_radii(x).shape == (3,)


def test_torch_cpu_input_is_not_copied(monkeypatch):
    """The kernel sees the tensor's own memory: a DLPack capsule of the same pointer."""
    x = torch.randn(30, 8)
    seen = []
    original = obce.kernel._core.death_radii

    def spy(acts, out, *args):
        tensor = torch.from_dlpack(acts)  # consumes the capsule: hand on a new one of the same memory
        seen.append(tensor.data_ptr())
        return original(tensor.__dlpack__(), out, *args)

    monkeypatch.setattr(obce.kernel._core, "death_radii", spy)
    obce.fast_death_radii(x)
    assert seen == [x.data_ptr()]


def test_zero_clouds_give_an_empty_result():
    assert obce.fast_death_radii(np.zeros((0, 5, 3))).shape == (0,)
    assert obce.fast_death_radii(np.zeros((5, 0))).shape == (0,)
    assert obce.h0_deaths(np.zeros((0, 5, 3))).shape == (0, 4)


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dim", [1, 4])
def test_non_finite_names_the_first_cloud(bad, dim):
    clouds = np.random.default_rng(5).normal(size=(6, 30, dim))
    clouds[4, 7, 0] = bad
    clouds[2, 1, dim - 1] = bad
    with pytest.raises(ValueError, match="NaN or infinity in cloud 2"):
        obce.fast_death_radii(clouds)
    with pytest.raises(ValueError, match="cloud 2"):
        obce.h0_deaths(clouds)


def test_non_finite_in_matrix_names_the_column():
    acts = np.ones((10, 8), dtype=np.float32)
    acts[3, 5] = np.nan
    with pytest.raises(ValueError, match="column 5"):
        obce.fast_death_radii(acts)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5), ()])
def test_wrong_ndim(shape):
    with pytest.raises(TypeError, match=r"\(n_points, n_neurons\).*got shape"):
        obce.fast_death_radii(np.zeros(shape))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.complex64, object, bool])
def test_wrong_dtype(dtype):
    with pytest.raises(TypeError, match="dtype"):
        obce.fast_death_radii(np.zeros((4, 3), dtype=dtype))


@pytest.mark.parametrize("dtype", [">f2", ">f4", ">f8"])
def test_big_endian_input(dtype):
    acts = np.random.default_rng(0).normal(size=(30, 4))
    native = obce.fast_death_radii(acts.astype(dtype[1:]))
    np.testing.assert_array_equal(obce.fast_death_radii(acts.astype(dtype)), native)


def test_wrong_torch_dtype():
    with pytest.raises(TypeError, match="torch.int64"):
        obce.fast_death_radii(torch.zeros(4, 3, dtype=torch.int64))


def test_sparse_torch_tensor():
    with pytest.raises(TypeError, match="dense"):
        obce.fast_death_radii(torch.eye(4).to_sparse())


def test_nested_torch_tensor():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch calls strided nested tensors a prototype
        nested = torch.nested.nested_tensor([torch.ones(5, 2), torch.ones(5, 2)])
    with pytest.raises(TypeError, match="dense .* got layout nested"):
        obce.fast_death_radii(nested)


@pytest.mark.parametrize("shape", [(1, 7), (3, 1, 2), (3, 0, 2)])
def test_too_few_points(shape):
    with pytest.raises(ValueError, match="at least 2 points"):
        obce.fast_death_radii(np.zeros(shape))


def test_zero_dimensions():
    with pytest.raises(ValueError, match="at least 1 dimension"):
        obce.fast_death_radii(np.zeros((3, 4, 0)))


# d > 1 clouds whose squared distances leave the normal range of their type, and an all-equal one:
# tiny spreads (squares subnormal or zero), huge ones (squares overflow; λ itself does not).
SQUARES_OUT_OF_RANGE = {np.float32: [1e-25, 1e-20, 0.0, 1e25, 3e37], np.float64: [1e-200, 1e-160, 0.0, 1e160, 1e300]}


def squares_out_of_range(dtype) -> np.ndarray:
    scales = np.array(SQUARES_OUT_OF_RANGE[dtype])[:, None, None]
    return (np.random.default_rng(7).normal(size=(len(scales), 40, 3)) * scales).astype(dtype)


@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_squares_out_of_range(dtype, as_tensor):
    """Clouds whose squares lose precision or overflow come out as in float64 at coordinates of ~1."""
    clouds = squares_out_of_range(dtype)
    # scipy drops edges below ~1e-8 as zeros: the reference sees each cloud scaled (exactly, by a
    # power of two) to coordinates of about 1, in float64
    exponents = np.frexp(np.abs(clouds).max(axis=(1, 2)))[1][:, None]
    _, deaths_ref = reference(np.ldexp(clouds.astype(np.float64), -exponents[:, :, None]))
    deaths_ref = np.ldexp(deaths_ref, exponents)
    x = torch.from_numpy(clouds) if as_tensor else clouds
    lam, deaths = np.asarray(obce.fast_death_radii(x)), np.asarray(obce.h0_deaths(x))
    assert lam.dtype == deaths.dtype == dtype
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(lam, deaths_ref[:, -1], rtol=rtol, atol=0)
    np.testing.assert_allclose(deaths, deaths_ref, rtol=rtol, atol=0)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_duplicate_points_give_exact_zeros_without_a_second_computation(as_tensor, monkeypatch):
    """A zero death of a repeated point is exact: the diagram is not computed again (which took float64 copies of
    the clouds), and its last column is fast_death_radii's λ to the last bit."""
    clouds = np.random.default_rng(0).normal(size=(200, 30, 16)).astype(np.float32)
    clouds[:, 1] = clouds[:, 0]
    clouds[:, 7] = clouds[:, 3]
    x = torch.from_numpy(clouds) if as_tensor else clouds
    calls = []
    run = obce.kernel._run_torch if as_tensor else obce.kernel._run_numpy
    monkeypatch.setattr(obce.kernel, run.__name__, lambda *args: calls.append(args) or run(*args))
    deaths, lam = np.asarray(obce.h0_deaths(x)), np.asarray(obce.fast_death_radii(x))
    assert len(calls) == 2  # one per function: nothing computed again
    assert (deaths[:, :2] == 0).all() and (deaths[:, 2] > 0).all()
    np.testing.assert_array_equal(deaths[:, -1], lam)
    check(clouds)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_a_diagram_keeps_deaths_far_below_its_lambda(as_tensor):
    """λ in range, a smaller death whose float32 square underflows: the diagram still holds it (recomputed in
    float64), and the duplicate's 0."""
    cloud = np.array([[[0.0, 0.0], [1e-25, 0.0], [1.0, 0.0], [1.0, 0.0]]], dtype=np.float32)
    x = torch.from_numpy(cloud) if as_tensor else cloud
    deaths = np.asarray(obce.h0_deaths(x))
    np.testing.assert_allclose(deaths, np.array([[0.0, 1e-25, 1.0]], dtype=np.float32), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_result_overflow_is_reported(dtype):
    """A λ beyond the result's type: above ~3.4e38 for float32, ~1.8e308 for float64."""
    top = 3e38 if dtype == np.float32 else 1.5e308
    cloud = np.array([[[0.0, 0.0], [top, top]], [[0.0, 0.0], [1.0, 1.0]]], dtype=dtype)
    for function in (obce.fast_death_radii, obce.h0_deaths):
        for x in (cloud[::-1], torch.from_numpy(cloud[::-1].copy())):
            with pytest.raises(ValueError, match="cloud 1 overflows"):
                function(x)


@pytest.mark.parametrize("n_threads, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_thread_count(n_threads, error):
    with pytest.raises(error, match="n_threads"):
        obce.fast_death_radii(np.zeros((3, 2)), n_threads=n_threads)


def test_more_threads_than_processors_are_not_started():
    """Asking for 2^40 threads runs on this process's processors: no error (as many threads could not be
    started) and the same result."""
    clouds = np.random.default_rng(6).normal(size=(8, 50, 3))
    np.testing.assert_array_equal(obce.fast_death_radii(clouds, n_threads=2**40), obce.fast_death_radii(clouds))


@pytest.mark.parametrize("check_finite", ["no", None, 1])
def test_check_finite_must_be_a_bool(check_finite):
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        obce.fast_death_radii(np.zeros((3, 2)), check_finite=check_finite)


def test_masked_arrays_are_refused():
    with pytest.raises(TypeError, match="masked arrays"):
        obce.fast_death_radii(np.ma.masked_equal(np.arange(6.0).reshape(3, 2), 4.0))


def test_build_info():
    info = obce.build_info()
    assert info["version"] == obce.__version__
    assert info["threads"] >= 1
    assert info["gpu_usable"] == bool(info["gpus"])
    # CI builds on machines with nvcc and says so: a build that lost CUDA must not pass there.
    if os.environ.get("OBCE_EXPECT_CUDA") == "1":
        assert info["cuda"] and info["cuda_archs"]
    if os.environ.get("OBCE_EXPECT_OPENMP", "1") == "1":
        assert info["openmp"]


# ---- CUDA: the GPU agrees with the CPU -------------------------------------------------------


def cuda_cases():
    rng = np.random.default_rng(6)
    yield "line", rng.normal(size=(150, 3000))
    yield "line-big", rng.normal(size=(20000, 3))  # buckets beyond shared memory for float64
    yield "duplicates", rng.normal(size=(4, 9))[rng.integers(0, 4, size=200)]
    yield "all-equal", np.full((3, 40, 5), 2.0)
    # GELU outputs hold many -0.0 next to small negatives: signed zeros must order as zeros.
    z = rng.normal(scale=4, size=(150, 4000))
    yield "signed-zeros", np.where(z < -2, -0.0, np.where(z < 0, z * 1e-3, z))
    yield "offset", 1e4 + rng.normal(scale=1e-2, size=(4, 100, 17))
    for dim in (2, 3, 17, 64):
        for n in (2, 3, 150, 700, 3000):
            yield f"d{dim}-n{n}", rng.normal(size=(3, n, dim))


# d > 1 clouds take the matrix path where the distance matrices fit, else the cluster kernel; both
# are checked (OBCE_CUDA_PRIM=cluster forces the latter).
PRIM_PATHS = ("matrix", "cluster")


def cuda_cases_and_paths():
    for name, x in cuda_cases():
        for path in PRIM_PATHS if x.ndim == 3 else ("",):
            yield pytest.param(x, path, id=f"{name}-{path}" if path else name)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("x", "prim_path"), list(cuda_cases_and_paths()))
def test_cuda_matches_cpu(x, prim_path, dtype, monkeypatch):
    monkeypatch.setenv("OBCE_CUDA_PRIM", prim_path)
    cpu = torch.from_numpy(x).to(dtype)
    gpu = cpu.cuda()
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    lam = obce.fast_death_radii(gpu)
    assert lam.is_cuda and lam.device == gpu.device and lam.dtype == dtype
    torch.testing.assert_close(lam.cpu(), obce.fast_death_radii(cpu), rtol=rtol, atol=0)
    deaths = obce.h0_deaths(gpu)
    scale = float(lam.max()) if lam.numel() else 1.0
    torch.testing.assert_close(deaths.cpu(), obce.h0_deaths(cpu), rtol=rtol, atol=rtol * scale)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_points", [3, 150, 3000])
@pytest.mark.parametrize("kind", EXTREME_SPREADS)
def test_cuda_extreme_ranges(kind, n_points, dtype):
    cpu = torch.from_numpy(extreme_range(kind, n_points, dtype))
    assert torch.equal(obce.fast_death_radii(cpu.cuda()).cpu(), obce.fast_death_radii(cpu))
    assert torch.equal(obce.h0_deaths(cpu.cuda()).cpu(), obce.h0_deaths(cpu))


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("prim_path", PRIM_PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_squares_out_of_range(dtype, prim_path, monkeypatch):
    monkeypatch.setenv("OBCE_CUDA_PRIM", prim_path)
    cpu = torch.from_numpy(squares_out_of_range(dtype))
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    torch.testing.assert_close(obce.fast_death_radii(cpu.cuda()).cpu(), obce.fast_death_radii(cpu), rtol=rtol, atol=0)
    torch.testing.assert_close(obce.h0_deaths(cpu.cuda()).cpu(), obce.h0_deaths(cpu), rtol=rtol, atol=0)


@needs_cuda
@pytest.mark.cuda
@settings(max_examples=60, deadline=None)
@given(any_magnitude())
def test_cuda_any_magnitude(x):
    cpu = torch.from_numpy(x)
    try:
        expected = obce.fast_death_radii(cpu)
    except ValueError as error:  # λ beyond the type: the GPU says so too
        assert "overflows" in str(error)
        with pytest.raises(ValueError, match="overflows"):
            obce.fast_death_radii(cpu.cuda())
        return
    rtol, atol = RTOL[x.dtype.type], 4 * float(np.finfo(x.dtype).smallest_subnormal)
    torch.testing.assert_close(obce.fast_death_radii(cpu.cuda()).cpu(), expected, rtol=rtol, atol=atol)


@needs_cuda
@pytest.mark.cuda
def test_cuda_prim_path_must_be_known(monkeypatch):
    monkeypatch.setenv("OBCE_CUDA_PRIM", "fast")
    with pytest.raises(ValueError, match="OBCE_CUDA_PRIM must be matrix or cluster, got 'fast'"):
        obce.fast_death_radii(torch.randn(2, 10, 3, device="cuda"))


def _gpu_event_names(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.name for e in prof.events()}


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize(
    ("shape", "expected"),
    [((3, 3000, 64), "prim_matrix_kernel"), ((1, 9000, 3), "prim_kernel<"), ((1, 9000, 64), "prim_matrix_kernel")],
    ids=["few-points", "many-points-coordinates-in-shared", "many-points-wide"],
)
def test_cuda_prim_path_choice(shape, expected, monkeypatch):
    """Unforced, clouds of over 8,192 points whose coordinates fit a cluster's shared memory take the
    cluster kernel; others the matrix path. Either way λ matches the CPU."""
    monkeypatch.delenv("OBCE_CUDA_PRIM", raising=False)
    if torch.cuda.get_device_capability()[0] < 9:
        expected = "prim_matrix_kernel"  # no clusters before Hopper: 9,000 points' coordinates fit no block
    x = torch.randn(shape, device="cuda", dtype=torch.float64)
    names = _gpu_event_names(lambda: obce.fast_death_radii(x))
    assert any(expected in name for name in names), names
    torch.testing.assert_close(obce.fast_death_radii(x).cpu(), obce.fast_death_radii(x.cpu()), rtol=1e-12, atol=0)


@needs_cuda
@pytest.mark.cuda
def test_cuda_matches_scipy():
    rng = np.random.default_rng(7)
    for x in (rng.normal(size=(120, 6)), rng.normal(size=(4, 300, 9))):
        lam_ref, deaths_ref = reference(x)
        np.testing.assert_allclose(obce.fast_death_radii(torch.from_numpy(x).cuda()).cpu().numpy(), lam_ref, rtol=1e-12)
        np.testing.assert_allclose(
            obce.h0_deaths(torch.from_numpy(x).cuda()).cpu().numpy(), deaths_ref, rtol=1e-12, atol=1e-12
        )


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_inputs(dtype):
    x = torch.randn(4, 200, 16, device="cuda").to(dtype)
    lam = obce.fast_death_radii(x)
    assert lam.dtype == torch.float32 and lam.is_cuda
    torch.testing.assert_close(lam.cpu(), obce.fast_death_radii(x.cpu()), rtol=1e-5, atol=0)


@needs_cuda
@pytest.mark.cuda
def test_cuda_non_contiguous():
    base = torch.randn(300, 2000, device="cuda")
    for view in (base[::2, ::3], base.T[:, :, None][::2], base.view(300, 100, 20).transpose(0, 1)):
        torch.testing.assert_close(
            obce.fast_death_radii(view).cpu(), obce.fast_death_radii(view.cpu()), rtol=1e-5, atol=0
        )


@needs_cuda
@pytest.mark.cuda
def test_cuda_side_stream():
    """On a side stream the kernel is ordered after the producer's work on that stream."""
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        x = torch.randn(150, 50000, device="cuda") * 3
        lam = obce.fast_death_radii(x, check_finite=False)
    side.synchronize()
    torch.testing.assert_close(lam.cpu(), obce.fast_death_radii(x.cpu()), rtol=1e-5, atol=0)


@needs_cuda
@pytest.mark.cuda
def test_cuda_stream_handle_is_torchs_current_stream():
    """The fast raw getter names the same stream as torch's public API, on any stream and device."""
    from obce.kernel import _current_raw_stream

    for index in range(torch.cuda.device_count()):
        device = torch.device("cuda", index)
        with torch.cuda.device(device):
            side = torch.cuda.Stream()
        for stream in (torch.cuda.default_stream(device), side):
            with torch.cuda.stream(stream):
                assert _current_raw_stream(torch, device) == torch.cuda.current_stream(device).cuda_stream
                assert _current_raw_stream(torch, device) == stream.cuda_stream


@needs_cuda
@pytest.mark.cuda
def test_cuda_scratch_comes_from_torch():
    """The matrix path's distance matrices are torch allocations: counted by torch, cached after."""
    x = torch.randn(12, 3000, 64, device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    lam = obce.fast_death_radii(x, check_finite=False)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - before >= 12 * 3000 * 3000 * 4
    assert torch.cuda.memory_allocated() - before < 1 << 20  # back in torch's cache, not held
    torch.testing.assert_close(lam.cpu(), obce.fast_death_radii(x.cpu()), rtol=1e-5, atol=0)


@needs_cuda
@pytest.mark.cuda
def test_cuda_scratch_failure_propagates():
    """An allocator's error (torch's out-of-memory, say) reaches the caller unchanged."""
    from obce import _core

    def no_memory(n_bytes):
        raise MemoryError(f"no room for {n_bytes} bytes")

    x = torch.randn(2, 300, 8, device="cuda")
    out = torch.empty(2, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    with pytest.raises(MemoryError, match="no room for"):
        _core.death_radii(x.__dlpack__(stream=-1), out.__dlpack__(stream=-1), 1, stream, True, no_memory)
    assert torch.isfinite(obce.fast_death_radii(x)).all()  # the next call is unaffected


@needs_cuda
@pytest.mark.cuda
def test_cuda_no_host_transfer():
    """With check_finite=False nothing comes back to the host: no device-to-host copy is recorded."""
    x = torch.randn(150, 20000, device="cuda")
    obce.fast_death_radii(x, check_finite=False)  # warm-up
    names = _gpu_event_names(lambda: obce.fast_death_radii(x, check_finite=False))
    assert not any("DtoH" in n or "Device -> Host" in n for n in names), names
    assert any("obce::cuda" in n for n in names), names  # our kernels did run


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize(("dim", "prim_path"), [(1, ""), (5, "matrix"), (5, "cluster")])
def test_cuda_non_finite(dim, prim_path, bad, monkeypatch):
    monkeypatch.setenv("OBCE_CUDA_PRIM", prim_path)
    x = torch.randn(6, 40, dim, device="cuda")
    x[3, 2, 0] = bad
    with pytest.raises(ValueError, match="cloud 3"):
        obce.fast_death_radii(x)
    with pytest.raises(ValueError, match="cloud 3"):
        obce.h0_deaths(x)
    assert torch.isnan(obce.fast_death_radii(x, check_finite=False)[3])


def _cuda_capsule(shape: tuple[int, ...]):
    """A DLPack capsule that says "float32 on CUDA device 0" (a legacy DLManagedTensor, no deleter): its memory is
    never read by a build without CUDA, which needs no GPU to refuse it."""
    import ctypes

    class Device(ctypes.Structure):
        _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]

    class DataType(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]

    class Tensor(ctypes.Structure):
        _fields_ = [("data", ctypes.c_void_p), ("device", Device), ("ndim", ctypes.c_int32), ("dtype", DataType),
                    ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                    ("byte_offset", ctypes.c_uint64)]  # fmt: skip

    class Managed(ctypes.Structure):
        _fields_ = [("dl_tensor", Tensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]

    sizes = (ctypes.c_int64 * len(shape))(*shape)
    managed = Managed(Tensor(0x1000, Device(2, 0), len(shape), DataType(2, 32, 1), sizes, None, 0), None, None)
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype, new_capsule.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    return new_capsule(ctypes.addressof(managed), b"dltensor", None), (managed, sizes)  # the structs kept alive


def test_cuda_input_to_a_build_without_cuda_is_a_clear_error():
    if obce.build_info()["cuda"]:
        pytest.skip("a build with CUDA would run the kernels on the capsule's made-up memory")
    acts, out = _cuda_capsule((4, 3)), _cuda_capsule((3,))  # (capsule, its structs)
    with pytest.raises(RuntimeError, match="built without CUDA"):
        obce._core.death_radii(acts[0], out[0], 1, 0, True)


@pytest.mark.parametrize("as_tensor", [False, True, pytest.param("cuda", marks=[needs_cuda, pytest.mark.cuda])])
@pytest.mark.parametrize(
    "cloud, deaths",
    [
        ([[1.0, 0.0], [1.0, 1e-300]], [1e-300]),  # scaled to ~1, the square still underflows
        ([[0.0, 0.0], [1e-300, 0.0], [1.0, 0.0]], [1e-300, 1.0]),
        ([[0.0, 0.0], [1e-160, 0.0], [1.0, 0.0]], [1e-160, 1.0]),  # a subnormal square: imprecise
        ([[0.0, 0.0], [0.0, 0.0], [1e-300, 0.0], [1.0, 0.0]], [0.0, 1e-300, 1.0]),  # and a duplicate
        ([[0.0, 0.0, 0.0], [3e-300, 4e-300, 0.0], [1e10, 0.0, 0.0]], [5e-300, 1e10]),
        ([[1.0, 0.0], [1.0, 5e-324], [2.0, 0.0]], [5e-324, 1.0]),  # points that scaling down would merge
        ([[5e307, 0.0], [5e307, 1.5e-323], [0.0, 0.0]], [1.5e-323, 5e307]),  # an odd subnormal: no halving
        # Differences beyond float64 (not in the tree) halved alone, the subnormal one kept exact.
        ([[1.5e308, 0.0], [1.5e308, 1.5e-323], [0.0, 0.0], [-1e308, 0.0]], [1.5e-323, 1e308, 1.5e308]),
    ],
)
def test_float64_deaths_beyond_its_squares_are_exact(cloud, deaths, as_tensor):
    """Deaths more than 2^511 below a float64 cloud's coordinates: computed pair by pair, exactly."""
    x = np.array([cloud])
    x = torch.from_numpy(x).to("cuda" if as_tensor == "cuda" else "cpu") if as_tensor else x
    lam, diagram = obce.fast_death_radii(x), obce.h0_deaths(x)
    if as_tensor:
        assert lam.device == diagram.device == x.device
        lam, diagram = lam.cpu(), diagram.cpu()
    np.testing.assert_allclose(np.asarray(diagram)[0], deaths, rtol=1e-15, atol=0)
    np.testing.assert_allclose(np.asarray(lam), deaths[-1:], rtol=1e-15, atol=0)


@pytest.mark.parametrize("dim, spread", [(256, 7e-21), (20000, 1e-21)])
def test_float32_squares_each_subnormal_sum_normal(dim, spread):
    """Each coordinate difference's float32 square is subnormal, their sum normal: λ is exact (recomputed), not
    summed from rounded subnormals."""
    cloud = np.zeros((1, 2, dim), dtype=np.float32)
    cloud[0, 1] = spread
    want = np.float32(np.sqrt(dim) * np.float64(np.float32(spread)))
    assert obce.fast_death_radii(cloud)[0] == want and obce.h0_deaths(cloud)[0, 0] == want
