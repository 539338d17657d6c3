"""Structural pruning: smaller linear layers, unequal heads, and bias folding.

:func:`prune_model` applies a :class:`~obce.plans.PruningPlan` to a model. Rows and columns are removed for real
(no masks): query/key/value rows, the matching ``attention_output`` columns for value, intermediate rows and the
matching ``output`` columns. Heads end up with unequal sizes (see :mod:`obce.models.compressed`); scores keep the
original scale ``1/sqrt(head_size)``, so the kept terms of every score are unchanged.

Bias folding
------------
A removed value or intermediate neuron ``j`` whose output is a constant ``c`` contributes exactly ``W[:, j] * c``
to the next linear layer, so adding that to the next layer's bias removes it without changing anything:

* intermediate: ``output.bias += output.weight[:, j] * c`` (``c`` after the activation);
* value: ``attention_output.bias += attention_output.weight[:, j] * c``. Exact because every row of attention
  probabilities sums to 1: a value dimension that is constant over the tokens stays that constant after
  attention, whatever the probabilities.

For a neuron that is not constant, ``c = f(neuron)`` replaces it by a typical value. ``fold`` chooses ``f``:
``"none"`` (the default: drop the term, ``c = 0``), ``"mean"`` (the removed term is then right in expectation) or
``"mean+std"`` (the paper's choice). ``statistics`` chooses where the mean and standard deviation come from:
``"token"`` (the default: ``token_mean``/``token_std`` of the importance table, over every real token of the corpus,
since the bias is added at every token) or ``"point"`` (``mean``/``std``: at the token λ was computed on, [CLS] by
default).

Why nothing is folded by default (``benchmarks/results/ablation.md``): a fine-tuned MiniLM classifier, which reads
[CLS], pruned to 60% or 45% of its encoder, ranks the test sentences about as well with every folding (ROC AUC within
about 0.02), but a folded constant shifts its decision threshold: with token means every such model predicted a
single class, with [CLS] means most did at 45%, and 50 fine-tuning steps did not undo it in 11 of 27 runs at 45%
(2 of 27 at 60%); without folding none of the 54 runs collapsed, and accuracy after fine-tuning was level or
higher. Token means do keep mean-pooled sentence embeddings closest to the original's (cosine 0.48 against 0.37 at
60%): ``fold="mean"`` suits an embedding model read by mean pooling.

Query and key have nothing exact to fold: a removed dimension ``j`` takes ``q_j k_j`` out of every score, and
that term depends on both the query and the key token. Only if ``k_j`` is constant over the tokens is the term
constant along each row of scores, where softmax ignores it. Removed query/key dimensions are therefore simply
dropped.
"""

from __future__ import annotations

import numpy as np
import torch

from .models.adapters import encoder_layers
from .models.compressed import ATTENTION_MODES, compressed_class_for, compressed_config
from .plans import EncoderShape, LayerSelection, PruningPlan, select_neurons

__all__ = ["FOLD_MODES", "STATISTICS", "prune_model"]

FOLD_MODES: tuple[str, ...] = ("none", "mean", "mean+std")
"""How a removed neuron's output is folded into the next layer's bias."""
STATISTICS: dict[str, tuple[str, str]] = {"token": ("token_mean", "token_std"), "point": ("mean", "std")}
"""Source of the folded statistics -> the importance table's (mean, std) columns."""


def _fold_values(table, layer: int, component: str, removed: np.ndarray, fold: str, statistics: str) -> np.ndarray:
    """The constant ``c`` that stands in for each removed neuron."""
    mean_col, std_col = STATISTICS[statistics]
    c = np.asarray(table.column(mean_col, layer, component), dtype=np.float64)
    if fold == "mean+std":
        c = c + np.asarray(table.column(std_col, layer, component), dtype=np.float64)
    c = c[removed]
    if not np.all(np.isfinite(c)):
        raise ValueError(f"the importance table has non-finite {mean_col!r} for layer {layer} {component}")
    return c


def _removed(kept: np.ndarray, width: int) -> np.ndarray:
    mask = np.ones(width, dtype=bool)
    mask[kept] = False
    return np.flatnonzero(mask)


def _fold(weight: torch.Tensor, bias: torch.Tensor, removed: np.ndarray, c: np.ndarray) -> torch.Tensor:
    """``bias + weight[:, removed] @ c``, computed in float64."""
    columns = weight[:, torch.as_tensor(removed, device=weight.device)].double()
    return (bias.double() + columns @ torch.as_tensor(c, device=weight.device)).to(bias.dtype)


