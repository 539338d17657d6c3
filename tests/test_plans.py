"""Pruning plans: the paper's tables, validation, files, neuron selection and parameter counts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertModel

from obce.importance import ImportanceTable
from obce.models.adapters import COMPONENTS, encoder_layers
from obce.pipeline import build_plan
from obce.plans import (
    EncoderShape,
    PruningPlan,
    dry_run,
    paper_plan,
    select_neurons,
    target_plan,
    uniform_plan,
)


def random_table(model, seed: int = 0, overrides: dict | None = None) -> ImportanceTable:
    """An importance table for ``model`` with random λ, means and standard deviations.

    ``overrides`` maps ``(layer, component)`` (layer from 1) to ``{column: values}`` to set exactly.
    """
    rng = np.random.default_rng(seed)
    frames = []
    for layer in encoder_layers(model):
        for component in COMPONENTS:
            n = layer.width(component)
            columns = {
                "lam": rng.uniform(0.1, 1.0, n),
                "mean": rng.normal(size=n),
                "std": rng.uniform(0.1, 1.0, n),
                "token_mean": rng.normal(size=n),
                "token_std": rng.uniform(0.1, 1.0, n),
            }
            columns.update((overrides or {}).get((layer.index + 1, component), {}))
            frames.append(
                pd.DataFrame({"layer": layer.index + 1, "component": component, "neuron": np.arange(n), **columns})
            )
    return ImportanceTable(pd.concat(frames, ignore_index=True), settings={"seed": seed})


@pytest.fixture
def tiny3(tiny_bert_config):
    """A seeded tiny BertModel with 3 layers (hidden 32, 4 heads of 8, intermediate 37)."""
    torch.manual_seed(0)
    return BertModel(tiny_bert_config(num_hidden_layers=3)).eval()


# The paper's tables as the spec states them (layers from 1): component -> level -> layers.
BASE_SPEC = {
    "query_key": {30: [3, 4, 11, 12], 50: [8, 9, 10], 70: [5, 6, 7]},
    "value": {30: [4], 50: [3, 11, 12], 70: [5, 6, 7, 8, 9, 10]},
    "intermediate": {30: [3, 4, 10, 11, 12], 50: [5, 6, 7, 8, 9]},
}
LARGE_SPEC = {
    "query_key": {30: [11, 12, 14, 15, 16, 17], 50: [4, 5, 6, 7, 8, 9, 10, 18], 70: [3, 13, *range(19, 25)]},
    "value": {50: [4, 9, 10, 11, 12, 14, 15, 16, 17], 70: [3, 5, 6, 7, 8, 13, *range(18, 25)]},
    "intermediate": {30: [3, 4, *range(8, 17), 18], 50: [5, 6, 7, 17, *range(19, 25)]},
}


def _levels_from_spec(spec):
    levels = {}
    for group, by_level in spec.items():
        for level, layers in by_level.items():
            for layer in layers:
                for c in ("query", "key") if group == "query_key" else (group,):
                    levels.setdefault(layer, {})[c] = float(level)
    return levels


@pytest.mark.parametrize(("model", "spec", "n_layers"), [("bert-base", BASE_SPEC, 12), ("bert-large", LARGE_SPEC, 24)])
def test_paper_plans_match_the_tables(model, spec, n_layers):
    plan = paper_plan(model)
    assert plan.levels == _levels_from_spec(spec)
    assert min(plan.layers) == 3 and max(plan.layers) == n_layers
    for layer in range(1, n_layers + 1):
        assert plan.level(layer, "attention_output") is None and plan.level(layer, "output") is None
        assert plan.level(layer, "query") == plan.level(layer, "key")


def test_a_paper_table_is_refused_for_a_model_of_another_depth(tiny_bert_config, tiny3, tmp_path):
    """BERT-base's table on a 24-layer model would prune layers 3-12 only: refused, naming both depths."""
    torch.manual_seed(0)
    deep = BertModel(tiny_bert_config(num_hidden_layers=24))
    table, plan = random_table(deep), paper_plan("bert-base")
    with pytest.raises(ValueError, match="made for a 12-layer model but the model has 24 layers"):
        dry_run(deep, table, plan)
    with pytest.raises(ValueError, match=r"model has 4 layers \(1..4\); it is made for a 12-layer model"):
        PruningPlan.from_dict(plan.to_dict()).check(4)
    assert dry_run(deep, table, PruningPlan(plan.levels)).encoder_fraction < 1  # the levels alone, deliberately
    # The depth is saved with the plan and kept by remap; a file without it (saved before) still loads.
    assert plan.model_layers == 12 and paper_plan("bert-large").model_layers == 24
    assert plan.remap({30: 25, 50: 50, 70: 75}).model_layers == 12
    assert PruningPlan.load(plan.save(tmp_path / "plan.json")) == plan
    assert json.loads((tmp_path / "plan.json").read_text())["model_layers"] == 12
    old = {key: value for key, value in plan.to_dict().items() if key != "model_layers"}
    assert PruningPlan.from_dict(old).model_layers is None
    assert "model_layers" not in PruningPlan(plan.levels).to_dict()
    # A uniform or a target plan is made for the model it is built for, so a deeper one is refused too.
    for made_for_3 in (uniform_plan(3, 50), target_plan(tiny3, random_table(tiny3), 0.8)):
        assert made_for_3.model_layers == 3
        with pytest.raises(ValueError, match="made for a 3-layer model but the model has 24 layers"):
            made_for_3.check(24)


