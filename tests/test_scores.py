"""Neuron scores other than λ: each against a hand computation, and plans that rank by them."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import mst_longest_edge
from transformers import BertForSequenceClassification

from obce.activations import compute_activations
from obce.importance import ImportanceTable, compute_importance
from obce.models.adapters import COMPONENTS
from obce.plans import EncoderShape, PruningPlan, dry_run, select_neurons, target_plan
from obce.prune import prune_model
from obce.scores import (
    abs_mean_score,
    add_scores,
    head_score,
    lam_weighted_score,
    random_score,
    table_score,
    task_batches,
    taylor_score,
    weight_score,
)
from obce.tasks import _make_task, task_info


def linears(model, index: int) -> dict[str, torch.nn.Linear]:
    """The six components' linear layers of BERT layer ``index`` (from 0), read off the module tree."""
    layer = model.encoder.layer[index]
    return {
        "query": layer.attention.self.query,
        "key": layer.attention.self.key,
        "value": layer.attention.self.value,
        "attention_output": layer.attention.output.dense,
        "intermediate": layer.intermediate.dense,
        "output": layer.output.dense,
    }


def outputs_by_hand(model, tokenizer, sentences, token: str) -> dict[tuple[int, str], np.ndarray]:
    """Each layer/component's outputs, one sentence at a time: the [CLS] row (``cls``) or every token's."""
    found: dict[tuple[int, str], list[np.ndarray]] = {}
    handles = []
    for index in range(model.config.num_hidden_layers):
        for component, linear in linears(model, index).items():

            def hook(_m, _i, out, key=(index + 1, component)):
                if key[1] == "intermediate":
                    out = F.gelu(out)
                rows = out[0, :1] if token == "cls" else out[0]
                found.setdefault(key, []).append(rows.detach().double().numpy())

            handles.append(linear.register_forward_hook(hook))
    with torch.no_grad():
        for sentence in sentences:
            model(**tokenizer(sentence, return_tensors="pt"))
    for handle in handles:
        handle.remove()
    return {key: np.concatenate(rows) for key, rows in found.items()}


@pytest.fixture
def cls_run(tiny_bert, tiny_tokenizer, sentences):
    acts = compute_activations(tiny_bert, tiny_tokenizer, sentences, token="cls", progress=False)
    return acts, compute_importance(acts, heads=True)


def test_random_score_is_seeded(cls_run):
    _, table = cls_run
    a, b, c = random_score(table, 0), random_score(table, 0), random_score(table, 1)
    assert a.shape == (len(table),) and ((a >= 0) & (a < 1)).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(TypeError, match="seed must be an int, got 1.5"):
        random_score(table, 1.5)


def test_abs_mean_matches_outputs_by_hand(cls_run, tiny_bert, tiny_tokenizer, sentences):
    acts, table = cls_run
    scored = table.with_columns({"abs_mean": abs_mean_score(table, acts)})
    by_hand = outputs_by_hand(tiny_bert, tiny_tokenizer, sentences, "cls")
    assert len(by_hand) == 12
    for (layer, component), points in by_hand.items():
        np.testing.assert_allclose(scored.column("abs_mean", layer, component), np.abs(points).mean(0), rtol=1e-5)


def test_weight_and_outgoing_norms_by_hand(cls_run, tiny_bert):
    _, table = cls_run
    scored = table.with_columns(
        {"weight": weight_score(table, tiny_bert), "lam_weighted": lam_weighted_score(table, tiny_bert)}
    )
    for index in range(2):
        mods = linears(tiny_bert, index)
        for component, linear in mods.items():
            w = linear.weight.detach().double().numpy()
            rows = [np.sqrt((w[j] ** 2).sum()) for j in range(w.shape[0])]
            np.testing.assert_allclose(scored.column("weight", index + 1, component), rows, rtol=1e-6)
        reader = {"value": mods["attention_output"], "intermediate": mods["output"]}
        for component in COMPONENTS:
            lam = table.lam(index + 1, component)
            if component in reader:
                w = reader[component].weight.detach().double().numpy()
                expected = lam * np.array([np.sqrt((w[:, j] ** 2).sum()) for j in range(w.shape[1])])
            else:
                expected = lam
            np.testing.assert_allclose(scored.column("lam_weighted", index + 1, component), expected, rtol=1e-6)


