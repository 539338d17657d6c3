"""Neuron importance λ: the largest finite 0-dimensional persistence death of each neuron's outputs.

A neuron's outputs over the corpus form a 1-D point cloud; λ is the longest edge of its Euclidean
minimum spanning tree, i.e. the largest finite H0 death of the Vietoris-Rips filtration (a death is
an edge length, as in ripser). All neurons of all layers of a component are one matrix, so the
kernel runs once per component. The optional head view treats each attention head's query, key or
value output as a cloud in ``head_size`` dimensions.

:class:`ImportanceTable` holds one row per neuron and is what the pruning code reads; it saves to
and loads from a run folder (CSV + JSON settings).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ._checks import checked_int, checked_seed
from ._io import atomic_open, json_value
from ._version import __version__
from .activations import Activations, check_precision, check_token_mode, compute_activations
from .corpus import Corpus, checked_sentences, load_sentences, sample_sentences, sentences_text
from .kernel import check_threads, fast_death_radii
from .models.adapters import (
    COMPONENTS,
    check_component,
    check_components,
    load_model,
    max_sequence_length,
    to_user_layer,
)

__all__ = [
    "HEAD_COLUMNS",
    "NEURON_COLUMNS",
    "ImportanceTable",
    "analyze",
    "check_sample_size",
    "compute_importance",
    "head_importance",
]

NEURON_COLUMNS: tuple[str, ...] = ("layer", "component", "neuron", "lam", "mean", "std", "token_mean", "token_std")
"""Columns of :attr:`ImportanceTable.neurons` (``layer`` counted from 1)."""

HEAD_COLUMNS: tuple[str, ...] = ("layer", "component", "head", "size", "lam")
"""Columns of :attr:`ImportanceTable.heads` (``layer`` and ``head`` counted from 1 and 0)."""
HEAD_COMPONENTS: tuple[str, ...] = ("query", "key", "value")
"""The components split into attention heads."""

_KEY_COLUMNS = NEURON_COLUMNS[:3]
_NEURONS_FILE = "importance.csv"
_HEADS_FILE = "importance_heads.csv"
_SETTINGS_FILE = "importance.json"
_SENTENCES_FILE = "sentences.txt"
_PERCENTILES = (30, 50, 70)


class ImportanceTable:
    """λ and output statistics of every neuron of every layer and component.

    Parameters
    ----------
    neurons : pandas.DataFrame
        One row per neuron with the columns of :data:`NEURON_COLUMNS`: ``layer`` (from 1),
        ``component``, ``neuron`` (index in the layer's component output), ``lam`` (λ), ``mean``
        and ``std`` (over the points λ saw), ``token_mean`` and ``token_std`` (over every real token
        of the corpus; standard deviations are population ones). Further numeric columns are kept
        after these: other neuron scores a plan may rank by (see :mod:`obce.scores`).
    settings : dict, optional
        How the table was made (model, corpus, sample size, seed, token mode, versions, ...).
    heads : pandas.DataFrame, optional
        Head view, columns :data:`HEAD_COLUMNS`.
    sentences : list of str, optional
        The corpus sample the points came from.

    Raises
    ------
    ValueError
        If a column is missing or a layer/component value is invalid.

    Examples
    --------
    >>> table = analyze()  # doctest: +SKIP
    >>> table.stats().query("component == 'intermediate'")[["layer", "median"]]  # doctest: +SKIP
    >>> table.lam(1, "value")[:3]  # doctest: +SKIP
    """

    def __init__(
        self,
        neurons: pd.DataFrame,
        settings: dict | None = None,
        *,
        heads: pd.DataFrame | None = None,
        sentences: Sequence[str] | None = None,
    ) -> None:
        self.neurons = _checked_frame(neurons, NEURON_COLUMNS, "neurons", extra=True)
        self.heads = None if heads is None else _checked_frame(heads, HEAD_COLUMNS, "heads")
        self.settings = copy.deepcopy(dict(settings or {}))  # a table's copy shares no nested entry
        self.sentences = None if sentences is None else checked_sentences(sentences)

    def __len__(self) -> int:
        return len(self.neurons)

    def __repr__(self) -> str:
        if not len(self):
            return "ImportanceTable(0 neurons)"
        return (
            f"ImportanceTable({len(self)} neurons, layers {self.layers[0]}..{self.layers[-1]}, "
            f"components {', '.join(self.components)})"
        )

    @property
    def layers(self) -> list[int]:
        """Layer numbers present (from 1)."""
        return sorted(int(x) for x in self.neurons["layer"].unique())

    @property
    def components(self) -> list[str]:
        """Components present, in :data:`~obce.models.COMPONENTS` order."""
        present = set(self.neurons["component"])
        return [c for c in COMPONENTS if c in present]

    def _rows(self, layer: int, component: str) -> pd.DataFrame:
        check_component(component)
        if isinstance(layer, bool):  # True == 1 would read layer 1
            raise TypeError(f"layer must be an int (from 1), got {layer!r}")
        rows = self.neurons[(self.neurons["layer"] == layer) & (self.neurons["component"] == component)]
        if rows.empty:
            raise ValueError(
                f"no neurons for layer {layer!r} and component {component!r}; layers are {self.layers} "
                f"(counted from 1), components {self.components}"
            )
        return rows.sort_values("neuron")

    @property
    def value_columns(self) -> list[str]:
        """The numeric per-neuron columns: ``lam``, ``mean``, ``std``, ``token_mean``, ``token_std``, then any
        extra score columns."""
        return list(self.neurons.columns[len(_KEY_COLUMNS) :])

    def column(self, name: str, layer: int, component: str) -> np.ndarray:
        """One column's values for a layer and component, ordered by neuron.

        Raises
        ------
        ValueError
            If ``name`` is not a numeric column, or the layer/component is absent.
        """
        if name not in self.value_columns:
            raise ValueError(f"unknown column {name!r}; expected one of {', '.join(self.value_columns)}")
        return self._rows(layer, component)[name].to_numpy(dtype=np.float64)

    def with_columns(self, columns: dict[str, Sequence[float] | np.ndarray]) -> ImportanceTable:
        """A copy of the table with extra numeric columns (e.g. neuron scores from :mod:`obce.scores`).

        Parameters
        ----------
        columns : dict of str to array-like
            Name -> one finite value per row of :attr:`neurons`, in its row order. An extra column of the
            same name is replaced; the columns of :data:`NEURON_COLUMNS` cannot be.

        Returns
        -------
        ImportanceTable
            Same settings, head view and sentences.

        Raises
        ------
        ValueError
            A name of :data:`NEURON_COLUMNS`, or values of the wrong length or not finite.
        """
        neurons = self.neurons.copy()
        for name, values in columns.items():
            if not isinstance(name, str) or not name or name in NEURON_COLUMNS:
                raise ValueError(f"an extra column needs a new name, not one of {NEURON_COLUMNS}; got {name!r}")
            values = np.asarray(values, dtype=np.float64)
            if values.shape != (len(neurons),):
                raise ValueError(f"column {name!r} needs {len(neurons)} values (one per row), got shape {values.shape}")
            if not np.all(np.isfinite(values)):
                raise ValueError(f"column {name!r} has {int((~np.isfinite(values)).sum())} non-finite value(s)")
            neurons[name] = values
        return ImportanceTable(neurons, self.settings, heads=self.heads, sentences=self.sentences)

    def lam(self, layer: int, component: str) -> np.ndarray:
        """λ of a layer's component, ordered by neuron (``layer`` counted from 1)."""
        return self.column("lam", layer, component)

    def stats(self) -> pd.DataFrame:
        """Per layer and component: neuron count and λ's median, mean, 30th, 50th and 70th percentiles.

        The method reads the medians (how λ evolves with depth per component).

        Returns
        -------
        pandas.DataFrame
            Columns ``layer``, ``component``, ``n``, ``median``, ``mean``, ``p30``, ``p50``, ``p70``;
            rows by layer, then component in :data:`~obce.models.COMPONENTS` order.
        """
        rows = []
        columns = ["layer", "component", "n", "median", "mean", *(f"p{q}" for q in _PERCENTILES)]
        if not len(self):
            return pd.DataFrame(columns=columns)
        for (layer, component), lam in self.neurons.groupby(["layer", "component"], sort=False)["lam"]:
            values = lam.to_numpy(dtype=np.float64)
            row = {"layer": int(layer), "component": component, "n": len(values)}
            row.update(median=float(np.median(values)), mean=float(values.mean()))
            row.update({f"p{q}": float(np.percentile(values, q)) for q in _PERCENTILES})
            rows.append(row)
        frame = pd.DataFrame(rows)
        order = frame["component"].map(COMPONENTS.index)
        return frame.assign(_order=order).sort_values(["layer", "_order"]).drop(columns="_order").reset_index(drop=True)

    def save(self, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the table to ``folder``: ``importance.csv``, ``importance.json`` (settings), and
        ``importance_heads.csv`` and ``sentences.txt`` when present. Every file is written before any replaces
        its older copy, so a failed save leaves the folder as it was; with ``overwrite``, an older table's head
        view or sentences that this table lacks are removed.

        Raises
        ------
        FileExistsError
            If one of the files exists and ``overwrite`` is False (nothing is written then).
        """
        folder = Path(folder)
        files = {_NEURONS_FILE: self.neurons.to_csv(index=False, lineterminator="\n")}
        files[_SETTINGS_FILE] = json.dumps(self.settings, indent=2, sort_keys=True, default=json_value) + "\n"
        if self.heads is not None:
            files[_HEADS_FILE] = self.heads.to_csv(index=False, lineterminator="\n")
        if self.sentences is not None:  # checked before any file is touched
            files[_SENTENCES_FILE] = sentences_text(self.sentences)
        all_files = (_NEURONS_FILE, _SETTINGS_FILE, _HEADS_FILE, _SENTENCES_FILE)
        existing = [name for name in all_files if (folder / name).exists()]
        if existing and not overwrite:
            raise FileExistsError(f"{folder} already holds {', '.join(existing)}; pass overwrite=True to replace")
        with contextlib.ExitStack() as renames:  # each file is renamed into place once all are written
            for name, text in files.items():
                renames.enter_context(atomic_open(folder / name, "w", overwrite=True)).write(text)
        for name in set(all_files) - set(files):  # load() would pair an older table's part with this one
            (folder / name).unlink(missing_ok=True)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ImportanceTable:
        """Read a table written by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            If ``folder`` has no ``importance.csv``.
        ValueError
            If a file is not one :meth:`save` writes (cut short, or another file of the same name).
        """
        folder = Path(folder)
        if not (folder / _NEURONS_FILE).is_file():
            raise FileNotFoundError(f"no {_NEURONS_FILE} in {folder}")

        def read(name: str, reader):
            path = folder / name
            if not path.is_file():
                return None
            try:
                return reader(path)
            except ValueError as err:  # pandas', json's and UTF-8 decoding errors among them
                raise ValueError(f"{path} is not a file ImportanceTable.save wrote: {err}") from None

        neurons = read(_NEURONS_FILE, lambda path: _read_csv(path, ("layer", "neuron")))
        heads = read(_HEADS_FILE, lambda path: _read_csv(path, ("layer", "head", "size")))
        settings = read(_SETTINGS_FILE, _read_settings)
        sentences = read(_SENTENCES_FILE, load_sentences)
        return cls(neurons, settings, heads=heads, sentences=sentences)


def _read_settings(path: Path) -> dict:
    settings = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(settings, dict):
        raise ValueError(f"expected a JSON object, got {type(settings).__name__}")
    return settings


def _read_csv(path: Path, counts: Sequence[str]) -> pd.DataFrame:
    """The table file at ``path``: ``counts`` and other columns written as integers as integers, every other column
    but the component as exact floats."""
    with open(path, "rb") as f:  # save() ends every line; a file cut short may end inside a number
        size = f.seek(0, os.SEEK_END)
        f.seek(max(size - 1, 0))
        cut_short = size > 0 and f.read(1) != b"\n"
    if cut_short:
        raise ValueError("its last line has no line end: cut short?")
    # Python's float() parses the written shortest repr exactly, whatever pandas' own parser does; pandas writes a
    # float column's every value with a point or an exponent, so digits alone mark an integer column.
    header = pd.read_csv(path, nrows=0).columns
    text = {c: str for c in header if c not in counts}
    frame = pd.read_csv(path, dtype={**dict.fromkeys(counts, np.int64), **text}, keep_default_na=False)
    if frame.empty:  # no row to tell the types by: an empty table saved
        return frame.astype({c: np.int64 if c in counts else str if c == "component" else np.float64 for c in header})
    for column in text:
        if column != "component":
            integers = frame[column].str.fullmatch(r"-?\d+").all()
            frame[column] = frame[column].astype(np.int64) if integers else frame[column].map(float)
    return frame


def _checked_frame(frame: pd.DataFrame, columns: Sequence[str], what: str, *, extra: bool = False) -> pd.DataFrame:
    """``frame`` with ``columns`` first; with ``extra``, its other columns follow and must be numeric."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks the column(s) {missing}; got {list(frame.columns)}")
    others = [c for c in frame.columns if c not in columns] if extra else []
    not_numeric = [c for c in others if not _is_number_column(frame[c])]
    if not_numeric:
        raise ValueError(f"{what}: extra columns must be numeric scores, got {not_numeric}")
    unknown = sorted(set(frame["component"]) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"{what} has unknown component(s) {unknown}; expected some of {', '.join(COMPONENTS)}")
    for column in [c for c in (*columns, *others) if c != "component"]:
        if not _is_number_column(frame[column]):
            raise ValueError(f"{what}: column {column!r} must hold numbers, got {frame[column].dtype}")
        values = frame[column].to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"{what}: column {column!r} has {int((~np.isfinite(values)).sum())} non-finite value(s)")
        if column in _COUNT_COLUMNS and column in columns and (values != np.round(values)).any():
            raise ValueError(f"{what}: column {column!r} must hold whole numbers")
    if len(frame) and int(frame["layer"].min()) < 1:
        raise ValueError(f"{what} has layer {int(frame['layer'].min())}; layers are counted from 1")
    # Rows are read by position (a neuron's values, a plan's percentiles): each unit's rows are its neurons in order.
    index = columns[2]
    if not np.array_equal(frame[index].to_numpy(), frame.groupby(["layer", "component"]).cumcount().to_numpy()):
        raise ValueError(f"{what}: the {index}s of each layer and component must be numbered 0, 1, 2, ... in row order")
    return frame.loc[:, [*columns, *others]].reset_index(drop=True)


