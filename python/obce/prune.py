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
``"none"`` (the default: drop the term, ``c = 0``), ``"mean"`` (for an intermediate neuron the removed term is then
right in expectation; for a value neuron it is not, see below) or ``"mean+std"`` (the paper's choice). ``"linear"``
goes one step further: the removed inputs ``x_R`` of the next linear layer (the reader: ``attention_output`` for
value, ``output`` for intermediate) are replaced by their least-squares prediction from its kept inputs over every
real token of the table's sentences, ``x_R ≈ B x_K + s``, so the reader's kept columns become ``W_K + W_R B`` and
its bias ``b + W_R s``. A constant is the case ``B = 0``, so this fits the reader's inputs at least as well as any
constant; the model runs once more over the sentences (``tokenizer=``) to measure the covariance of the reader's
inputs (float64, one ``width²`` matrix per reader that lost inputs: about 0.8 GB for BERT-base with layers 1-2
untouched). ``statistics`` chooses where the mean and standard deviation of ``"mean"`` and ``"mean+std"`` come from:
``"token"`` (the default: ``token_mean``/``token_std`` of the importance table, over every real token of the corpus,
since the bias is added at every token) or ``"point"`` (``mean``/``std``: at the token λ was computed on, [CLS] by
default).

Why nothing is folded by default (``benchmarks/results/ablation.md``): a fine-tuned MiniLM classifier, which reads
[CLS], pruned to 60% or 45% of its encoder, ranks the test sentences about as well with every folding (ROC AUC mostly
within 0.02, up to 0.05), but a folded constant shifts its decision threshold: with token means all such models but
one (Taylor at 60%) predicted a single class, with [CLS] means most did at 45%, and 50 fine-tuning steps did not
undo it in 11 of 27 runs at 45% (2 of 27 at 60%); without folding none of the 54 runs collapsed, and accuracy after
fine-tuning was level or higher. Token means do keep its mean-pooled sentence embeddings closer to the original's
than dropping the terms (cosine 0.48 against 0.37 at 60%), and ``"linear"`` closer still (0.67); on the pretrained
MiniLM (``benchmarks/results/inference_speed.md``) only ``"linear"`` beat dropping them.

``"linear"`` keeps the compressed model closest to the original before any training (same reference, λ at 60% and
45%: KL divergence from the original's predictions 0.054 and 0.072 against 0.154 and 0.185 unfolded, mean-pooled
embedding cosine 0.67 and 0.59 against 0.37 and 0.25, and no model answers a single class).

A value neuron's mean is not what its reader reads on average: attention mixes each value dimension over the tokens
before ``attention_output`` reads it, and the mix's mean differs from the value's own wherever attention and the value
are correlated. Measured on the built-in MiniLM (λ over 150 sentences, P50 of one layer's value neurons, layers 3 to 6
in turn; ``attention_output``'s output over the tokens of 64 sentences): the norm of its average error against the
original grows from 0.96–1.98 unfolded to 1.18–2.22 with ``"mean"``, while ``"linear"``, fitted on the reader's own
inputs, brings it to 0.06–0.12.

Query and key have nothing exact to fold: a removed dimension ``j`` takes ``q_j k_j`` out of every score, and
that term depends on both the query and the key token. Only if ``k_j`` is constant over the tokens is the term
constant along each row of scores, where softmax ignores it. Removed query/key dimensions are therefore simply
dropped.
"""

from __future__ import annotations

import numpy as np
import torch

from .activations import InputMoments, reader_input_moments
from .models.adapters import encoder_layers
from .models.compressed import ATTENTION_MODES, compressed_class_for, compressed_config
from .plans import EncoderShape, LayerSelection, PruningPlan, select_neurons

__all__ = ["FOLD_MODES", "STATISTICS", "prune_model"]

FOLD_MODES: tuple[str, ...] = ("none", "mean", "mean+std", "linear")
"""What stands in for a removed value or intermediate neuron in the layer that reads it."""
STATISTICS: dict[str, tuple[str, str]] = {"token": ("token_mean", "token_std"), "point": ("mean", "std")}
"""Source of the folded statistics -> the importance table's (mean, std) columns."""
LINEAR_RIDGE = 1e-2
"""Ridge of ``fold="linear"``'s regression, relative to the kept inputs' mean variance: the covariance of the inputs
is close to singular (MiniLM's layer-3 intermediate over 150 sentences, 3,473 tokens: condition number about 1e7, 13
of 1,536 eigenvalues below 1e-3 of the mean), and an unregularized ``B`` would amplify its noise."""


def _fold_values(table, layer: int, component: str, removed: np.ndarray, fold: str, statistics: str) -> np.ndarray:
    """The constant ``c`` that stands in for each removed neuron."""
    mean_col, std_col = STATISTICS[statistics]
    columns = (mean_col, std_col) if fold == "mean+std" else (mean_col,)
    c = np.zeros(len(removed))
    for name in columns:
        values = np.asarray(table.column(name, layer, component), dtype=np.float64)[removed]
        if not np.all(np.isfinite(values)):
            raise ValueError(f"the importance table has non-finite {name!r} for layer {layer} {component}")
        c += values
    return c


def _removed(kept: np.ndarray, width: int) -> np.ndarray:
    mask = np.ones(width, dtype=bool)
    mask[kept] = False
    return np.flatnonzero(mask)


def _linear_fold(moments: InputMoments, kept: np.ndarray, removed: np.ndarray):
    """``(B, s)`` of the ridge regression ``x_removed ≈ B x_kept + s`` over the corpus tokens."""
    kept_t, removed_t = (torch.as_tensor(i, device=moments.mean.device) for i in (kept, removed))
    cov = moments.covariance
    cov_kk, cov_rk = cov[kept_t][:, kept_t], cov[removed_t][:, kept_t]
    # A floor keeps the system solvable when every kept input is constant (B is then 0).
    ridge = max(LINEAR_RIDGE * float(cov_kk.diagonal().mean()), torch.finfo(cov.dtype).tiny)
    eye = torch.eye(len(kept), dtype=cov.dtype, device=cov.device)
    b = torch.linalg.solve(cov_kk + ridge * eye, cov_rk.T).T
    return b, moments.mean[removed_t] - b @ moments.mean[kept_t]


def _folded(weight: torch.Tensor, bias: torch.Tensor, kept: torch.Tensor, removed: np.ndarray, b, shift):
    """The reader's kept columns and bias when each removed input is replaced by ``b @ x_kept + shift``."""
    device = weight.device
    removed_columns = weight[:, torch.as_tensor(removed, device=device)].double()
    new_bias = bias.double() + removed_columns @ torch.as_tensor(shift, device=device)
    new_weight = weight[:, kept]
    if b is not None:
        new_weight = (new_weight.double() + removed_columns @ b.to(device)).to(weight.dtype)
    return new_weight, new_bias.to(bias.dtype)


def prune_model(
    model,
    table,
    plan: PruningPlan,
    *,
    fold: str = "none",
    statistics: str = "token",
    attention: str = "loop",
    score: str = "lam",
    tokenizer=None,
    progress: bool = True,
):
    """Prune ``model`` by ``plan``: a new, smaller model; the original is left untouched.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The original model: a base model (``BertModel``, ...) or one with a head (``*ForSequenceClassification``,
        token classification, question answering, masked LM) of the BERT, RoBERTa, ELECTRA, XLM-RoBERTa or
        CamemBERT family.
    table : obce.importance.ImportanceTable
        λ per neuron and the mean/std columns used for folding.
    plan : PruningPlan
        Levels per layer and component (:func:`obce.plans.paper_plan`, ...).
    fold : {"none", "mean", "mean+std", "linear"}
        What stands in for each removed value/intermediate neuron: nothing, a constant, or a linear function of
        the kept ones (see the module docstring).
    statistics : {"token", "point"}
        For ``"mean"`` and ``"mean+std"``: statistics over all real tokens of the corpus, or at the token λ was
        computed on.
    attention : {"loop", "padded"}
        How the compressed model computes unequal heads (:mod:`obce.models.compressed`).
    score : str
        The table column neurons are ranked by: ``"lam"`` (λ, the default) or another score
        (:mod:`obce.scores`), the one the plan was made with.
    tokenizer : transformers tokenizer, optional
        The model's tokenizer; ``fold="linear"`` needs it to run the model over the table's sentences.
    progress : bool
        Show a progress bar over that run's batches.

    Returns
    -------
    transformers.PreTrainedModel
        The compressed counterpart of ``model``'s class (``ObceBertModel``, ...), on the same device and dtype, in
        the same train/eval mode (submodule by submodule), with the same parameters frozen. ``save_pretrained`` it
        and load it back with the Auto classes after ``import obce``. Its parameter count is
        :func:`obce.plans.dry_run`'s ``model_after``.

    Raises
    ------
    ValueError
        Bad ``fold``/``statistics``/``attention``; a plan naming a layer the model lacks; a level that keeps no
        neuron; a table that does not match the model or lacks the folding columns or the ``score`` column; an
        unsupported model class; weights on the meta device; ``fold="linear"`` without a tokenizer or with a table
        that holds no sentences.
        All checks run before any weight is read for the new model.

    Examples
    --------
    >>> from obce.plans import paper_plan
    >>> small = prune_model(model, table, paper_plan("bert-base"))  # doctest: +SKIP
    >>> small.save_pretrained("bert-base-pruned")  # doctest: +SKIP
    >>> tokenizer.save_pretrained("bert-base-pruned")  # the folder is then a model obce can read  # doctest: +SKIP
    """
    if fold not in FOLD_MODES:
        raise ValueError(f"fold must be one of {FOLD_MODES}, got {fold!r}")
    if statistics not in STATISTICS:
        raise ValueError(f"statistics must be one of {tuple(STATISTICS)}, got {statistics!r}")
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    if not isinstance(plan, PruningPlan):
        raise TypeError(f"plan must be a PruningPlan, got {type(plan).__name__}")
    if fold == "linear" and tokenizer is None:
        raise ValueError("fold='linear' runs the model over the table's sentences: pass tokenizer=")
    if fold == "linear" and not getattr(table, "sentences", None):
        raise ValueError("fold='linear' needs the sentences the table was computed on, and this table holds none")
    new_cls = compressed_class_for(model)
    if any(p.device.type == "meta" for p in model.parameters()):
        raise ValueError("the model's weights are on the meta device (not loaded): load them before pruning it")
    shape = EncoderShape.from_model(model)
    selections = select_neurons(plan, table, shape, score=score)
    if fold == "linear":
        folds = _all_linear_folds(model, tokenizer, table.sentences, selections, shape, progress)
    else:
        folds = _all_fold_values(table, selections, shape, fold, statistics)
    config = compressed_config(model.config, [s.sizes for s in selections], attention=attention)

    state = _pruned_state(model, selections, folds)
    extra = {"add_pooling_layer": False} if getattr(model, "pooler", False) is None else {}
    reference = next(model.parameters())
    # In the original's dtype before the weights go in: a float64 model would be rounded through float32.
    pruned = new_cls(config, **extra).to(dtype=reference.dtype)
    pruned.load_state_dict(state, strict=True)
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    for name, parameter in pruned.named_parameters():
        parameter.requires_grad_(name not in frozen)  # a frozen embedding stays frozen for the fine-tuning after
    pruned.to(device=reference.device).train(model.training)
    # Submodule by submodule: a part set to eval mode under a training model (say a frozen encoder) stays so.
    modes = {name: module.training for name, module in model.named_modules()}
    for name, module in pruned.named_modules():
        module.training = modes.get(name, module.training)
    return pruned


def _removed_inputs(sel: LayerSelection, shape: EncoderShape):
    """``(component, kept, removed)`` of the layer's value and intermediate neurons that lost some."""
    for component, kept, width in (
        ("value", sel.value, shape.qk_width),
        ("intermediate", sel.intermediate, shape.intermediate_size),
    ):
        removed = _removed(kept, width)
        if removed.size:
            yield component, kept, removed


def _all_fold_values(table, selections: list[LayerSelection], shape: EncoderShape, fold: str, statistics: str):
    """Per layer, component -> ``(removed, None, constants)`` (read before any weight is touched)."""
    if fold == "none":
        return [{} for _ in selections]
    return [
        {
            c: (removed, None, _fold_values(table, sel.layer, c, removed, fold, statistics))
            for c, _, removed in _removed_inputs(sel, shape)
        }
        for sel in selections
    ]


def _all_linear_folds(
    model, tokenizer, sentences, selections: list[LayerSelection], shape: EncoderShape, progress: bool
):
    """Per layer, component -> ``(removed, B, s)`` of :func:`_linear_fold`, from one run over ``sentences``."""
    wanted = {
        (i, c): (kept, removed) for i, sel in enumerate(selections) for c, kept, removed in _removed_inputs(sel, shape)
    }
    moments = reader_input_moments(model, tokenizer, sentences, list(wanted), progress=progress) if wanted else {}
    folds = [{} for _ in selections]
    for (i, c), (kept, removed) in wanted.items():
        folds[i][c] = (removed, *_linear_fold(moments[i, c], kept, removed))
    return folds


@torch.no_grad()
def _pruned_state(model, selections: list[LayerSelection], folds: list[dict]) -> dict[str, torch.Tensor]:
    """The original state dict with every pruned layer's tensors sliced and its biases folded."""
    names = {id(module): name for name, module in model.named_modules()}
    state = model.state_dict()  # detached views: every change below makes a new tensor, and loading copies

    def put(module, weight, bias):
        prefix = names[id(module)]
        state[f"{prefix}.weight"], state[f"{prefix}.bias"] = weight.contiguous(), bias.contiguous()

    for layer, sel, fold in zip(encoder_layers(model), selections, folds, strict=True):
        device = layer.query.weight.device
        qk, v, inter = (torch.as_tensor(i, device=device) for i in (sel.qk, sel.value, sel.intermediate))
        for module in (layer.query, layer.key):
            put(module, module.weight[qk], module.bias[qk])
        put(layer.value, layer.value.weight[v], layer.value.bias[v])
        for component, kept in (("value", v), ("intermediate", inter)):
            reader = layer.reader(component)
            if component in fold:
                put(reader, *_folded(reader.weight, reader.bias, kept, *fold[component]))
            else:
                put(reader, reader.weight[:, kept], reader.bias)
        put(layer.intermediate, layer.intermediate.weight[inter], layer.intermediate.bias[inter])
    return state