def test_head_score_gives_each_dimension_its_heads_lambda(cls_run, tiny_bert, tiny_tokenizer, sentences):
    _, table = cls_run
    scores = table.with_columns({"lam_head": head_score(table)})
    by_hand = outputs_by_hand(tiny_bert, tiny_tokenizer, sentences, "cls")
    for layer in (1, 2):
        for component in ("query", "key", "value"):
            got = scores.column("lam_head", layer, component)
            own = table.lam(layer, component)
            for head in range(4):
                dims = slice(8 * head, 8 * head + 8)
                expected = mst_longest_edge(by_hand[(layer, component)][:, dims])
                np.testing.assert_allclose(got[dims], expected, rtol=1e-5)
                # Within the head, the nudge orders dimensions by their own λ.
                assert list(np.argsort(got[dims], kind="stable")) == list(np.argsort(own[dims], kind="stable"))
        np.testing.assert_array_equal(
            scores.column("lam_head", layer, "intermediate"), table.lam(layer, "intermediate")
        )
    with pytest.raises(ValueError, match="no head view"):
        head_score(ImportanceTable(table.neurons))


def test_lambda_over_tokens_by_hand(cls_run, tiny_bert, tiny_tokenizer, sentences):
    _, table = cls_run
    tokens = compute_importance(
        compute_activations(tiny_bert, tiny_tokenizer, sentences, token="tokens", progress=False)
    )
    scored = table.with_columns({"lam_tokens": table_score(table, tokens)})
    by_hand = outputs_by_hand(tiny_bert, tiny_tokenizer, sentences, "tokens")
    for (layer, component), points in by_hand.items():
        gaps = np.diff(np.sort(points, axis=0), axis=0).max(axis=0)  # a 1-D cloud's λ is its largest gap
        np.testing.assert_allclose(scored.column("lam_tokens", layer, component), gaps, rtol=1e-5)
    assert not np.allclose(scored.neurons["lam_tokens"], scored.neurons["lam"])
    with pytest.raises(ValueError, match="no column 'nope'"):
        table_score(table, tokens, "nope")


def test_a_head_view_without_every_head_component_is_refused(cls_run):
    _, table = cls_run
    partial = ImportanceTable(table.neurons, heads=table.heads[table.heads["component"] == "query"])
    with pytest.raises(ValueError, match="the head view has no head for layer 1 key"):
        head_score(partial)


def test_taylor_needs_autograd(cls_run, tiny_bert_config, tiny_tokenizer, sentences):
    _, table = cls_run
    model = BertForSequenceClassification(tiny_bert_config(num_labels=2)).eval()
    batch = {**tiny_tokenizer(sentences[:2], padding=True, return_tensors="pt"), "labels": torch.tensor([0, 1])}
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside torch.inference_mode"):
        taylor_score(table, model, [batch])


def test_taylor_needs_a_sequence_classification_head_and_a_list_of_batches(cls_run, tiny_bert_config, tiny_tokenizer):
    from transformers import BertForTokenClassification, BertModel

    _, table = cls_run
    batch = {
        **tiny_tokenizer(["One two.", "Three."], padding=True, return_tensors="pt"),
        "labels": torch.tensor([0, 1]),
    }
    for model, gives in (
        (BertModel, "gives none"),
        (BertForTokenClassification, r"gives logits of shape \(2, \d+, 2\)"),
    ):
        with pytest.raises(ValueError, match=f"needs a sequence-classification head.*{model.__name__} {gives}"):
            taylor_score(table, model(tiny_bert_config(num_labels=2)), [batch])
    with pytest.raises(TypeError, match="got one dict: pass \\[batch\\]"):
        taylor_score(table, BertForSequenceClassification(tiny_bert_config(num_labels=2)), batch)