def test_bert_large_layer_13_takes_the_stricter_level():
    plan = paper_plan("bert-large")
    assert plan.level(13, "query") == 70.0
    assert "stricter" in plan.notes


def test_quartile_variant_maps_levels():
    paper, quart = paper_plan("bert-base"), paper_plan("bert-base", "quartiles")
    mapping = {30.0: 25.0, 50.0: 50.0, 70.0: 75.0}
    assert quart.levels == {layer: {c: mapping[v] for c, v in row.items()} for layer, row in paper.levels.items()}
    assert quart.levels == paper.remap(mapping).levels


@pytest.mark.parametrize(
    ("levels", "match"),
    [
        ({3: {"qkv": 30}}, "unknown component 'qkv'"),
        ({3: {"output": 30}}, "'output' is never pruned"),
        ({3: {"attention_output": 30}}, "never pruned"),
        ({3: {"value": -1}}, r"\[0, 100\).*got -1"),
        ({3: {"value": 100.5}}, r"\[0, 100\).*got 100.5"),
        ({3: {"value": float("nan")}}, "got nan"),
        ({3: {"value": True}}, "got True"),
        ({3: {"value": "30"}}, "got '30'"),
        ({0: {"value": 30}}, "counted from 1, got 0"),
        ({"three": {"value": 30}}, "got 'three'"),
        ({3: {"query": 30, "key": 50}}, "query=30.0, key=50.0"),
        ({3: {"query": 30}}, "query=30.0, key=None"),
    ],
)
def test_bad_plans_are_rejected(levels, match):
    with pytest.raises(ValueError, match=match):
        PruningPlan(levels)


def test_level_reads_a_layer_as_the_plan_takes_it():
    plan = PruningPlan({"3": {"value": 30}})
    assert plan.level("3", "value") == plan.level(3, "value") == 30.0
    with pytest.raises(ValueError, match="counted from 1, got 'three'"):
        plan.level("three", "value")


def test_plan_naming_a_missing_layer_is_rejected(tiny3):
    plan = PruningPlan({4: {"value": 30}})
    with pytest.raises(ValueError, match=r"layer\(s\) \[4\] but the model has 3 layers"):
        select_neurons(plan, random_table(tiny3), EncoderShape.from_model(tiny3))


