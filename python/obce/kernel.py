"""λ and H0 diagrams of point clouds: input checks, layout, and dispatch to the compiled kernels.

Conventions (those of ripser): every point is born at 0 and a death is a distance, the length of
the minimum-spanning-tree edge that merges two components (not a radius, half of it). The one
infinite bar is not returned. λ is the largest finite death.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from typing import Any

import numpy as np

from . import _core

_NUMPY_FLOAT_KINDS = {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)}

# GNU OpenMP's thread pool does not survive fork(): a child process that starts a parallel region after its
# parent did hangs. A child of a parent that used threads therefore computes on one.
_threads_used = False
_single_threaded = False


def _after_fork_in_child() -> None:
    global _single_threaded
    _single_threaded = _single_threaded or _threads_used


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def build_info() -> dict[str, Any]:
    """What the extension was compiled with, and whether a GPU can be used now.

    Returns
    -------
    dict
        ``version``, ``openmp``, ``threads`` (used by ``n_threads=-1``), ``cpu_simd`` (the
        instruction set the CPU kernels run with here), ``cuda`` (compiled in), ``cuda_version``,
        ``cuda_archs``, ``gpus`` (names of the usable devices) and ``gpu_usable``.
    """
    info = dict(_core.build_info())
    info["gpu_usable"] = bool(info["gpus"])
    return info


def fast_death_radii(acts, *, n_threads: int = -1, check_finite: bool = True):
    """λ of each point cloud: its largest finite H0 death in the Vietoris–Rips filtration.

    λ is the length of the longest edge of the cloud's Euclidean minimum spanning tree, the
    smallest scale at which the cloud is connected. 1-D clouds are sorted-gap problems solved in
    linear time per cloud; d-dimensional ones run Prim's algorithm with distances computed on the
    fly (O(n) memory, no distance matrix), except small clouds of d >= 32 (whose squared distances fit
    in 1 MiB: up to 512 points in float32), which compute all of them first, in register blocks, and
    run Prim on that matrix. On a GPU, d-dimensional clouds whose squared-distance
    matrices fit half the free GPU memory (4 GiB at most) compute those first, as scratch (from
    torch's caching allocator, reused across calls), and run Prim on them, except clouds of over
    8,192 points whose coordinates fit the shared memory of a thread-block cluster (those step
    faster there).

    Parameters
    ----------
    acts : numpy.ndarray or torch.Tensor
        Either an activation matrix of shape ``(n_points, n_neurons)``, rows being inputs, where
        each column is one neuron's 1-D cloud; or a batch of clouds ``(n_clouds, n_points, dim)``.
        float16, bfloat16, float32 or float64, any strides, on the CPU or a CUDA device.
        float32 and float64 inputs are read in place; float64 is computed in float64, the rest in
        float32. For d > 1 the kernels work on squared distances, so a checked call computes again
        the clouds whose λ² leaves the normal range (λ below 2^-63 ≈ 1.1e-19 in float32 or
        2^-511 in float64, where squares lose precision, or beyond ~1.8e19 or ~1.3e154, where
        they overflow): in float64, on coordinates scaled exactly by a power of two.
    n_threads : int, default -1
        CPU threads; -1 uses OpenMP's default (all cores, or ``OMP_NUM_THREADS``). A larger count than this
        process's processors is lowered to it: the extra threads would only wait on each other. Clouds are
        spread over the threads; a d > 1 cloud of over 2048 points alone (fewer clouds than threads) runs on
        one thread unless a count is given, which splits each of its Prim steps among the threads (1.9×
        faster on two idle cores, but every step waits for every thread: beside another busy process it
        can be a hundred times slower). Ignored for CUDA tensors. In a process forked after its parent ran
        the kernel on several threads, always 1 (GNU OpenMP's threads do not survive fork).
    check_finite : bool, default True
        Raise on NaN or infinity in the input or the result, and recompute clouds out of range
        (above). For CUDA tensors this waits for the result; with False the call is fully
        asynchronous, a non-finite cloud gives NaN and an out-of-range cloud gives 0 or infinity.
        On the CPU non-finite input is reported either way (the check is free there).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Shape ``(n_neurons,)`` or ``(n_clouds,)``, same type, device and precision class as the
        input (float64 for float64 input, else float32). A CUDA result is computed on the current
        stream of torch.

    Raises
    ------
    TypeError
        Not a 2-D or 3-D array, not a floating-point dtype, or ``n_threads``/``check_finite`` of another type.
    ValueError
        Fewer than 2 points, zero dimensions, NaN or infinity, ``n_threads`` below 1 but -1, or a λ beyond the
        result's type (above ~3.4e38 for float32, ~1.8e308 for float64); the first offending cloud is named.
    RuntimeError
        A CUDA error (out of memory included), or a CUDA tensor given to a build without CUDA.
    KeyboardInterrupt
        Ctrl-C during a CPU call: the kernels ask Python for signals every 50 ms or so, between clouds and
        between Prim steps, and stop (a 1-D cloud is finished first: 0.15 s for the diagram of a million
        points, 10 ms for its λ, on one Zen 3 core).

    Examples
    --------
    >>> import numpy as np, obce
    >>> acts = np.array([[0.0, 1.0], [1.0, 1.0], [5.0, 3.0]])  # 3 inputs x 2 neurons
    >>> obce.fast_death_radii(acts)
    array([4., 2.])
    """
    return _run(_core.death_radii, acts, n_threads, check_finite, full_diagram=False)


def h0_deaths(acts, *, n_threads: int = -1, check_finite: bool = True):
    """Every finite H0 death of each cloud, ascending: the whole 0-dimensional diagram.

    Births are all 0. Zero-length deaths of duplicate points are kept, so every cloud has
    ``n_points - 1`` of them; ripser drops such zero-persistence pairs, so compare its finite
    deaths with the non-zero ones here. With ``check_finite``, a d > 1 cloud with a death below the
    range of squares (see :func:`fast_death_radii`) other than the zeros of its repeated points is
    computed again as λ is there (a zero may be a square that underflowed). The last column is
    ``fast_death_radii(acts)``, to the last bit but in such recomputed clouds (to rounding there).

    Parameters
    ----------
    acts, n_threads, check_finite
        As for :func:`fast_death_radii`.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Shape ``(n_clouds, n_points - 1)``; for an activation matrix ``n_clouds = n_neurons``.

    Raises
    ------
    TypeError, ValueError, RuntimeError
        As for :func:`fast_death_radii`.

    Examples
    --------
    >>> import numpy as np, obce
    >>> obce.h0_deaths(np.array([[0.0], [1.0], [5.0]]))
    array([[1., 4.]])
    """
    return _run(_core.h0_deaths, acts, n_threads, check_finite, full_diagram=True)


def check_threads(n_threads: int) -> None:
    """TypeError for an ``n_threads`` that is no integer, ValueError for one below 1 but -1 (all cores)."""
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)):
        raise TypeError(f"n_threads must be an integer, got {n_threads!r}")
    if n_threads < 1 and n_threads != -1:
        raise ValueError(f"n_threads must be -1 (all cores) or a positive integer, got {n_threads!r}")


def _run(kernel, acts, n_threads: int, check_finite: bool, *, full_diagram: bool):
    check_threads(n_threads)
    if not isinstance(check_finite, (bool, np.bool_)):
        raise TypeError(f"check_finite must be True or False, got {check_finite!r}")
    if n_threads > 0:
        n_threads = min(int(n_threads), _processors())
    global _threads_used
    n_threads = 1 if _single_threaded else int(n_threads)
    _threads_used = _threads_used or n_threads != 1
    torch = sys.modules.get("torch")
    try:
        if torch is not None and isinstance(acts, torch.Tensor):
            return _run_torch(torch, kernel, acts, n_threads, check_finite, full_diagram)
        return _run_numpy(kernel, acts, n_threads, check_finite, full_diagram)
    except MemoryError as err:
        n_clouds, n_points = _check_shape(tuple(np.shape(acts)))
        result = n_clouds * (n_points - 1 if full_diagram else 1) * 8
        raise MemoryError(
            f"out of memory for {n_clouds} clouds of {n_points} points (the result takes up to {result / 2**30:.3g} "
            "GiB; each thread holds up to 16 1-D clouds or one d-dimensional cloud at a time): pass fewer clouds "
            "per call or a smaller n_threads"
        ) from err


def _processors() -> int:
    """The processors this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(n_clouds, n_points) of a valid input shape."""
    if len(shape) not in (2, 3):
        raise TypeError(
            "expected an activation matrix (n_points, n_neurons) or a batch of clouds "
            f"(n_clouds, n_points, dim), got shape {tuple(shape)}"
        )
    if len(shape) == 2:
        n_points, n_clouds = shape
    else:
        n_clouds, n_points, dim = shape
        if dim < 1:
            raise ValueError(f"clouds need at least 1 dimension, got shape {tuple(shape)}")
    if n_points < 2:
        raise ValueError(f"a cloud needs at least 2 points, got {n_points} (input shape {tuple(shape)})")
    return n_clouds, n_points


def _result_shape(n_clouds: int, n_points: int, full_diagram: bool) -> tuple[int, ...]:
    return (n_clouds, n_points - 1) if full_diagram else (n_clouds,)


def _where(cloud: int, ndim: int) -> str:
    return f"column {cloud} (neuron {cloud})" if ndim == 2 else f"cloud {cloud}"


def _raise_if_bad(first_bad: int, ndim: int) -> None:
    if first_bad >= 0:
        raise ValueError(f"input contains NaN or infinity in {_where(first_bad, ndim)}")


def _raise_if_overflow(infinite, ndim: int, float64: bool) -> None:
    """infinite: the indices of the clouds whose λ is infinite though their input is finite."""
    if len(infinite):
        precision, advice = ("float64", "rescale the input") if float64 else ("float32", "pass float64 input")
        raise ValueError(f"λ of {_where(int(infinite[0]), ndim)} overflows {precision}: {advice}")


def _lambdas(out, full_diagram: bool):
    """λ of each cloud, a view of the result (a diagram's rows ascend)."""
    return out[:, -1] if full_diagram else out


# Clouds of d > 1 are computed on squared distances, whose normal range is half the coordinates'
# (in exponent): a death below the least whose squared coordinate differences are all normal, or sum
# to at least d times the least normal value, lost precision to subnormal or zero squares, and one
# whose square overflowed is infinite. On checked calls such clouds (by their λ, and for a whole
# diagram by their smallest death too), those of one repeated point aside (all deaths 0), are computed
# again in float64 on coordinates scaled by a power of two to about 1 (exact), and their results scaled
# back. A diagram's zero deaths of duplicate points come out 0 again. Float32 input always fits then;
# float64 input whose deaths span more than float64's squares (a death below 2^-511 of the coordinates'
# scale) is computed once more, exactly, by a slower Prim (_exact_deaths).
_ROOT_OF_LEAST_NORMAL = {np.dtype(np.float32): 2.0**-63, np.dtype(np.float64): 2.0**-511}


def _least_precise_death(dtype: np.dtype, dim: int):
    """least_precise_death of cpp/core/cloud_view.hpp, rounded to ``dtype`` as there."""
    return dtype.type(math.sqrt(dim) * _ROOT_OF_LEAST_NORMAL[dtype] if dim > 1 else 0)


def _squares_out_of_range(out, full_diagram: bool, least):
    """Which clouds have a death outside the range their squared distances hold (the kernels report the
    first such cloud: out_of_range in cpp/core/cloud_view.hpp)."""
    smallest = out[:, 0] if full_diagram else out  # a diagram's rows ascend
    return ~((smallest >= least) & (_lambdas(out, full_diagram) < math.inf))


def _zeros_of_duplicates(rows, n_duplicates, least):
    """Which diagram ``rows`` are exact though their smallest deaths are below ``least``: as many zeros as their
    clouds repeat points (a zero of a repeated point is exact; one of a square that underflowed would be one more),
    then deaths in range."""
    n_duplicates = np.asarray(n_duplicates, dtype=np.int64)
    first_nonzero = rows[np.arange(len(rows)), np.minimum(n_duplicates, rows.shape[1] - 1)]
    return ((rows == 0).sum(axis=1) == n_duplicates) & (first_nonzero >= least) & (rows[:, -1] < math.inf)


def _redo_squares_out_of_range_numpy(kernel, acts, out, n_threads, full_diagram):
    least = _least_precise_death(acts.dtype, acts.shape[2])
    redo = np.flatnonzero(_squares_out_of_range(out, full_diagram, least))
    if full_diagram and redo.size:
        duplicates = [len(acts[i]) - len(np.unique(acts[i], axis=0)) for i in redo]
        redo = redo[~_zeros_of_duplicates(out[redo], duplicates, least)]
    if redo.size == 0:
        return
    clouds = acts[redo].astype(np.float64)
    spread = (clouds.max(axis=1) > clouds.min(axis=1)).any(axis=1)
    redo, clouds = redo[spread], clouds[spread]
    exponents = np.frexp(np.abs(clouds).max(axis=(1, 2), initial=0))[1]
    scaled = np.ldexp(clouds, -exponents[:, None, None])
    again = _run_numpy(kernel, scaled, n_threads, False, full_diagram)
    with np.errstate(over="ignore"):  # a λ beyond the result's type is infinite: reported after
        out[redo] = np.ldexp(again, exponents[:, None] if full_diagram else exponents)
    if acts.dtype == np.float64:  # float32 input always fits float64's squares
        for i in _beyond_float64(clouds, again, full_diagram):
            out[redo[i]] = _exact_deaths(clouds[i], full_diagram)


def _redo_squares_out_of_range_torch(torch, kernel, acts, out, n_threads, full_diagram):
    least = _least_precise_death(np.dtype(str(acts.dtype).removeprefix("torch.")), acts.shape[2])
    redo = _squares_out_of_range(out, full_diagram, float(least)).nonzero().flatten()
    if full_diagram and len(redo):
        duplicates = [len(acts[i]) - len(torch.unique(acts[i], dim=0)) for i in redo.tolist()]
        exact = _zeros_of_duplicates(out[redo].cpu().numpy(), duplicates, least)
        redo = redo[torch.as_tensor(~exact, device=redo.device)]
    if len(redo) == 0:
        return
    clouds = acts[redo].double()
    spread = (clouds.amax(dim=1) > clouds.amin(dim=1)).any(dim=1)
    redo, clouds = redo[spread], clouds[spread]
    exponents = torch.frexp(clouds.abs().amax(dim=(1, 2))).exponent
    scaled = _times_power_of_two(torch, clouds, -exponents[:, None, None])
    again = _run_torch(torch, kernel, scaled, n_threads, False, full_diagram)
    out[redo] = _times_power_of_two(torch, again, exponents[:, None] if full_diagram else exponents).to(out.dtype)
    if acts.dtype == torch.float64:  # float32 input always fits float64's squares
        clouds = clouds.cpu().numpy()
        for i in _beyond_float64(clouds, again.cpu().numpy(), full_diagram):
            out[redo[i]] = torch.as_tensor(_exact_deaths(clouds[i], full_diagram), device=out.device)


def _beyond_float64(clouds, again, full_diagram: bool) -> list[int]:
    """Which float64 ``clouds`` are still out of range computed again on coordinates scaled to about 1 (their deaths
    ``again`` span more than float64's squares). Zero deaths are exact where the input repeats as many points:
    counted on ``clouds`` themselves, since scaling down can merge points that differ by a subnormal."""
    least = _least_precise_death(np.dtype(np.float64), clouds.shape[2])
    beyond = []
    for i in np.flatnonzero(_squares_out_of_range(again, full_diagram, least)):
        duplicates = len(clouds[i]) - len(np.unique(clouds[i], axis=0))
        if not (full_diagram and np.all(again[i, duplicates:] >= least) and not np.any(again[i, :duplicates])):
            beyond.append(int(i))
    return beyond


def _exact_deaths(cloud: np.ndarray, full_diagram: bool) -> np.ndarray:
    """A float64 cloud's ascending minimum-spanning-tree edge lengths (its λ alone unless ``full_diagram``), by
    Prim on distances computed pair by pair as m·sqrt(Σ(dᵢ/m)²), m the largest coordinate difference, so that no
    square leaves float64's range: O(n² d), for the rare clouds that need it."""
    n = len(cloud)
    nearest, in_tree, deaths, current = np.full(n, np.inf), np.zeros(n, dtype=bool), [], 0
    for _ in range(n - 1):
        in_tree[current] = True
        with np.errstate(over="ignore", invalid="ignore"):
            diff = cloud - cloud[current]
            # Differences beyond float64 (coordinates near its largest) are halved, exactly at that magnitude,
            # and their distances doubled: halving the whole cloud would round its subnormal differences.
            halved = ~np.isfinite(diff).all(axis=1)
            diff[halved] = cloud[halved] / 2 - cloud[current] / 2
            scale = np.abs(diff).max(axis=1)
            distance = np.where(scale > 0, scale * np.sqrt(((diff / scale[:, None]) ** 2).sum(axis=1)), 0.0)
            distance[halved] *= 2  # a λ beyond float64 is infinite: reported after
        nearest = np.where(in_tree, np.inf, np.minimum(nearest, distance))
        current = int(np.argmin(nearest))
        deaths.append(nearest[current])
    deaths = np.sort(deaths)
    return deaths if full_diagram else deaths[-1]


def _times_power_of_two(torch, x, exponents):
    """x * 2**exponents in float64, exactly: two factors, each within float64's range (torch.ldexp
    forms its factor in float32)."""
    half = exponents // 2
    return x * torch.exp2(half.double()) * torch.exp2((exponents - half).double())


def _run_numpy(kernel, acts, n_threads, check_finite, full_diagram):
    if isinstance(acts, np.ma.MaskedArray):
        raise TypeError("masked arrays are not supported (the mask would be ignored): pass the unmasked points")
    if not isinstance(acts, np.ndarray):
        acts = np.asarray(acts)
    if not acts.dtype.isnative:  # e.g. big-endian data read from a file; the kernels read native floats
        acts = acts.astype(acts.dtype.newbyteorder("="))
    if acts.dtype not in _NUMPY_FLOAT_KINDS:
        raise TypeError(f"expected a float16, float32 or float64 array, got dtype {acts.dtype}")
    n_clouds, n_points = _check_shape(acts.shape)
    if acts.dtype == np.float16:
        acts = acts.astype(np.float32)
    out = np.empty(_result_shape(n_clouds, n_points, full_diagram), dtype=acts.dtype)
    if n_clouds == 0:
        return out
    if any(s % acts.itemsize for s in acts.strides) or not acts.flags.aligned:
        # DLPack strides count elements, not bytes; a float the kernels read must sit at a float's alignment.
        acts = np.require(acts, requirements=["C", "A"])
    capsule = acts.__dlpack__(max_version=(1, 0))
    first_bad, first_out_of_range = kernel(capsule, out.__dlpack__(max_version=(1, 0)), n_threads, 0, check_finite)
    _raise_if_bad(first_bad, acts.ndim)
    if check_finite and first_out_of_range >= 0:
        if acts.ndim == 3 and acts.shape[2] > 1:
            _redo_squares_out_of_range_numpy(kernel, acts, out, n_threads, full_diagram)
        lam = _lambdas(out, full_diagram)
        _raise_if_overflow(np.flatnonzero(np.isinf(lam)), acts.ndim, acts.dtype == np.float64)
    return out


_TORCH_COMPUTED_AS_FLOAT32 = ("float16", "bfloat16")


def _current_raw_stream(torch, device) -> int:
    """The handle of torch's current stream on a CUDA device.

    torch's raw getter (the one its compiled code calls) costs 0.3 µs; the public
    ``current_stream(device).cuda_stream`` builds a Stream object first, 5.7 µs (H200).
    """
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is None:
        return torch.cuda.current_stream(device).cuda_stream
    return raw(device.index)


def _run_torch(torch, kernel, acts, n_threads, check_finite, full_diagram):
    dtype_name = str(acts.dtype).removeprefix("torch.")
    if dtype_name not in ("float32", "float64", *_TORCH_COMPUTED_AS_FLOAT32):
        raise TypeError(f"expected a float16, bfloat16, float32 or float64 tensor, got dtype {acts.dtype}")
    if acts.layout != torch.strided or acts.is_nested:
        layout = "nested" if acts.is_nested else acts.layout
        raise TypeError(f"expected a dense (strided) tensor, got layout {layout}")
    n_clouds, n_points = _check_shape(tuple(acts.shape))
    acts = acts.detach()
    if dtype_name in _TORCH_COMPUTED_AS_FLOAT32:
        acts = acts.float()
    if acts.device.type not in ("cpu", "cuda"):
        raise ValueError(f"expected a CPU or CUDA tensor, got device {acts.device}")
    try:
        out = acts.new_empty(_result_shape(n_clouds, n_points, full_diagram))
    except RuntimeError as err:  # torch's CPU allocator raises no MemoryError
        if acts.is_cuda:
            raise
        raise MemoryError(str(err)) from err
    if n_clouds == 0:
        return out
    if acts.data_ptr() % acts.element_size():  # a float the kernels read must sit at a float's alignment
        acts = acts.clone()
    if acts.is_cuda:
        # The kernels run on torch's current stream, the one the input was produced on, so the
        # capsules ask no synchronization of the producer.
        stream = _current_raw_stream(torch, acts.device)
        # Scratch from torch's caching allocator on this stream: kept between calls, counted by torch.
        scratch = functools.partial(acts.new_empty, dtype=torch.uint8)
    else:
        stream, scratch = 0, None
    # to_dlpack rather than Tensor.__dlpack__: the same capsule without the method's Python-level
    # checks, which a detached dense float tensor passes anyway (0.16 against 1.8 µs a capsule).
    capsules = torch.utils.dlpack.to_dlpack(acts), torch.utils.dlpack.to_dlpack(out)
    first_bad, first_out_of_range = kernel(*capsules, n_threads, stream, check_finite, scratch)
    _raise_if_bad(first_bad, acts.dim())
    if check_finite and first_out_of_range >= 0:
        if acts.dim() == 3 and acts.shape[2] > 1:
            _redo_squares_out_of_range_torch(torch, kernel, acts, out, n_threads, full_diagram)
        lam = _lambdas(out, full_diagram)
        _raise_if_overflow(torch.isinf(lam).nonzero().flatten(), acts.dim(), acts.dtype == torch.float64)
    return out