def test_taylor_matches_finite_differences(tiny_bert_config, tiny_tokenizer, sentences):
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=2)).double().eval()
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    batch = {**tiny_tokenizer(sentences[:6], padding=True, return_tensors="pt"), "labels": labels}
    table = compute_importance(compute_activations(model.bert, tiny_tokenizer, sentences, token="cls", progress=False))
    # Two batches (the second a repeat) must add up.
    model.train()  # taylor_score runs in eval mode (no dropout) and gives the caller's mode back
    scores = table.with_columns({"taylor": taylor_score(table, model, [batch, batch])})
    assert model.training
    model.eval()

    def sentence_loss(i: int, layer: int, component: str, neuron: int, scale: float) -> float:
        """Loss of sentence ``i`` alone with one neuron's output multiplied by ``1 + scale``."""
        target = model.bert.encoder.layer[layer - 1].output.dense if component == "intermediate" else None

        def pre(_m, inputs):
            x = inputs[0].clone()
            x[..., neuron] *= 1 + scale
            return (x,)

        def post(_m, _i, out):
            out = out.clone()
            out[..., neuron] *= 1 + scale
            return out

        handle = (
            target.register_forward_pre_hook(pre)
            if target is not None
            else linears(model.bert, layer - 1)[component].register_forward_hook(post)
        )
        with torch.no_grad():
            logits = model(**tiny_tokenizer(sentences[i], return_tensors="pt")).logits
        handle.remove()
        return float(F.cross_entropy(logits, labels[i : i + 1]))

    eps = 1e-5
    checked = 0
    probes = [(1, "query", 3), (1, "value", 17), (2, "key", 30), (2, "intermediate", 5), (2, "intermediate", 36),
              (1, "attention_output", 0), (2, "output", 31)]  # fmt: skip
    for layer, component, neuron in probes:
        derivatives = [
            (sentence_loss(i, layer, component, neuron, eps) - sentence_loss(i, layer, component, neuron, -eps))
            / (2 * eps)
            for i in range(6)
        ]
        expected = 2 * sum(abs(d) for d in derivatives)
        assert expected > 1e-8
        np.testing.assert_allclose(scores.column("taylor", layer, component)[neuron], expected, rtol=1e-5, atol=1e-10)
        checked += 1
    assert checked == 7
    with pytest.raises(ValueError, match="at least one labelled batch"):
        taylor_score(table, model, [])
    with pytest.raises(ValueError, match="needs labels and attention_mask"):
        taylor_score(table, model, [{"input_ids": batch["input_ids"]}])


def test_plan_ranks_by_a_named_score(cls_run, tiny_bert):
    _, table = cls_run
    weight = np.linspace(0, 1, len(table))[::-1]  # a score that disagrees with λ
    scored = table.with_columns({"w": weight})
    shape = EncoderShape.from_model(tiny_bert)
    plan = PruningPlan({2: {"query": 50, "key": 50, "value": 50, "intermediate": 30}})
    by_w = select_neurons(plan, scored, shape, score="w")[1]
    by_lam = select_neurons(plan, scored, shape)[1]
    w_v, w_i = scored.column("w", 2, "value"), scored.column("w", 2, "intermediate")
    np.testing.assert_array_equal(by_w.value, np.flatnonzero(w_v > np.median(w_v)))
    np.testing.assert_array_equal(by_w.intermediate, np.flatnonzero(w_i > np.percentile(w_i, 30)))
    np.testing.assert_array_equal(by_w.value, np.arange(16))  # decreasing scores: the first half stays
    assert not np.array_equal(by_w.value, by_lam.value)
    lam_v = table.lam(2, "value")
    np.testing.assert_array_equal(by_lam.value, np.flatnonzero(lam_v > np.median(lam_v)))

    small = prune_model(tiny_bert, scored, plan, score="w")
    kept_rows = tiny_bert.encoder.layer[1].attention.self.value.weight[torch.as_tensor(by_w.value)]
    torch.testing.assert_close(small.encoder.layer[1].attention.self.value.weight, kept_rows)
    assert dry_run(tiny_bert, scored, plan, score="w").model_after == sum(p.numel() for p in small.parameters())


def test_target_plan_with_a_score_lands_on_the_budget(cls_run, tiny_bert):
    _, table = cls_run
    scored = add_scores(table, tiny_bert, ["random", "weight"], seed=3)
    for score in ("random", "weight"):  # (layer 1 has constant [CLS] outputs: zero λ and std)
        plan = target_plan(tiny_bert, scored, 0.8, start_layer=1, score=score)
        report = dry_run(tiny_bert, scored, plan, score=score)
        assert 0.8 <= report.encoder_fraction < 0.805  # within about one query/key dimension
        assert repr(score) in plan.notes
    np.testing.assert_array_equal(scored.neurons["random"], random_score(table, 3))