def test_save_load_round_trip(tmp_path):
    plan = paper_plan("bert-large", "quartiles")
    path = plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(path) == plan
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temporary file left behind
    with pytest.raises(FileExistsError, match="overwrite=True"):
        plan.save(path)
    uniform_plan(4, 50).save(path, overwrite=True)
    assert PruningPlan.load(path) == uniform_plan(4, 50)


def test_a_plan_cannot_be_changed_behind_its_checks():
    """Levels are read-only (a level set afterwards would skip validation); the plan still hashes, copies and
    pickles."""
    import copy
    import pickle

    plan = PruningPlan({3: {"query": 30, "key": 30, "value": 50}}, name="x")
    with pytest.raises(TypeError):
        plan.levels[3]["value"] = 250
    with pytest.raises(TypeError):
        plan.levels[4] = {"value": 50}
    same = PruningPlan({3: {"value": 50, "key": 30, "query": 30}}, name="x")
    assert {plan: 1}[same] == 1
    assert copy.deepcopy(plan) == plan and pickle.loads(pickle.dumps(plan)) == plan


def test_load_small_json_and_yaml(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"levels": {"3": {"value": 50, "intermediate": 30}}}))
    plan = PruningPlan.load(tmp_path / "p.json")
    assert plan.levels == {3: {"value": 50.0, "intermediate": 30.0}}
    pytest.importorskip("yaml")
    (tmp_path / "p.yaml").write_text("name: mine\nlevels:\n  3:\n    query: 70\n    key: 70\n")
    plan = PruningPlan.load(tmp_path / "p.yaml")
    assert plan.name == "mine" and plan.levels == {3: {"query": 70.0, "key": 70.0}}


