"""Compressed encoders: unequal attention heads and per-layer widths, loadable with the Auto classes.

A compressed model is the base family's own model (BERT, RoBERTa, ELECTRA, XLM-RoBERTa, CamemBERT) whose encoder
layers were narrowed: every layer has its own per-head query/key size, per-head value size and intermediate size. The
sizes live in the config (``obce_layers``, one entry per layer), so ``save_pretrained`` writes ordinary
safetensors plus a ``config.json`` that describes every shape, and after ``import obce.models.compressed``::

    AutoModel.from_pretrained(folder)
    AutoModelForSequenceClassification.from_pretrained(folder)

rebuild the same model. Without importing obce, ``from_pretrained(folder, trust_remote_code=True)`` does the same:
the folder carries a short loader, ``obce_compressed.py``, which imports these classes from the installed obce
(transformers names the package to install when it is missing), and ``config.json`` maps every Auto class to it
(``auto_map``), as transformers does for models with code of their own.

Each family gets a config type ``obce_<family>`` (``obce_bert``, ``obce_roberta``, ``obce_electra``,
``obce_xlm-roberta``, ``obce_camembert``) that subclasses the family's config, and model classes that subclass the
family's classes (``ObceBertModel(BertModel)``, ``ObceBertForSequenceClassification(...)``, ...):
parameter names, heads, losses and attention masks are the family's own; only the narrowed layers' modules change.

Attention with unequal heads
----------------------------
Head ``h`` keeps ``d_h`` query/key dimensions and ``e_h`` value dimensions. Scores keep the original scale
``1 / sqrt(hidden_size / num_attention_heads)``, so a head whose kept dimensions are untouched computes exactly the
scores it did before. A head with ``d_h = 0`` and ``e_h > 0`` has constant scores: its softmax is uniform over the
tokens the mask lets through, and it returns the mean of its values over those tokens (that is what the original
head computes when all its query/key dimensions are constant, not a removed head). A head with ``e_h = 0``
contributes nothing and is not computed at all (its query/key sizes must then be 0 too).

Two ways to compute the heads (``config.obce_attention``):

``"loop"`` (default)
    One attention call per head on its own slice of the projections: no padding, one call per head.
``"padded"``
    One ``scaled_dot_product_attention`` call for all heads, on q, k and v laid out as ``(batch, heads,
    tokens, max size)`` with zeros in the unused slots, which changes no score and adds nothing to the values.
    The layout comes from the projection itself: its weight rows are gathered into the padded order (zero
    rows in the unused slots) on each call, a small copy, instead of gathering the much larger projected
    activations. The stored parameters keep their real sizes. When a hook watches the query/key/value
    module (its own forward or backward hooks, or global ones), the module has a forward of its own or its
    weight is on another device (offloaded), the module is run as is and its output gathered, so hooks see
    the real widths.

Measured on CPU at batch 32 x 128 tokens (``benchmarks/results/inference_speed.md``) the two are within a
few percent: level on an AVX2 machine, the loop ahead by 1 % (MiniLM) and 4 % (BERT-base) on an AVX-512 one (the
per-head calls cost little next to the projections and the feed-forward block, while padding adds projection
rows); the loop is the default. The padded form makes one call per layer whatever the number of heads, which may
pay off where each call has a fixed launch cost (GPUs); compare there with ``benchmarks/bench_inference.py``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .._checks import checked_int
from .._io import atomic_write_text
from .adapters import eval_mode

__all__ = [
    "ATTENTION_MODES",
    "LayerSizes",
    "UnequalHeadSelfAttention",
    "compressed_class_for",
    "compressed_config",
    "export_onnx",
    "is_compressed",
    "layer_sizes",
]

ATTENTION_MODES = ("loop", "padded")
LOADER_FILE = "obce_compressed.py"  # written beside config.json: what trust_remote_code imports


@dataclass(frozen=True)
class LayerSizes:
    """Widths of one compressed encoder layer.

    Parameters
    ----------
    qk_head_sizes : tuple of int
        Query/key dimensions kept in each original head (0 allowed: uniform attention).
    v_head_sizes : tuple of int
        Value dimensions kept in each original head (0: the head is removed).
    intermediate_size : int
        Neurons kept in the feed-forward block.
    """

    qk_head_sizes: tuple[int, ...]
    v_head_sizes: tuple[int, ...]
    intermediate_size: int

    def __post_init__(self) -> None:
        qk, v = _head_sizes(self.qk_head_sizes, "qk_head_sizes"), _head_sizes(self.v_head_sizes, "v_head_sizes")
        object.__setattr__(self, "qk_head_sizes", qk)
        object.__setattr__(self, "v_head_sizes", v)
        object.__setattr__(
            self, "intermediate_size", checked_int(self.intermediate_size, "intermediate_size", minimum=0)
        )
        if len(qk) != len(v):
            raise ValueError(f"qk_head_sizes and v_head_sizes must have one entry per head, got {qk} and {v}")
        if any(e == 0 and d > 0 for d, e in zip(qk, v, strict=True)):
            raise ValueError(f"a head without value dimensions must have no query/key dimensions, got {qk}, {v}")
        if sum(v) == 0 or self.intermediate_size == 0:
            raise ValueError(f"a layer needs at least one value dimension and one intermediate neuron, got {self}")

    @classmethod
    def full(cls, num_heads: int, head_size: int, intermediate_size: int) -> LayerSizes:
        """Sizes of an unpruned layer."""
        return cls((head_size,) * num_heads, (head_size,) * num_heads, intermediate_size)

    def to_dict(self) -> dict:
        return {
            "qk_head_sizes": list(self.qk_head_sizes),
            "v_head_sizes": list(self.v_head_sizes),
            "intermediate_size": self.intermediate_size,
        }

    @classmethod
    def from_dict(cls, data: dict) -> LayerSizes:
        if not isinstance(data, dict) or set(data) != {"qk_head_sizes", "v_head_sizes", "intermediate_size"}:
            raise ValueError(
                f"a layer entry needs exactly qk_head_sizes, v_head_sizes and intermediate_size, got {data!r}"
            )
        return cls(data["qk_head_sizes"], data["v_head_sizes"], data["intermediate_size"])


def _head_sizes(sizes, name: str) -> tuple[int, ...]:
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Iterable):
        raise ValueError(f"{name} must be a sequence of head sizes, got {sizes!r}")
    return tuple(checked_int(size, f"each of {name}", minimum=0) for size in sizes)


# What torch's Module.__call__ checks before it skips every hook; a name a later torch lacks counts as a hook.
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def _is_bare_linear(linear: nn.Module, x: torch.Tensor) -> bool:
    """Whether calling ``linear`` on ``x`` computes ``F.linear(x, weight, bias)`` and nothing else, so that its
    weight may be used directly."""
    module_hooks = (
        linear._forward_hooks,
        linear._forward_pre_hooks,
        linear._backward_hooks,
        linear._backward_pre_hooks,
    )
    global_hooks = (getattr(torch.nn.modules.module, name, True) for name in _GLOBAL_HOOKS)
    return (
        type(linear) is nn.Linear
        and "forward" not in vars(linear)
        and linear.weight.device == x.device
        and not any(module_hooks)
        and not any(global_hooks)
    )


def _linear(in_features: int, out_features: int) -> nn.Linear:
    """``nn.Linear``, without torch's warning that initializing a zero-size weight does nothing."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.Linear(in_features, out_features)


