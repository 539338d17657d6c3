"""Neuron scores other than λ, as extra columns of an :class:`~obce.importance.ImportanceTable`.

A plan ranks neurons by one column of the table: λ (``"lam"``) by default, or any column named with
``score=`` in :func:`obce.plans.select_neurons`, :func:`obce.plans.target_plan`, :func:`obce.plans.dry_run`
and :func:`obce.prune.prune_model`. The table already holds ``std`` (the standard deviation of each neuron's
outputs over the points λ saw) and ``token_std``; this module computes the others, each as one value per row
of ``table.neurons`` (in its row order), to be added with :func:`add_scores` or
:meth:`~obce.importance.ImportanceTable.with_columns`:

``random``
    Uniform in [0, 1), seeded: the floor any score must beat.
``abs_mean``
    Mean absolute output over the points λ saw (:func:`abs_mean_score`).
``weight``
    L2 norm of the neuron's weights, the row of its own linear layer (:func:`weight_score`).
``taylor``
    First-order Taylor estimate of the task loss change when the neuron is zeroed, from a few labelled
    batches: ``sum over sentences |sum over tokens activation × gradient|`` (:func:`taylor_score`). The
    only supervised score.
``lam_tokens``
    λ of every real token's output instead of one point per sentence (``token="tokens"`` in
    :func:`obce.importance.analyze`; :func:`table_score` copies it across).
``lam_head``
    λ of the neuron's attention head taken as one ``head_size``-dimensional cloud
    (:func:`obce.importance.head_importance`), given to each of the head's dimensions (:func:`head_score`).
``lam_weighted``
    λ times the L2 norm of the neuron's outgoing weights, the column of the next linear layer that reads it
    (:func:`lam_weighted_score`).

Examples
--------
>>> table = analyze(model, tokenizer=tokenizer, heads=True)  # doctest: +SKIP
>>> table = add_scores(table, model, ["random", "weight", "lam_head"], seed=0)  # doctest: +SKIP
>>> plan = target_plan(model, table, 0.6, score="weight")  # doctest: +SKIP
>>> small = prune_model(model, table, plan, score="weight")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ._checks import checked_int, checked_seed
from .importance import HEAD_COMPONENTS, NEURON_COLUMNS, float64_array
from .models.adapters import encoder_layers, eval_mode, to_user_layer

__all__ = [
    "SCORES",
    "abs_mean_score",
    "add_scores",
    "head_score",
    "lam_weighted_score",
    "outgoing_norm",
    "random_score",
    "table_columns",
    "table_score",
    "task_batches",
    "taylor_score",
    "weight_score",
]

SCORES: tuple[str, ...] = (
    "lam",
    "std",
    "random",
    "abs_mean",
    "weight",
    "taylor",
    "lam_tokens",
    "lam_head",
    "lam_weighted",
)
"""Score names: ``lam`` and ``std`` are columns of every table; :func:`add_scores` adds the others."""

_KEYS = list(NEURON_COLUMNS[:3])  # layer, component, neuron
# Head λ is tied over a head's dimensions; this relative nudge by the neuron's own λ rank orders them within
# the head without reordering heads (whose λ differ by far more).
_TIE_BREAK = 1e-9


def _aligned(table, frame: pd.DataFrame, what: str) -> np.ndarray:
    """``frame["value"]`` in the row order of ``table.neurons``, matched on layer, component and neuron. Of the
    table's components, ``frame`` must have the same layers and neurons: another model's scores are refused."""
    twice = frame.duplicated(_KEYS)
    if twice.any():
        row = frame[twice].iloc[0]
        raise ValueError(f"{what} lists layer {row['layer']} {row['component']} neuron {row['neuron']} twice")
    merged = table.neurons[_KEYS].merge(frame, on=_KEYS, how="left", validate="one_to_one", indicator=True)
    missing = merged.pop("_merge") == "left_only"
    if missing.any():
        row = merged[missing].iloc[0]
        raise ValueError(
            f"{what} has no value for {int(missing.sum())} neuron(s) of the table, e.g. layer {row['layer']} "
            f"{row['component']} neuron {row['neuron']}"
        )
    ours = table.neurons.groupby(["layer", "component"]).size()
    theirs = frame[frame["component"].isin(ours.index.get_level_values(1))].groupby(["layer", "component"]).size()
    extra = theirs.sub(ours, fill_value=0)
    if (extra > 0).any():
        layer, component = extra[extra > 0].index[0]
        raise ValueError(
            f"{what} does not match the table (another model's?): layer {layer} {component} has "
            f"{theirs[layer, component]} neuron(s) there, {ours.get((layer, component), 0)} in the table"
        )
    values = merged["value"].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        row = merged[~np.isfinite(values)].iloc[0]
        raise ValueError(
            f"{what} gives a non-finite score ({row['value']}) to {int((~np.isfinite(values)).sum())} neuron(s), "
            f"e.g. layer {row['layer']} {row['component']} neuron {row['neuron']}"
        )
    return values


def table_columns(table, frame: pd.DataFrame, what: str) -> dict[str, np.ndarray]:
    """Each value column of ``frame`` (rows keyed by layer, component and neuron, as :func:`add_scores`'s columns are
    saved) in the row order of ``table.neurons``, for :meth:`~obce.importance.ImportanceTable.with_columns`.

    Raises
    ------
    ValueError
        ``frame`` lacks a key column, a value for one of the table's neurons, or holds a value that is no finite
        number (``what`` names it).
    """
    missing = [key for key in _KEYS if key not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks the column(s) {', '.join(missing)}")
    for name in frame.columns.difference(_KEYS):
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(
                f"{what}: column {name!r} has {int((~np.isfinite(values)).sum())} value(s) that are no finite number"
            )
    return {
        name: _aligned(table, frame[[*_KEYS, name]].rename(columns={name: "value"}), what)
        for name in frame.columns
        if name not in _KEYS
    }


def _frame(per_layer: Iterable[tuple[int, str, torch.Tensor | np.ndarray]]) -> pd.DataFrame:
    """Rows (layer from 1, component, neuron, value) from per-layer value vectors."""
    parts = []
    for layer, component, values in per_layer:
        values = float64_array(values)
        parts.append(
            pd.DataFrame({"layer": layer, "component": component, "neuron": np.arange(len(values)), "value": values})
        )
    return pd.concat(parts, ignore_index=True)


def random_score(table, seed: int = 0) -> np.ndarray:
    """Uniform random values in [0, 1), one per row, from ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(checked_seed(seed)).random(len(table))