def test_unknown_score_is_a_clear_error(cls_run, tiny_bert):
    _, table = cls_run
    plan = PruningPlan({2: {"value": 50}})
    shape = EncoderShape.from_model(tiny_bert)
    match = r"unknown score 'lamda'.*it has lam, mean, std, token_mean, token_std"
    with pytest.raises(ValueError, match=match):
        select_neurons(plan, table, shape, score="lamda")
    with pytest.raises(ValueError, match=match):
        target_plan(tiny_bert, table, 0.8, start_layer=1, score="lamda")
    with pytest.raises(ValueError, match=match):
        prune_model(tiny_bert, table, plan, score="lamda")
    with pytest.raises(ValueError, match=match):
        dry_run(tiny_bert, table, plan, score="lamda")
    with pytest.raises(ValueError, match="unknown score 'magnitude'"):
        add_scores(table, tiny_bert, ["magnitude"])
    with pytest.raises(ValueError, match="score 'abs_mean' needs acts="):
        add_scores(table, tiny_bert, ["abs_mean"])
    with pytest.raises(ValueError, match="score 'weight' needs model="):
        add_scores(table, None, ["weight"])
    with pytest.raises(TypeError, match="got the string 'weight'"):
        add_scores(table, tiny_bert, "weight")


def test_extra_columns_validate_and_round_trip(cls_run, tmp_path):
    _, table = cls_run
    with pytest.raises(ValueError, match="a new name"):
        table.with_columns({"lam": np.zeros(len(table))})
    with pytest.raises(ValueError, match=r"needs 394 values \(one per row\), got shape \(3,\)"):
        table.with_columns({"x": np.zeros(3)})
    with pytest.raises(ValueError, match="1 non-finite"):
        table.with_columns({"x": np.r_[np.nan, np.zeros(len(table) - 1)]})
    with pytest.raises(ValueError, match=r"extra columns must be numeric scores, got \['note'\]"):
        ImportanceTable(table.neurons.assign(note="x"))
    scored = table.with_columns({"x": np.random.default_rng(0).normal(size=len(table)) / 3})
    assert scored.value_columns[-1] == "x" and "x" not in table.value_columns
    scored.save(tmp_path)
    loaded = ImportanceTable.load(tmp_path)
    pd.testing.assert_frame_equal(loaded.neurons, scored.neurons)
    pd.testing.assert_frame_equal(loaded.heads, scored.heads)


