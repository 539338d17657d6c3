"""Pruning plans: which percentile of λ each layer and component keeps above.

A plan maps a layer (numbered from 1) and a prunable component to a level ``p`` in ``[0, 100)``: the neurons
kept are those whose λ exceeds the ``p``-th percentile of λ within that layer and component (``numpy.percentile``,
linear interpolation; a neuron equal to the threshold is dropped). A layer/component the plan does not name is
left untouched. ``attention_output`` and ``output`` are never pruned: their neurons are the residual stream's
coordinates. ``query`` and ``key`` are pruned together, on the same dimensions, so they must share a level.

Built-in plans
--------------
:func:`paper_plan` reproduces the paper's tables for BERT-base and BERT-large (levels P30/P50/P70, or the
quartile variant P25/P50/P75 of the method's later version). :func:`uniform_plan` applies one level from layer 3
on, :func:`target_plan` picks levels from the λ medians to land on a parameter budget, and
:meth:`PruningPlan.load` reads a JSON (or, with pyyaml, YAML) file::

    {"name": "my plan",
     "levels": {"3": {"query": 30, "key": 30, "value": 50, "intermediate": 30},
                "4": {"value": 70}}}

Which neurons a plan keeps
--------------------------
:func:`select_neurons` turns a plan and an importance table into the kept indices of every layer, and
:func:`dry_run` counts the parameters that result, before any weight is touched. Query/key dimensions are
ranked jointly (see :func:`select_neurons`); a head left with no value dimension is removed entirely, its
query/key dimensions included, since it no longer contributes anything.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd

from ._io import atomic_write_text
from .importance import ImportanceTable
from .models.adapters import COMPONENTS, encoder_layers, to_user_layer
from .models.compressed import LayerSizes, is_compressed

__all__ = [
    "LEVEL_SETS",
    "NEVER_PRUNED",
    "PRUNABLE",
    "EncoderShape",
    "LayerSelection",
    "PlanReport",
    "PruningPlan",
    "TargetOutOfReach",
    "check_score",
    "dry_run",
    "paper_plan",
    "select_neurons",
    "target_plan",
    "uniform_plan",
]

PRUNABLE: tuple[str, ...] = ("query", "key", "value", "intermediate")
"""Components a plan may name."""
NEVER_PRUNED: tuple[str, ...] = ("attention_output", "output")
"""Components kept whole: their neurons are the coordinates of the residual stream."""
LEVEL_SETS: dict[str, tuple[float, float, float]] = {"paper": (30, 50, 70), "quartiles": (25, 50, 75)}
"""Named level sets: the paper's P30/P50/P70 and the later quartile variant P25/P50/P75."""

# The tables in the order query/key, value, intermediate: level index (0, 1, 2 -> low, middle, high level
# of a level set) -> user layers. Layers 1-2 are untouched in both.
_PAPER_TABLES: dict[str, dict[str, dict[int, list[int | tuple[int, int]]]]] = {
    "bert-base": {
        "query_key": {0: [3, 4, 11, 12], 1: [(8, 10)], 2: [(5, 7)]},
        "value": {0: [4], 1: [3, 11, 12], 2: [(5, 10)]},
        "intermediate": {0: [3, 4, (10, 12)], 1: [(5, 9)]},
    },
    "bert-large": {
        # Layer 13 is listed under both P30 and P70 for query/key; the stricter P70 is used.
        "query_key": {0: [(11, 17)], 1: [(4, 10), 18], 2: [3, 13, (19, 24)]},
        "value": {1: [4, (9, 12), (14, 17)], 2: [3, (5, 8), 13, (18, 24)]},
        "intermediate": {0: [3, 4, (8, 16), 18], 1: [(5, 7), 17, (19, 24)]},
    },
}
_PAPER_LAYERS = {"bert-base": 12, "bert-large": 24}


def _shown(value) -> str:
    """A value as an error message quotes it: its repr, or its type where the repr is long (a model)."""
    text = repr(value)
    return text if len(text) <= 80 else f"a {type(value).__name__}"


def _check_level(value, where: str) -> float:
    if isinstance(value, str) and value[:1] in ("P", "p"):  # written as the tables show it: "P50"
        with contextlib.suppress(ValueError):  # otherwise named below as it was written
            value = float(value[1:])
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{where}: level must be a percentile in [0, 100), got {_shown(value)}")
    if not 0 <= value < 100:
        # A level keeps the neurons above that percentile: at 100, none.
        why = " (P100 keeps no neuron)" if value >= 100 else ""
        raise ValueError(f"{where}: level must be a percentile in [0, 100){why}, got {value!r}")
    return float(value)


def _check_component(component, where: str) -> str:
    if component in NEVER_PRUNED:
        raise ValueError(f"{where}: {component!r} is never pruned; a plan may name {', '.join(PRUNABLE)}")
    if component not in PRUNABLE:
        raise ValueError(f"{where}: unknown component {component!r}; a plan may name {', '.join(PRUNABLE)}")
    return component


def _check_layer(layer, where: str) -> int:
    if isinstance(layer, str) and layer.strip().isdecimal():
        layer = int(layer)
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or layer < 1:
        raise ValueError(f"{where}: layers are whole numbers counted from 1, got {_shown(layer)}")
    return int(layer)


def _format_level(level: float | None) -> str:
    if level is None:
        return "-"
    return f"P{level:g}" if level == round(level) else f"P{level:.2f}"


