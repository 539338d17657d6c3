"""Compressed models: sizes, unequal-head attention, Auto loading, other families, ONNX export."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_plans import random_table
from test_prune import MIXED_PLAN
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    BertModel,
    CamembertConfig,
    CamembertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from obce.models.adapters import encoder_layers
from obce.models.compressed import (
    LayerSizes,
    compressed_class_for,
    compressed_config,
    export_onnx,
    is_compressed,
    layer_sizes,
)
from obce.prune import prune_model

SIZES = [
    LayerSizes.full(4, 8, 37),
    LayerSizes((8, 3, 0, 0), (8, 5, 2, 0), 20),
    LayerSizes((1, 8, 4, 2), (3, 3, 8, 1), 5),
]


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 100, (3, 10), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture
def pruned_classifier(tiny_bert_config):
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=3, num_labels=3)).eval()
    return prune_model(model, random_table(model), MIXED_PLAN)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (((8, 8), (8,), 5), "one entry per head"),
        (((8, -1), (8, 8), 5), "each of qk_head_sizes must be an int >= 0, got -1"),
        (((True, 8), (8, 8), 5), "each of qk_head_sizes must be an int >= 0, got True"),
        (((8, 8), 8, 5), "v_head_sizes must be a sequence of head sizes, got 8"),
        (((8, 8), (8, 8), 5.0), "intermediate_size must be an int >= 0, got 5.0"),
        (((8, 4), (8, 0), 5), "a head without value dimensions must have no query/key"),
        (((0, 0), (0, 0), 5), "at least one value dimension"),
        (((8, 8), (8, 8), 0), "at least one value dimension and one intermediate neuron"),
    ],
)
def test_layer_sizes_validation(args, match):
    with pytest.raises(ValueError, match=match):
        LayerSizes(*args)


def test_layer_sizes_take_numpy_integers_and_store_ints():
    sizes = LayerSizes(np.array([8, 4]), [np.int64(8), 8], np.int32(5))
    assert sizes == LayerSizes((8, 4), (8, 8), 5) and json.dumps(sizes.to_dict())


def test_config_validation(tiny_bert_config):
    config = tiny_bert_config(num_hidden_layers=3)
    with pytest.raises(ValueError, match="must list 3 layers"):
        compressed_config(config, SIZES[:2])
    with pytest.raises(ValueError, match="layer 2 lists 2 heads, the config has 4"):
        compressed_config(config, [SIZES[0], LayerSizes((8, 8), (8, 8), 5), SIZES[0]])
    wider = r"layer 2 keeps more than the original has: .* \(heads of 8, intermediate 37\)"
    with pytest.raises(ValueError, match=wider):
        compressed_config(config, [SIZES[0], LayerSizes((9, 8, 8, 8), (8, 8, 8, 8), 37), SIZES[0]])
    with pytest.raises(ValueError, match="layer 3 keeps more than the original has"):
        compressed_config(config, [SIZES[0], SIZES[0], LayerSizes.full(4, 8, 38)])
    with pytest.raises(ValueError, match="attention must be one of"):
        compressed_config(config, SIZES, attention="flash")
    with pytest.raises(ValueError, match="expected the original model's config"):
        compressed_config(compressed_config(config, SIZES), SIZES)
    assert layer_sizes(compressed_config(config, SIZES)) == SIZES
    assert layer_sizes(compressed_config(config, (s for s in SIZES))) == SIZES  # read once
    for bad in ([s.to_dict() for s in SIZES], 3):
        with pytest.raises(TypeError, match="sizes must be a sequence of LayerSizes"):
            compressed_config(config, bad)
    edited = compressed_config(config, SIZES)  # a hand-edited config.json
    edited.obce_layers[1] = {**edited.obce_layers[1], "v_head_sizes": 8}
    with pytest.raises(ValueError, match="obce_layers, layer 2: v_head_sizes must be a sequence of head sizes, got 8"):
        layer_sizes(edited)


def test_built_model_has_the_sizes(tiny_bert_config):
    model = AutoModel.from_config(compressed_config(tiny_bert_config(num_hidden_layers=3), SIZES))
    assert type(model) is compressed_class_for(BertModel) and is_compressed(model)
    layers = encoder_layers(model)
    assert (layers[1].query.out_features, layers[1].value.out_features) == (11, 15)
    assert layers[1].attention_output.in_features == 15
    assert (layers[2].intermediate.out_features, layers[2].output.in_features) == (5, 5)
    assert layers[1].qk_head_sizes == (8, 3, 0, 0) and layers[1].v_head_sizes == (8, 5, 2, 0)  # head 4 removed
    assert type(layers[0].attention).__name__ == "BertSelfAttention"  # an untouched layer keeps its module


def test_layer_without_query_key(tiny_bert_config, batch):
    """Every query/key dimension removed: zero-size projections (built without warnings), uniform attention."""
    sizes = [SIZES[0], LayerSizes((0, 0, 0, 0), (8, 5, 2, 1), 20), SIZES[2]]
    outputs = []
    for attention in ("padded", "loop"):
        torch.manual_seed(0)
        config = compressed_config(tiny_bert_config(num_hidden_layers=3), sizes, attention=attention)
        model = AutoModel.from_config(config)
        assert encoder_layers(model)[1].query.out_features == 0
        outputs.append(model.eval()(**batch).last_hidden_state)
    torch.testing.assert_close(outputs[0], outputs[1])
    assert torch.isfinite(outputs[0]).all()


def test_padded_and_loop_heads_agree(tiny_bert_config, batch):
    outputs = []
    for attention in ("padded", "loop"):
        torch.manual_seed(0)
        model = AutoModel.from_config(
            compressed_config(tiny_bert_config(num_hidden_layers=3), SIZES, attention=attention)
        )
        with torch.no_grad():
            outputs.append(model.eval()(**batch).last_hidden_state)
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_attention_weights(tiny_bert_config, batch, implementation):
    torch.manual_seed(0)
    config = compressed_config(tiny_bert_config(num_hidden_layers=3), SIZES)
    model = AutoModel.from_config(config, attn_implementation=implementation).eval()
    with torch.no_grad():
        plain = model(**batch).last_hidden_state
        out = model(**batch, output_attentions=True)
    torch.testing.assert_close(out.last_hidden_state, plain, atol=1e-6, rtol=1e-6)
    if implementation == "sdpa":  # as the family's own layers: SDPA computes no weights to return
        assert not out.attentions
        return
    assert len(out.attentions) == 3
    weights = out.attentions[-1]  # layer 3: four heads, all computed
    assert weights.shape == (3, 4, 10, 10)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 10))
    assert torch.all(weights[2, :, :, 3:] == 0)  # padding gets no attention


def test_attention_implementation_can_be_switched(batch, tiny_bert_config):
    """set_attn_implementation works on a compressed model (transformers would guess no from the module's source),
    and a model loaded with flex attention, which unequal heads cannot run, is pruned into one on SDPA."""
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(num_hidden_layers=3, attn_implementation="flex_attention")).eval()
    pruned = prune_model(model, random_table(model), MIXED_PLAN, progress=False)
    assert pruned.config._attn_implementation == "sdpa"
    with torch.no_grad():
        plain = pruned(**batch).last_hidden_state
        pruned.set_attn_implementation("eager")
        out = pruned(**batch, output_attentions=True)
    assert pruned.config._attn_implementation == "eager" and len(out.attentions) == 3
    torch.testing.assert_close(out.last_hidden_state, plain, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("auto", [AutoModel, AutoModelForSequenceClassification])
def test_save_load_round_trip(pruned_classifier, batch, tmp_path, auto):
    # The classifier's encoder is the family's own class with narrowed layers; saved alone, it loads back as
    # the compressed base model.
    model = pruned_classifier if auto is AutoModelForSequenceClassification else pruned_classifier.base_model
    expected_type = (
        type(pruned_classifier) if auto is AutoModelForSequenceClassification else compressed_class_for(BertModel)
    )
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.model_type == "obce_bert" and config.obce_layers == model.config.obce_layers
    loaded = auto.from_pretrained(tmp_path).eval()
    assert type(loaded) is expected_type
    with torch.no_grad():
        for name in ("last_hidden_state", "logits"):
            if hasattr(model(**batch), name):
                assert torch.equal(getattr(loaded(**batch), name), getattr(model(**batch), name))
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())


# Run in a fresh interpreter that never imports obce: the folder's loader file must bring the classes in.
_LOAD_WITHOUT_OBCE = """
import sys, torch
from transformers import AutoModel, AutoModelForSequenceClassification
folder, trust, out = sys.argv[1], sys.argv[2] == "trust", sys.argv[3]
batch = torch.load(folder + "/batch.pt")
try:
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=trust or None).eval()
except ValueError as err:
    print("refused:", err)
    sys.exit(3)
