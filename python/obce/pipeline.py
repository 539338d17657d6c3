"""The run folder, and the analyze → prune → fine-tune → evaluate → report pipeline.

A run folder holds everything needed to reproduce and inspect one compression run; every arrow of
the pipeline leaves a plain file behind, so each step can be rerun, skipped or read alone::

    settings.json           every setting of every step (versions, seed, command line, timings)
    sentences.txt           the corpus sample            ┐
    importance.csv          λ and statistics per neuron  ├ analysis (ImportanceTable.save)
    importance.json         the analysis's settings      ┘
    scores.csv              a supervised score per neuron (``--score taylor``: on the task, of a fine-tuned classifier)
    persistence.json        outputs of a high-λ and a low-λ neuron (for their persistence diagrams)
    plan.json               the pruning plan (PruningPlan.load reads it)
    compressed/             the compressed model and its tokenizer (AutoModel.from_pretrained)
    parameters.csv          parameters and neurons per layer and component, original and compressed
    params.json             parameter totals, counted on both models
    removed.json            the neurons and heads removed in every layer
    speed.json              CPU inference time of both models
    finetune/<model>/       fine-tuning runs (obce.train.finetune: settings, best model, results.json,
                            training_log.json)
    metrics.json            task scores of every fine-tuned model
    evaluation.json         scores from ``obce evaluate``, by task and split
    report/                 report.html (self-contained), report.md and the figures as PNG

Each file is written atomically. A step whose output exists is skipped when the folder is used
again with the same settings; fine-tuning resumes from its last checkpoint. Settings that differ
from the recorded ones are refused unless the folder is cleared (``overwrite=True``).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ._checks import checked_int
from ._io import atomic_folder, atomic_write_text, file_sha256, json_value, model_files_digest
from ._version import __version__
from .corpus import Corpus, sample_sentences
from .importance import ImportanceTable, analyze, check_sample_size
from .models.adapters import (
    ARCHITECTURES,
    COMPONENTS,
    builtin_model_path,
    check_model_source,
    encoder_layers,
    max_sequence_length,
)
from .plans import (
    LEVEL_SETS,
    EncoderShape,
    PruningPlan,
    TargetOutOfReach,
    dry_run,
    paper_plan,
    select_neurons,
    target_plan,
    uniform_plan,
)
from .prune import prune_model
from .train import is_main_process

__all__ = [
    "BUILTIN_MODEL",
    "COMPRESSED",
    "DEFAULT_PLAN",
    "ORIGINAL",
    "RUN_SCORES",
    "Budget",
    "ModelLoader",
    "RunFolder",
    "SpeedSettings",
    "analysis_settings",
    "build_plan",
    "check_evaluated_models",
    "check_finetune_models",
    "check_plan_spec",
    "check_run_score",
    "compress",
    "finetune_settings",
    "forget_finetuning",
    "is_main_process",
    "measure_speed",
    "named_plan",
    "parameter_table",
    "plan_report",
    "plan_setting",
    "prune_settings",
    "run_analysis",
    "run_finetune",
    "run_plan",
    "run_prune",
    "run_scores",
    "run_speed",
    "run_steps",
    "score_settings",
    "versions",
    "write_metrics",
]

BUILTIN_MODEL = "all-MiniLM-L6-v2"
"""Name shown for the built-in model (``--model`` left out)."""
DEFAULT_PLAN = "target:0.6"
"""Keep 60 % of the encoder layers' parameters."""
ORIGINAL, COMPRESSED = "original", "compressed"
"""Labels of the two models of a run, also the names of their fine-tuning folders."""
DIAGRAM_COMPONENT = "intermediate"
"""Component whose highest- and lowest-λ neurons get a persistence diagram."""

_RECORDED_SINCE = frozenset({"corpus_sha256", "model_sha256"})

RUN_SCORES = ("lam", "std", "taylor")
"""Neuron scores a run can rank by: λ and the standard deviation of the same points (the better of the two at strong
compression in ``benchmarks/results/ablation.md``), which every importance table holds, and the supervised Taylor
score of a fine-tuned classifier on its task (:func:`run_scores`; the closest to the original after fine-tuning in
``benchmarks/results/finetune_polarity.md``). :mod:`obce.scores` has more for the API."""

TASK_SCORE = "taylor"
"""The run score computed on a task's labelled sentences (:func:`run_scores`), not by the analysis."""

_PRUNE_DEFAULTS = {
    name: p.default for name, p in inspect.signature(prune_model).parameters.items() if name in ("fold", "statistics")
}


@dataclass(frozen=True)
class Budget:
    """Fine-tuning budget shared by every model of a run.

    The defaults fit a 2-core CPU: 100 steps of batch 32 is one epoch of ``polarity``'s 3,200
    training sentences (about 0.8 s a step for MiniLM at 64 tokens on a quiet machine), evaluated
    on the dev split twice, the better checkpoint kept.
    """

    steps: int = 100
    batch_size: int = 32
    max_length: int = 64
    lr: float = 5e-5
    evaluations: int = 2

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_length", "evaluations"):
            object.__setattr__(self, name, checked_int(getattr(self, name), name))
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")

    @property
    def eval_steps(self) -> int:
        return math.ceil(self.steps / min(self.evaluations, self.steps))


@dataclass(frozen=True)
class SpeedSettings:
    """Inference timing: one forward pass of a batch of random token ids, on the CPU."""

    batch_size: int = 32
    tokens: int = 128
    repeats: int = 5

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            object.__setattr__(self, name, checked_int(value, f"speed {name}"))


def _json_text(obj) -> str:
    return json.dumps(obj, indent=2, default=json_value) + "\n"


def _plain(settings: Mapping) -> dict:
    """Settings as JSON stores them (tuples become lists), to compare with recorded ones."""
    return json.loads(json.dumps(dict(settings), default=json_value))


def _normal_path(path: str | os.PathLike) -> Path:
    """``path`` absolute, with ``..`` and ``.`` taken out (links kept: a recorded path stays the one typed)."""
    return Path(os.path.normpath(Path(path).expanduser().absolute()))


def _glue_folder(task: str, glue_dir: str | os.PathLike | None) -> str | None:
    """``glue_dir`` as recorded (see :func:`_normal_path`), checked to hold ``task`` before a run folder changes.

    Raises
    ------
    FileNotFoundError, ValueError, ImportError
        A ``glue_dir`` that is not a folder; see :func:`obce.tasks.check_task_source`.
    """
    from .tasks import check_task_source

    if glue_dir is not None and not Path(glue_dir).expanduser().is_dir():
        raise FileNotFoundError(f"GLUE folder {str(glue_dir)!r} is not a folder")
    check_task_source(task, glue_dir)
    return None if glue_dir is None else str(_normal_path(glue_dir))


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# The run folder


@dataclass(frozen=True)
class RecordedCommand:
    """A command line recorded in a run (:meth:`RunFolder.record_command`), to take back if it fails."""

    entry: dict
    finished_before: frozenset[str]  # RunFolder.finished_work() when it was recorded
    made_folder: bool
    made_settings: bool