@dataclass(frozen=True)
class PruningPlan:
    """Per layer (from 1) and component, the percentile of λ to keep above.

    Parameters
    ----------
    levels : mapping of int to mapping of str to float
        ``{layer: {component: level}}`` with layers numbered from 1, components among :data:`PRUNABLE` and
        levels in ``[0, 100)``. ``query`` and ``key`` must appear together with the same level. Layers or
        components left out are not pruned.
    name : str
        Short name shown in summaries.
    notes : str
        Free text kept with the plan (e.g. how it was chosen).
    model_layers : int, optional
        The number of layers of the model the plan is made for (a paper table's: 12 or 24). A model of another
        depth is then refused: a table written for 12 layers says nothing about layers 13-24, nor is its
        layer 5 a 24-layer model's layer 5. None (the default): any model that has the layers the plan names.

    Raises
    ------
    ValueError
        Unknown or never-pruned component, a layer below 1, a level outside [0, 100), or query and key on
        different levels. The message quotes what was received.

    Examples
    --------
    >>> plan = PruningPlan({3: {"query": 30, "key": 30, "intermediate": 50}}, name="small")
    >>> plan.level(3, "key"), plan.level(4, "value")
    (30.0, None)
    """

    levels: Mapping[int, Mapping[str, float]]
    name: str = "custom"
    notes: str = ""
    model_layers: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.levels, Mapping):
            raise TypeError(f"levels must map layers to {{component: level}}, got {type(self.levels).__name__}")
        clean: dict[int, dict[str, float]] = {}
        for raw_layer, row in self.levels.items():
            layer = _check_layer(raw_layer, "plan")
            if layer in clean:
                raise ValueError(f"plan: layer {layer} is given twice")
            if not isinstance(row, Mapping):
                raise TypeError(f"plan layer {layer}: expected {{component: level}}, got {row!r}")
            entries = {
                _check_component(c, f"plan layer {layer}"): _check_level(v, f"plan layer {layer} {c}")
                for c, v in row.items()
            }
            if entries.get("query") != entries.get("key"):
                raise ValueError(
                    f"plan layer {layer}: query and key are pruned together and need the same level, got "
                    f"query={entries.get('query')!r}, key={entries.get('key')!r}"
                )
            if entries:
                clean[layer] = {c: entries[c] for c in PRUNABLE if c in entries}
        # Read-only all the way down: a level set afterwards would skip the checks above.
        levels = {layer: MappingProxyType(row) for layer, row in sorted(clean.items())}
        object.__setattr__(self, "levels", MappingProxyType(levels))
        if not isinstance(self.name, str) or not isinstance(self.notes, str):
            raise TypeError(f"name and notes must be strings, got {self.name!r} and {self.notes!r}")
        if self.model_layers is not None:
            object.__setattr__(self, "model_layers", _check_layer(self.model_layers, "plan model_layers"))

    def __hash__(self) -> int:
        rows = tuple((layer, tuple(row.items())) for layer, row in self.levels.items())
        return hash((rows, self.name, self.notes, self.model_layers))

    def __reduce__(self):  # pickle and copy through plain dicts (read-only views do not pickle)
        levels = {layer: dict(row) for layer, row in self.levels.items()}
        return type(self), (levels, self.name, self.notes, self.model_layers)

    @property
    def layers(self) -> list[int]:
        """Layers (from 1) the plan prunes."""
        return list(self.levels)

    def level(self, layer: int, component: str) -> float | None:
        """The level of ``layer`` (from 1) and ``component``, or None when it is not pruned."""
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; expected one of {', '.join(COMPONENTS)}")
        return self.levels.get(_check_layer(layer, "plan level"), {}).get(component)

    def check(self, num_layers: int) -> None:
        """Raise ValueError if the plan does not fit a model with ``num_layers`` layers: it names a layer the
        model lacks, or it is made for a model of another depth (``model_layers``)."""
        missing = [layer for layer in self.levels if layer > num_layers]
        made_for = f"; it is made for a {self.model_layers}-layer model" if self.model_layers else ""
        if missing:
            raise ValueError(
                f"plan {self.name!r} names layer(s) {missing} but the model has {num_layers} layers "
                f"(1..{num_layers}){made_for}"
            )
        if self.model_layers not in (None, num_layers):
            raise ValueError(
                f"plan {self.name!r} is made for a {self.model_layers}-layer model but the model has {num_layers} "
                "layers; to apply its levels anyway, to the layers it names, use PruningPlan(plan.levels)"
            )

    def remap(self, mapping: Mapping[float, float], *, name: str | None = None) -> PruningPlan:
        """Same plan with every level replaced through ``mapping`` (e.g. ``{30: 25, 50: 50, 70: 75}``)."""
        try:
            levels = {layer: {c: mapping[v] for c, v in row.items()} for layer, row in self.levels.items()}
        except KeyError as err:
            raise ValueError(f"mapping {dict(mapping)} has no entry for level {err.args[0]:g}") from None
        return PruningPlan(levels, name=name or self.name, notes=self.notes, model_layers=self.model_layers)

    def to_dict(self) -> dict:
        """JSON-ready form (layer keys as strings; ``model_layers`` only when set)."""
        data = {
            "name": self.name,
            "notes": self.notes,
            "levels": {str(layer): dict(row) for layer, row in self.levels.items()},
        }
        if self.model_layers is not None:
            data["model_layers"] = self.model_layers
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> PruningPlan:
        """Inverse of :meth:`to_dict`; ``name``, ``notes`` and ``model_layers`` are optional.

        Raises
        ------
        ValueError
            Missing ``levels`` or unexpected keys.
        """
        if not isinstance(data, Mapping) or "levels" not in data:
            raise ValueError(f"a plan needs a 'levels' mapping, got {data!r:.200}")
        unknown = set(data) - {"name", "notes", "levels", "model_layers"}
        if unknown:
            raise ValueError(f"unexpected plan keys {sorted(unknown)}; expected name, notes, levels, model_layers")
        return cls(
            data["levels"],
            name=data.get("name", "custom"),
            notes=data.get("notes", ""),
            model_layers=data.get("model_layers"),
        )

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the plan as JSON, atomically (temporary file in the same folder, then rename).

        Raises
        ------
        FileExistsError
            ``path`` exists and ``overwrite`` is False.
        """
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n", overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningPlan:
        """Read a plan from JSON, or from YAML (``.yaml``/``.yml``, needs pyyaml).

        Raises
        ------
        ValueError
            The file does not hold a valid plan.
        ImportError
            A YAML file and pyyaml is not installed.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")  # an editor's byte-order mark is not part of the plan
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as err:
                raise ImportError(
                    f"reading {path} needs pyyaml (pip install pyyaml), or write the plan as JSON"
                ) from err
            try:
                data = yaml.load(text, Loader=_unique_key_yaml_loader(yaml))
            except yaml.YAMLError as err:
                raise ValueError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
        else:
            try:
                data = json.loads(text, object_pairs_hook=_unique_keys)
            except ValueError as err:  # a JSONDecodeError, or a key given twice
                raise ValueError(f"{path} is not valid JSON: {err}") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:  # the file's shape: a list where a mapping belongs, and such
            raise ValueError(f"{path}: {err}") from None

    def summary(self, num_layers: int | None = None) -> str:
        """A table: one row per layer, the level of query/key, value and intermediate."""
        last = max([num_layers or 0, *self.levels]) if (num_layers or self.levels) else 0
        lines = [
            f"plan {self.name!r}" + (f": {self.notes}" if self.notes else ""),
            "layer  query/key  value  intermediate",
        ]
        for layer in range(1, last + 1):
            row = self.levels.get(layer, {})
            lines.append(
                f"{layer:>5}  {_format_level(row.get('query')):>9}  {_format_level(row.get('value')):>5}  "
                f"{_format_level(row.get('intermediate')):>12}"
            )
        if not last:
            lines.append("(prunes nothing)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _check_start_layer(start_layer: int, num_layers: int) -> None:
    if start_layer > num_layers:
        raise ValueError(
            f"start_layer {start_layer} is beyond the model's {num_layers} layers: layers before it are left "
            "untouched, so nothing is left to prune; a plan file can name any layer"
        )


def _unique_keys(pairs: list[tuple]) -> dict:
    """A JSON object as a dict; ValueError for a key given twice (a later one would silently win)."""
    data = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"key {key!r} is given twice")
        data[key] = value
    return data