assert "obce" in sys.modules and type(model).__module__ == "obce.models.compressed", type(model).__module__
assert type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__ == "ObceBertModel"
with torch.no_grad():
    torch.save(model(**batch).logits, out)
model.save_pretrained(out + ".again")  # saved again after a remote-code load: the same loader, no module copies
"""


def test_loads_without_importing_obce_given_trust_remote_code(pruned_classifier, batch, tmp_path):
    folder = tmp_path / "model"
    pruned_classifier.save_pretrained(folder)
    torch.save(batch, folder / "batch.pt")
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "obce_compressed.ObceBertConfig",
        "AutoModel": "obce_compressed.ObceBertModel",
        "AutoModelForSequenceClassification": "obce_compressed.ObceBertForSequenceClassification",
        "AutoModelForTokenClassification": "obce_compressed.ObceBertForTokenClassification",
        "AutoModelForQuestionAnswering": "obce_compressed.ObceBertForQuestionAnswering",
        "AutoModelForMaskedLM": "obce_compressed.ObceBertForMaskedLM",
    }
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}

    def load(trust: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", _LOAD_WITHOUT_OBCE, str(folder), trust, str(tmp_path / "logits.pt")]
        return subprocess.run(command, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)

    refused = load("ask")
    assert refused.returncode == 3 and "trust_remote_code=True" in refused.stdout, refused.stdout + refused.stderr
    loaded = load("trust")
    assert loaded.returncode == 0, loaded.stderr
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "logits.pt"), pruned_classifier(**batch).logits)
    again = tmp_path / "logits.pt.again"
    assert sorted(p.name for p in again.iterdir()) == ["config.json", "model.safetensors", "obce_compressed.py"]
    assert json.loads((again / "config.json").read_text())["auto_map"] == config["auto_map"]
    assert type(AutoModelForSequenceClassification.from_pretrained(again)) is type(pruned_classifier)


@pytest.mark.parametrize(
    ("config_class", "model_class"),
    [(RobertaConfig, RobertaForSequenceClassification), (CamembertConfig, CamembertForSequenceClassification)],
)
def test_roberta_family(batch, config_class, model_class):
    torch.manual_seed(0)
    config = config_class(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    model = model_class(config).eval()
    table = random_table(model)
    pruned = prune_model(model, table, MIXED_PLAN)
    assert pruned.config.model_type == f"obce_{config.model_type}"
    empty = prune_model(model, table, type(MIXED_PLAN)({}))
    with torch.no_grad():
        torch.testing.assert_close(empty(**batch).logits, model(**batch).logits, atol=1e-6, rtol=0)
        assert pruned(**batch).logits.shape == (3, 2)


@pytest.mark.parametrize("attention", ["loop", "padded"])
@pytest.mark.parametrize("sizes", ["plan", "empty heads"])
def test_onnx_export_matches_pytorch(tiny_bert_config, batch, tmp_path, sizes, attention):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    import warnings

    torch.manual_seed(0)
    config = tiny_bert_config(num_hidden_layers=3, num_labels=3)
    if sizes == "plan":
        original = BertForSequenceClassification(config).eval()
        model = prune_model(original, random_table(original), MIXED_PLAN, attention=attention)
    else:  # SIZES has heads without query/key dimensions but with values, and heads removed whole
        model = AutoModelForSequenceClassification.from_config(compressed_config(config, SIZES, attention=attention))
        model.eval()
    model.train()  # export traces in eval mode and gives the model back as it was, each module its own mode
    model.base_model.embeddings.eval()
    modes = {name: module.training for name, module in model.named_modules()}
    (tmp_path / "model.onnx.data").write_bytes(b"an earlier export's weights")
    with warnings.catch_warnings():
        # The exporter's own dependencies warn about their internals; none of it concerns the graph.
        warnings.simplefilter("ignore")
        path = export_onnx(model, tmp_path / "model.onnx")
    assert {name: module.training for name, module in model.named_modules()} == modes
    side = tmp_path / "model.onnx.data"  # this export's weights, or none: never the earlier export's
    assert not side.exists() or side.read_bytes() != b"an earlier export's weights"
    model.eval()
    with pytest.raises(FileExistsError):
        export_onnx(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # Sentence pairs: BERT's second segment reaches the graph.
    pairs = {**batch, "token_type_ids": (torch.arange(10) >= 5).long().expand(3, 10).contiguous()}
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    (logits,) = session.run(None, {k: v.numpy() for k, v in pairs.items()})
    with torch.no_grad():
        expected = model(**pairs).logits.numpy()
        assert not np.allclose(expected, model(**batch).logits.numpy(), atol=1e-4)  # the segments matter
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-4)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "model.onnx" and set(names) <= {"model.onnx", "model.onnx.data"}  # no staging left


@pytest.mark.parametrize("attention", ["padded", "loop"])
def test_hooks_on_projections_see_real_widths(tiny_bert_config, batch, attention):
    torch.manual_seed(0)
    config = compressed_config(tiny_bert_config(num_hidden_layers=3), SIZES, attention=attention)
    model = AutoModel.from_config(config).eval()
    with torch.no_grad():
        plain = model(**batch).last_hidden_state
        seen = []
        handle = encoder_layers(model)[1].query.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        hooked = model(**batch).last_hidden_state
        handle.remove()
    assert seen == [torch.Size([3, 10, 11])]
    torch.testing.assert_close(hooked, plain, atol=1e-6, rtol=1e-6)


def test_padded_heads_run_a_watched_or_replaced_projection_as_is(tiny_bert_config, batch):
    """Reading the weight directly would skip backward and global hooks, or a forward replaced on the instance
    (accelerate's offloading replaces it)."""
    torch.manual_seed(0)
    config = compressed_config(tiny_bert_config(num_hidden_layers=3), SIZES, attention="padded")
    model = AutoModel.from_config(config).eval()
    value = encoder_layers(model)[1].value
    calls = []
    handles = [
        value.register_full_backward_hook(lambda m, gi, go: calls.append("backward")),
        torch.nn.modules.module.register_module_forward_hook(
            lambda m, i, o: calls.append("global") if m is value else None
        ),
    ]
    model(**batch).last_hidden_state.sum().backward()
    for handle in handles:
        handle.remove()
    assert sorted(calls) == ["backward", "global"]
    with torch.no_grad():
        plain = model(**batch).last_hidden_state
        original = value.forward
        value.forward = lambda x: 2 * original(x)
        doubled = model(**batch).last_hidden_state
        del value.forward
        assert torch.equal(model(**batch).last_hidden_state, plain)
    assert not torch.allclose(doubled, plain, atol=1e-3)


def test_padded_heads_train_after_a_pass_in_inference_mode(tiny_bert_config, batch):
    """The padded layout's index tensors, cached in a first pass under inference_mode, still allow a backward."""
    torch.manual_seed(0)
    model = AutoModel.from_config(compressed_config(tiny_bert_config(num_hidden_layers=3), SIZES, attention="padded"))
    with torch.inference_mode():
        model.eval()(**batch)
    model.train()(**batch).last_hidden_state.sum().backward()
    assert encoder_layers(model)[1].value.weight.grad is not None


def test_a_projection_with_a_forward_of_its_own_is_run(tiny_bert_config, batch):
    """An nn.Linear subclass (an adapter, fake quantization) keeps its forward in both layouts."""

    class Doubled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    outputs = []
    for attention in ("padded", "loop"):
        torch.manual_seed(0)
        config = compressed_config(tiny_bert_config(num_hidden_layers=3), SIZES, attention=attention)
        model = AutoModel.from_config(config).eval()
        attention_module = model.encoder.layer[2].attention.self
        with torch.no_grad():
            plain = model(**batch).last_hidden_state
            doubled = Doubled(attention_module.value.in_features, attention_module.value.out_features)
            doubled.load_state_dict(attention_module.value.state_dict())
            attention_module.value = doubled
            outputs.append(model(**batch).last_hidden_state)
        assert not torch.allclose(outputs[-1], plain)
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-6, rtol=1e-6)


def test_removed_heads_keep_their_numbers(tiny_bert_config, sentences, tiny_tokenizer):
    """A head without value dimensions is not computed, but the layer still has every head: the others keep their
    numbers, and the removed one reads as size 0 (λ 0)."""
    from obce.activations import compute_activations
    from obce.importance import head_importance

    torch.manual_seed(0)
    model = AutoModel.from_config(compressed_config(tiny_bert_config(num_hidden_layers=3), SIZES)).eval()
    layer = encoder_layers(model)[1]
    assert layer.num_heads == 4 and layer.num_heads * layer.head_size == 32
    assert layer.head_sizes("query") == (8, 3, 0, 0) and layer.head_sizes("value") == (8, 5, 2, 0)
    heads = head_importance(compute_activations(model, tiny_tokenizer, sentences, progress=False))
    values = heads[(heads.layer == 2) & (heads.component == "value")].set_index("head")
    assert list(values.index) == [0, 1, 2, 3] and list(values["size"]) == [8, 5, 2, 0]
    assert values.loc[3, "lam"] == 0 and (values.loc[[0, 1, 2], "lam"] > 0).all()
