"""Structural pruning: exactness, bias folding, unequal heads, parameter counts and bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_activations import manual_components
from test_plans import random_table
from transformers import AutoModel, BertForPreTraining, BertForSequenceClassification, BertModel

import obce.prune
from obce.models.adapters import encoder_layers
from obce.plans import EncoderShape, PruningPlan, dry_run, select_neurons, uniform_plan
from obce.prune import prune_model


@pytest.fixture
def tiny3(tiny_bert_config):
    torch.manual_seed(0)
    return BertModel(tiny_bert_config(num_hidden_layers=3)).eval()


@pytest.fixture
def batch():
    """Two sequences of 9 tokens, the second padded after 5."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (2, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def hidden(model, batch):
    with torch.no_grad():
        return model(**batch).last_hidden_state


@torch.no_grad()
def masked_reference(model, table, plan, fold="mean", statistics="token"):
    """The original model with pruned neurons neutralised in place instead of removed.

    Query/key rows are zeroed (their score terms vanish); a removed value dimension is made the constant it is
    folded as (zero weights, bias ``c``), which attention passes through unchanged; a removed intermediate
    neuron's output column is zeroed after adding its constant's contribution to the output bias.
    """
    ref = copy.deepcopy(model)
    # Written out, not read from obce.prune: the columns each statistics option names are part of what is tested.
    mean_col, std_col = {"token": ("token_mean", "token_std"), "point": ("mean", "std")}[statistics]
    for layer, sel in zip(encoder_layers(ref), select_neurons(plan, table, EncoderShape.from_model(ref)), strict=True):

        def constants(component, removed, layer_number=sel.layer):
            if fold == "none":
                return torch.zeros(len(removed))
            c = table.column(mean_col, layer_number, component)
            if fold == "mean+std":
                c = c + table.column(std_col, layer_number, component)
            return torch.as_tensor(c[removed], dtype=torch.float32)

        gone_qk = np.setdiff1d(np.arange(32), sel.qk)
        for lin in (layer.query, layer.key):
            lin.weight[gone_qk] = 0
            lin.bias[gone_qk] = 0
        gone_v = np.setdiff1d(np.arange(32), sel.value)
        layer.value.weight[gone_v] = 0
        layer.value.bias[gone_v] = constants("value", gone_v)
        gone_i = np.setdiff1d(np.arange(layer.intermediate.out_features), sel.intermediate)
        layer.output.bias += layer.output.weight[:, gone_i] @ constants("intermediate", gone_i)
        layer.output.weight[:, gone_i] = 0
    return ref


MIXED_PLAN = PruningPlan(
    {
        2: {"query": 70, "key": 70, "value": 30, "intermediate": 50},
        3: {"query": 30, "key": 30, "value": 70, "intermediate": 70},
    }
)


def test_pruning_nothing_changes_nothing(tiny3, batch):
    pruned = prune_model(tiny3, random_table(tiny3), PruningPlan({}))
    assert type(pruned).__name__ == "ObceBertModel"
    torch.testing.assert_close(hidden(pruned, batch), hidden(tiny3, batch), atol=1e-6, rtol=0)


def test_sequence_classifier_pruning_nothing(tiny_bert_config, batch):
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=3)).eval()
    pruned = prune_model(model, random_table(model), PruningPlan({}))
    assert type(pruned).__name__ == "ObceBertForSequenceClassification"
    with torch.no_grad():
        torch.testing.assert_close(pruned(**batch).logits, model(**batch).logits, atol=1e-6, rtol=0)


def test_original_is_left_untouched(tiny3, batch):
    before = {k: v.clone() for k, v in tiny3.state_dict().items()}
    out_before = hidden(tiny3, batch)
    pruned = prune_model(tiny3, random_table(tiny3), MIXED_PLAN)
    assert pruned is not tiny3
    after = tiny3.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(hidden(tiny3, batch), out_before)