class RunFolder:
    """A run folder: where each step's files live, and the settings recorded for them.

    Parameters
    ----------
    path : str or path-like
        The folder (created on first write).

    Examples
    --------
    >>> run = RunFolder("runs/minilm")  # doctest: +SKIP
    >>> run.table().stats()  # doctest: +SKIP
    """

    SETTINGS = "settings.json"
    IMPORTANCE = "importance.csv"
    SCORES = "scores.csv"
    PERSISTENCE = "persistence.json"
    PLAN = "plan.json"
    COMPRESSED = "compressed"
    PARAMETERS = "parameters.csv"
    PARAMS = "params.json"
    REMOVED = "removed.json"
    SPEED = "speed.json"
    FINETUNE = "finetune"
    METRICS = "metrics.json"
    EVALUATION = "evaluation.json"
    REPORT = "report"
    # Everything a run writes: what overwrite=True removes (nothing else in the folder is touched).
    _OWNED = (
        SETTINGS, IMPORTANCE, "importance.json", "importance_heads.csv", "sentences.txt", SCORES, PERSISTENCE, PLAN,
        COMPRESSED, PARAMETERS, PARAMS, REMOVED, SPEED, FINETUNE, METRICS, EVALUATION, REPORT,
    )  # fmt: skip

    def __init__(self, path: str | os.PathLike) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"a run folder is a path, got {type(path).__name__}")
        # Absolute: fine-tuning runs record the model folder they start from.
        self.path = _normal_path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def settings(self) -> dict:
        """The recorded settings (empty for a new folder)."""
        path = self / self.SETTINGS
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err}); repair it") from None

    def is_run(self) -> bool:
        """Whether the folder holds a run: a ``settings.json`` that obce wrote (not another program's)."""
        try:
            data = self.settings()
        except ValueError:  # not JSON, or not text
            return False
        # record() always writes the version entries, and "steps" maps each step to its settings.
        return (
            isinstance(data, dict)
            and isinstance(data.get("obce_version"), str)
            and isinstance(data.get("versions"), dict)
            and isinstance(data.get("steps", {}), dict)
        )

    def prepare(self, *, overwrite: bool = False) -> None:
        """Check that the folder can take a run: new, empty, or a run folder (:meth:`is_run`); clear a run
        folder with ``overwrite``.

        Raises
        ------
        FileExistsError
            A non-empty folder that is not a run folder, even with ``overwrite``: its files are not a run's; or
            a path where another run writes (``other-run/compressed``).
        ValueError
            A ``settings.json`` that is not valid JSON.
        NotADirectoryError
            The path is a file.
        """
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"run folder {str(self.path)!r} is a file")
        if overwrite and not is_main_process():
            return  # rank 0 checks and clears the folder; the others could find it half cleared
        owner = self.owner()
        if owner is not None:
            raise FileExistsError(
                f"{str(self.path)!r} is inside what the run in {str(owner.path)!r} writes (its "
                f"{self.path.relative_to(owner.path).parts[0]!r}), which its --overwrite clears: choose a folder "
                "outside it"
            )
        self.settings()  # a settings.json that is not JSON says so, rather than "not a run folder"
        if self.path.is_dir() and any(self.path.iterdir()) and not self.is_run():
            raise FileExistsError(
                f"{str(self.path)!r} is not empty and holds no {self.SETTINGS} of obce's: not a run folder; "
                "choose a new or empty folder"
            )
        if overwrite:
            self.clear()

    def owner(self, path: str | os.PathLike | None = None) -> RunFolder | None:
        """The run folder, this one's ancestor, that writes the file or folder ``path`` lies in (default: this
        folder), or None."""
        path = self.path if path is None else _normal_path(path)
        for ancestor in path.parents:
            relative = path.relative_to(ancestor)
            if relative.parts[0] in self._OWNED and RunFolder(ancestor).is_run():
                return RunFolder(ancestor)
        return None

    def forget_step(self, step: str, *names: str) -> None:
        """Remove ``step``'s recorded settings and its files ``names``: the step runs again."""
        if not is_main_process():
            return
        for name in names:
            (self / name).unlink(missing_ok=True)
        data = self.settings()
        if step in data.get("steps", {}):
            del data["steps"][step]
            self.write_json(self.SETTINGS, data)

    def clear(self) -> None:
        """Remove every file and folder a run writes (other files in the folder are left alone)."""
        if not is_main_process():
            return
        # The files that mark a step done go first and settings.json last: a clear that is interrupted leaves a
        # run folder whose steps run again, which --overwrite can clear.
        markers = (self.PERSISTENCE, self.SCORES, self.PLAN, self.REMOVED, self.SPEED, self.EVALUATION, self.METRICS)
        rest = [name for name in self._OWNED if name not in markers and name != self.SETTINGS]
        for name in (*markers, *rest, self.SETTINGS):
            # With what a killed process left while writing it atomically: tempfile's .NAME.xxxxxxxx[.tmp], and
            # atomic_folder's old folder moved aside (.replaced).
            staging = re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}(\.tmp|\.replaced)?")
            leftovers = [p for p in self.path.glob(f".{name}.*") if staging.fullmatch(p.name)]
            for target in (self / name, *leftovers):
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()

    def write_text(self, name: str, text: str) -> Path:
        """Write a file of the run atomically (replacing it)."""
        return atomic_write_text(self / name, text, overwrite=True)

    def write_json(self, name: str, obj) -> Path:
        return self.write_text(name, _json_text(obj))

    def read_json(self, name: str):
        path = self / name
        if not path.is_file():
            raise FileNotFoundError(f"no {name} in the run folder {str(self.path)!r}")
        return json.loads(path.read_text(encoding="utf-8"))

    def check_step(self, step: str, settings: Mapping) -> None:
        """Refuse settings that differ from those recorded for ``step``.

        Raises
        ------
        ValueError
            A recorded setting differs; the message names each difference.
        """
        before = self.settings().get("steps", {}).get(step)
        if before is None:
            return
        # Settings recorded since a later version: a folder from before them is compared without them.
        now = {k: v for k, v in _plain(settings).items() if k in before or k not in _RECORDED_SINCE}
        # The model as typed is a label: "./bert" after "bert" names the same folder (the same model_path). So is
        # a plan file's path: its digest says whether it is the same plan.
        labels = {"model"} if before.get("model_path") == now.get("model_path") else set()
        # A text corpus copied or moved keeps its digest: the same corpus.
        if before.get("corpus_sha256") is not None and before.get("corpus_sha256") == now.get("corpus_sha256"):
            labels |= {"corpus", "corpus_description"}
        if ("plan_sha256" in before and "plan_sha256" in now) or _same_named_plan(before.get("plan"), now.get("plan")):
            labels.add("plan")
        keys = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k) and k not in labels)
        if keys:
            changes = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys)
            # Fine-tuning alone can start again; every other step is the start of what follows it.
            again = (
                "--overwrite to `obce finetune` with the new fine-tuning options"
                if step == "finetune"
                else "--overwrite (the run starts again)"
            )
            raise ValueError(
                f"{str(self.path)!r} holds a run with other {step} settings ({changes}); "
                f"choose another folder or pass {again}"
            )

    def record(self, step: str | None = None, settings: Mapping | None = None, **extra) -> None:
        """Record a step's settings (after :meth:`check_step`) and top-level entries in ``settings.json``."""
        if not is_main_process():
            return
        data = self.settings()
        data.setdefault("obce_version", __version__)
        data["versions"] = versions()
        if step is not None:
            data.setdefault("steps", {})[step] = _plain(settings or {})
        for key, value in extra.items():
            if isinstance(value, Mapping) and isinstance(data.get(key), Mapping):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        self.write_json(self.SETTINGS, data)

    def finished_work(self) -> frozenset[str]:
        """What the run has finished: its recorded steps and timed pieces of work (a model fine-tuned is one)."""
        data = self.settings()
        return frozenset(data.get("steps", {})) | {f"timing:{key}" for key in data.get("timings_s", {})}

    def record_command(self, argv: Sequence[str]) -> RecordedCommand:
        """Add a command line to the settings with the directory it ran in, where its relative paths mean
        something."""
        made_folder, made_settings = not self.path.exists(), not (self / self.SETTINGS).exists()
        before = self.finished_work()
        entry = {"cwd": os.getcwd(), "command": shlex.join(argv)}
        self.record(commands=[*self.settings().get("commands", []), entry])
        return RecordedCommand(entry, before, made_folder, made_settings)

    def take_back_command(self, recorded: RecordedCommand) -> None:
        """Remove a command that finished nothing (:meth:`finished_work`): it failed, or was a dry run, and made
        nothing to reproduce. (Keep one interrupted: run again, it resumes.) The settings file and the folder it made
        go too, when nothing else is there."""
        data = self.settings()
        if (
            not is_main_process()
            or data.get("commands", [])[-1:] != [recorded.entry]
            or self.finished_work() - recorded.finished_before
        ):
            return
        data["commands"].pop()
        if recorded.made_settings and not data["commands"] and os.listdir(self.path) == [self.SETTINGS]:
            (self / self.SETTINGS).unlink()
            if recorded.made_folder:
                with contextlib.suppress(OSError):  # written to in the meantime
                    self.path.rmdir()
            return
        self.write_json(self.SETTINGS, data)

    def table(self) -> ImportanceTable:
        """The importance table of the run, with the columns of ``scores.csv`` when the run has one."""
        if not (self / self.IMPORTANCE).is_file():
            raise FileNotFoundError(f"no analysis in {str(self.path)!r}: run `obce analyze` on it first")
        table = ImportanceTable.load(self.path)
        if not (self / self.SCORES).is_file():
            return table
        from .scores import table_columns

        return table.with_columns(table_columns(table, pd.read_csv(self / self.SCORES), f"{self.SCORES} of the run"))

    def plan(self) -> PruningPlan:
        if not (self / self.PLAN).is_file():
            raise FileNotFoundError(f"no {self.PLAN} in {str(self.path)!r}: run `obce prune` on it first")
        return PruningPlan.load(self / self.PLAN)

    def model_source(self) -> str:
        """The analysed model's folder or hub name (the built-in model's folder when none was given)."""
        return _model_source(self.settings().get("steps", {}).get("analyze", {}).get("model_path"))

    def finetuned(self) -> dict[str, Path]:
        """Label -> folder of every finished fine-tuning run, originals first."""
        root = self / self.FINETUNE
        found = sorted(p.parent for p in root.glob("*/results.json")) if root.is_dir() else []
        order = {ORIGINAL: 0, COMPRESSED: 1}
        return {p.name: p for p in sorted(found, key=lambda p: (order.get(p.name, 2), p.name))}