def abs_mean_score(table, acts) -> np.ndarray:
    """Mean absolute output of each neuron over the points of ``acts``.

    Parameters
    ----------
    table : ImportanceTable
    acts : obce.activations.Activations
        The activations the table was computed from (same corpus and token mode), holding every component
        of the table.
    """
    rows = []
    for component in acts.components:
        values = acts.values[component].abs().mean(0, dtype=torch.float64)
        offsets = acts.offsets[component]
        for index in range(len(offsets) - 1):
            rows.append((to_user_layer(index), component, values[offsets[index] : offsets[index + 1]]))
    return _aligned(table, _frame(rows), "the activations")


@torch.no_grad()
def weight_score(table, model) -> np.ndarray:
    """L2 norm of each neuron's weight row in its own linear layer (bias excluded).

    For ``intermediate`` that is the row of the layer before the activation.
    """
    rows = []
    for layer in encoder_layers(model):
        for component in table.components:
            rows.append((to_user_layer(layer.index), component, _norms(layer.linear(component).weight, dim=1)))
    return _aligned(table, _frame(rows), f"the {type(model).__name__}")


@torch.no_grad()
def outgoing_norm(table, model) -> np.ndarray:
    """L2 norm of each neuron's outgoing weights: its column in the next linear layer that reads it.

    ``value`` is read by ``attention_output`` and ``intermediate`` by ``output``. Query and key dimensions
    are read by the attention scores, and ``attention_output``/``output`` by the residual stream, not by one
    linear layer: they get 1.
    """
    rows = []
    for layer in encoder_layers(model):
        for component in table.components:
            if component in ("value", "intermediate"):
                norms = _norms(layer.reader(component).weight, dim=0)
            else:
                norms = torch.ones(layer.width(component))
            rows.append((to_user_layer(layer.index), component, norms))
    return _aligned(table, _frame(rows), f"the {type(model).__name__}")