@pytest.mark.parametrize("attention", ["padded", "loop"])
@pytest.mark.parametrize(("fold", "statistics"), [("mean", "token"), ("mean+std", "point"), ("none", "token")])
def test_matches_the_masked_original(tiny3, batch, attention, fold, statistics):
    table = random_table(tiny3)
    pruned = prune_model(tiny3, table, MIXED_PLAN, fold=fold, statistics=statistics, attention=attention)
    sizes = pruned.config.obce_layers
    assert len(set(sizes[1]["qk_head_sizes"])) > 1, "heads should have unequal sizes here"
    expected = hidden(masked_reference(tiny3, table, MIXED_PLAN, fold, statistics), batch)
    torch.testing.assert_close(hidden(pruned, batch), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(hidden(pruned, batch), hidden(tiny3, batch), atol=1e-3)


def test_constant_neurons_are_folded_exactly(tiny3, batch, tiny_tokenizer, sentences):
    """A value dim and an intermediate neuron that are constant on every input vanish without a trace."""
    layers = encoder_layers(tiny3)
    with torch.no_grad():
        layers[1].value.weight[5] = 0
        layers[1].value.bias[5] = 0.7
        layers[2].intermediate.weight[11] = 0
        layers[2].intermediate.bias[11] = 1.3
    gelu = float(torch.nn.functional.gelu(torch.tensor(1.3)))
    lam_v, lam_i = np.linspace(0.1, 1, 32), np.linspace(0.1, 1, 37)
    lam_v[5], lam_i[11] = 0.0, 0.0
    overrides = {
        (2, "value"): {"lam": lam_v, "mean": np.full(32, 0.7), "token_mean": np.full(32, 0.7)},
        (3, "intermediate"): {"lam": lam_i, "mean": np.full(37, gelu), "token_mean": np.full(37, gelu)},
    }
    table = random_table(tiny3, overrides=overrides)
    plan = PruningPlan({2: {"value": 0}, 3: {"intermediate": 0}})  # P0 drops exactly the one λ = 0 neuron
    reference = hidden(tiny3, batch)
    table.sentences = sentences
    for fold, statistics in (("mean", "token"), ("mean", "point"), ("linear", "token")):
        pruned = prune_model(tiny3, table, plan, fold=fold, statistics=statistics, tokenizer=tiny_tokenizer)
        assert pruned.config.obce_layers[1]["v_head_sizes"] == [7, 8, 8, 8]
        assert pruned.config.obce_layers[2]["intermediate_size"] == 36
        torch.testing.assert_close(hidden(pruned, batch), reference, atol=1e-6, rtol=0)
    unfolded = prune_model(tiny3, table, plan)  # the default folds nothing
    assert (hidden(unfolded, batch) - reference).abs().max() > 1e-3


def test_linear_fold_is_the_least_squares_fit(tiny3, tiny_tokenizer, sentences, monkeypatch):
    """Without the ridge, each reader's kept columns and bias are the least-squares fit of its original output
    over every real token of the table's sentences (numpy's lstsq on the manual forward pass's inputs)."""
    monkeypatch.setattr(obce.prune, "LINEAR_RIDGE", 0.0)
    table = random_table(tiny3)
    table.sentences = sentences
    pruned = prune_model(tiny3, table, MIXED_PLAN, fold="linear", tokenizer=tiny_tokenizer, progress=False)
    manual = [manual_components(tiny3, tiny_tokenizer, s) for s in sentences]
    selections = select_neurons(MIXED_PLAN, table, EncoderShape.from_model(tiny3))
    checked = 0
    for i, sel in enumerate(selections):
        for component, source, kept in (
            ("value", "context", sel.value),
            ("intermediate", "intermediate", sel.intermediate),
        ):
            original, new = encoder_layers(tiny3)[i].reader(component), encoder_layers(pruned)[i].reader(component)
            if len(kept) == original.in_features:
                assert torch.equal(new.weight, original.weight) and torch.equal(new.bias, original.bias)
                continue
            x = torch.cat([m[i][source] for m in manual]).double().numpy()
            target = x @ original.weight.detach().double().numpy().T + original.bias.detach().double().numpy()
            design = np.hstack([x[:, kept], np.ones((len(x), 1))])
            coef = np.linalg.lstsq(design, target, rcond=None)[0]
            np.testing.assert_allclose(new.weight.detach().numpy(), coef[:-1].T, rtol=0, atol=2e-4)
            np.testing.assert_allclose(new.bias.detach().numpy(), coef[-1], rtol=0, atol=2e-4)
            checked += 1
    assert checked == 4


def test_linear_fold_keeps_the_model_closer_than_mean_or_none(tiny3, tiny_tokenizer, sentences):
    table = random_table(tiny3)
    table.sentences = sentences
    encoded = tiny_tokenizer(sentences, padding=True, return_tensors="pt")
    reference = hidden(tiny3, encoded)
    mask = encoded["attention_mask"].bool()
    errors = {}
    for fold in ("none", "mean", "linear"):
        pruned = prune_model(tiny3, table, MIXED_PLAN, fold=fold, tokenizer=tiny_tokenizer, progress=False)
        errors[fold] = float((hidden(pruned, encoded) - reference)[mask].square().mean())
    assert errors["linear"] < 0.5 * min(errors["none"], errors["mean"]), errors


def test_head_without_query_key_attends_uniformly(tiny3, batch, tmp_path):
    q = np.random.default_rng(3).uniform(1, 2, 32)
    q[16:24] = np.linspace(0.01, 0.02, 8)  # head 2's query/key dims rank lowest on both sides
    table = random_table(tiny3, overrides={(2, "query"): {"lam": q}, (2, "key"): {"lam": q.copy()}})
    plan = PruningPlan({2: {"query": 25, "key": 25}})
    pruned = prune_model(tiny3, table, plan)
    assert pruned.config.obce_layers[1]["qk_head_sizes"] == [8, 8, 0, 8]
    with torch.no_grad():
        # Under SDPA no layer gives weights, as in the family's own model; eager ones give one entry per layer.
        assert not pruned(**batch, output_attentions=True).attentions
        pruned.save_pretrained(tmp_path)
        out = AutoModel.from_pretrained(tmp_path, attn_implementation="eager")(**batch, output_attentions=True)
    assert len(out.attentions) == 3
    weights = out.attentions[1][:, 2]  # layer 2, head 2: uniform over the real tokens
    torch.testing.assert_close(weights[0], torch.full((9, 9), 1 / 9), atol=1e-6, rtol=0)
    torch.testing.assert_close(weights[1][:, :5], torch.full((9, 5), 1 / 5), atol=1e-6, rtol=0)
    assert torch.all(weights[1][:, 5:] == 0)
    expected = hidden(masked_reference(tiny3, table, plan), batch)
    torch.testing.assert_close(out.last_hidden_state, expected, atol=1e-5, rtol=1e-5)


def test_parameter_count_matches_the_dry_run(tiny3):
    table = random_table(tiny3)
    report = dry_run(tiny3, table, MIXED_PLAN)
    pruned = prune_model(tiny3, table, MIXED_PLAN)
    assert sum(p.numel() for p in pruned.parameters()) == report.model_after
    assert report.model_after < report.model_before
    layer = encoder_layers(pruned)[2]
    assert layer.value.out_features == 10  # P70 of 32 distinct λ keeps those above the 70th percentile: 10
    assert layer.attention_output.in_features == layer.value.out_features
    assert layer.output.in_features == layer.intermediate.out_features


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"plan": PruningPlan({4: {"value": 30}})}, r"names layer\(s\) \[4\] but the model has 3 layers"),
        ({"plan": {3: {"value": 30}}}, "plan must be a PruningPlan"),
        ({"fold": "median"}, "fold must be one of .* got 'median'"),
        ({"statistics": "cls"}, "statistics must be one of .* got 'cls'"),
        ({"attention": "dense"}, "attention must be one of .* got 'dense'"),
        ({"fold": "linear"}, "fold='linear' runs the model over the table's sentences: pass tokenizer="),
        ({"fold": "linear", "tokenizer": object()}, "needs the sentences the table was computed on"),
    ],
)
def test_bad_input_is_rejected_before_any_weight_is_touched(tiny3, kwargs, match, monkeypatch):
    def surgery(*args):
        raise AssertionError("the weights were sliced before the input was checked")

    monkeypatch.setattr(obce.prune, "_pruned_state", surgery)
    before = {k: v.clone() for k, v in tiny3.state_dict().items()}
    options = {"plan": uniform_plan(3, 30), **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        prune_model(tiny3, random_table(tiny3), options.pop("plan"), **options)
    assert all(torch.equal(before[k], v) for k, v in tiny3.state_dict().items())


def test_a_model_on_the_meta_device_is_refused(tiny_bert_config):
    with torch.device("meta"):
        model = BertModel(tiny_bert_config(num_hidden_layers=3))
    with pytest.raises(ValueError, match="meta device"):
        prune_model(model, random_table(model), uniform_plan(3, 30))


def test_unsupported_class_is_rejected(tiny_bert_config):
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_bert_config())
    with pytest.raises(ValueError, match="no compressed counterpart for BertForPreTraining"):
        prune_model(model, random_table(model), PruningPlan({}))