def versions() -> dict:
    """Versions of obce, Python and the libraries results depend on."""
    import torch
    import transformers

    return {
        "obce": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }


# --------------------------------------------------------------------------------------------------
# Plans given as text


def check_plan_spec(spec: str) -> str:
    """Check the syntax of a plan given as text, before any work starts; return it unchanged.

    Forms: ``bert-base`` / ``bert-large`` (the paper's tables, ``:quartiles`` for P25/P50/P75),
    ``uniform:P50`` (one level from layer 3 on), ``target:0.6`` (keep that fraction of the encoder
    layers' parameters; ``target:0.6:model`` for the whole model), or a JSON/YAML plan file.

    Raises
    ------
    ValueError
        An unknown form or a bad number.
    FileNotFoundError
        A plan file that does not exist.
    """
    form = named_plan(spec)
    if form is None:
        _plan_file(spec)
    elif form[0] == "uniform":
        uniform_plan(3, form[1])  # checks the level
    elif form[0] != "target":  # a target is checked by named_plan
        paper_plan(*form)
    return spec


def build_plan(spec: str | PruningPlan, model, table, score: str = "lam") -> PruningPlan:
    """Turn a plan given as text (see :func:`check_plan_spec`) into a :class:`PruningPlan` for ``model``;
    ``score`` is the table column a ``target:`` plan ranks by."""
    if isinstance(spec, PruningPlan):
        return spec
    form = named_plan(spec)
    if form is None:
        return _plan_file(spec)
    kind, *args = form
    if kind == "uniform":
        return uniform_plan(len(encoder_layers(model)), args[0])
    if kind == "target":
        return _target_plan(model, table, args[0], args[1], score)
    return paper_plan(kind, args[0])