def _pad_index(sizes: Sequence[int], width: int) -> tuple[list[int], list[int]] | None:
    """Gather index that lays the concatenated head slices out as heads x ``width``, and its padding slots.

    Slot ``j`` of head ``h`` reads column ``offset_h + j`` when ``j < size_h``; padding slots read column 0 and
    are listed in the second list, to be zeroed. ``None`` when every head has ``width`` columns (a view
    suffices).
    """
    if all(s == width for s in sizes):
        return None
    offset, index, padding = 0, [], []
    for s in sizes:
        padding.extend(range(len(index) + s, len(index) + width))
        index.extend(range(offset, offset + s))
        index.extend([0] * (width - s))
        offset += s
    return index, padding


def _unpad_index(sizes: Sequence[int], width: int) -> list[int] | None:
    """Columns of a heads x ``width`` layout that hold real values, in head order."""
    if all(s == width for s in sizes):
        return None
    return [h * width + j for h, s in enumerate(sizes) for j in range(s)]


class UnequalHeadSelfAttention(nn.Module):
    """Self-attention whose heads have their own query/key and value sizes.

    Drop-in for the family's self-attention module inside its attention block: same call signature and the same
    ``(context, attention_weights)`` return, with ``context`` of width ``sum(v_head_sizes)``. Per-family subclasses
    (see :func:`compressed_class_for`) also inherit from the family's self-attention class so that
    ``output_attentions=True`` collects their weights like the original's.

    Parameters
    ----------
    config : PretrainedConfig
        The compressed model's config (``hidden_size``, ``num_attention_heads``, dropout, ``obce_attention``).
    sizes : LayerSizes
        This layer's widths.
    layer_idx : int, optional
        Index of the layer (0-based), kept for the family's conventions.

    Notes
    -----
    Attention weights (only with ``attn_implementation="eager"``) have one row per computed head: heads with no
    value dimension are absent.
    """

    def __init__(self, config, sizes: LayerSizes, layer_idx: int | None = None):
        nn.Module.__init__(self)
        if getattr(config, "is_decoder", False):
            raise ValueError("compressed models are encoders only, got a config with is_decoder=True")
        mode = getattr(config, "obce_attention", "loop")
        if mode not in ATTENTION_MODES:
            raise ValueError(f"obce_attention must be one of {ATTENTION_MODES}, got {mode!r}")
        self.config = config
        self.layer_idx = layer_idx
        self.mode = mode
        active = [h for h, e in enumerate(sizes.v_head_sizes) if e > 0]
        # Every head of the layer, 0 for one removed (LayerSizes makes a head without value dimensions have no
        # query/key ones): what encoder_layers reads, so heads keep their numbers. The computed heads' sizes follow.
        self.qk_head_sizes = list(sizes.qk_head_sizes)
        self.v_head_sizes = list(sizes.v_head_sizes)
        self.qk_sizes = [sizes.qk_head_sizes[h] for h in active]
        self.v_sizes = [sizes.v_head_sizes[h] for h in active]
        self.num_attention_heads = len(active)
        # The original scale, so kept score terms are unchanged.
        self.scaling = (config.hidden_size // config.num_attention_heads) ** -0.5
        self.is_causal = False
        # A layer may lose every query/key dimension (its attention is then uniform over the tokens).
        self.query = _linear(config.hidden_size, sum(self.qk_sizes))
        self.key = _linear(config.hidden_size, sum(self.qk_sizes))
        self.value = nn.Linear(config.hidden_size, sum(self.v_sizes))
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        # One width for q, k and v: SDPA's fast kernels want equal head sizes, and the padding costs little.
        self.width = max(*self.qk_sizes, *self.v_sizes)
        # Not buffers: they derive from the sizes, and a model loaded on the meta device would leave buffers
        # uninitialized. Tensors are made on the activations' device on first use.
        self._index_lists = {
            "qk": _pad_index(self.qk_sizes, self.width),
            "v": _pad_index(self.v_sizes, self.width),
            "v_unpad": _unpad_index(self.v_sizes, self.width),
        }
        self._index_cache: dict[tuple[str, torch.device], tuple[torch.Tensor, ...]] = {}

    def _index(self, name: str, device: torch.device) -> tuple[torch.Tensor, ...] | None:
        lists = self._index_lists[name]
        if lists is None:
            return None
        key = (name, device)
        if key not in self._index_cache:
            # Made as ordinary tensors even in a pass under torch.inference_mode: cached, an inference tensor
            # would refuse every later backward pass.
            with torch.inference_mode(False):
                self._index_cache[key] = self._index_tensors(lists, name, device)
        return self._index_cache[key]

    @staticmethod
    def _index_tensors(lists, name: str, device: torch.device) -> tuple[torch.Tensor, ...]:
        if name == "v_unpad":
            return (torch.tensor(lists, dtype=torch.long, device=device),)
        index, padding = lists
        mask = torch.zeros(len(index), dtype=torch.bool, device=device)
        mask[padding] = True
        return torch.tensor(index, dtype=torch.long, device=device), mask

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, heads * width) -> (batch, heads, tokens, width)."""
        return x.view(*x.shape[:-1], self.num_attention_heads, self.width).transpose(1, 2)

    def _project(self, linear: nn.Linear, name: str, x: torch.Tensor) -> torch.Tensor:
        """``linear(x)`` laid out as (batch, heads, tokens, width), zero in the padding slots."""
        if linear.out_features == 0:  # no query/key dimension left: every score is 0
            y = linear(x)  # run anyway, for hooks
            return self._heads(y.new_zeros(*y.shape[:-1], self.num_attention_heads * self.width))
        index = self._index(name, x.device)
        if index is None:
            return self._heads(linear(x))
        if not _is_bare_linear(linear, x):
            # Observed (activation capture, a backward hook), a forward of its own (an adapter, a quantized layer,
            # accelerate's offloading) or its weight elsewhere: run the module, so hooks see its real width and its
            # forward counts, then pad.
            return self._heads(linear(x).index_select(-1, index[0]).masked_fill_(index[1], 0))
        # Pad the weights, not the activations: gathering a few rows of the weight is far cheaper than
        # gathering the projection's output, and the zero rows give exact zeros in the padding slots.
        weight = linear.weight.index_select(0, index[0]).masked_fill(index[1][:, None], 0)
        bias = linear.bias.index_select(0, index[0]).masked_fill(index[1], 0)
        return self._heads(F.linear(x, weight, bias))

    def _attend(self, q, k, v, attention_mask, want_weights):
        dropout = self.dropout.p if self.training else 0.0
        if not want_weights:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attention_mask, dropout_p=dropout, scale=self.scaling
            )
            return out, None
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scaling
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            else:
                scores = scores + attention_mask
        weights = F.dropout(torch.softmax(scores, dim=-1), p=dropout, training=self.training)
        return torch.matmul(weights, v), weights

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        # Weights only where the family gives them (eager): under SDPA its untouched layers give none, and one
        # entry per compressed layer alone would not say which layer it is.
        want_weights = self.config._attn_implementation == "eager"
        if self.mode == "padded":
            out, weights = self._attend(
                self._project(self.query, "qk", hidden_states),
                self._project(self.key, "qk", hidden_states),
                self._project(self.value, "v", hidden_states),
                attention_mask,
                want_weights,
            )
            out = out.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1)
            unpad = self._index("v_unpad", out.device)
            if unpad is not None:
                out = out.index_select(-1, unpad[0])
            return out, weights
        q, k, v = self.query(hidden_states), self.key(hidden_states), self.value(hidden_states)
        outs, all_weights = [], []
        qk_parts = (
            torch.split(q.unsqueeze(1), self.qk_sizes, dim=-1),
            torch.split(k.unsqueeze(1), self.qk_sizes, dim=-1),
        )
        for q_h, k_h, v_h in zip(*qk_parts, torch.split(v.unsqueeze(1), self.v_sizes, dim=-1), strict=True):
            if q_h.shape[-1] == 0:  # every score is 0; a zero-width product would not run once exported to ONNX
                q_h = k_h = q_h.new_zeros(*q_h.shape[:-1], 1)
            out, weights = self._attend(q_h, k_h, v_h, attention_mask, want_weights)
            outs.append(out)
            all_weights.append(weights)
        out = torch.cat(outs, dim=-1).squeeze(1)
        return out, (torch.cat(all_weights, dim=1) if want_weights else None)


# family -> (modeling module, class-name prefix, config class name)
_FAMILIES = {
    "bert": ("transformers.models.bert.modeling_bert", "Bert", "BertConfig"),
    "roberta": ("transformers.models.roberta.modeling_roberta", "Roberta", "RobertaConfig"),
    "electra": ("transformers.models.electra.modeling_electra", "Electra", "ElectraConfig"),
    "xlm-roberta": ("transformers.models.xlm_roberta.modeling_xlm_roberta", "XLMRoberta", "XLMRobertaConfig"),
    "camembert": ("transformers.models.camembert.modeling_camembert", "Camembert", "CamembertConfig"),
}
# class-name suffix -> Auto class it is registered with
_HEADS = {
    "Model": AutoModel,
    "ForSequenceClassification": AutoModelForSequenceClassification,
    "ForTokenClassification": AutoModelForTokenClassification,
    "ForQuestionAnswering": AutoModelForQuestionAnswering,
    "ForMaskedLM": AutoModelForMaskedLM,
}

_CONFIGS: dict[str, type] = {}  # family -> compressed config class
_ATTENTIONS: dict[str, type] = {}  # family -> compressed self-attention class
_COMPRESSED: dict[type, type] = {}  # original model class -> compressed model class
_AUTO_MAPS: dict[str, dict[str, str]] = {}  # family -> config.json's auto_map: Auto class -> loader.Class


def layer_sizes(config) -> list[LayerSizes]:
    """Per-layer sizes of a compressed config (validated against the config's layer count)."""
    raw = getattr(config, "obce_layers", None)
    if not isinstance(raw, list) or len(raw) != config.num_hidden_layers:
        raise ValueError(
            f"obce_layers must list {config.num_hidden_layers} layers (num_hidden_layers), got {raw!r:.200}"
        )
    sizes = []
    for i, entry in enumerate(raw):
        try:
            sizes.append(LayerSizes.from_dict(entry))
        except ValueError as err:
            raise ValueError(f"obce_layers, layer {i + 1}: {err}") from None
    head_size = config.hidden_size // config.num_attention_heads
    for i, s in enumerate(sizes):
        if len(s.qk_head_sizes) != config.num_attention_heads:
            raise ValueError(
                f"layer {i + 1} lists {len(s.qk_head_sizes)} heads, the config has {config.num_attention_heads}"
            )
        if max(s.qk_head_sizes + s.v_head_sizes) > head_size or s.intermediate_size > config.intermediate_size:
            raise ValueError(
                f"layer {i + 1} keeps more than the original has: {s} (heads of {head_size}, intermediate "
                f"{config.intermediate_size})"
            )
    return sizes


def _shape_encoder(model: nn.Module, config) -> None:
    """Narrow every encoder layer of a freshly built family model to the sizes in ``config``."""
    family = config.model_type.removeprefix("obce_")
    head_size = config.hidden_size // config.num_attention_heads
    full = LayerSizes.full(config.num_attention_heads, head_size, config.intermediate_size)
    for i, (layer, sizes) in enumerate(zip(model.base_model.encoder.layer, layer_sizes(config), strict=True)):
        if sizes.qk_head_sizes != full.qk_head_sizes or sizes.v_head_sizes != full.v_head_sizes:
            layer.attention.self = _ATTENTIONS[family](config, sizes, layer_idx=i)
            layer.attention.output.dense = nn.Linear(sum(sizes.v_head_sizes), config.hidden_size)
        if sizes.intermediate_size != config.intermediate_size:
            layer.intermediate.dense = nn.Linear(config.hidden_size, sizes.intermediate_size)
            layer.output.dense = nn.Linear(sizes.intermediate_size, config.hidden_size)


def _loader_source(auto_map: dict[str, str]) -> str:
    names = sorted({reference.split(".")[-1] for reference in auto_map.values()})
    return (
        '"""Loads this compressed model with transformers alone: AutoModel.from_pretrained(folder, '
        "trust_remote_code=True).\n\n"
        "The classes are obce's (pip install obce); after `import obce` the Auto classes load it without "
        'trust_remote_code."""\n\n'
        f"from obce.models.compressed import {', '.join(names)}  # noqa: F401\n"
    )


def _write_loader(config, save_directory) -> None:
    """The loader file and ``auto_map`` that let transformers load the folder without ``import obce``."""
    config.auto_map = dict(_AUTO_MAPS[_family_of(config)])
    os.makedirs(save_directory, exist_ok=True)
    atomic_write_text(Path(save_directory) / LOADER_FILE, _loader_source(config.auto_map), overwrite=True)


# transformers calls this on classes it loaded as remote code; the mark would make every later save copy the
# defining module (this file, with its relative imports) into the folder. The loader file stands in for it.
_NO_AUTO_CLASS = classmethod(lambda cls, auto_class=None: None)


def _make_family(family: str) -> None:
    module_name, prefix, config_name = _FAMILIES[family]
    modeling = importlib.import_module(module_name)
    base_config = getattr(modeling, config_name)
    model_type = f"obce_{family}"
    loader = LOADER_FILE.removesuffix(".py")
    auto_map = {"AutoConfig": f"{loader}.Obce{prefix}Config"}

    def save_pretrained(self, save_directory, *args, **kwargs):
        _write_loader(self, save_directory)
        return base_config.save_pretrained(self, save_directory, *args, **kwargs)

    config_cls = strict(
        type(
            f"Obce{prefix}Config",
            (base_config,),
            {
                "__module__": __name__,
                "__doc__": (
                    f"{config_name} of a compressed model: adds ``obce_layers`` (one dict per layer with "
                    "``qk_head_sizes``, ``v_head_sizes``, ``intermediate_size``) and ``obce_attention`` "
                    f"(one of {ATTENTION_MODES})."
                ),
                "__annotations__": {"obce_layers": list | None, "obce_attention": str},
                "model_type": model_type,
                "obce_layers": None,
                "obce_attention": "loop",
                "save_pretrained": save_pretrained,
                "register_for_auto_class": _NO_AUTO_CLASS,
            },
        )
    )
    _CONFIGS[family] = config_cls
    globals()[config_cls.__name__] = config_cls
    AutoConfig.register(model_type, config_cls, exist_ok=True)

    attention_cls = type(
        f"Obce{prefix}SelfAttention",
        (UnequalHeadSelfAttention, getattr(modeling, f"{prefix}SelfAttention")),
        {"__module__": __name__, "forward": UnequalHeadSelfAttention.forward},
    )
    _ATTENTIONS[family] = attention_cls
    globals()[attention_cls.__name__] = attention_cls

    for suffix, auto_cls in _HEADS.items():
        original = getattr(modeling, f"{prefix}{suffix}", None)
        if original is None:
            continue

        def __init__(self, config, *args, _original=original, **kwargs):
            _original.__init__(self, config, *args, **kwargs)
            _shape_encoder(self, config)
            self.post_init()  # initializes only the modules that were just replaced

        model_cls = type(
            f"Obce{prefix}{suffix}",
            (original,),
            {
                "__module__": __name__,
                "__doc__": f"{original.__name__} with narrowed encoder layers (see :mod:`{__name__}`).",
                "__init__": __init__,
                "config_class": config_cls,
                # The unequal-head module implements eager and SDPA attention only, and reads the config's choice
                # on every call, so set_attn_implementation may switch between them (transformers guesses from
                # the module's source, and would refuse).
                "_supports_flash_attn": False,
                "_supports_flex_attn": False,
                "_supports_attention_backend": False,
                "_can_set_attn_implementation": classmethod(lambda cls: True),
                "register_for_auto_class": _NO_AUTO_CLASS,
            },
        )
        _COMPRESSED[original] = model_cls
        globals()[model_cls.__name__] = model_cls
        auto_cls.register(config_cls, model_cls, exist_ok=True)
        auto_map[auto_cls.__name__] = f"{loader}.{model_cls.__name__}"
    _AUTO_MAPS[family] = auto_map


for _family in _FAMILIES:
    _make_family(_family)


def _family_of(config) -> str:
    family = config.model_type.removeprefix("obce_")
    if family not in _FAMILIES:
        raise ValueError(f"model_type {config.model_type!r} is not supported; supported: {sorted(_FAMILIES)}")
    return family


def compressed_config(config, sizes: Sequence[LayerSizes], *, attention: str = "loop"):
    """Config of a compressed model built from the original model's config.

    Parameters
    ----------
    config : PretrainedConfig
        The original (uncompressed) model's config: BERT, RoBERTa, ELECTRA, XLM-RoBERTa or CamemBERT.
    sizes : sequence of LayerSizes
        One entry per encoder layer.
    attention : {"loop", "padded"}
        How unequal heads are computed (see the module docstring).

    Returns
    -------
    PretrainedConfig
        An ``obce_<family>`` config: the original's settings (labels, dropout, attention implementation, ...) plus
        ``obce_layers``.

    Raises
    ------
    TypeError
        ``sizes`` holds something other than :class:`LayerSizes`.
    ValueError
        Unsupported family, a compressed config given, or sizes that do not fit the config.
    """
    if config.model_type.startswith("obce_"):
        raise ValueError(f"expected the original model's config, got a compressed one ({config.model_type!r})")
    family = _family_of(config)
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    values = config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "_name_or_path"):
        values.pop(key, None)
    given = sizes
    # Listed once: a generator is read only once.
    sizes = list(sizes) if isinstance(sizes, Iterable) and not isinstance(sizes, (str, bytes)) else None
    if sizes is None or not all(isinstance(s, LayerSizes) for s in sizes):
        raise TypeError(f"sizes must be a sequence of LayerSizes, one per encoder layer, got {given!r:.200}")
    new = _CONFIGS[family](**values, obce_layers=[s.to_dict() for s in sizes], obce_attention=attention)
    # Heads of unequal size run eager or SDPA attention only: a model loaded with flash or flex attention gets SDPA.
    implementation = config._attn_implementation
    new._attn_implementation = implementation if implementation in (None, "eager", "sdpa") else "sdpa"
    layer_sizes(new)
    return new