def test_load_rejects_bad_files(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        PruningPlan.load(tmp_path / "bad.json")
    (tmp_path / "nolevels.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="'levels'"):
        PruningPlan.load(tmp_path / "nolevels.json")
    (tmp_path / "extra.json").write_text(json.dumps({"levels": {}, "level": {}}))
    with pytest.raises(ValueError, match=r"unexpected plan keys \['level'\]"):
        PruningPlan.load(tmp_path / "extra.json")
    for name, data in (("list.json", {"levels": [30]}), ("row.json", {"levels": {"3": 30}})):
        (tmp_path / name).write_text(json.dumps(data))  # the wrong shape: a ValueError naming the file
        with pytest.raises(ValueError, match=rf"{name}: "):
            PruningPlan.load(tmp_path / name)
    # A key given twice would silently lose the first row.
    (tmp_path / "twice.json").write_text('{"levels": {"3": {"query": 30, "key": 30}, "3": {"value": 50}}}')
    with pytest.raises(ValueError, match="twice.json is not valid JSON: key '3' is given twice"):
        PruningPlan.load(tmp_path / "twice.json")
    pytest.importorskip("yaml")
    (tmp_path / "twice.yaml").write_text("levels:\n  3: {query: 30, key: 30}\n  3: {value: 50}\n")
    with pytest.raises(ValueError, match="not valid YAML: .*key '3' is given twice"):
        PruningPlan.load(tmp_path / "twice.yaml")
    (tmp_path / "bad.yaml").write_text("levels:\n  3: {query: 30, key: 30\n")
    with pytest.raises(ValueError, match="bad.yaml is not valid YAML"):
        PruningPlan.load(tmp_path / "bad.yaml")


def test_summary_lists_every_layer():
    text = paper_plan("bert-base").summary()
    lines = text.splitlines()
    assert len(lines) == 2 + 12
    assert lines[2].split() == ["1", "-", "-", "-"]
    assert lines[2 + 4].split() == ["5", "P70", "P70", "P50"]
    assert str(PruningPlan({})).endswith("(prunes nothing)")


def test_uniform_plan():
    plan = uniform_plan(5, 40, components=("value", "intermediate"))
    assert plan.layers == [3, 4, 5]
    assert plan.levels[4] == {"value": 40.0, "intermediate": 40.0}
    with pytest.raises(ValueError, match="beyond the model's 2 layers"):
        uniform_plan(2, 30)
    with pytest.raises(ValueError, match="never pruned"):
        uniform_plan(4, 30, components=("output",))
    with pytest.raises(ValueError, match="components is empty, a plan that prunes nothing"):
        uniform_plan(4, 30, components=())
    with pytest.raises(ValueError, match=r"uniform_plan: level must be a percentile in \[0, 100\).*got 150"):
        uniform_plan(4, 150)
    with pytest.raises(ValueError, match=r"plan layer 2 value: .*\(P100 keeps no neuron\), got 100"):
        PruningPlan({2: {"value": 100}})
    # A plan file may write levels as the tables show them.
    assert PruningPlan({3: {"value": "P50", "intermediate": "p30"}}).levels[3] == {"value": 50.0, "intermediate": 30.0}
    for bad in ("P", "Phalf", "50"):
        with pytest.raises(ValueError, match=f"plan layer 3 value: level must be a percentile in .*got '{bad}'"):
            PruningPlan({3: {"value": bad}})
    with pytest.raises(ValueError, match=r"P100 keeps no neuron\), got 100"):
        PruningPlan({3: {"value": "P100"}})


def test_plan_builders_name_a_model_passed_by_mistake(tiny3):
    """A model where a number or a name belongs: the message names its type, not its whole repr."""
    with pytest.raises(TypeError, match=r"number of encoder layers.*got a BertModel$"):
        uniform_plan(tiny3, 50)
    with pytest.raises(TypeError, match=r"table's name.*got a BertModel$"):
        paper_plan(tiny3)
    with pytest.raises(ValueError, match=r"counted from 1, got a BertModel$"):
        target_plan(tiny3, random_table(tiny3), 0.6, start_layer=tiny3)


def test_selection_keeps_neurons_above_the_percentile(tiny3):
    table = random_table(tiny3)
    plan = PruningPlan({2: {"value": 50, "intermediate": 30}})
    sel = select_neurons(plan, table, EncoderShape.from_model(tiny3))
    lam_v, lam_i = table.lam(2, "value"), table.lam(2, "intermediate")
    np.testing.assert_array_equal(sel[1].value, np.flatnonzero(lam_v > np.median(lam_v)))
    assert len(sel[1].value) == 16
    assert len(sel[1].intermediate) == 26  # strictly above the interpolated P30 (between 11th and 12th)
    np.testing.assert_array_equal(sel[1].intermediate, np.flatnonzero(lam_i > np.percentile(lam_i, 30)))
    np.testing.assert_array_equal(sel[0].qk, np.arange(32))  # layer 1 untouched
    np.testing.assert_array_equal(sel[1].qk, np.arange(32))


def test_query_key_ranked_by_the_product_of_ranks(tiny3):
    q = np.arange(1, 33, dtype=float)  # λ equal to the ranks 1..32
    k = 7 * q % 33  # a shuffle of the ranks, on which the least of the two ranks chooses other dimensions
    table = random_table(tiny3, overrides={(3, "query"): {"lam": q}, (3, "key"): {"lam": k}})
    sel = select_neurons(PruningPlan({3: {"query": 50, "key": 50}}), table, EncoderShape.from_model(tiny3))
    product, least = q * k, np.minimum(q, k)
    np.testing.assert_array_equal(sel[2].qk, np.flatnonzero(product > np.median(product)))
    # Dimension 8 (ranks 9 and 30, product 270 above the median 212) is kept, dimension 10 (ranks 11 and 11,
    # product 121) is not; by the least rank (9 below its median 10.5, 11 above) it would be the other way round.
    assert 8 in sel[2].qk and 10 not in sel[2].qk
    assert set(np.flatnonzero(least > np.median(least))) != set(sel[2].qk)


def test_head_without_values_is_removed_with_its_query_key(tiny3):
    lam = np.ones(32)
    lam[8:16] = 0.01  # head 1's value dims are the least important
    table = random_table(tiny3, overrides={(2, "value"): {"lam": lam + np.linspace(0, 0.001, 32)}})
    sel = select_neurons(PruningPlan({2: {"value": 25}}), table, EncoderShape.from_model(tiny3))[1]
    assert sel.removed_heads == [1]
    assert sel.sizes.v_head_sizes == (8, 0, 8, 8) and sel.sizes.qk_head_sizes == (8, 0, 8, 8)


def test_pruning_everything_is_rejected(tiny3):
    table = random_table(tiny3, overrides={(3, "intermediate"): {"lam": np.ones(37)}})
    with pytest.raises(ValueError, match="keeps no neuron"):
        select_neurons(PruningPlan({3: {"intermediate": 10}}), table, EncoderShape.from_model(tiny3))


def test_a_table_edited_to_hold_nan_is_rejected(tiny3):
    table = random_table(tiny3)
    table.neurons.loc[(table.neurons["layer"] == 2) & (table.neurons["component"] == "key"), "lam"] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        select_neurons(PruningPlan({2: {"query": 0, "key": 0}}), table, EncoderShape.from_model(tiny3))


def test_wrong_argument_types_and_a_deeper_models_table_are_named(tiny3, tiny_bert_config):
    shape = EncoderShape.from_model(tiny3)
    with pytest.raises(TypeError, match="plan must be a PruningPlan, got dict"):
        select_neurons({3: {"value": 30}}, random_table(tiny3), shape)
    with pytest.raises(TypeError, match="table must be an ImportanceTable, got DataFrame"):
        select_neurons(PruningPlan({}), random_table(tiny3).neurons, shape)
    torch.manual_seed(0)
    deeper = random_table(BertModel(tiny_bert_config(num_hidden_layers=4)))
    with pytest.raises(ValueError, match="layers up to 4, the model 3: a table of another model"):
        dry_run(tiny3, deeper, uniform_plan(3, 30))


def test_plan_files_with_a_byte_order_mark_or_not_utf8(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"levels": {"3": {"value": 30}}}), encoding="utf-8-sig")
    assert PruningPlan.load(path).levels == {3: {"value": 30.0}}
    path.write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(ValueError, match=r"plan.json is not UTF-8 text \(invalid continuation byte at byte 13\)"):
        PruningPlan.load(path)