def _plan_file(spec: str) -> PruningPlan:
    """The plan in the file ``spec`` names, or ValueError for a text that names no plan."""
    path = Path(spec).expanduser()
    if path.suffix.lower() in (".json", ".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"no plan file {spec!r}")
        return PruningPlan.load(path)
    raise ValueError(
        f"unknown plan {spec!r}; expected bert-base, bert-large (optionally :quartiles), uniform:P50, "
        "target:0.6 or a .json/.yaml plan file"
    )


def _same_named_plan(a, b) -> bool:
    """Whether two recorded plan texts name the same plan (``target:0.7`` and ``target:70%``)."""
    return isinstance(a, str) and isinstance(b, str) and named_plan(a) is not None and named_plan(a) == named_plan(b)


def named_plan(spec: str) -> tuple | None:
    """A plan named in text as a tuple, None for a file: ``("bert-base", "paper")``, ``("uniform", 50.0)``,
    ``("target", 0.6, "encoder")``. Spellings of one plan give one tuple (``target:70%``, ``target:0.7:encoder``).

    Raises
    ------
    ValueError
        A bad number or suffix in a named form, or a text that is no plan.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a plan must be a name, uniform:P50, target:0.6 or a plan file, got {spec!r}")
    kind, _, rest = spec.strip().partition(":")
    if kind in ("bert-base", "bert-large"):
        return kind, rest or "paper"
    if kind == "uniform":
        return kind, _number(rest.removeprefix("P").removeprefix("p"), spec, "a percentile level, e.g. uniform:P50")
    if kind == "target":
        value, _, of = rest.partition(":")
        fraction = _number(value.removesuffix("%"), spec, "a fraction, e.g. target:0.6")
        fraction = fraction / 100 if value.endswith("%") else fraction
        if of not in ("", "encoder", "model"):
            raise ValueError(f"plan {spec!r}: after the fraction write :encoder or :model, got {of!r}")
        if not 0 < fraction < 1:
            raise ValueError(f"plan {spec!r}: the fraction must be in (0, 1), e.g. target:0.6")
        return kind, fraction, of or "encoder"
    return None


def _target_plan(model, table, fraction: float, of: str, score: str) -> PruningPlan:
    """:func:`obce.plans.target_plan` on the paper's levels, with P90 added where those cannot reach ``fraction``
    (from layer 3, P70 everywhere keeps about 53% of a BERT encoder)."""
    try:
        return target_plan(model, table, fraction, of=of, score=score)
    except TargetOutOfReach:
        return target_plan(model, table, fraction, of=of, score=score, levels=(*LEVEL_SETS["paper"], 90))


def _number(text: str, spec: str, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"plan {spec!r}: expected {expected}") from None
    if not math.isfinite(value):
        raise ValueError(f"plan {spec!r}: expected {expected}")
    return value


# --------------------------------------------------------------------------------------------------
# Steps: each checks its settings against the folder, skips itself when its output is there, and records its
# settings just before the file that marks it done (fine-tuning before its first checkpoint, which a resume needs).


def analysis_settings(
    model: str | None = None, corpus: str | None = None, n_sentences: int = 150, seed: int = 0, token: str = "cls"
) -> dict:
    """The settings of the analysis step as recorded (paths made absolute, the corpus described).

    Raises
    ------
    FileNotFoundError
        A corpus path or a model path that does not exist (checked before a run folder changes).
    """
    check_sample_size(n_sentences, token)
    if model is not None:
        check_model_source(model)
    resolved = Corpus.resolve(_local_or_name(corpus))
    model_path = _local_or_name(model)
    return {
        "model": model or BUILTIN_MODEL,
        "model_path": model_path,
        # A local folder is the user's to re-save: with other weights, it is another model.
        **({"model_sha256": model_files_digest(model_path)} if model_path and Path(model_path).is_dir() else {}),
        "corpus": _local_or_name(corpus),
        "corpus_description": resolved.describe(),
        # A text file is the user's to edit: edited, it is another corpus (a dump or a dataset is as named).
        **({"corpus_sha256": file_sha256(resolved.location)} if resolved.kind == "text" else {}),
        "n_sentences": n_sentences,
        "seed": seed,
        "token": token,
    }


def _local_or_name(source: str | None) -> str | None:
    """An existing path made absolute (the run may be resumed from elsewhere); a name as given."""
    if source is None or not Path(source).expanduser().exists():
        return source
    return str(_normal_path(source))


def prune_settings(fold: str | None = None, score: str = "lam") -> dict:
    """The settings of the pruning step: :func:`obce.prune.prune_model`'s defaults unless told.

    Raises
    ------
    ValueError
        A score that a run cannot rank by (see :data:`RUN_SCORES`).
    """
    return {**_PRUNE_DEFAULTS, **({"fold": fold} if fold is not None else {}), "score": check_run_score(score)}


def check_run_score(score: str) -> str:
    """``score`` if it is one of :data:`RUN_SCORES`, else a ValueError that names them."""
    if score not in RUN_SCORES:
        raise ValueError(f"score must be one of {', '.join(RUN_SCORES)}, got {score!r}")
    return score


def score_settings(
    model_path: str | None, task: str, *, glue_dir: str | os.PathLike | None = None, seed: int = 0
) -> dict:
    """The settings of the Taylor score step (:func:`run_scores`): the task and the sample of its training
    sentences (:func:`obce.scores.task_batches`'s sizes).

    Raises
    ------
    ValueError
        A model that is not a classifier for ``task`` (as far as its config, read without a network, says), an
        unknown task, or a ``glue_dir`` without the task (or for an offline task).
    FileNotFoundError
        A ``glue_dir`` that is not a folder.
    ImportError
        A GLUE task from the hub without the ``datasets`` package.
    """
    from transformers import AutoConfig

    from .scores import task_batches
    from .tasks import task_info
    from .train import head_mismatch

    info = task_info(task)
    why = f"the {TASK_SCORE} score ranks neurons by their effect on a fine-tuned classifier's loss on {info.name}"
    if model_path is None:
        raise ValueError(f"{why}; the built-in model has no classification head: choose a fine-tuned model")
    try:
        config = AutoConfig.from_pretrained(model_path, local_files_only=True)
    except (OSError, ValueError):
        config = None  # a hub model not downloaded yet: checked once loaded (run_scores)
    if config is not None:
        problem = head_mismatch((config.architectures or [config.model_type])[0], config, info)
        if problem is not None:
            raise ValueError(f"{why}; {model_path!r} {problem}: fine-tune it first (obce finetune --task {info.name})")
    glue_dir = _glue_folder(task, glue_dir)  # after the model: a model of no use needs no data to say so
    sizes = {
        name: p.default
        for name, p in inspect.signature(task_batches).parameters.items()
        if name in ("n_batches", "batch_size", "max_length")
    }
    return {
        "score": TASK_SCORE,
        "task": info.name,
        "glue_dir": glue_dir,
        **sizes,
        "seed": seed,
    }


def run_scores(run: RunFolder, settings: Mapping, model: ModelLoader) -> bool:
    """The Taylor score of every analysed neuron (|activation × gradient| of the loss, summed over a sample of the
    task's training sentences; :func:`obce.scores.taylor_score`): ``scores.csv``, read by :meth:`RunFolder.table`.

    Parameters
    ----------
    settings : mapping
        From :func:`score_settings`.

    Returns
    -------
    bool
        False when the folder already held these scores.

    Raises
    ------
    ValueError
        The loaded model has no sequence-classification head fit for the task.
    """
    run.check_step("score", settings)
    if (run / run.SCORES).is_file():
        return False
    start = time.perf_counter()
    table = run.table()
    scores = table.neurons[["layer", "component", "neuron"]].copy()
    scores[TASK_SCORE] = _taylor_column(run, table, settings, model)
    if is_main_process():
        run.record("score", settings, timings_s={"score": round(time.perf_counter() - start, 2)})
        run.write_text(run.SCORES, scores.to_csv(index=False, lineterminator="\n"))
    return True


def _taylor_column(run: RunFolder, table: ImportanceTable, settings: Mapping, model: ModelLoader) -> np.ndarray:
    """The Taylor score of each row of ``table``, on the task sample that ``settings`` describe."""
    from .scores import task_batches, taylor_score
    from .tasks import load_task
    from .train import check_head

    task = load_task(settings["task"], settings["glue_dir"], splits=["train"])
    loaded, tokenizer = model.get()
    check_head(loaded, task.info, f"the run's model {run.model_source()!r}")
    sizes = {name: settings[name] for name in ("n_batches", "batch_size", "seed", "max_length")}
    return taylor_score(table, loaded, task_batches(task, tokenizer, **sizes))


def finetune_settings(
    task: str = "polarity",
    *,
    budget: Budget = Budget(),
    seed: int = 0,
    glue_dir: str | os.PathLike | None = None,
    fp16: bool = False,
    bf16: bool = False,
    distill: bool = False,
) -> dict:
    """The settings of the fine-tuning step, shared by every model of the run (``distill``: the compressed
    model learns from the fine-tuned original's outputs too, see :func:`obce.train.finetune`).

    Raises
    ------
    ValueError
        An unknown task, a ``glue_dir`` without the task (or for an offline task), or both ``fp16`` and ``bf16``.
    FileNotFoundError
        A ``glue_dir`` that is not a folder (checked before a run folder changes).
    ImportError
        A GLUE task from the hub without the ``datasets`` package (see :func:`obce.tasks.check_task_source`).
    """
    from .tasks import task_info

    if fp16 and bf16:
        raise ValueError("fp16 and bf16 are two kinds of mixed precision: choose one")
    return {
        "task": task_info(task).name,
        "glue_dir": _glue_folder(task, glue_dir),
        "seed": seed,
        **asdict(budget),
        "eval_steps": budget.eval_steps,
        "patience": 0,
        "fp16": fp16,
        "bf16": bf16,
        # Only when on, so that run folders from before the option keep their settings.
        **({"distill": True} if distill else {}),
    }


def open_run(
    path: str | os.PathLike,
    steps: Mapping[str, Mapping],
    *,
    overwrite: bool = False,
    model: ModelLoader | None = None,
) -> RunFolder:
    """The run folder at ``path``, ready for ``steps`` (step -> settings): cleared with ``overwrite``, once the
    model to analyse is found, the corpus gives the sample and the plan fits ``model`` (the loader of the model
    to analyse; see :func:`check_plan_fits`): a mistyped name, a corpus too small or a plan the model cannot take
    clears nothing. Otherwise checked against what it records.

    Speed settings that differ from the recorded ones drop the recorded timing (nothing depends on it), to be
    measured again.

    Raises
    ------
    ValueError
        Settings that differ from those recorded; with ``overwrite``, a corpus without the sample, or an input
        (plan file, corpus, model, GLUE folder) among the files the clear removes; several processes (torchrun).
    FileExistsError, NotADirectoryError
        As :meth:`RunFolder.prepare`.
    OSError, ImportError
        With ``overwrite``, a model or corpus that cannot be found or read.
    """
    from .models.adapters import check_loadable

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "analysis, pruning and compress run in one process (their steps are not shared out): run them alone, "
            "then fine-tune on several GPUs with torchrun or accelerate launch and `obce finetune`"
        )
    run = RunFolder(path)
    if overwrite and run.is_run():
        _check_inputs_outlive_the_clear(run, steps)
        if "analyze" in steps:
            check_loadable(_model_source(steps["analyze"]["model_path"]))
            _check_corpus(steps["analyze"])
        if "plan" in steps and model is not None:
            check_plan_fits(run, steps, model)
    run.prepare(overwrite=overwrite)
    retimed = "speed" in steps and run.settings().get("steps", {}).get("speed") not in (None, _plain(steps["speed"]))
    for step, settings in steps.items():
        if step != "speed" or not retimed:
            run.check_step(step, settings)
    if retimed:  # dropped once every other step passed its check: a refused command changes nothing
        run.forget_step("speed", run.SPEED)
    return run


def check_plan_fits(run: RunFolder, steps: Mapping[str, Mapping], model: ModelLoader) -> None:
    """Build the plan of ``steps`` for the model as the plan step will, before ``--overwrite`` clears ``run``.

    Where the command would make the folder's analysis (and Taylor scores) again, the plan is built and its neurons
    chosen on them, as the plan step will; otherwise a plan that names layers the model lacks is refused from the
    model alone, and a ``target:`` plan, which reaches its size or not by the neurons' scores, is checked once the
    new analysis is made.

    Raises
    ------
    ValueError
        The plan does not fit the model, or the target is out of reach.
    """
    spec, score = steps["plan"]["plan"], steps["plan"]["score"]
    spec = PruningPlan.from_dict(spec) if isinstance(spec, Mapping) else spec
    loaded = model.get()[0]
    recorded = run.settings().get("steps", {})
    same = [recorded.get(step) == _plain(steps[step]) for step in ("analyze", "score") if step in steps]
    if all(same) and (run / run.IMPORTANCE).is_file() and (score != TASK_SCORE or (run / run.SCORES).is_file()):
        table = run.table()
        select_neurons(build_plan(spec, loaded, table, score), table, EncoderShape.from_model(loaded), score=score)
    elif isinstance(spec, PruningPlan) or (form := named_plan(spec)) is None or form[0] != "target":
        build_plan(spec, loaded, None, score).check(len(encoder_layers(loaded)))


def _check_inputs_outlive_the_clear(run: RunFolder, steps: Mapping[str, Mapping]) -> None:
    """Refuse a path among the steps' settings that lies in a file or folder that clearing ``run`` removes."""
    for step, settings in steps.items():
        for key, value in settings.items():
            if not isinstance(value, str) or not Path(value).expanduser().exists():
                continue
            owner = run.owner(value)
            if owner is not None and owner.path == run.path:
                raise ValueError(
                    f"the {step} input {key}={value!r} lies in what the run folder writes, which --overwrite clears: "
                    "copy it out of the run folder first"
                )


def _check_corpus(settings: Mapping) -> None:
    """Raise unless the analysis' corpus can give its sample: a local corpus is sampled (without the model's token
    limit, which the analysis applies), a dataset opened."""
    corpus = Corpus.resolve(settings["corpus"])
    if corpus.kind == "hf":
        next(corpus.texts(), None)
    else:
        sample_sentences(corpus, settings["n_sentences"], settings["seed"])


def _model_source(model_path: str | None) -> str:
    """A recorded ``model_path`` as :func:`~obce.models.load_model` takes it (None: the built-in model)."""
    return model_path or str(builtin_model_path())


class ModelLoader:
    """The run's original model and tokenizer, loaded once, on first use (:meth:`get`).

    ``source`` is a folder or hub name, None for the built-in model (as recorded in a run's settings).
    """

    def __init__(self, source: str | None, device: str | None) -> None:
        self.source, self.device, self._loaded = source, device, None

    def get(self):
        from .models import load_model

        if self._loaded is None:
            self._loaded = load_model(_model_source(self.source), self.device)
        return self._loaded


def run_analysis(
    run: RunFolder,
    settings: Mapping,
    *,
    device: str | None = None,
    progress: bool = True,
    model: ModelLoader | None = None,
) -> bool:
    """λ of every neuron over a corpus sample (``importance.*``, ``sentences.txt``), and the outputs of
    the highest- and lowest-λ (non-zero) neurons of the middle layer's intermediate component
    (``persistence.json``).

    Parameters
    ----------
    run : RunFolder
    settings : mapping
        From :func:`analysis_settings`.
    device : str, optional
        Where the model runs (default: CUDA when available).
    progress : bool
        Progress bars.
    model : ModelLoader, optional
        The run's model, loaded once for the analysis and the diagrams' pass (and what follows).

    Returns
    -------
    bool
        False when the folder already held this analysis (nothing was done).
    """
    run.check_step("analyze", settings)
    if (run / run.IMPORTANCE).is_file() and (run / run.PERSISTENCE).is_file():
        return False
    start = time.perf_counter()
    network, tokenizer = (model if model is not None else ModelLoader(settings["model_path"], device)).get()
    table = analyze(
        network,
        settings["corpus"],
        settings["n_sentences"],
        settings["seed"],
        settings["token"],
        tokenizer=tokenizer,
        device=device,
        progress=progress,
    )
    table.settings["model"] = settings["model"]
    if is_main_process():
        table.save(run.path, overwrite=True)
        diagrams = _diagram_points(table, network, tokenizer, progress)
        # Recorded just before the file that marks the step done: a failed attempt leaves no settings
        # that would refuse the next one.
        run.record("analyze", settings, timings_s={"analyze": round(time.perf_counter() - start, 2)})
        run.write_json(run.PERSISTENCE, diagrams)
    return True


def _diagram_points(table: ImportanceTable, model, tokenizer, progress: bool) -> dict:
    """The outputs of one layer's highest- and lowest-λ neurons (a second pass, of one component)."""
    from .activations import compute_activations

    layer = table.layers[len(table.layers) // 2]
    lam = table.lam(layer, DIAGRAM_COMPONENT)
    acts = compute_activations(
        model, tokenizer, table.sentences, token=table.settings["token"], components=(DIAGRAM_COMPONENT,),
        batch_size=table.settings.get("batch_size", 32), progress=progress and "persistence diagrams",
    )  # fmt: skip
    values = acts.get(layer, DIAGRAM_COMPONENT).detach().cpu().double().numpy()
    neurons = [
        {
            "role": role,
            "layer": layer,
            "component": DIAGRAM_COMPONENT,
            "neuron": neuron,
            "lam": float(lam[neuron]),
            "points": values[:, neuron].tolist(),
        }
        for role, neuron in (("high", int(np.argmax(lam))), ("low", _lowest_positive(lam)))
    ]
    return {"token": table.settings["token"], "neurons": neurons}


def _lowest_positive(lam: np.ndarray) -> int:
    """The neuron of lowest non-zero λ (a dead neuron, λ = 0, has a diagram of one point), else of lowest λ."""
    positive = np.flatnonzero(lam > 0)
    return int(positive[np.argmin(lam[positive])]) if positive.size else int(np.argmin(lam))


def plan_setting(spec: str | PruningPlan, score: str) -> dict:
    """The plan step's settings; for a plan file, also a digest of the plan it holds (edited, it is another plan)."""
    if isinstance(spec, PruningPlan):
        return {"plan": spec.to_dict(), "score": score}
    setting = {"plan": spec, "score": score}
    if named_plan(spec) is None:
        content = json.dumps(_plan_file(spec).to_dict(), sort_keys=True)
        setting["plan_sha256"] = hashlib.sha256(content.encode()).hexdigest()
    return setting


def run_plan(run: RunFolder, spec: str | PruningPlan, model: ModelLoader, score: str = "lam") -> bool:
    """Build the pruning plan from the run's importance table, ranking by ``score``: ``plan.json``.

    Returns
    -------
    bool
        False when the folder already held this plan.

    Raises
    ------
    ValueError
        Settings that differ from the recorded ones, or a plan the model cannot take (a layer it lacks, a level
        that keeps no neuron); nothing is recorded then.
    """
    setting = plan_setting(spec, score)
    run.check_step("plan", setting)
    if (run / run.PLAN).is_file():
        return False
    loaded, table = model.get()[0], run.table()
    plan = build_plan(spec, loaded, table, score)
    # Checked as pruning will check it: a plan recorded and then refused would refuse every other plan.
    select_neurons(plan, table, EncoderShape.from_model(loaded), score=score)
    run.record("plan", setting)
    if is_main_process():
        plan.save(run / run.PLAN, overwrite=True)
    return True


def plan_report(
    run: RunFolder, spec: str | PruningPlan, model: ModelLoader, score: str = "lam", scores: Mapping | None = None
):
    """What ``spec`` would keep of the run's model (:func:`obce.plans.dry_run`); nothing is written.

    ``scores``: the settings of a Taylor score (:func:`score_settings`), computed here for ``score="taylor"``.
    """
    loaded = model.get()[0]
    table = run.table()
    if scores is not None:
        table = table.with_columns({TASK_SCORE: _taylor_column(run, table, scores, model)})
    return dry_run(loaded, table, build_plan(spec, loaded, table, score), score=score)


def parameter_table(model) -> pd.DataFrame:
    """Neurons and parameters of each encoder layer's components, counted on the model's modules.

    Returns
    -------
    pandas.DataFrame
        Columns ``layer`` (from 1), ``component`` (the six, then ``other``: the layer norms and
        anything else in the layer), ``neurons``, ``params``.
    """
    family = model.config.model_type.removeprefix("obce_")
    blocks = model.base_model.get_submodule(ARCHITECTURES[family].layers)
    rows = []
    for layer, block in zip(encoder_layers(model), blocks, strict=True):
        counted = 0
        for component in COMPONENTS:
            linear = layer.linear(component)
            params = sum(p.numel() for p in linear.parameters())
            counted += params
            rows.append((layer.index + 1, component, linear.out_features, params))
        rows.append((layer.index + 1, "other", 0, sum(p.numel() for p in block.parameters()) - counted))
    return pd.DataFrame(rows, columns=["layer", "component", "neurons", "params"])


def _param_totals(model) -> dict[str, int]:
    from .train import count_parameters

    counts = count_parameters(model)
    return {
        "encoder_layers": int(parameter_table(model)["params"].sum()),
        "base_model": counts["base_model"],
        "total": counts["total"],
    }


def _removed(plan: PruningPlan, table: ImportanceTable, model, score: str) -> list[dict]:
    """Per layer, the indices of the removed query/key, value and intermediate neurons, and the removed heads."""
    shape = EncoderShape.from_model(model)
    widths = {"query_key": shape.qk_width, "value": shape.qk_width, "intermediate": shape.intermediate_size}
    entries = []
    for sel in select_neurons(plan, table, shape, score=score):
        entry = {"layer": sel.layer, "removed_heads": sel.removed_heads}
        for name, kept in (("query_key", sel.qk), ("value", sel.value), ("intermediate", sel.intermediate)):
            entry[name] = {"total": widths[name], "removed": np.setdiff1d(np.arange(widths[name]), kept).tolist()}
        entries.append(entry)
    return entries


def run_prune(run: RunFolder, settings: Mapping, model: ModelLoader, *, progress: bool = True) -> bool:
    """Prune the model by the run's plan: ``compressed/``, ``parameters.csv``, ``params.json``, ``removed.json``.

    Parameters
    ----------
    settings : mapping
        From :func:`prune_settings`.

    Returns
    -------
    bool
        False when the folder already held the compressed model.
    """
    run.check_step("prune", settings)
    if (run / run.REMOVED).is_file():
        return False
    start = time.perf_counter()
    original, tokenizer = model.get()
    table, plan = run.table(), run.plan()
    compressed = prune_model(original, table, plan, tokenizer=tokenizer, progress=progress, **settings)
    removed = _removed(plan, table, original, settings["score"])
    if not is_main_process():
        return True
    forget_finetuning(run, [COMPRESSED])  # one an interrupted run left here was of another model
    with atomic_folder(run / run.COMPRESSED) as staging:
        compressed.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    both = parameter_table(original).merge(
        parameter_table(compressed), on=["layer", "component"], suffixes=("_original", "_compressed"), sort=False
    )
    run.write_text(run.PARAMETERS, both.to_csv(index=False, lineterminator="\n"))
    run.write_json(run.PARAMS, {ORIGINAL: _param_totals(original), COMPRESSED: _param_totals(compressed)})
    # Settings recorded only now, and the file whose presence marks the step as done written last.
    run.record("prune", settings, timings_s={"prune": round(time.perf_counter() - start, 2)})
    run.write_json(run.REMOVED, removed)
    return True


def forget_finetuning(run: RunFolder, labels: Sequence[str] | None = None) -> None:
    """Remove the fine-tuning of the models ``labels`` (all by default) with their scores (``metrics.json``,
    ``evaluation.json``, and the ``obce evaluate`` commands once it holds none) and timings; removing all, the step's
    settings go too, so that the folder takes others."""
    root = run / run.FINETUNE
    everything = labels is None
    labels = sorted(p.name for p in root.iterdir() if p.is_dir()) if everything and root.is_dir() else labels or []
    gone = [label for label in labels if (root / label).is_dir()]
    others = root.is_dir() and any(p.is_dir() and p.name not in gone for p in root.iterdir())
    if not is_main_process() or not root.is_dir() or (not gone and others):
        return  # (with no fine-tuning left, an interrupted call's empty finetune/ is cleared below)
    # The scores go first, the folders last: interrupted, this runs again and finds the folders.
    data = run.settings()
    if (run / run.EVALUATION).is_file():
        before = run.read_json(run.EVALUATION)
        scores = {key: kept for key, by in before.items() if (kept := {k: v for k, v in by.items() if k not in gone})}
        if scores:
            run.write_json(run.EVALUATION, scores)
        else:
            (run / run.EVALUATION).unlink()
    if not (run / run.EVALUATION).is_file():  # no evaluation left for Reproduce to make
        data["commands"] = [c for c in data.get("commands", []) if shlex.split(c["command"])[1:2] != ["evaluate"]]
    (run / run.METRICS).unlink(missing_ok=True)
    data["timings_s"] = {k: v for k, v in data.get("timings_s", {}).items() if k not in {f"finetune_{x}" for x in gone}}
    run.write_json(run.SETTINGS, data)
    for label in gone:
        shutil.rmtree(root / label)
    # Also where an interrupted call removed the folders already: it ends here.
    if everything or not others:
        shutil.rmtree(root)  # with whatever else is there (a .DS_Store)
        run.forget_step("finetune")
    write_metrics(run)


def check_finetune_models(run: RunFolder, models: Mapping[str, str | os.PathLike], settings: Mapping) -> None:
    """Refuse, before anything is written or cleared, models the run cannot fine-tune as given.

    Raises
    ------
    ValueError
        Distillation without the original, then the compressed model; a model from elsewhere labelled as one the
        run has (``original`` once analysed, ``compressed`` once pruned: the report would take it for the run's);
        one of the run's fine-tuned models (fine-tuning writes there).
    """
    if settings.get("distill", False) and list(models)[:2] != [ORIGINAL, COMPRESSED]:
        raise ValueError(
            "distillation fine-tunes the compressed model on the fine-tuned original's outputs: "
            f"fine-tune both ({ORIGINAL}, then {COMPRESSED}) in the same run, got {', '.join(models)}"
        )
    own = {}  # the run's own models, where it has them
    if "analyze" in run.settings().get("steps", {}):
        own[ORIGINAL] = run.model_source()
    if (run / run.COMPRESSED / "config.json").is_file():
        own[COMPRESSED] = str(run / run.COMPRESSED)
    for label, source in models.items():
        path = Path(source).expanduser().resolve()
        if path.is_relative_to((run / run.FINETUNE).resolve()):
            raise ValueError(f"{str(source)!r} is a fine-tuning of this run: fine-tune it in another run folder")
        if label in own and str(source) != own[label] and path != Path(own[label]).expanduser().resolve():
            _refuse_as_the_runs(source, f"{label} model")


def check_evaluated_models(run: RunFolder, models: Mapping[str, str | os.PathLike]) -> None:
    """Refuse a model from elsewhere labelled as one of the run's fine-tuned models, or as its original or
    compressed model before they are fine-tuned: the report would show its scores as theirs.

    Raises
    ------
    ValueError
        Such a model.
    """
    own = run.finetuned()
    for label, source in models.items():
        if label in own or label in (ORIGINAL, COMPRESSED):
            path = Path(source).expanduser().resolve()
            if label not in own or path != own[label].resolve():
                _refuse_as_the_runs(source, f"fine-tuned {label} model")


def _refuse_as_the_runs(source: str | os.PathLike, what: str) -> None:
    raise ValueError(
        f"{str(source)!r} is not this run's {what}, and the report would take it for it: copy it to a folder of "
        "another name"
    )


def run_steps(
    run: RunFolder,
    steps: Mapping[str, Mapping],
    model: ModelLoader,
    *,
    plan: str | PruningPlan | None = None,
    score: str = "lam",
    device: str | None = None,
    progress: bool = True,
    stage: Callable[[str, bool], None] = lambda text, did: None,
) -> None:
    """Run the steps of ``steps`` that lead to the compressed model, in order: ``analyze``, ``score``, ``plan``
    (of ``plan``, ranking by ``score``) and ``prune``, each one skipped when the folder holds it already.

    ``stage(text, did)`` hears of each step when it is over: what it did, and whether it did it now.
    """
    analysis = steps["analyze"]
    did = run_analysis(run, analysis, device=device, progress=progress, model=model)
    stage(f"analyze: λ of every neuron over {analysis['n_sentences']} sentences (seed {analysis['seed']})", did)
    if "score" in steps:
        did = run_scores(run, steps["score"], model)
        stage(f"score: {TASK_SCORE} of every neuron on {steps['score']['task']}", did)
    if "plan" in steps:
        did = run_plan(run, plan, model, score)
        stage(f"plan: {run.plan().name}", did)
    if "prune" in steps:
        did = run_prune(run, steps["prune"], model, progress=progress)
        params = run.read_json(run.PARAMS)
        kept = params[COMPRESSED]["encoder_layers"] / params[ORIGINAL]["encoder_layers"]
        stage(f"prune: the encoder layers keep {kept:.2%} of their parameters", did)


def measure_speed(models: Mapping[str, object], tokenizer, settings: SpeedSettings = SpeedSettings(), *, seed: int = 0):
    """CPU time of one forward pass of each model on the same batch of random token ids.

    The models are timed in turns after one warm-up pass each, so that background load hits all of
    them alike. On a shared machine the fastest repeat is the one least disturbed by other work (as
    :mod:`timeit` advises); the median is reported too.

    Parameters
    ----------
    models : mapping of str to transformers.PreTrainedModel
        Moved to the CPU.
    tokenizer
        The models' tokenizer (for their token limit).
    settings : SpeedSettings
    seed : int
        Seed of the token ids.

    Returns
    -------
    dict
        The settings, ``tokens`` actually used (a model's limit may be lower), ``threads``,
        ``seconds`` (every repeat, per model), ``min_s`` and ``median_s`` per model.
    """
    import torch

    first = next(iter(models.values()))
    tokens = min(settings.tokens, max_sequence_length(first, tokenizer))
    vocab = first.config.vocab_size
    generator = torch.Generator().manual_seed(seed)
    # Ordinary word pieces: the first ids of BERT vocabularies are special or unused tokens.
    ids = torch.randint(min(1000, vocab // 2), vocab, (settings.batch_size, tokens), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model.to("cpu").eval()(**batch)
        for _ in range(settings.repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(**batch)
                seconds[name].append(round(time.perf_counter() - start, 5))
    return {
        **asdict(settings),
        "tokens": tokens,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "seed": seed,
        "seconds": seconds,
        "min_s": {name: min(times) for name, times in seconds.items()},
        "median_s": {name: statistics.median(times) for name, times in seconds.items()},
    }


def run_speed(run: RunFolder, settings: SpeedSettings, model: ModelLoader) -> bool:
    """Time the original and the compressed model on the CPU: ``speed.json``."""
    from .models import compressed as _registered  # noqa: F401  (the compressed types, with the Auto classes)
    from .models.adapters import checkpoint_class

    run.check_step("speed", asdict(settings))
    if (run / run.SPEED).is_file():
        return False
    original, tokenizer = model.get()
    # With the original's head, as load_model gave it: the same work timed on both sides.
    small = checkpoint_class(run / run.COMPRESSED).from_pretrained(run / run.COMPRESSED)
    device = next(original.parameters()).device
    try:
        result = measure_speed({ORIGINAL: original, COMPRESSED: small}, tokenizer, settings)
    finally:
        original.to(device)  # the run's later steps use it where it was
    run.record("speed", asdict(settings))
    if is_main_process():
        run.write_json(run.SPEED, result)
    return True


def run_finetune(
    run: RunFolder,
    models: Mapping[str, str | os.PathLike],
    settings: Mapping,
    *,
    device: str | None = None,
    log: Callable[[str], None] = _stderr,
    progress: bool = True,
    task=None,
) -> dict:
    """Fine-tune every model with the same task, seed and budget, each into ``finetune/<label>/``.

    A finished model is skipped; an interrupted one resumes from its last checkpoint
    (:func:`obce.train.finetune`). ``metrics.json`` collects the scores.

    Parameters
    ----------
    models : mapping of str to path-like
        Label (a folder name) -> model folder or hub name.
    settings : mapping
        From :func:`finetune_settings`.
    device : str, optional
        ``"cpu"`` keeps training on the CPU when a GPU is present (see :func:`obce.train.trainer_device_args`).
    progress : bool
        A progress bar per model.
    task : obce.tasks.Task, optional
        The settings' task, loaded already (by default loaded here).

    Returns
    -------
    dict of str to obce.train.FinetuneResult
    """
    from .tasks import load_task
    from .train import finetune, trainer_device_args

    run.check_step("finetune", settings)
    check_finetune_models(run, models, settings)
    distill = settings.get("distill", False)
    training_args = trainer_device_args(device)
    task = task if task is not None else load_task(settings["task"], settings["glue_dir"])
    new = "finetune" not in run.settings().get("steps", {})
    run.record("finetune", settings)  # before any checkpoint: resuming one needs the same settings
    try:
        results = {}
        for label, source in models.items():
            folder = run / run.FINETUNE / label
            done = (folder / "results.json").is_file()
            steps = f"{settings['steps']} step{'s' * (settings['steps'] != 1)}"
            log(f"obce:   {label}: " + ("fine-tuned before, skipped" if done else f"{steps} on {task.display_name}"))
            start = time.perf_counter()
            results[label] = finetune(
                str(source), task, folder, seed=settings["seed"], max_steps=settings["steps"],
                batch_size=settings["batch_size"], lr=settings["lr"], max_length=settings["max_length"],
                patience=settings["patience"], eval_steps=settings["eval_steps"], fp16=settings["fp16"],
                bf16=settings["bf16"], name=label, training_args=training_args, progress=progress,
                teacher=run / run.FINETUNE / ORIGINAL if distill and label == COMPRESSED else None,
            )  # fmt: skip
            if not done:
                run.record(timings_s={f"finetune_{label}": round(time.perf_counter() - start, 2)})
            write_metrics(run)  # after each model: the report shows it if the next one fails
        return results
    except BaseException:
        # Failed before writing anything (a bad option, a model that does not load): the settings go too,
        # so that the same folder takes corrected ones.
        if new and not any((run / run.FINETUNE).glob("*/*")):
            run.forget_step("finetune")
        raise


def write_metrics(run: RunFolder) -> dict:
    """Collect the scores of every fine-tuned model of the run into ``metrics.json``.

    Returns
    -------
    dict
        Label -> ``task``, ``seed``, ``metrics`` (split -> metric -> value), ``params``, ``steps``,
        ``train_seconds``, as in each run's ``results.json``.
    """
    models = {}
    for label, folder in run.finetuned().items():
        result = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        models[label] = {k: result[k] for k in ("task", "seed", "metrics", "params", "steps", "train_seconds")}
    if models and is_main_process():
        run.write_json(run.METRICS, {"models": models})
    return models


# --------------------------------------------------------------------------------------------------
# The whole pipeline


def compress(
    output: str | os.PathLike,
    *,
    model: str | None = None,
    corpus: str | None = None,
    n_sentences: int = 150,
    seed: int = 0,
    token: str = "cls",
    plan: str | PruningPlan = DEFAULT_PLAN,
    fold: str | None = None,
    score: str = "lam",
    finetune: bool = True,
    task: str = "polarity",
    glue_dir: str | os.PathLike | None = None,
    budget: Budget = Budget(),
    distill: bool = False,
    speed: SpeedSettings = SpeedSettings(),
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: Sequence[str] | None = None,
    log: Callable[[str], None] = _stderr,
) -> Path:
    """Analyze, prune, time, optionally fine-tune and evaluate both models, and write the report.

    Every setting is checked against the run folder before any work starts; steps finished in an
    earlier call with the same settings are skipped, and an interrupted fine-tuning resumes.

    Parameters
    ----------
    output : path-like
        The run folder (see the module docstring).
    model : str, optional
        Hub name or local folder; None is the built-in all-MiniLM-L6-v2.
    corpus : str, optional
        See :meth:`obce.corpus.Corpus.resolve`; None is the built-in Wikipedia sample.
    n_sentences : int
        Corpus sample size.
    seed : int
        Seed of the sample and of fine-tuning (head initialization, data order, dropout).
    token : {"cls", "mean", "tokens"}
        Which token gives a neuron's points.
    plan : str or PruningPlan
        See :func:`check_plan_spec`; by default 60 % of the encoder layers' parameters are kept.
    fold : {"none", "mean", "mean+std", "linear"}, optional
        Bias folding (default: :func:`obce.prune.prune_model`'s).
    score : {"lam", "std", "taylor"}
        What neurons are ranked by (:data:`RUN_SCORES`); ``taylor`` needs a ``model`` fine-tuned on ``task``.
    finetune : bool
        Fine-tune the original and the compressed model on ``task`` and score them on its report split.
    task : str
        A task of :func:`obce.tasks.list_tasks`: fine-tuned on, and the ``taylor`` score's sentences.
    glue_dir : path-like, optional
        Local GLUE folder for a GLUE task.
    budget : Budget
        Fine-tuning budget, the same for both models.
    distill : bool
        Fine-tune the compressed model distilling the fine-tuned original (:func:`obce.train.finetune`'s
        ``teacher``).
    speed : SpeedSettings
        Inference timing.
    device : str, optional
        Where analysis runs (default: CUDA when available); ``"cpu"`` also keeps fine-tuning on the CPU
        (see :func:`obce.train.trainer_device_args`).
    overwrite : bool
        Clear the run folder's earlier results first.
    progress : bool
        Show progress bars.
    command : sequence of str, optional
        The command line, added to the commands recorded in the settings.
    log : callable
        Receives the stage lines.

    Returns
    -------
    pathlib.Path
        The HTML report.

    Raises
    ------
    ValueError
        A bad setting, or settings that differ from the run recorded in the folder.
    FileExistsError
        A non-empty folder that is not a run folder (``overwrite`` or not).
    """
    from .report.page import HTML_NAME, write_report

    run = RunFolder(output)
    if isinstance(plan, str):
        check_plan_spec(plan)
    if distill and not finetune:
        raise ValueError("distillation is part of fine-tuning: it needs finetune=True (no --no-finetune)")
    steps = {"analyze": analysis_settings(model, corpus, n_sentences, seed, token)}
    if score == TASK_SCORE:
        steps["score"] = score_settings(steps["analyze"]["model_path"], task, glue_dir=glue_dir, seed=seed)
    steps |= {
        "plan": plan_setting(plan, score),
        "prune": prune_settings(fold, score),
        "speed": asdict(speed),
    }
    if finetune:
        steps["finetune"] = finetune_settings(task, budget=budget, seed=seed, glue_dir=glue_dir, distill=distill)
    loaded = ModelLoader(steps["analyze"]["model_path"], device)
    open_run(run.path, steps, overwrite=overwrite, model=loaded)
    recorded = run.record_command(command) if command else None
    before = run.finished_work()
    try:
        run.record(seed=seed, device=device, build_info=_build_info())
        start = time.perf_counter()
        total, done = len(steps) + 1, 0

        def stage(text: str, did: bool = True) -> None:
            nonlocal done
            done += 1
            log(f"obce: [{done}/{total}] {text}" + ("" if did else " (done before, skipped)"))

        log(f"obce: run folder {run.path}")
        run_steps(run, steps, loaded, plan=plan, score=score, device=device, progress=progress, stage=stage)
        did = run_speed(run, speed, loaded)
        fastest = {label: min(times) for label, times in run.read_json(run.SPEED)["seconds"].items()}
        stage(f"speed: {fastest[ORIGINAL]:.3f} s -> {fastest[COMPRESSED]:.3f} s per batch on the CPU", did)
        if finetune:
            stage(f"fine-tune and evaluate both models on {task}")
            try:
                run_finetune(run, {ORIGINAL: run.model_source(), COMPRESSED: run / run.COMPRESSED}, steps["finetune"],
                             device=device, log=log, progress=progress)  # fmt: skip
            except Exception:
                # The report of what is done (analysis, pruning, speed, a model fine-tuned before the failure) is
                # written before the error is raised; one that cannot be written leaves the error as it was.
                if is_main_process():
                    with contextlib.suppress(Exception):
                        write_report(run.path)
                raise
        # Recorded before the report is drawn, so that the report shows it; by a call that did some work, not one
        # that found all done.
        if run.finished_work() - before or "compress_call" not in run.settings().get("timings_s", {}):
            run.record(timings_s={"compress_call": round(time.perf_counter() - start, 2)})
        # Under torchrun one process writes it: the others could rewrite it without the scores rank 0 wrote.
        report = write_report(run.path) if is_main_process() else run / run.REPORT / HTML_NAME
        stage("report written")
        return report
    except Exception:
        if recorded is not None:
            run.take_back_command(recorded)
        raise


def _build_info() -> dict:
    from .kernel import build_info

    return build_info()