def _unique_key_yaml_loader(yaml):
    """pyyaml's safe loader, refusing a mapping key given twice (a later one would silently win)."""

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
            repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {repeated[0]!r} is given twice", node.start_mark
                )
            return super().construct_mapping(node, deep=deep)

    return Loader


def _expand(layers: Iterable[int | tuple[int, int]]) -> list[int]:
    out: list[int] = []
    for item in layers:
        out.extend(range(item[0], item[1] + 1) if isinstance(item, tuple) else [item])
    return out


def _level_set(levels: str | Sequence[float]) -> tuple[float, ...]:
    if isinstance(levels, str):
        if levels not in LEVEL_SETS:
            raise ValueError(f"unknown level set {levels!r}; expected one of {sorted(LEVEL_SETS)} or a sequence")
        return LEVEL_SETS[levels]
    values = tuple(_check_level(v, "level set") for v in levels)
    if not values or list(values) != sorted(set(values)):
        raise ValueError(f"a level set must be increasing and non-empty, got {levels!r}")
    return values


def paper_plan(model: str = "bert-base", levels: str = "paper") -> PruningPlan:
    """The paper's pruning plan for BERT-base (its Table 2) or BERT-large (Table 3).

    Layers 1-2 are untouched; ``attention_output`` and ``output`` are never pruned; query and key share a level.
    The plan is for a model of the table's depth (``model_layers`` 12 or 24): :meth:`PruningPlan.check`, hence
    :func:`dry_run` and :func:`obce.prune.prune_model`, refuse a model of another depth.

    BERT-base (layers from 1): query/key P30 in 3, 4, 11, 12; P50 in 8-10; P70 in 5-7. Value P30 in 4; P50 in 3,
    11, 12; P70 in 5-10. Intermediate P30 in 3, 4, 10-12; P50 in 5-9.

    BERT-large: query/key P30 in 11-17; P50 in 4-10, 18; P70 in 3, 13, 19-24 (layer 13 is listed under both P30
    and P70; the stricter P70 is used). Value P50 in 4, 9-12, 14-17; P70 in 3, 5-8, 13, 18-24. Intermediate P30
    in 3, 4, 8-16, 18; P50 in 5-7, 17, 19-24.

    Applied to a BERT-base-sized model the BERT-base plan keeps 62.80 % of the encoder layers' parameters
    (53,416,243 of 85,054,464) and 71.10 % of the whole model with embeddings and pooler (77,844,019 of
    109,482,240) with the random λ of the tests; it removes 31.6 M parameters. The paper reports 58.47 %. Other λ
    give slightly other counts: a level fixes how many value and intermediate neurons stay (barring ties in λ),
    but a head left with no value dimension is removed with its query/key dimensions, and query/key dimensions
    are ranked by a product of ranks, which ties even for distinct λ (2·6 = 3·4) and drops every dimension tied
    at the threshold. No accounting we tried reproduces 58.47 % (kept share of the query/key/value/intermediate
    neurons alone: 62.38 %); the paper does not say what its figure counts. See
    ``benchmarks/results/inference_speed_notes.md``.

    Parameters
    ----------
    model : {"bert-base", "bert-large"}
    levels : {"paper", "quartiles"}
        ``"paper"``: P30/P50/P70. ``"quartiles"``: the later variant, the same table with 30 -> 25, 50 -> 50,
        70 -> 75.

    Returns
    -------
    PruningPlan

    Raises
    ------
    TypeError
        ``model`` is not a name (a loaded model, say).
    ValueError
        Unknown model or level set.
    """
    if not isinstance(model, str):
        raise TypeError(f"paper_plan takes a table's name, one of {sorted(_PAPER_TABLES)}; got {_shown(model)}")
    if model not in _PAPER_TABLES:
        raise ValueError(f"no paper plan for {model!r}; expected one of {sorted(_PAPER_TABLES)}")
    level_values = _level_set(levels)
    if len(level_values) != 3:
        raise ValueError(f"the paper's tables use three levels, got {level_values}")
    rows: dict[int, dict[str, float]] = {}
    for group, table in _PAPER_TABLES[model].items():
        for index in sorted(table):  # ascending: a later (stricter) listing overrides an earlier one
            for layer in _expand(table[index]):
                components = ("query", "key") if group == "query_key" else (group,)
                for c in components:
                    rows.setdefault(layer, {})[c] = level_values[index]
    notes = f"{model} table of the paper, levels {'/'.join(f'P{v:g}' for v in level_values)}"
    if model == "bert-large":
        notes += "; query/key layer 13 listed twice, the stricter level kept"
    # Named as the command line spells it; levels of one's own by their values.
    spelled = levels if isinstance(levels, str) else "/".join(f"P{v:g}" for v in level_values)
    name = model if levels == "paper" else f"{model}:{spelled}"
    return PruningPlan(rows, name=name, notes=notes, model_layers=_PAPER_LAYERS[model])