def test_table_of_another_model_is_rejected(tiny3, tiny_bert_config):
    torch.manual_seed(0)
    other = BertModel(tiny_bert_config(num_hidden_layers=3, intermediate_size=40))
    with pytest.raises(ValueError, match=r"\(40,\) λ values for layer 3 intermediate; the model has 37"):
        dry_run(tiny3, random_table(other), uniform_plan(3, 30))


def test_parameter_counts_by_hand(tiny3):
    # hidden 32, 4 heads x 8, intermediate 37. Layer 3: value P50 keeps 16, intermediate P30 keeps 26 of 37
    # (the interpolated P30 lies between the 11th and 12th smallest λ).
    report = dry_run(tiny3, random_table(tiny3), PruningPlan({3: {"value": 50, "intermediate": 30}}))
    full_layer = 3 * (32 * 32 + 32) + (32 * 32 + 32) + (32 * 37 + 37) + (37 * 32 + 32) + 4 * 32
    assert full_layer == 6789
    layer3 = 2 * (32 * 32 + 32) + (32 * 16 + 16) + (16 * 32 + 32) + (32 * 26 + 26) + (26 * 32 + 32) + 4 * 32
    assert report.encoder_before == 3 * 6789
    assert report.encoder_after == 2 * 6789 + layer3
    rows = report.table.set_index(["layer", "component"])
    assert rows.loc[(3, "attention_output"), "params_after"] == 16 * 32 + 32
    assert rows.loc[(3, "intermediate"), "neurons_after"] == 26
    embeddings = sum(p.numel() for p in tiny3.embeddings.parameters()) + sum(
        p.numel() for p in tiny3.pooler.parameters()
    )
    assert report.model_before == 3 * 6789 + embeddings
    assert report.model_after == report.model_before - (6789 - layer3)
    text = str(report)
    assert "encoder layers: 18,612 of 20,367 (91.38%)" in text