def test_norms_of_a_half_precision_model_are_taken_in_float64(cls_run, tiny_bert):
    _, table = cls_run
    model = copy.deepcopy(tiny_bert).to(torch.bfloat16)
    w = linears(model, 1)["intermediate"].weight.detach().double().numpy()
    expected = np.sqrt((w**2).sum(axis=1))
    np.testing.assert_allclose(
        table.with_columns({"weight": weight_score(table, model)}).column("weight", 2, "intermediate"),
        expected,
        rtol=1e-12,
    )  # in bfloat16 most of the 37 norms would tie
    with torch.no_grad():
        linears(model, 0)["value"].weight[3, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite score \\(nan\\) to 1 neuron.*layer 1 value neuron 3"):
        weight_score(table, model)


def test_table_columns_name_what_is_wrong(tiny_bert):
    from test_plans import random_table

    from obce.scores import table_columns

    table = random_table(tiny_bert)
    frame = table.neurons[["layer", "component", "neuron"]].assign(taylor=np.arange(len(table), dtype=float))
    np.testing.assert_array_equal(table_columns(table, frame.iloc[::-1], "scores.csv")["taylor"], frame["taylor"])
    with pytest.raises(ValueError, match="scores.csv has no value for 1 neuron"):
        table_columns(table, frame.iloc[1:], "scores.csv")
    with pytest.raises(ValueError, match="scores.csv: column 'taylor' has 1 value"):
        table_columns(table, frame.assign(taylor=np.where(frame.index == 3, np.nan, frame["taylor"])), "scores.csv")
    with pytest.raises(ValueError, match="scores.csv lacks the column"):
        table_columns(table, frame.drop(columns="neuron"), "scores.csv")
    with pytest.raises(ValueError, match="scores.csv lists layer 1 query neuron 0 twice"):
        table_columns(table, pd.concat([frame, frame.iloc[:1]]), "scores.csv")
    more = pd.DataFrame({"layer": 2, "component": "value", "neuron": [32], "taylor": [0.0]})
    with pytest.raises(ValueError, match="does not match the table.*layer 2 value has 33 neuron.*32 in the table"):
        table_columns(table, pd.concat([frame, more]), "scores.csv")
    deeper = frame[frame["layer"] == 1].assign(layer=3)
    with pytest.raises(ValueError, match=r"layer 3 \w+ has 32 neuron.*0 in the table"):
        table_columns(table, pd.concat([frame, deeper]), "scores.csv")
    # A component the table does not hold is no mismatch: a model scores all six.
    partial = ImportanceTable(table.neurons[table.neurons["component"] != "value"])
    assert len(table_columns(partial, frame, "scores.csv")["taylor"]) == len(partial)


def test_a_score_of_another_model_is_refused(cls_run, tiny_bert_config):
    from transformers import BertModel

    _, table = cls_run
    wider = BertModel(tiny_bert_config(intermediate_size=50))
    with pytest.raises(ValueError, match="the BertModel does not match the table.*intermediate has 50 neuron"):
        weight_score(table, wider)


# ---- boundaries, and settings passed through -------------------------------------------------


def _stsb(n):
    rows = [{"sentence1": f"s {i}", "sentence2": "x", "label": float(i)} for i in range(n)]
    return _make_task(task_info("stsb"), {"train": rows}, "test")


def _index_tokenizer(first, second, **kwargs):
    """Encodes each pair as its row number, so a batch's labels can be checked against its texts."""
    return {
        "input_ids": torch.tensor([[int(s.split()[1])] for s in first]),
        "attention_mask": torch.ones(len(first), 1),
    }


def test_task_batches_pair_labels_with_texts_and_follow_the_seed():
    task = _stsb(50)
    batches = task_batches(task, _index_tokenizer, n_batches=3, batch_size=4, seed=1)
    assert [len(b["labels"]) for b in batches] == [4, 4, 4]
    for b in batches:
        np.testing.assert_array_equal(b["labels"].numpy(), b["input_ids"][:, 0].numpy())
    again = task_batches(task, _index_tokenizer, n_batches=3, batch_size=4, seed=1)
    other = task_batches(task, _index_tokenizer, n_batches=3, batch_size=4, seed=2)
    assert all(torch.equal(a["labels"], b["labels"]) for a, b in zip(batches, again, strict=True))
    assert not all(torch.equal(a["labels"], b["labels"]) for a, b in zip(batches, other, strict=True))


def test_task_batches_are_right_padded_whatever_the_tokenizer_says(tiny_tokenizer):
    """BERT counts positions from the first token: a left-padded batch would shift every sentence's."""
    rows = [{"sentence1": "a" * (i + 1), "sentence2": "b", "label": float(i)} for i in range(6)]
    task = _make_task(task_info("stsb"), {"train": rows}, "test")
    left_tokenizer = copy.deepcopy(tiny_tokenizer)  # the fixture is shared
    left_tokenizer.padding_side = "left"
    (batch,) = task_batches(task, left_tokenizer, n_batches=1, batch_size=6, seed=0)
    mask = batch["attention_mask"]
    assert not mask.all() and mask[:, 0].all()  # padded, and on the right
    assert torch.equal(mask, mask.cummin(dim=1).values)


def test_taylor_of_a_regression_head_is_the_squared_error_gradient(tiny_bert_config, tiny_tokenizer, sentences):
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=1)).double().eval()
    table = compute_importance(compute_activations(model.bert, tiny_tokenizer, sentences, progress=False))
    enc = tiny_tokenizer(sentences[:4], padding=True, return_tensors="pt")
    labels = torch.tensor([0.5, 2.0, -1.0, 3.0], dtype=torch.float64)
    got = table.with_columns({"t": taylor_score(table, model, [{**enc, "labels": labels}])}).column("t", 2, "output")
    # By hand: the neuron's output scaled by (1 + s); d loss_i / d s at s = 0, with loss_i = (logit_i - y_i)^2.
    dense = model.bert.encoder.layer[1].output.dense
    expected = np.zeros(dense.out_features)
    for i, sentence in enumerate(sentences[:4]):
        for neuron in range(dense.out_features):
            s = torch.zeros((), dtype=torch.float64, requires_grad=True)

            def post(_m, _x, out, neuron=neuron, s=s):
                scale = torch.ones(out.shape[-1], dtype=out.dtype).index_put((torch.tensor([neuron]),), 1 + s)
                return out * scale

            handle = dense.register_forward_hook(post)
            logit = model(**tiny_tokenizer(sentence, return_tensors="pt")).logits[0, 0]
            handle.remove()
            (grad,) = torch.autograd.grad(F.mse_loss(logit, labels[i]), s)
            expected[neuron] += abs(float(grad))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)