def uniform_plan(
    num_layers: int,
    level: float,
    *,
    start_layer: int = 3,
    components: Sequence[str] = PRUNABLE,
) -> PruningPlan:
    """One level for the given components of every layer from ``start_layer`` (from 1) on.

    The plan records ``num_layers`` (:attr:`PruningPlan.model_layers`): a model of another depth is refused.

    Raises
    ------
    TypeError
        ``num_layers`` is not an integer (a model, say).
    ValueError
        Bad layer numbers, level, or components (none, or query and key not both named or both left out).
    """
    if not isinstance(num_layers, numbers.Integral):
        raise TypeError(
            f"uniform_plan takes the number of encoder layers, e.g. len(obce.encoder_layers(model)); "
            f"got {_shown(num_layers)}"
        )
    num_layers = _check_layer(num_layers, "uniform_plan num_layers")
    level = _check_level(level, "uniform_plan")
    start_layer = _check_layer(start_layer, "uniform_plan start_layer")
    _check_start_layer(start_layer, num_layers)
    if isinstance(components, str):
        raise TypeError(f"components must be a sequence of names, got the string {components!r}")
    row = {_check_component(c, "uniform_plan"): level for c in components}
    if not row:
        raise ValueError(
            f"uniform_plan: components is empty, a plan that prunes nothing; expected some of {', '.join(PRUNABLE)}"
        )
    return PruningPlan(
        dict.fromkeys(range(start_layer, num_layers + 1), row),
        name=f"uniform-P{level:g}",
        notes=f"P{level:g} for {', '.join(row)} from layer {start_layer} on",
        model_layers=num_layers,  # on a deeper model it would leave the layers past num_layers whole
    )


@dataclass(frozen=True)
class EncoderShape:
    """Sizes of an (unpruned) encoder, enough to count parameters.

    Attributes
    ----------
    num_layers, num_heads, head_size, hidden_size, intermediate_size : int
    model_params : int
        Every parameter of the model (embeddings, pooler and heads included; tied weights once).
    """

    num_layers: int
    num_heads: int
    head_size: int
    hidden_size: int
    intermediate_size: int
    model_params: int

    @classmethod
    def from_model(cls, model) -> EncoderShape:
        """Read the sizes off a model (through :func:`obce.models.encoder_layers`).

        Raises
        ------
        ValueError
            A compressed model (plans apply to the original), an unsupported family, or layers of unequal sizes.
        """
        if is_compressed(model):
            raise ValueError(f"{type(model).__name__} is already compressed; plans are applied to the original model")
        layers = encoder_layers(model)
        first = layers[0]
        shape = cls(
            num_layers=len(layers),
            num_heads=first.num_heads,
            head_size=first.head_size,
            hidden_size=first.query.in_features,
            intermediate_size=first.intermediate.out_features,
            model_params=sum(p.numel() for p in model.parameters()),
        )
        for layer in layers:
            widths = (layer.query.out_features, layer.value.out_features, layer.intermediate.out_features)
            if widths != (shape.qk_width, shape.qk_width, shape.intermediate_size):
                raise ValueError(f"layer {to_user_layer(layer.index)} has widths {widths}, unlike layer 1")
        return shape

    @property
    def qk_width(self) -> int:
        return self.num_heads * self.head_size

    def layer_params(self, n_qk: int, n_v: int, n_intermediate: int) -> dict[str, int]:
        """Parameters of one layer keeping ``n_qk`` query/key, ``n_v`` value and ``n_intermediate`` neurons."""
        h = self.hidden_size
        return {
            "query": (h + 1) * n_qk,
            "key": (h + 1) * n_qk,
            "value": (h + 1) * n_v,
            "attention_output": n_v * h + h,
            "intermediate": (h + 1) * n_intermediate,
            "output": n_intermediate * h + h,
            "layer_norm": 4 * h,
        }

    @property
    def encoder_params(self) -> int:
        """Parameters of all encoder layers (embeddings and heads excluded)."""
        full = self.layer_params(self.qk_width, self.qk_width, self.intermediate_size)
        return self.num_layers * sum(full.values())