def test_paper_plan_on_bert_base_sized_model():
    """The fraction the BERT-base table implies (the paper reports 58.47 %: see the plan's docstring)."""
    torch.manual_seed(0)
    model = BertModel(BertConfig())
    report = dry_run(model, random_table(model), paper_plan("bert-base"))
    assert report.encoder_before == 85_054_464 and report.model_before == 109_482_240
    assert report.encoder_after == 53_416_243
    assert report.encoder_fraction == pytest.approx(0.6280, abs=5e-5)
    assert report.model_fraction == pytest.approx(0.7110, abs=5e-5)


def test_target_spec_adds_p90_when_the_paper_levels_fall_short(tiny_bert_config):
    """`--plan target:F` below what P70 everywhere keeps: the pipeline adds P90 to the levels instead of failing."""
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(num_hidden_layers=6)).eval()
    table = random_table(model)
    with pytest.raises(ValueError, match="out of reach"):
        target_plan(model, table, 0.5)  # P70 everywhere from layer 3 keeps 55% here
    plan = build_plan("target:0.5", model, table)
    report = dry_run(model, table, plan)
    assert 0.5 <= report.encoder_fraction < 0.502  # within a neuron or two of this tiny model
    assert "P30/P50/P70/P90" in plan.notes and max(max(row.values()) for row in plan.levels.values()) > 70
    assert build_plan("target:0.8", model, table).notes.startswith("levels P30/P50/P70 from")
    with pytest.raises(ValueError, match="out of reach"):
        build_plan("target:0.05", model, table)


def test_target_plan_keeps_units_whose_neurons_all_tie(tiny_bert_config):
    """A first layer's Q/K/V are constant on [CLS] (λ = 0 for every neuron): no percentile can prune part of them."""
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(num_hidden_layers=4)).eval()
    constant = {(1, c): {"lam": np.zeros(32)} for c in ("query", "key", "value")}
    table = random_table(model, overrides=constant)
    plan = target_plan(model, table, 0.8, start_layer=1)
    assert plan.level(1, "query") is None and plan.level(1, "value") is None
    assert plan.level(1, "intermediate") is not None
    assert "kept whole, all neurons tied: layer 1 query/key, layer 1 value" in plan.notes
    assert dry_run(model, table, plan).encoder_fraction >= 0.8
    flat = {(n, c): {"lam": np.ones(37 if c == "intermediate" else 32)} for n in (3, 4) for c in COMPONENTS}
    with pytest.raises(ValueError, match="nothing to prune from layer 3: in every unit, all neurons have the same λ"):
        target_plan(model, random_table(model, overrides=flat), 0.8)


def test_target_plan_stops_a_unit_at_the_highest_level_that_keeps_some(tiny_bert_config):
    """36 of a unit's 37 neurons tie at its top λ: every level from P2.8 on keeps none of them, so that unit stays
    below, while the others take the levels the target needs."""
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(num_hidden_layers=4)).eval()
    table = random_table(model, overrides={(3, "intermediate"): {"lam": np.r_[0.5, np.ones(36)]}})
    plan = target_plan(model, table, 0.8)
    level = plan.level(3, "intermediate")
    assert level is None or level < 100 / 36
    assert "stopped below the highest level, many tied at the top: layer 3 intermediate" in plan.notes
    assert dry_run(model, table, plan).encoder_fraction >= 0.8