_COUNT_COLUMNS = ("layer", "neuron", "head", "size")


def _is_number_column(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def float64_array(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """A tensor's values as a float64 array on the host (an array passes through)."""
    return values.detach().to("cpu", torch.float64).numpy() if torch.is_tensor(values) else values


def _check_activations(acts, where: str) -> None:
    if not isinstance(acts, Activations):
        raise TypeError(f"{where} takes the Activations of obce.compute_activations, got {type(acts).__name__}")


def _head_components(components: Sequence[str]) -> tuple[str, ...]:
    """The head components among ``components``; ValueError if there is none (a head view needs one)."""
    found = tuple(c for c in HEAD_COMPONENTS if c in components)
    if not found:
        raise ValueError(f"heads=True needs query, key or value among the components, got {', '.join(components)}")
    return found


def _check_finite_outputs(values: torch.Tensor, component: str, offsets) -> None:
    """Name the layer and neuron of the first non-finite output (a float16 model that overflowed): the kernel would
    name a column of all the component's layers joined."""
    bad = (~torch.isfinite(values)).any(0).nonzero()
    if bad.numel():
        column = int(bad[0, 0])
        index = int(np.searchsorted(np.asarray(offsets), column, side="right")) - 1
        raise ValueError(
            f"layer {to_user_layer(index)} {component} neuron {column - int(offsets[index])} has a NaN or infinite "
            "output (a float16 model that overflowed? analyse it in float32 or bfloat16)"
        )


def compute_importance(
    acts: Activations,
    *,
    heads: bool = False,
    settings: dict | None = None,
    n_threads: int = -1,
) -> ImportanceTable:
    """λ and output statistics of every captured neuron, one kernel call per component.

    Parameters
    ----------
    acts : Activations
        From :func:`~obce.activations.compute_activations`.
    heads : bool
        Also compute the head view (see :func:`head_importance`) of the captured query, key and value.
    settings : dict, optional
        Recorded in the table; the token mode, the point and token counts (``n_points``, ``n_tokens``) and
        ``timings_s`` are added.
    n_threads : int
        Kernel threads on CPU (-1: all cores).

    Returns
    -------
    ImportanceTable
        ``settings["timings_s"]["kernel"]`` is the time spent in the λ kernel.
    """
    _check_activations(acts, "compute_importance")
    head_components = _head_components(acts.components) if heads else ()
    frames = []
    kernel_s = 0.0
    for component in acts.components:
        values = acts.values[component]
        widths = np.diff(acts.offsets[component])
        start = time.perf_counter()
        try:
            lam = float64_array(fast_death_radii(values, n_threads=n_threads))
        except ValueError:
            _check_finite_outputs(values, component, acts.offsets[component])  # says which layer and neuron
            raise
        kernel_s += time.perf_counter() - start
        frames.append(
            pd.DataFrame(
                {
                    "layer": np.repeat([to_user_layer(i) for i in range(len(widths))], widths),
                    "component": component,
                    "neuron": np.concatenate([np.arange(w) for w in widths]),
                    "lam": lam,
                    "mean": float64_array(values.mean(0)),
                    "std": float64_array(values.std(0, correction=0)),
                    "token_mean": float64_array(acts.token_mean[component]),
                    "token_std": float64_array(acts.token_std[component]),
                }
            )
        )
    neurons = pd.concat(frames, ignore_index=True).sort_values(["layer"], kind="stable", ignore_index=True)
    recorded = {**(settings or {}), "token": acts.token, "n_points": acts.n_points, "n_tokens": acts.n_tokens}
    start = time.perf_counter()
    head_frame = head_importance(acts, head_components, n_threads=n_threads) if heads else None
    kernel_s += time.perf_counter() - start
    recorded["timings_s"] = {**recorded.get("timings_s", {}), "kernel": round(kernel_s, 4)}
    return ImportanceTable(neurons, recorded, heads=head_frame, sentences=acts.sentences)


def head_importance(
    acts: Activations, components: Sequence[str] = HEAD_COMPONENTS, *, n_threads: int = -1
) -> pd.DataFrame:
    """λ of each attention head, its output taken as a cloud in ``head_size`` dimensions.

    Heads of the same size (all of them, in an uncompressed model) go to the kernel in one
    ``(n_heads, n_points, head_size)`` call.

    Parameters
    ----------
    acts : Activations
        Must hold the requested components.
    components : sequence of {"query", "key", "value"}
    n_threads : int
        Kernel threads on CPU (-1: all cores).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`HEAD_COLUMNS` (``head`` from 0 within its layer; a head of size 0 has λ 0).

    Raises
    ------
    ValueError
        For a component that is not split into heads or was not captured.
    """
    _check_activations(acts, "head_importance")
    clouds: dict[int, list[torch.Tensor]] = {}
    rows = []
    for component in check_components(components):
        if component not in acts.head_sizes:
            raise ValueError(f"only query, key and value are split into heads, got {component!r}")
        if component not in acts.values:
            raise ValueError(f"component {component!r} was not captured; captured: {', '.join(acts.components)}")
        for index, sizes in enumerate(acts.head_sizes[component]):
            start, end = acts.offsets[component][index : index + 2]
            if sum(sizes) != end - start:
                raise ValueError(
                    f"layer {to_user_layer(index)} {component}: head sizes {sizes} add up to {sum(sizes)}, "
                    f"the layer has {end - start} neurons"
                )
            for head, size in enumerate(sizes):
                rows.append((to_user_layer(index), component, head, size, len(clouds.get(size, ()))))
                clouds.setdefault(size, []).append(acts.values[component][:, start : start + size])
                start += size
    lam_by_size = {
        size: float64_array(fast_death_radii(torch.stack(group), n_threads=n_threads)) if size else np.zeros(len(group))
        for size, group in clouds.items()
    }
    return pd.DataFrame(
        [(layer, component, head, size, lam_by_size[size][i]) for layer, component, head, size, i in rows],
        columns=list(HEAD_COLUMNS),
    )


def check_sample_size(n_sentences: int, token: str) -> None:
    """Raise ValueError for an unknown token mode, a count of sentences that is no positive int, or one sentence
    where a cloud has a point per sentence."""
    check_token_mode(token)
    if checked_int(n_sentences, "n_sentences") == 1 and token != "tokens":
        raise ValueError(
            f"n_sentences=1: with token={token!r} a neuron's cloud has one point per sentence and needs at least 2"
        )


def analyze(
    model=None,
    corpus=None,
    n_sentences: int = 150,
    seed: int = 0,
    token: str = "cls",
    batch_size: int = 32,
    device: str | torch.device | None = None,
    *,
    tokenizer=None,
    components: Sequence[str] = COMPONENTS,
    heads: bool = False,
    precision: str = "float32",
    progress: bool = True,
    n_threads: int = -1,
) -> ImportanceTable:
    """Load a model, sample a corpus, capture activations and compute every neuron's λ.

    Parameters
    ----------
    model : str, path-like, transformers model or None
        None: the built-in all-MiniLM-L6-v2 (offline). A hub name or local folder is loaded with
        :func:`~obce.models.load_model`; a loaded model needs ``tokenizer``.
    corpus : Corpus, str, path-like, sequence of str or None
        See :func:`~obce.corpus.sample_sentences`; None: the built-in Wikipedia sample.
    n_sentences : int
        Sample size (the method uses 150).
    seed : int
        Seed of the sample.
    token : {"cls", "mean", "tokens"}
        Which token gives a neuron's points.
    batch_size : int
        Sentences per forward pass.
    device : str or torch.device, optional
        Where the model runs (default: CUDA when available); a loaded model is moved there.
    tokenizer : optional
        The tokenizer of a loaded ``model``.
    components : sequence of str
        Components to analyse (default all six).
    heads : bool
        Also compute the head view (of the query, key and value among ``components``).
    precision : {"float32", "float16", "bfloat16"}
        Forward pass precision (half precision is meant for GPUs).
    progress : bool
        Show a progress bar.
    n_threads : int
        Kernel threads on CPU (-1: all cores).

    Returns
    -------
    ImportanceTable
        With ``settings`` recording every argument that shapes the result, the versions and the time each step took
        (``timings_s``), and the sampled sentences. Sentences longer than the model's token limit
        are not eligible for the sample.

    Raises
    ------
    ValueError
        On an unknown token mode or component, an unsupported model, an empty corpus or one
        smaller than ``n_sentences``.
    TypeError
        If a loaded model comes without its tokenizer.

    Examples
    --------
    >>> table = analyze(n_sentences=150, seed=0)  # doctest: +SKIP
    >>> table.save("runs/minilm")  # doctest: +SKIP
    """
    # Every option is checked before a model is loaded (perhaps downloaded).
    check_sample_size(n_sentences, token)
    checked_int(batch_size, "batch_size")
    check_precision(precision)
    check_threads(n_threads)
    checked_seed(seed)
    components = check_components(components)
    if heads:
        _head_components(components)
    if isinstance(corpus, (list, tuple)):
        corpus_setting = f"a list of {len(corpus)} sentences"
    else:
        corpus_setting = Corpus.resolve(corpus).describe()  # a missing file or a bad type named before the model
    timings = {}
    start = time.perf_counter()
    if model is None or isinstance(model, (str, os.PathLike)):
        if tokenizer is not None:
            raise TypeError("tokenizer is only for a loaded model; a model name or folder brings its own")
        model_setting = None if model is None else os.fspath(model)
        model, tokenizer = load_model(model, device)
    else:
        if tokenizer is None:
            raise TypeError(f"a loaded model ({type(model).__name__}) needs its tokenizer: pass tokenizer=")
        model_setting = getattr(model.config, "_name_or_path", None) or type(model).__name__
        if device is not None:
            model.to(torch.device(device))
    timings["load"] = time.perf_counter() - start

    start = time.perf_counter()
    limit = max_sequence_length(model, tokenizer)
    specials = tokenizer.num_special_tokens_to_add(pair=False)

    def fits(chunk: list[str]) -> list[bool]:
        # A WordPiece, BPE or SentencePiece token covers at least one character of the normalized text (NFKC for
        # SentencePiece, NFD to strip accents: NFKD is at least as long as either), except a word-start marker;
        # a byte-level BPE token covers at least one byte of the raw text, which NFKD can shorten ("Ａ" is 3 bytes,
        # "A" one). So a sentence under this bound fits without being tokenized.
        def bound(s: str) -> int:
            return max(len(s.encode()), len(unicodedata.normalize("NFKD", s).encode())) + len(s.split()) + specials

        surely = [bound(s) <= limit for s in chunk]
        doubtful = [s for s, ok in zip(chunk, surely, strict=True) if not ok]
        counts = (
            iter(len(ids) for ids in tokenizer(doubtful, add_special_tokens=True)["input_ids"]) if doubtful else None
        )
        return [ok or next(counts) <= limit for ok in surely]

    sentences = sample_sentences(corpus, n_sentences, seed, accept=fits)
    timings["corpus"] = time.perf_counter() - start

    start = time.perf_counter()
    acts = compute_activations(
        model,
        tokenizer,
        sentences,
        token=token,
        components=components,
        batch_size=batch_size,
        precision=precision,
        progress=progress,
    )
    if acts.values[components[0]].is_cuda:
        torch.cuda.synchronize()
    timings["forward"] = time.perf_counter() - start

    import transformers

    settings = {
        "obce_version": __version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "model": model_setting,
        "model_type": model.config.model_type,
        "corpus": corpus_setting,
        "n_sentences": n_sentences,
        "seed": seed,
        "batch_size": batch_size,
        "precision": precision,
        "components": list(components),
        "heads": heads,
        "device": str(next(model.parameters()).device),
    }
    start = time.perf_counter()
    table = compute_importance(acts, heads=heads, settings=settings, n_threads=n_threads)
    timings["importance"] = time.perf_counter() - start
    # "importance" includes "kernel" (set by compute_importance) and the table's statistics.
    table.settings["timings_s"].update({k: round(v, 4) for k, v in timings.items()})
    return table