def prune_model(
    model,
    table,
    plan: PruningPlan,
    *,
    fold: str = "none",
    statistics: str = "token",
    attention: str = "loop",
    score: str = "lam",
):
    """Prune ``model`` by ``plan``: a new, smaller model; the original is left untouched.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The original model: a base model (``BertModel``, ...) or one with a head (``*ForSequenceClassification``,
        token classification, question answering, masked LM) of the BERT, RoBERTa, ELECTRA or XLM-RoBERTa family.
    table : obce.importance.ImportanceTable
        λ per neuron and the mean/std columns used for folding.
    plan : PruningPlan
        Levels per layer and component (:func:`obce.plans.paper_plan`, ...).
    fold : {"none", "mean", "mean+std"}
        The constant each removed value/intermediate neuron is folded as (see the module docstring).
    statistics : {"token", "point"}
        For ``"mean"`` and ``"mean+std"``: statistics over all real tokens of the corpus, or at the token λ was
        computed on.
    attention : {"loop", "padded"}
        How the compressed model computes unequal heads (:mod:`obce.models.compressed`).
    score : str
        The table column neurons are ranked by: ``"lam"`` (λ, the default) or another score
        (:mod:`obce.scores`), the one the plan was made with.

    Returns
    -------
    transformers.PreTrainedModel
        The compressed counterpart of ``model``'s class (``ObceBertModel``, ...), on the same device and dtype, in
        the same train/eval mode. ``save_pretrained`` it and load it back with the Auto classes after
        ``import obce``. Its parameter count is :func:`obce.plans.dry_run`'s ``model_after``.

    Raises
    ------
    ValueError
        Bad ``fold``/``statistics``/``attention``; a plan naming a layer the model lacks; a level that keeps no
        neuron; a table that does not match the model or lacks the folding columns or the ``score`` column; an
        unsupported model class.
        All checks run before any weight is read for the new model.

    Examples
    --------
    >>> from obce.plans import paper_plan
    >>> small = prune_model(model, table, paper_plan("bert-base"))  # doctest: +SKIP
    >>> small.save_pretrained("bert-base-pruned")  # doctest: +SKIP
    """
    if fold not in FOLD_MODES:
        raise ValueError(f"fold must be one of {FOLD_MODES}, got {fold!r}")
    if statistics not in STATISTICS:
        raise ValueError(f"statistics must be one of {tuple(STATISTICS)}, got {statistics!r}")
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    if not isinstance(plan, PruningPlan):
        raise TypeError(f"plan must be a PruningPlan, got {type(plan).__name__}")
    new_cls = compressed_class_for(model)
    shape = EncoderShape.from_model(model)
    selections = select_neurons(plan, table, shape, score=score)
    folds = _all_fold_values(table, selections, shape, fold, statistics)
    config = compressed_config(model.config, [s.sizes for s in selections], attention=attention)

    state = _pruned_state(model, selections, folds)
    extra = {"add_pooling_layer": False} if getattr(model, "pooler", False) is None else {}
    pruned = new_cls(config, **extra)
    pruned.load_state_dict(state, strict=True)
    reference = next(model.parameters())
    return pruned.to(device=reference.device, dtype=reference.dtype).train(model.training)


def _all_fold_values(table, selections: list[LayerSelection], shape: EncoderShape, fold: str, statistics: str):
    """Per layer, the constants of removed value and intermediate neurons (read before any weight is touched)."""
    folds = []
    for sel in selections:
        entry = {}
        for component, kept, width in (
            ("value", sel.value, shape.qk_width),
            ("intermediate", sel.intermediate, shape.intermediate_size),
        ):
            removed = _removed(kept, width)
            if fold != "none" and removed.size:
                entry[component] = (removed, _fold_values(table, sel.layer, component, removed, fold, statistics))
        folds.append(entry)
    return folds


@torch.no_grad()
def _pruned_state(model, selections: list[LayerSelection], folds: list[dict]) -> dict[str, torch.Tensor]:
    """The original state dict with every pruned layer's tensors sliced and its biases folded."""
    names = {id(module): name for name, module in model.named_modules()}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def put(module, weight, bias):
        prefix = names[id(module)]
        state[f"{prefix}.weight"], state[f"{prefix}.bias"] = weight.contiguous(), bias.contiguous()

    for layer, sel, fold in zip(encoder_layers(model), selections, folds, strict=True):
        device = layer.query.weight.device
        qk, v, inter = (torch.as_tensor(i, device=device) for i in (sel.qk, sel.value, sel.intermediate))
        for module in (layer.query, layer.key):
            put(module, module.weight[qk], module.bias[qk])
        put(layer.value, layer.value.weight[v], layer.value.bias[v])
        for component, kept, consumer in (("value", v, layer.attention_output), ("intermediate", inter, layer.output)):
            bias = consumer.bias
            if component in fold:
                bias = _fold(consumer.weight, bias, *fold[component])
            put(consumer, consumer.weight[:, kept], bias)
        put(layer.intermediate, layer.intermediate.weight[inter], layer.intermediate.bias[inter])
    return state