def _norms(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """L2 norms along ``dim`` in float64: in a half-precision model's own dtype, most would tie."""
    return torch.linalg.vector_norm(weight, dim=dim, dtype=torch.float64)


def lam_weighted_score(table, model) -> np.ndarray:
    """λ times :func:`outgoing_norm` (λ itself for query, key, attention_output and output)."""
    return table.neurons["lam"].to_numpy(dtype=np.float64) * outgoing_norm(table, model)


def head_score(table) -> np.ndarray:
    """Each query/key/value dimension gets the λ of its head; other components keep their own λ.

    Within a head, dimensions are ordered by their own λ through a relative nudge of at most 1e-9, so a
    percentile that falls inside a head keeps that head's dimensions with the highest λ.

    Raises
    ------
    ValueError
        If the table has no head view (``analyze(..., heads=True)``) or it lacks a head of the table.
    """
    if table.heads is None:
        raise ValueError("the table has no head view; compute it with analyze(..., heads=True)")
    rows = []
    for (layer, component), group in table.heads.groupby(["layer", "component"], sort=False):
        own = table.neurons[(table.neurons["layer"] == layer) & (table.neurons["component"] == component)]
        own = own.sort_values("neuron")["lam"].to_numpy(dtype=np.float64)
        group = group.sort_values("head")
        sizes = group["size"].to_numpy(dtype=int)
        if sizes.sum() != own.size:
            raise ValueError(
                f"the head view of layer {layer} {component} covers {sizes.sum()} dimensions; the table has {own.size}"
            )
        values = np.repeat(group["lam"].to_numpy(dtype=np.float64), sizes)
        start = 0
        for size in sizes:
            within = pd.Series(own[start : start + size]).rank(method="first").to_numpy() / max(size, 1)
            values[start : start + size] *= 1 + _TIE_BREAK * within
            start += size
        rows.append((int(layer), component, values))
    heads = _frame(rows)
    merged = table.neurons[_KEYS].merge(heads, on=_KEYS, how="left", validate="one_to_one")
    uncovered = merged["value"].isna() & table.neurons["component"].isin(HEAD_COMPONENTS)
    if uncovered.any():
        first = table.neurons[uncovered].iloc[0]
        raise ValueError(
            f"the head view has no head for layer {first['layer']} {first['component']}; compute it with "
            "analyze(..., heads=True) over query, key and value"
        )
    return merged["value"].fillna(table.neurons["lam"]).to_numpy(dtype=np.float64)


def table_score(table, other, column: str = "lam") -> np.ndarray:
    """``other``'s ``column`` in ``table``'s row order (e.g. λ of a table made with ``token="tokens"``).

    Raises
    ------
    ValueError
        If ``other`` lacks the column or one of ``table``'s neurons.
    """
    if column not in other.value_columns:
        raise ValueError(f"the other table has no column {column!r}; it has {', '.join(other.value_columns)}")
    frame = other.neurons[[*_KEYS, column]].rename(columns={column: "value"})
    return _aligned(table, frame, "the other table")


def task_batches(
    task, tokenizer, *, n_batches: int = 8, batch_size: int = 32, seed: int = 0, max_length: int = 128
) -> list[dict[str, torch.Tensor]]:
    """A seeded sample of ``n_batches × batch_size`` labelled training examples, tokenized and padded per batch.

    Parameters
    ----------
    task : obce.tasks.Task
        A loaded task (:func:`obce.tasks.load_task`); its ``train`` split is sampled.
    tokenizer : transformers tokenizer
    n_batches, batch_size : int
    seed : int
        Seed of the sample.
    max_length : int
        Truncation length in tokens.

    Returns
    -------
    list of dict
        Each with ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the tokenizer makes them) and
        ``labels``.
    """
    for name, value in (("n_batches", n_batches), ("batch_size", batch_size), ("max_length", max_length)):
        checked_int(value, name)
    texts = task.texts("train")
    labels = task.labels("train")
    n = min(n_batches * batch_size, len(labels))
    chosen = np.sort(np.random.default_rng(seed).choice(len(labels), size=n, replace=False))
    batches = []
    for start in range(0, n, batch_size):
        rows = chosen[start : start + batch_size]
        encoded = tokenizer(
            *[[column[i] for i in rows] for column in texts],
            truncation=True,
            max_length=max_length,
            padding=True,
            padding_side="right",  # absolute positions count from the first token, as in training
            return_tensors="pt",
        )
        batches.append({**encoded, "labels": torch.as_tensor(labels[rows])})
    return batches


def taylor_score(table, model, batches: Sequence[Mapping[str, torch.Tensor]]) -> np.ndarray:
    """First-order Taylor importance on labelled batches: ``sum_i |sum_t a_it g_it|``.

    ``a_it`` is the neuron's output at token ``t`` of sentence ``i`` (after the activation for
    ``intermediate``) and ``g_it`` the gradient of sentence ``i``'s own loss with respect to it, so the inner
    sum is the first-order change of that sentence's loss when the neuron is zeroed. Padding tokens are left
    out. The model runs in eval mode (no dropout); its train/eval mode is restored afterwards and no
    parameter gradient is accumulated.

    Parameters
    ----------
    table : ImportanceTable
    model : transformers.PreTrainedModel
        A model with a sequence-classification head (``*ForSequenceClassification``); the loss is the
        per-sentence cross-entropy (mean squared error for one output).
    batches : sequence of dict
        Model inputs with ``labels`` and ``attention_mask`` (e.g. from :func:`task_batches`).

    Raises
    ------
    ValueError
        No batch, a batch without ``labels`` or ``attention_mask``, or a model without a sequence-classification
        head.
    TypeError
        ``batches`` is one batch (a mapping), not a sequence of them.
    RuntimeError
        Called inside ``torch.inference_mode()``, where no gradient can be taken.
    """
    if isinstance(batches, Mapping):
        raise TypeError("batches must be a sequence of batches (dicts), got one dict: pass [batch]")
    if not batches:
        raise ValueError("taylor_score needs at least one labelled batch, got none")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("taylor_score takes gradients: call it outside torch.inference_mode()")
    layers = encoder_layers(model)
    components = table.components
    captured: list[tuple[int, str, torch.Tensor]] = []

    def keep(index: int, component: str, tensor: torch.Tensor) -> torch.Tensor:
        # A frozen model's outputs carry no graph: make the captured tensor a leaf that does.
        tensor = tensor if tensor.requires_grad else tensor.detach().requires_grad_()
        captured.append((index, component, tensor))
        return tensor

    handles = []
    for layer in layers:
        for component in components:
            if component == "intermediate":
                # The activation's output is the input of the output layer.
                def pre(_module, inputs, index=layer.index):
                    return (keep(index, "intermediate", inputs[0]), *inputs[1:])

                handles.append(layer.output.register_forward_pre_hook(pre))
            else:

                def post(_module, _inputs, output, index=layer.index, component=component):
                    return keep(index, component, output)

                handles.append(layer.linear(component).register_forward_hook(post))
    sums: dict[tuple[int, str], torch.Tensor] = {}
    try:
        with eval_mode(model):
            for batch in batches:
                if "labels" not in batch or "attention_mask" not in batch:
                    raise ValueError(f"each batch needs labels and attention_mask, got keys {sorted(batch)}")
                device = next(model.parameters()).device
                inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                labels = batch["labels"].to(device)
                captured.clear()
                with torch.enable_grad():
                    logits = getattr(model(**inputs), "logits", None)
                    if logits is None or logits.ndim != 2 or len(logits) != len(labels):
                        raise ValueError(
                            f"taylor_score needs a sequence-classification head (one row of logits per sentence); "
                            f"{type(model).__name__} gives "
                            + ("none" if logits is None else f"logits of shape {tuple(logits.shape)}")
                        )
                    if logits.shape[-1] == 1:
                        loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype), reduction="sum")
                    else:
                        loss = F.cross_entropy(logits, labels, reduction="sum")
                    grads = torch.autograd.grad(loss, [t for _, _, t in captured])
                mask = inputs["attention_mask"].to(torch.float64).unsqueeze(-1)
                for (index, component, tensor), grad in zip(captured, grads, strict=True):
                    per_sentence = (tensor.detach().double() * grad.double() * mask).sum(1).abs().sum(0)
                    key = (index, component)
                    sums[key] = sums[key] + per_sentence if key in sums else per_sentence
    finally:
        for handle in handles:
            handle.remove()
    rows = [(to_user_layer(index), component, values) for (index, component), values in sums.items()]
    return _aligned(table, _frame(rows), "the Taylor scores")


