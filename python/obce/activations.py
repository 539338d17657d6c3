"""Neuron outputs of every layer and component, gathered with forward hooks.

One forward pass per batch of sentences captures everything: a hook on each component's linear
module keeps only the rows that become points (the [CLS] token, the mean over real tokens, or every
real token) and folds the batch's real tokens into float64 running statistics of each neuron's
token mean and standard deviation. The hidden states of the corpus are never stored.

Sentences are batched by length to limit padding; padding never changes a value because
the attention mask hides it and only real tokens are read.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ._checks import checked_int
from .corpus import checked_sentences
from .models.adapters import (
    COMPONENTS,
    LayerModules,
    check_component,
    check_components,
    encoder_layers,
    eval_mode,
    from_user_layer,
    max_sequence_length,
)

__all__ = [
    "PRECISIONS",
    "TOKEN_MODES",
    "Activations",
    "InputMoments",
    "check_token_mode",
    "compute_activations",
    "reader_input_moments",
]

TOKEN_MODES: tuple[str, ...] = ("cls", "mean", "tokens")
"""Which token gives a neuron's point: the first ([CLS]) token, the mean over real tokens, or
every real token (a cloud of one point per token of the corpus)."""

PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_token_mode(token: str) -> str:
    """Return ``token`` if it is one of :data:`TOKEN_MODES`, else raise ValueError."""
    if token not in TOKEN_MODES:
        raise ValueError(f"unknown token mode {token!r}; expected one of {', '.join(TOKEN_MODES)}")
    return token


@dataclass
class Activations:
    """Neuron outputs over a corpus, per component with all layers side by side.

    For each component, ``values[component]`` is an ``(n_points, total)`` float32 tensor whose
    columns are the neurons of layer 1, then layer 2, ...; ``offsets[component]`` holds the
    ``n_layers + 1`` column boundaries. :meth:`get` returns one layer's ``(n_points, n_neurons)``
    view. The tensors stay on the model's device.

    Attributes
    ----------
    values : dict of str to torch.Tensor
        ``(n_points, total)`` float32 per component.
    offsets : dict of str to tuple of int
        Column boundaries of the layers in ``values``.
    token_mean, token_std : dict of str to torch.Tensor
        ``(total,)`` float64: each neuron's mean and (population) standard deviation over every
        real token of the corpus, special tokens included.
    n_tokens : int
        Number of real tokens of the corpus.
    token : str
        The token mode that made the points (see :data:`TOKEN_MODES`).
    head_sizes : dict of str to tuple of tuple of int
        For ``query``, ``key`` and ``value``: each layer's head sizes, in column order.
    sentences : list of str
        The corpus, in the order of the points (``cls``/``mean``: one point per sentence;
        ``tokens``: the sentences' real tokens one after the other).
    """

    values: dict[str, torch.Tensor]
    offsets: dict[str, tuple[int, ...]]
    token_mean: dict[str, torch.Tensor]
    token_std: dict[str, torch.Tensor]
    n_tokens: int
    token: str
    head_sizes: dict[str, tuple[tuple[int, ...], ...]]
    sentences: list[str]

    @property
    def components(self) -> tuple[str, ...]:
        """The captured components, in :data:`COMPONENTS` order."""
        return tuple(c for c in COMPONENTS if c in self.values)

    @property
    def n_layers(self) -> int:
        return len(next(iter(self.offsets.values()))) - 1

    @property
    def n_points(self) -> int:
        return int(next(iter(self.values.values())).shape[0])

    def _columns(self, layer: int, component: str) -> slice:
        if check_component(component) not in self.values:
            raise ValueError(f"component {component!r} was not captured; captured: {', '.join(self.components)}")
        index = from_user_layer(layer, self.n_layers)
        return slice(self.offsets[component][index], self.offsets[component][index + 1])

    def get(self, layer: int, component: str) -> torch.Tensor:
        """One layer's outputs, ``(n_points, n_neurons)`` (a view; ``layer`` counted from 1)."""
        columns = self._columns(layer, component)
        return self.values[component][:, columns]

    def __getitem__(self, key: tuple[int, str]) -> torch.Tensor:
        layer, component = key
        return self.get(layer, component)

    def token_stats(self, layer: int, component: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer's ``(token_mean, token_std)`` per neuron (``layer`` counted from 1)."""
        columns = self._columns(layer, component)
        return self.token_mean[component][columns], self.token_std[component][columns]


class _Recorder:
    """Hook state: where the current batch's points go, and each neuron's running token statistics.

    Token statistics combine per-batch means and centred sums of squares (Chan et al.'s pairwise
    update) into float64 running values, which stays accurate when a neuron's mean is large
    compared with its spread.
    """

    def __init__(self, layers: list[LayerModules], components: Sequence[str], n_points: int, token: str, device):
        self.token = token
        self.offsets: dict[str, tuple[int, ...]] = {}
        for c in components:
            widths = [layer.width(c) for layer in layers]
            self.offsets[c] = tuple(int(sum(widths[:i])) for i in range(len(widths) + 1))
        total = {c: self.offsets[c][-1] for c in components}
        self.values = {c: torch.empty(n_points, total[c], dtype=torch.float32, device=device) for c in components}
        self.mean = {c: torch.zeros(total[c], dtype=torch.float64, device=device) for c in components}
        self.m2 = {c: torch.zeros(total[c], dtype=torch.float64, device=device) for c in components}
        self.seen = 0  # real tokens of the batches already done

    def start_batch(self, mask: torch.Tensor, rows: torch.Tensor) -> None:
        self.mask = mask
        self.rows = rows
        self.batch_tokens = int(mask.sum())
        self.flat_mask = mask.reshape(-1).to(torch.float32)
        # Each row's share of its sentence's mean, as a (batch, 1, seq) matrix for one bmm.
        self.mean_weights = (mask / mask.sum(1, keepdim=True)).unsqueeze(1).to(torch.float32)

    def end_batch(self) -> None:
        self.seen += self.batch_tokens

    def hook(self, layer: LayerModules, component: str):
        columns = slice(self.offsets[component][layer.index], self.offsets[component][layer.index + 1])
        act = layer.intermediate_act if component == "intermediate" else None

        def record(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
            # Under autocast the statistics' products would run in half precision: keep them float32.
            with torch.autocast(output.device.type, enabled=False):
                self._record(component, columns, act, output)

        return record

    def _record(self, component: str, columns: slice, act, output: torch.Tensor) -> None:
        out = (act(output) if act is not None else output).to(torch.float32)
        flat = out.flatten(0, -2)  # (tokens, width), also for a width of 0 (a layer without query/key)
        # Masked matrix-vector products read only real tokens' values (padding weighs 0).
        batch_mean = (self.flat_mask @ flat) / self.batch_tokens
        centred = flat - batch_mean
        batch_m2 = self.flat_mask @ centred.square_()
        self.mean[component][columns], self.m2[component][columns] = _merged_moments(
            self.seen, self.mean[component][columns], self.m2[component][columns],
            self.batch_tokens, batch_mean.double(), batch_m2.double(),
        )  # fmt: skip
        if self.token == "cls":
            points = out[:, 0]
        elif self.token == "mean":
            points = torch.bmm(self.mean_weights, out).squeeze(1)
        else:
            points = out[self.mask]
        self.values[component][self.rows, columns] = points


def _merged_moments(n: int, mean, m2, k: int, batch_mean: torch.Tensor, batch_m2: torch.Tensor):
    """Mean and sum of squared deviations (per column, or the scatter matrix) of ``n`` values and a batch of ``k``
    (Chan, Golub and LeVeque's pairwise update: no cancellation from sums of squares)."""
    delta = batch_mean - mean
    spread = torch.outer(delta, delta) if batch_m2.ndim == 2 else delta.square()
    return mean + delta * (k / (n + k)), m2 + batch_m2 + spread * (n * k / (n + k))


def _checked_corpus(sentences: Iterable[str], batch_size: int) -> list[str]:
    """``sentences`` as a list; ValueError or TypeError for an empty corpus, one that is not of non-empty
    single-line str (what the importance table saves), or a bad batch size."""
    checked_int(batch_size, "batch_size")
    sentences = checked_sentences(sentences)
    if not sentences:
        raise ValueError("sentences is empty; the corpus needs at least one sentence")
    return sentences


def _token_lengths(model, tokenizer, sentences: list[str]) -> list[int]:
    """Tokens of each sentence with the special tokens; ValueError if one exceeds the model's limit or the
    tokenizer gives ids the model has no embedding for (another model's tokenizer)."""
    encoded = tokenizer(sentences, add_special_tokens=True)["input_ids"]
    vocabulary = getattr(model.config, "vocab_size", None)
    largest = max(max(ids, default=0) for ids in encoded)
    if vocabulary is not None and largest >= vocabulary:
        raise ValueError(
            f"the tokenizer gives token id {largest}, beyond the model's vocabulary of {vocabulary}: "
            "is it another model's tokenizer?"
        )
    lengths = [len(ids) for ids in encoded]
    limit = max_sequence_length(model, tokenizer)
    too_long = [(i, n) for i, n in enumerate(lengths) if n > limit]
    if too_long:
        i, n = too_long[0]
        raise ValueError(
            f"{len(too_long)} sentence(s) exceed the model's limit of {limit} tokens, e.g. sentence {i} "
            f"has {n}: {sentences[i][:80]!r}"
        )
    return lengths


@contextmanager
def _inference(model: nn.Module, precision: str = "float32"):
    """Eval mode (restored after), no autograd, and autocast to ``precision``."""
    autocast = PRECISIONS[precision]
    device = next(model.parameters()).device
    if device.type == "meta":
        raise ValueError("the model's weights are on the meta device (not loaded): load them before analysing it")
    cast = torch.autocast(device.type, dtype=autocast) if autocast is not None else nullcontext()
    with eval_mode(model), torch.inference_mode(), cast:
        yield


def check_precision(precision: str) -> None:
    """Raise ValueError for a precision not in :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")


def _batches(tokenizer, sentences: list[str], lengths: list[int], batch_size: int, device, label: str | None):
    """Yield (sentence indices, model inputs on ``device``), longest sentences first, with a progress bar
    labelled ``label`` (none when None).

    Batches of similar lengths waste little on padding, and memory peaks at once.
    """
    order = sorted(range(len(sentences)), key=lambda i: -lengths[i])
    for start in tqdm(range(0, len(order), batch_size), desc=label, unit="batch", disable=label is None):
        batch = order[start : start + batch_size]
        encoded = tokenizer([sentences[i] for i in batch], padding=True, padding_side="right", return_tensors="pt")
        yield batch, {k: v.to(device) for k, v in encoded.items()}


def compute_activations(
    model: nn.Module,
    tokenizer,
    sentences: Iterable[str],
    *,
    token: str = "cls",
    components: Sequence[str] = COMPONENTS,
    batch_size: int = 32,
    precision: str = "float32",
    progress: bool | str = True,
) -> Activations:
    """Run the model over ``sentences`` once and capture every layer's components.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A supported encoder (see :data:`obce.models.ARCHITECTURES`), base model or with a head.
        It runs on its own device, in eval mode for the pass (its mode is restored after).
    tokenizer : transformers tokenizer
        The model's tokenizer.
    sentences : sequence of str
        The corpus; each must fit the model's token limit.
    token : {"cls", "mean", "tokens"}
        Which token gives the points (see :data:`TOKEN_MODES`).
    components : sequence of str
        Components to capture (default all six).
    batch_size : int
        Sentences per forward pass; results do not depend on it.
    precision : {"float32", "float16", "bfloat16"}
        Autocast the forward pass to half precision (meant for GPUs); stored values are float32.
    progress : bool or str
        Show a progress bar over batches, labelled "activations" or by the string given.

    Returns
    -------
    Activations

    Raises
    ------
    ValueError
        On an empty corpus, an unknown token mode, component or precision, a non-positive batch
        size, a sentence longer than the model accepts, an unsupported model, a tokenizer whose ids the model
        lacks, or ``token="cls"`` with a tokenizer that adds no special token.

    Examples
    --------
    >>> from obce.models import load_model
    >>> model, tokenizer = load_model(device="cpu")  # doctest: +SKIP
    >>> acts = compute_activations(model, tokenizer, ["A short sentence to probe."])  # doctest: +SKIP
    >>> acts.get(1, "intermediate").shape  # doctest: +SKIP
    torch.Size([1, 1536])
    """
    check_token_mode(token)
    components = check_components(components)
    check_precision(precision)
    if token == "cls" and tokenizer.num_special_tokens_to_add() == 0:
        raise ValueError(
            f"token='cls' reads the first token, but {type(tokenizer).__name__} adds no special token: it would be "
            "each sentence's first word (use token='mean' or the model's own tokenizer)"
        )
    sentences = _checked_corpus(sentences, batch_size)
    layers = encoder_layers(model)
    device = next(model.parameters()).device
    lengths = _token_lengths(model, tokenizer, sentences)
    # Point rows: one per sentence, or one per real token with each sentence's tokens contiguous.
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    n_points = starts[-1] if token == "tokens" else len(sentences)
    recorder = _Recorder(layers, components, n_points, token, device)
    label = (progress if isinstance(progress, str) else "activations") if progress else None

    handles = [layer.linear(c).register_forward_hook(recorder.hook(layer, c)) for layer in layers for c in components]
    try:
        with _inference(model, precision):
            for batch, inputs in _batches(tokenizer, sentences, lengths, batch_size, device, label):
                if token == "tokens":
                    rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in batch])
                else:
                    rows = torch.tensor(batch)
                recorder.start_batch(inputs["attention_mask"].bool(), rows.to(device))
                model(**inputs)
                recorder.end_batch()
    finally:
        for handle in handles:
            handle.remove()

    return Activations(
        values=recorder.values,
        offsets=recorder.offsets,
        token_mean=recorder.mean,
        token_std={c: (recorder.m2[c] / recorder.seen).sqrt() for c in components},
        n_tokens=recorder.seen,
        token=token,
        head_sizes={c: tuple(layer.head_sizes(c) for layer in layers) for c in ("query", "key", "value")},
        sentences=sentences,
    )


@dataclass
class InputMoments:
    """Mean and covariance of a linear layer's inputs over the real tokens of a corpus, in float64."""

    mean: torch.Tensor
    covariance: torch.Tensor
    n_tokens: int


def reader_input_moments(
    model: nn.Module,
    tokenizer,
    sentences: Iterable[str],
    wanted: Sequence[tuple[int, str]],
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[tuple[int, str], InputMoments]:
    """Moments of what the reader of each (layer, component) in ``wanted`` takes in, over every real token.

    The reader is :meth:`~obce.models.adapters.LayerModules.reader`: for ``value`` the heads' context vectors
    that ``attention_output`` reads, for ``intermediate`` the activations that ``output`` reads. Layers are code
    indices (from 0). One forward pass per batch; each batch's centred products, taken in float32, are combined in
    float64 (Chan et al.'s pairwise update), so a large common mean does not cost precision.

    Raises
    ------
    ValueError
        An empty corpus, a sentence longer than the model accepts, a non-positive batch size, a layer out of
        range, or a component without a reader.
    """
    sentences = _checked_corpus(sentences, batch_size)
    layers = encoder_layers(model)
    # Each key once: a second hook on a reader would fold every batch in twice.
    readers = {key: _reader(layers, *key) for key in dict.fromkeys(wanted)}
    if not readers:
        return {}
    device = next(model.parameters()).device
    lengths = _token_lengths(model, tokenizer, sentences)
    sums: dict[tuple[int, str], tuple] = {}
    mask: list[torch.Tensor] = []  # the current batch's real tokens

    def hook(key):
        def record(_module, inputs) -> None:
            with torch.autocast(device.type, enabled=False):
                x = inputs[0][mask[0]].to(torch.float32)
                batch_mean = x.mean(0)
                centred = x - batch_mean
                n, mean, m2 = sums.get(key, (0, 0.0, 0.0))
                mean, m2 = _merged_moments(n, mean, m2, len(x), batch_mean.double(), (centred.T @ centred).double())
                sums[key] = (n + len(x), mean, m2)

        return record

    handles = []
    try:
        for key, reader in readers.items():
            handles.append(reader.register_forward_pre_hook(hook(key)))
        with _inference(model):
            for _batch, inputs in _batches(
                tokenizer, sentences, lengths, batch_size, device, "moments" if progress else None
            ):
                mask[:] = [inputs["attention_mask"].bool()]
                model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    # clone: made under inference mode, the mean would refuse in-place changes
    return {key: InputMoments(mean.clone(), m2 / n, n) for key, (n, mean, m2) in sums.items()}


def _reader(layers: list[LayerModules], layer: int, component: str) -> nn.Linear:
    """The reader of ``component`` in code layer ``layer`` (from 0); ValueError for a layer out of range."""
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or not 0 <= layer < len(layers):
        raise ValueError(f"layer must be a code index from 0 to {len(layers) - 1}, got {layer!r}")
    return layers[int(layer)].reader(component)