@dataclass(frozen=True)
class LayerSelection:
    """Neurons one layer keeps, as sorted indices into the original layer's outputs.

    ``qk`` indexes query and key (the same dimensions), ``value`` and ``intermediate`` their outputs. Heads are
    contiguous blocks of ``head_size`` dimensions.
    """

    layer: int
    qk: np.ndarray
    value: np.ndarray
    intermediate: np.ndarray
    num_heads: int
    head_size: int

    def head_sizes(self, kept: np.ndarray) -> tuple[int, ...]:
        counts = np.bincount(kept // self.head_size, minlength=self.num_heads)
        return tuple(int(c) for c in counts)

    @property
    def sizes(self) -> LayerSizes:
        """The layer's shape in a compressed config."""
        return LayerSizes(self.head_sizes(self.qk), self.head_sizes(self.value), len(self.intermediate))

    @property
    def removed_heads(self) -> list[int]:
        """Heads (from 0) left without any value dimension, hence removed."""
        return [h for h, e in enumerate(self.head_sizes(self.value)) if e == 0]


def check_score(table, score: str) -> str:
    """Return ``score`` if ``table`` has such a numeric column to rank neurons by, else raise ValueError.

    ``"lam"`` (λ) is always there; other scores are extra columns (see :mod:`obce.scores`).
    """
    if not isinstance(table, ImportanceTable):
        raise TypeError(f"table must be an ImportanceTable, got {type(table).__name__}")
    available = table.value_columns
    if not isinstance(score, str) or score not in available:
        raise ValueError(
            f"unknown score {score!r}: the importance table has no such column; it has {', '.join(available)} "
            "(add scores with obce.scores.add_scores)"
        )
    return score


def _score(table, layer: int, component: str, width: int, score: str = "lam") -> np.ndarray:
    values = np.asarray(table.column(score, layer, component), dtype=np.float64)
    name = "λ" if score == "lam" else repr(score)
    if values.shape != (width,):
        raise ValueError(
            f"the importance table has {values.shape} {name} values for layer {layer} {component}; "
            f"the model has {width}"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(f"the importance table has non-finite {name} for layer {layer} {component}")
    return values


def _keep_above(score: np.ndarray, level: float, where: str) -> np.ndarray:
    kept = np.flatnonzero(score > np.percentile(score, level))
    if kept.size == 0:
        raise ValueError(
            f"{where}: level P{level:g} keeps no neuron (all {score.size} are at or below the threshold); "
            "a component cannot be pruned entirely"
        )
    return kept


def _joint_rank(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Score of each query/key dimension: the product of its query and key ranks within the layer, in (0, 1]."""
    rank_q = pd.Series(q).rank(method="average").to_numpy() / q.size
    rank_k = pd.Series(k).rank(method="average").to_numpy() / k.size
    return rank_q * rank_k


def select_neurons(plan: PruningPlan, table, shape: EncoderShape, *, score: str = "lam") -> list[LayerSelection]:
    """The neurons every layer keeps under ``plan``.

    Neurons are ranked by λ, or by the table column named by ``score`` (read λ below as whichever score ranks).

    Value and intermediate neurons are kept when their λ exceeds the level's percentile within the layer.
    Query and key are kept on the same dimensions, since a score is ``sum_j q_j k_j``: each dimension gets the
    score ``rank(λ_query) * rank(λ_key)`` (ranks within the layer, divided by the width) and is kept when that
    score exceeds the level's percentile of the layer's scores. The product of ranks (not raw λ: query and key
    λ have different scales) demotes a dimension in which either factor barely varies, as the product
    ``q_j k_j`` then barely varies too, yet, unlike the minimum of the two ranks, still orders dimensions by
    the other factor instead of producing ties. The percentile is taken over all the layer's dimensions, so
    heads end up with unequal sizes. A head that keeps no value dimension contributes nothing: it is removed,
    query/key dimensions included.

    Parameters
    ----------
    plan : PruningPlan
    table : obce.importance.ImportanceTable
        λ per neuron (``table.lam(layer, component)``, layers from 1).
    shape : EncoderShape
        The model's sizes (``EncoderShape.from_model(model)``).
    score : str
        The table column to rank by (default ``"lam"``; see :mod:`obce.scores` for others).

    Returns
    -------
    list of LayerSelection
        One per layer, in order.

    Raises
    ------
    ValueError
        The plan names a layer the model lacks or is made for a model of another depth, the table does not match
        the model, a level keeps no neuron, or the table has no column ``score``.
    """
    if not isinstance(plan, PruningPlan):
        raise TypeError(f"plan must be a PruningPlan, got {type(plan).__name__}")
    check_score(table, score)
    plan.check(shape.num_layers)
    if table.layers and table.layers[-1] > shape.num_layers:
        raise ValueError(
            f"the importance table has layers up to {table.layers[-1]}, the model {shape.num_layers}: "
            "a table of another model"
        )
    selections = []
    for layer in range(1, shape.num_layers + 1):
        qk = np.arange(shape.qk_width)
        value = np.arange(shape.qk_width)
        intermediate = np.arange(shape.intermediate_size)
        level = plan.level(layer, "query")
        if level is not None:
            q = _score(table, layer, "query", shape.qk_width, score)
            qk = _keep_above(
                _joint_rank(q, _score(table, layer, "key", shape.qk_width, score)), level, f"layer {layer} query/key"
            )
        level = plan.level(layer, "value")
        if level is not None:
            value = _keep_above(_score(table, layer, "value", shape.qk_width, score), level, f"layer {layer} value")
        level = plan.level(layer, "intermediate")
        if level is not None:
            values = _score(table, layer, "intermediate", shape.intermediate_size, score)
            intermediate = _keep_above(values, level, f"layer {layer} intermediate")
        heads_with_values = np.unique(value // shape.head_size)
        qk = qk[np.isin(qk // shape.head_size, heads_with_values)]
        selections.append(LayerSelection(layer, qk, value, intermediate, shape.num_heads, shape.head_size))
    return selections


@dataclass(frozen=True)
class PlanReport:
    """What a plan does to a model's size, before anything is pruned.

    Attributes
    ----------
    plan : PruningPlan
    table : pandas.DataFrame
        One row per layer (from 1) and component (the six, plus ``layer_norm``): ``neurons_before``,
        ``neurons_after``, ``params_before``, ``params_after``, and per layer ``removed_heads``.
    encoder_before, encoder_after : int
        Parameters of the encoder layers.
    model_before, model_after : int
        Parameters of the whole model (embeddings and heads included).
    """

    plan: PruningPlan
    table: pd.DataFrame = field(repr=False)
    encoder_before: int
    encoder_after: int
    model_before: int
    model_after: int

    @property
    def encoder_fraction(self) -> float:
        """Fraction of the encoder layers' parameters kept."""
        return self.encoder_after / self.encoder_before

    @property
    def model_fraction(self) -> float:
        """Fraction of the whole model's parameters kept."""
        return self.model_after / self.model_before

    def __str__(self) -> str:
        per_layer = self.table.pivot_table(
            index="layer", columns="component", values="params_after", aggfunc="sum", sort=False
        )[list(COMPONENTS)]
        per_layer["total"] = self.table.groupby("layer")["params_after"].sum()
        per_layer["kept"] = per_layer["total"] / self.table.groupby("layer")["params_before"].sum()
        removed = self.table.groupby("layer")["removed_heads"].first()
        per_layer["removed heads (from 0)"] = removed.map(lambda h: ",".join(map(str, h)) or "-")
        return "\n".join(
            [
                self.plan.summary(),
                "",
                "parameters after pruning, per layer and component:",
                per_layer.to_string(float_format=lambda x: f"{x:.3f}"),
                "",
                f"encoder layers: {self.encoder_after:,} of {self.encoder_before:,} ({self.encoder_fraction:.2%})",
                f"whole model:    {self.model_after:,} of {self.model_before:,} ({self.model_fraction:.2%})",
            ]
        )


def _report(plan: PruningPlan, selections: list[LayerSelection], shape: EncoderShape) -> PlanReport:
    full_counts = {"qk": shape.qk_width, "value": shape.qk_width, "intermediate": shape.intermediate_size}
    before = shape.layer_params(full_counts["qk"], full_counts["value"], full_counts["intermediate"])
    neurons_before = {
        "query": shape.qk_width,
        "key": shape.qk_width,
        "value": shape.qk_width,
        "attention_output": shape.hidden_size,
        "intermediate": shape.intermediate_size,
        "output": shape.hidden_size,
        "layer_norm": 0,
    }
    rows = []
    for sel in selections:
        after = shape.layer_params(len(sel.qk), len(sel.value), len(sel.intermediate))
        neurons_after = dict(neurons_before, query=len(sel.qk), key=len(sel.qk), value=len(sel.value))
        neurons_after["intermediate"] = len(sel.intermediate)
        for component in (*COMPONENTS, "layer_norm"):
            rows.append(
                {
                    "layer": sel.layer,
                    "component": component,
                    "neurons_before": neurons_before[component],
                    "neurons_after": neurons_after[component],
                    "params_before": before[component],
                    "params_after": after[component],
                    "removed_heads": sel.removed_heads,
                }
            )
    table = pd.DataFrame(rows)
    removed = int(table["params_before"].sum() - table["params_after"].sum())
    return PlanReport(
        plan=plan,
        table=table,
        encoder_before=shape.encoder_params,
        encoder_after=shape.encoder_params - removed,
        model_before=shape.model_params,
        model_after=shape.model_params - removed,
    )


def dry_run(model, table, plan: PruningPlan, *, score: str = "lam") -> PlanReport:
    """Show what ``plan`` would keep of ``model``, without touching any weight.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The original model (base or with a head).
    table : obce.importance.ImportanceTable
    plan : PruningPlan
    score : str
        The table column neurons are ranked by (see :func:`select_neurons`).

    Returns
    -------
    PlanReport
        ``print(report)`` shows the plan, the parameters per layer and component, and the totals as a fraction
        of the encoder layers and of the whole model. :func:`obce.prune.prune_model` produces a model of exactly
        ``report.model_after`` parameters.

    Raises
    ------
    ValueError
        As :func:`select_neurons`.
    """
    shape = EncoderShape.from_model(model)
    return _report(plan, select_neurons(plan, table, shape, score=score), shape)


def _plan_fraction(plan: PruningPlan, table, shape: EncoderShape, of: str, score: str) -> float:
    report = _report(plan, select_neurons(plan, table, shape, score=score), shape)
    return report.encoder_fraction if of == "encoder" else report.model_fraction


class TargetOutOfReach(ValueError):
    """A :func:`target_plan` fraction below what the highest of its levels keeps everywhere."""


def target_plan(
    model,
    table,
    target: float,
    *,
    of: str = "encoder",
    levels: str | Sequence[float] = "paper",
    start_layer: int = 3,
    spread: float = 40.0,
    score: str = "lam",
) -> PruningPlan:
    """A plan that keeps ``target`` of the parameters, pruning layers with low λ harder.

    The rule. The units are query/key (together), value and intermediate of every layer from ``start_layer``
    on. Each unit gets ``s`` in ``[0, 1]``: the rank of its median λ among the same component's units (for
    query/key, the mean of the query and key ranks), 0 for the lowest median. For a strength ``a`` a unit's
    percentile is ``a + spread * (0.5 - s)``, rounded down to the nearest level of ``levels`` (none below the
    lowest, the highest above it): the unit with the lowest median λ is pruned ``spread`` percentile points
    harder than the one with the highest. ``a`` is raised (bisection) until one more step would go below the
    target. Discrete levels cannot land exactly on a budget, so the units stepping there take their steps one
    at a time, lowest rank first, and the one whose step would cross the target gets the highest percentile
    between its two levels that stays above it. That is within one neuron of the target unless the unit's next
    neuron takes more with it (a value neuron that empties a head takes the head's query/key dimensions; tied
    neurons go together); the units still stepping then split their steps in turn, until the plan is within a
    neuron or none is left. Every other unit stays on a level of ``levels``. A unit whose neurons all tie
    stays whole, and one where many neurons tie at its top score stops at the highest level that still keeps
    some of them (the notes name both).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The original model.
    table : obce.importance.ImportanceTable
    target : float
        Fraction of parameters to keep, in (0, 1).
    of : {"encoder", "model"}
        Whether ``target`` is a fraction of the encoder layers' parameters or of the whole model's.
    levels : {"paper", "quartiles"} or sequence of float
        The levels units are put on.
    start_layer : int
        First prunable layer (from 1); the paper leaves layers 1-2 untouched.
    spread : float
        Percentile points between the hardest- and the lightest-pruned unit at the same strength.
    score : str
        The table column that ranks units (by its medians) and neurons, λ by default; pass the same ``score``
        to :func:`obce.prune.prune_model`.

    Returns
    -------
    PruningPlan
        Made for the model's depth (:attr:`PruningPlan.model_layers`).

    Raises
    ------
    ValueError
        ``target`` outside (0, 1), a negative ``spread`` or an unknown ``score``; :class:`TargetOutOfReach` (a
        ValueError) for a ``target`` below what the highest level reaches.
    """
    if of not in ("encoder", "model"):
        raise ValueError(f"of must be 'encoder' or 'model', got {of!r}")
    if isinstance(spread, bool) or not isinstance(spread, numbers.Real) or not 0 <= spread < math.inf:
        raise ValueError(f"spread must be a number of percentile points >= 0, got {spread!r}")
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or not 0 < target < 1:
        raise ValueError(f"target must be a fraction in (0, 1), got {target!r}")
    level_values = _level_set(levels)
    shape = EncoderShape.from_model(model)
    start_layer = _check_layer(start_layer, "target_plan start_layer")
    _check_start_layer(start_layer, shape.num_layers)
    check_score(table, score)
    units = _rank_units(table, shape, start_layer, score)
    scores = {unit: _unit_scores(table, shape, unit, score) for unit in units}
    # A unit whose neurons all score the same (a first layer's Q/K/V on [CLS] are constant) has no neuron to
    # single out: no percentile removes some of its neurons and not all, so it stays whole.
    tied = [unit for unit in units if np.ptp(scores[unit]) == 0]
    for unit in tied:
        del units[unit]
    if not units:
        raise ValueError(
            f"nothing to prune from layer {start_layer}: in every unit, all neurons have the same "
            f"{'λ' if score == 'lam' else repr(score)}"
        )

    # Where many neurons tie at a unit's top score, high levels keep none of them: such a unit stops at the
    # highest level that keeps some.
    def keeps_some(unit: tuple[int, str], level: float) -> bool:
        return bool(scores[unit].max() > np.percentile(scores[unit], level))

    def build(strength: float, overrides: Mapping[tuple[int, str], float] | None = None) -> PruningPlan:
        overrides = overrides or {}
        rows: dict[int, dict[str, float]] = {}
        for (layer, group), s in units.items():
            below = [v for v in level_values if v <= strength + spread * (0.5 - s)]
            level = overrides.get((layer, group), below[-1] if below else None)
            if level is not None and not keeps_some((layer, group), level):
                level = max((v for v in level_values if v < level and keeps_some((layer, group), v)), default=None)
            if level is not None:
                for c in ("query", "key") if group == "query_key" else (group,):
                    rows.setdefault(layer, {})[c] = level
        return PruningPlan(rows, name=f"target-{target:.1%}-{of}")

    def fraction(plan: PruningPlan) -> float:
        return _plan_fraction(plan, table, shape, of, score)

    top = level_values[-1] + spread
    capped = [unit for unit in units if not keeps_some(unit, level_values[-1])]
    if fraction(build(top)) > target:
        raise TargetOutOfReach(
            f"target {target:.2%} of the {of} is out of reach: the highest level everywhere from layer "
            f"{start_layer} keeps {fraction(build(top)):.2%}"
            + (f" ({len(capped)} units stop lower: many of their neurons tie at the top)" if capped else "")
        )
    # Below every level: fraction(build(lo)) == 1 > target >= fraction(build(hi)).
    lo, hi = level_values[0] - spread - 1, top
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break  # a huge spread puts lo and hi where floats are further apart than 1e-6: they are adjacent
        lo, hi = (mid, hi) if fraction(build(mid)) > target else (lo, mid)
    plan_lo, plan_hi = build(lo), build(hi)
    # Units with tied ranks step together; take their steps one at a time, lowest rank first, and split the
    # step that crosses the target.
    overrides: dict[tuple[int, str], float] = {}
    # The fewest parameters a neuron takes: a value or intermediate row with its reader's column.
    neuron = (2 * shape.hidden_size + 1) / (shape.encoder_params if of == "encoder" else shape.model_params)
    for unit in sorted(units, key=lambda u: units[u]):
        step_from, step_to = plan_lo.level(unit[0], _first(unit[1])), plan_hi.level(unit[0], _first(unit[1]))
        if step_from == step_to:
            continue
        if fraction(build(lo, {**overrides, unit: step_to})) > target:
            overrides[unit] = step_to
            continue
        # Split the step, unless even P0 (the unit's least neuron) would cross the target: the unit stays whole.
        if step_from is not None or fraction(build(lo, {**overrides, unit: 0.0})) > target:
            p_lo, p_hi = (0.0 if step_from is None else step_from), step_to
            while p_hi - p_lo > 1e-3:
                mid = (p_lo + p_hi) / 2
                p_lo, p_hi = (mid, p_hi) if fraction(build(lo, {**overrides, unit: mid})) > target else (p_lo, mid)
            overrides[unit] = math.floor(p_lo * 1000) / 1000  # rounded down: the lighter side of the target
        if fraction(build(lo, overrides)) - target < neuron:
            break  # within one neuron of the target
        # More than a neuron above the target: this unit's next neuron takes more (a value neuron that empties a
        # head takes the head's query/key dimensions; tied neurons go together), so the next units split theirs.
    plan = build(lo, overrides)
    return PruningPlan(
        plan.levels,
        name=plan.name,
        model_layers=shape.num_layers,
        notes=(
            f"levels {'/'.join(f'P{v:g}' for v in level_values)} from the "
            f"{'λ' if score == 'lam' else repr(score)} medians (spread {spread:g}), "
            f"fine-adjusted to {target:.2%} of the {of} (reached {fraction(plan):.3%})"
            + (f"; kept whole, all neurons tied: {_units_text(tied)}" if tied else "")
            + (f"; stopped below the highest level, many tied at the top: {_units_text(capped)}" if capped else "")
        ),
    )


def _units_text(units: list[tuple[int, str]]) -> str:
    return ", ".join(f"layer {layer} {group.replace('_', '/')}" for layer, group in units)


def _unit_scores(table, shape: EncoderShape, unit: tuple[int, str], score: str) -> np.ndarray:
    """The scores that order a unit's neurons: the joint rank for query/key, the score itself otherwise."""
    layer, group = unit
    if group == "query_key":
        q, k = (_score(table, layer, c, shape.qk_width, score) for c in ("query", "key"))
        return _joint_rank(q, k)
    width = shape.intermediate_size if group == "intermediate" else shape.qk_width
    return _score(table, layer, group, width, score)


def _first(group: str) -> str:
    return "query" if group == "query_key" else group


def _rank_units(table, shape: EncoderShape, start_layer: int, score: str) -> dict[tuple[int, str], float]:
    """Each prunable unit's rank of median score (λ) among its component's units, scaled to [0, 1]."""
    layers = list(range(start_layer, shape.num_layers + 1))
    widths = {"query": shape.qk_width, "key": shape.qk_width, "value": shape.qk_width}
    widths["intermediate"] = shape.intermediate_size

    def scaled_rank(component: str) -> np.ndarray:
        medians = pd.Series([np.median(_score(table, layer, component, widths[component], score)) for layer in layers])
        ranks = medians.rank(method="average").to_numpy() - 1
        return ranks / (len(layers) - 1) if len(layers) > 1 else np.full(len(layers), 0.5)

    query_key = (scaled_rank("query") + scaled_rank("key")) / 2
    value, intermediate = scaled_rank("value"), scaled_rank("intermediate")
    units: dict[tuple[int, str], float] = {}
    for i, layer in enumerate(layers):
        units[(layer, "query_key")] = float(query_key[i])
        units[(layer, "value")] = float(value[i])
        units[(layer, "intermediate")] = float(intermediate[i])
    return units