def add_scores(
    table,
    model=None,
    names: Sequence[str] = ("random", "weight", "lam_weighted", "lam_head"),
    *,
    seed: int = 0,
    acts=None,
    tokens_table=None,
    batches: Sequence[Mapping[str, torch.Tensor]] | None = None,
):
    """The table with the named scores added as columns of the same names.

    Parameters
    ----------
    table : ImportanceTable
    model : transformers.PreTrainedModel, optional
        Needed for ``weight``, ``lam_weighted`` and ``taylor`` (with a classification head).
    names : sequence of str
        Among ``random``, ``abs_mean``, ``weight``, ``taylor``, ``lam_tokens``, ``lam_head``,
        ``lam_weighted`` (``lam`` and ``std`` are already columns).
    seed : int
        Seed of ``random``.
    acts : obce.activations.Activations, optional
        The table's activations, for ``abs_mean``.
    tokens_table : ImportanceTable, optional
        A table made with ``token="tokens"`` on the same model, for ``lam_tokens``.
    batches : sequence of dict, optional
        Labelled batches for ``taylor`` (:func:`task_batches`).

    Returns
    -------
    ImportanceTable

    Raises
    ------
    ValueError
        An unknown name, or a name whose input is missing.
    """
    if isinstance(names, str):
        raise TypeError(f"names must be a sequence of score names, got the string {names!r}")
    makers = {
        "random": (lambda: random_score(table, seed), None),
        "abs_mean": (lambda: abs_mean_score(table, acts), acts),
        "weight": (lambda: weight_score(table, model), model),
        "taylor": (lambda: taylor_score(table, model, batches), batches if model is not None else None),
        "lam_tokens": (lambda: table_score(table, tokens_table), tokens_table),
        "lam_head": (lambda: head_score(table), table.heads),
        "lam_weighted": (lambda: lam_weighted_score(table, model), model),
    }
    needs = {
        "abs_mean": "acts=",
        "weight": "model=",
        "taylor": "model= and batches=",
        "lam_tokens": "tokens_table=",
        "lam_head": "a table with a head view (analyze(..., heads=True))",
        "lam_weighted": "model=",
    }
    columns = {}
    for name in names:
        if name not in makers:
            raise ValueError(f"unknown score {name!r}; add_scores makes {', '.join(makers)}")
        make, needed = makers[name]
        if name != "random" and needed is None:
            raise ValueError(f"score {name!r} needs {needs[name]}")
        columns[name] = make()
    return table.with_columns(columns)