def test_target_plan_lands_on_the_budget(tiny_bert_config):
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(num_hidden_layers=6)).eval()
    # Median λ rises with depth, so deeper layers should be pruned less.
    overrides = {
        (layer, c): {"lam": np.random.default_rng(layer).uniform(0, 1, 37 if c == "intermediate" else 32) * layer}
        for layer in range(1, 7)
        for c in ("query", "key", "value", "intermediate")
    }
    table = random_table(model, overrides=overrides)
    for target in (0.95, 0.85, 0.7):  # at 0.95 even P0 of the last unit would cross the target: it stays whole
        plan = target_plan(model, table, target)
        report = dry_run(model, table, plan)
        assert report.encoder_fraction >= target
        assert report.encoder_fraction - target < 40 / report.encoder_before  # within one neuron's parameters
        assert 1 not in plan.levels and 2 not in plan.levels
        off_level = [(n, c) for n, row in plan.levels.items() for c, v in row.items() if v not in (30, 50, 70)]
        assert len({(n, "query" if c == "key" else c) for n, c in off_level}) <= 1
        strength = [sum(plan.level(layer, c) or 0 for c in ("query", "value", "intermediate")) for layer in range(3, 7)]
        assert strength == sorted(strength, reverse=True) and strength[0] > strength[-1]
    with pytest.raises(ValueError, match="out of reach"):
        target_plan(model, table, 0.05)
    with pytest.raises(ValueError, match=r"fraction in \(0, 1\), got 1.5"):
        target_plan(model, table, 1.5)
    # Without spread every unit steps at the same strength; the target is still met.
    report = dry_run(model, table, target_plan(model, table, 0.9, spread=0))
    assert 0.9 <= report.encoder_fraction < 0.9 + 40 / report.encoder_before
    with pytest.raises(ValueError, match="spread must be a number of percentile points >= 0, got -40"):
        target_plan(model, table, 0.9, spread=-40)


def test_target_plan_ends_for_a_huge_spread(tiny_bert_config, monkeypatch):
    """At a spread of 1e11 the strengths bisected over are ~5e10, where floats are further apart than the
    bisection's 1e-6: it must end anyway, with the plan a moderate spread that also steps one unit at a time
    gives."""
    import obce.plans

    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(num_hidden_layers=5)).eval()
    table = random_table(model)
    fraction, calls = obce.plans._plan_fraction, []

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1000:
            raise RuntimeError("target_plan does not end")
        return fraction(*args, **kwargs)

    monkeypatch.setattr(obce.plans, "_plan_fraction", counted)
    for target in (0.99, 0.95):
        calls.clear()
        plan = target_plan(model, table, target, spread=1e11)
        assert plan.levels == target_plan(model, table, target, spread=1e4).levels
        assert dry_run(model, table, plan).encoder_fraction >= target


def test_target_plan_lands_within_a_neuron_when_a_step_empties_a_head(tiny_bert_config):
    """Layer 4's value is the unit split at the target, and its next value dimension would empty a head (taking
    the head's query/key dimensions, 528 parameters): the unit stepping after it, layer 5's intermediate, takes up
    the rest. Splitting layer 4's value alone stopped 468 parameters above the target, where a neuron is 65."""
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(num_hidden_layers=5)).eval()
    rng = np.random.default_rng(2)
    overrides = {}
    for layer in range(1, 6):
        for c in ("query", "key", "value", "intermediate"):
            width = 37 if c == "intermediate" else 32
            overrides[(layer, c)] = {"lam": rng.uniform(0, 1, width) * (1 + layer * rng.uniform(-0.3, 0.3))}
    table = random_table(model, seed=2, overrides=overrides)
    plan = target_plan(model, table, 0.9, levels=(0, 50, 90), spread=200)
    report = dry_run(model, table, plan)
    assert plan.level(4, "value") not in (0, 50, 90) and plan.level(5, "intermediate") not in (0, 50, 90)
    assert 0 <= (report.encoder_fraction - 0.9) * report.encoder_before < 2 * 32 + 1