def test_a_compressed_model_is_not_pruned_again(tiny3):
    table = random_table(tiny3)
    small = prune_model(tiny3, table, PruningPlan({2: {"value": 50}}))
    with pytest.raises(ValueError, match="ObceBertModel is compressed already: prune the original"):
        prune_model(small, table, PruningPlan({3: {"value": 50}}))


def test_dtype_and_mode_follow_the_original(tiny3):
    model = tiny3.double().train()
    model.embeddings.eval()  # a part in eval mode under a training model (say a frozen one) stays so
    model.encoder.layer[1].attention.self.eval()
    pruned = prune_model(model, random_table(model), MIXED_PLAN)
    assert pruned.training and not pruned.encoder.layer[1].attention.self.dropout.training
    modes = {name: module.training for name, module in model.named_modules()}
    assert {name: module.training for name, module in pruned.named_modules()} == modes
    assert {p.dtype for p in pruned.parameters()} == {torch.float64}
    ids = torch.randint(5, 100, (2, 6))
    loss = pruned(input_ids=ids).last_hidden_state.pow(2).mean()
    loss.backward()
    assert encoder_layers(pruned)[1].query.weight.grad is not None


def test_frozen_parameters_stay_frozen(tiny3):
    tiny3.embeddings.requires_grad_(False)
    encoder_layers(tiny3)[2].value.requires_grad_(False)
    frozen = {name for name, p in tiny3.named_parameters() if not p.requires_grad}
    pruned = prune_model(tiny3, random_table(tiny3), MIXED_PLAN)
    assert {name for name, p in pruned.named_parameters() if not p.requires_grad} == frozen


@pytest.mark.parametrize("column", ["token_mean", "token_std"])
def test_a_non_finite_fold_statistic_is_named(tiny3, column):
    table = random_table(tiny3)
    table.neurons.loc[table.neurons["layer"] == 3, column] = np.inf  # edited after the table's own checks
    with pytest.raises(ValueError, match=f"non-finite '{column}' for layer 3 value"):
        prune_model(tiny3, table, uniform_plan(3, 30), fold="mean+std", progress=False)


def test_a_float64_model_keeps_its_weights_exactly(tiny3):
    model = tiny3.double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-9 * torch.randn_like(p))  # not a float32 value any more
    small = prune_model(model, random_table(model), uniform_plan(3, 30), progress=False)
    assert next(small.parameters()).dtype == torch.float64
    untouched = {k: v for k, v in model.state_dict().items() if "layer.2." not in k}  # layer 3 is pruned
    for name, tensor in untouched.items():
        assert torch.equal(small.state_dict()[name], tensor), name