def compressed_class_for(model_or_class) -> type:
    """Compressed counterpart of a model class (``BertForSequenceClassification`` -> ``ObceBertFor...``).

    Raises
    ------
    ValueError
        The class has no compressed counterpart; the message lists the supported ones.
    """
    cls = model_or_class if isinstance(model_or_class, type) else type(model_or_class)
    if cls in _COMPRESSED.values():
        raise ValueError(f"{cls.__name__} is compressed already: prune the original model with a stronger plan")
    if cls not in _COMPRESSED:
        supported = sorted(c.__name__ for c in _COMPRESSED)
        raise ValueError(f"no compressed counterpart for {cls.__name__}; supported: {supported}")
    return _COMPRESSED[cls]


def is_compressed(model) -> bool:
    """Whether ``model`` (or its config) is a compressed model."""
    config = getattr(model, "config", model)
    return str(getattr(config, "model_type", "")).startswith("obce_")


class _OnnxWrapper(nn.Module):
    """Positional inputs and one tensor out, as ONNX wants; ``token_type_ids`` third where the model has segments."""

    def __init__(self, model: nn.Module, output: str):
        super().__init__()
        self.model, self.output = model, output

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        segments = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask, **segments), self.output)


def export_onnx(model, path: str | os.PathLike, *, overwrite: bool = False, opset: int | None = None) -> Path:
    """Export a (compressed or original) encoder to ONNX with ``torch.onnx.export``.

    The graph takes ``input_ids`` and ``attention_mask`` (int64, shape ``(batch, tokens)``, both dynamic), and
    ``token_type_ids`` too for a model with more than one segment type (BERT, ELECTRA: sentence pairs), and
    returns ``last_hidden_state`` for a base model, ``logits`` for a classification or masked-LM head. Needs the
    ``onnx`` and ``onnxscript`` packages (``pip install obce[onnx]``); run it with onnxruntime.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    path : str or path-like
        The ``.onnx`` file to write (atomically: written in a temporary folder beside it, then moved). Large
        weights may go to a side file ``<name>.data`` next to it.
    overwrite : bool
        Replace an existing file.
    opset : int, optional
        ONNX opset (default: the exporter's).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    ValueError
        A head without a single ``logits`` output (question answering).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    output = _output_name(model)
    device = next(model.parameters()).device
    ids = torch.arange(16, device=device).view(2, 8) % model.config.vocab_size
    # Padding in the example: an all-ones mask lets transformers skip the mask, and the trace would keep that.
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    inputs, names = [ids, mask], ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 1) > 1:  # a second segment in the example, or the trace drops it
        inputs.append((torch.arange(8, device=device) >= 4).long().expand(2, 8).contiguous())
        names.append("token_type_ids")
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Exported in a temporary folder beside the target: weights may go to a side file named after the graph
    # file, so both are written under their final names and moved in, the graph last.
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        with eval_mode(model):  # every submodule's own mode comes back after
            torch.onnx.export(
                _OnnxWrapper(model, output).eval(),
                tuple(inputs),
                staging / path.name,
                input_names=names,
                output_names=[output],
                dynamic_shapes={name: {0: batch, 1: tokens} for name in names},
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
        side_files = [f for f in staging.iterdir() if f.name != path.name]
        for side_file in side_files:
            os.replace(side_file, path.parent / side_file.name)
        if not side_files:  # an earlier export's weights beside the graph would be taken for this one's
            (path.parent / f"{path.name}.data").unlink(missing_ok=True)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _output_name(model) -> str:
    if getattr(model, "base_model", model) is model:
        return "last_hidden_state"
    if any(head in type(model).__name__ for head in ("Classification", "MaskedLM")):
        return "logits"
    raise ValueError(f"export_onnx supports base models and classification/masked-LM heads, got {type(model).__name__}")
