"""Architecture table: the six components' modules of each supported family."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from obce.models.adapters import (
    ARCHITECTURES,
    COMPONENTS,
    check_component,
    encoder_layers,
    from_user_layer,
    load_model,
    load_tokenizer,
    max_sequence_length,
    to_user_layer,
)

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=100)


def _family_models():
    from transformers import (
        ElectraConfig,
        ElectraModel,
        RobertaConfig,
        RobertaModel,
        XLMRobertaConfig,
        XLMRobertaModel,
    )

    torch.manual_seed(0)
    return {
        "roberta": RobertaModel(RobertaConfig(**TINY, max_position_embeddings=40)),
        "xlm-roberta": XLMRobertaModel(XLMRobertaConfig(**TINY, max_position_embeddings=40)),
        "electra": ElectraModel(ElectraConfig(**TINY, embedding_size=16, max_position_embeddings=40)),
    }


def test_bert_layers(tiny_bert):
    layers = encoder_layers(tiny_bert)
    assert [layer.index for layer in layers] == [0, 1]
    block = tiny_bert.encoder.layer[1]
    assert layers[1].query is block.attention.self.query
    assert layers[1].attention_output is block.attention.output.dense
    assert layers[1].intermediate is block.intermediate.dense
    assert layers[1].intermediate_act is block.intermediate.intermediate_act_fn
    assert layers[1].output is block.output.dense
    assert (layers[0].num_heads, layers[0].head_size) == (4, 8)
    assert layers[0].head_sizes("key") == (8, 8, 8, 8)
    widths = {c: layers[0].width(c) for c in COMPONENTS}
    assert widths == {"query": 32, "key": 32, "value": 32, "attention_output": 32, "intermediate": 37, "output": 32}


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "electra"])
def test_other_families(family):
    model = _family_models()[family]
    layers = encoder_layers(model)
    assert len(layers) == 2
    assert layers[1].output is model.encoder.layer[1].output.dense
    assert max_sequence_length(model) == (38 if "roberta" in family else 40)


@pytest.mark.parametrize("pad_token_id", [0, 1, 5])
def test_roberta_limit_follows_the_padding_index(pad_token_id):
    """RoBERTa numbers positions from pad_token_id + 1: the limit is the longest input the model runs."""
    from transformers import RobertaConfig, RobertaModel

    model = RobertaModel(RobertaConfig(**TINY, max_position_embeddings=40, pad_token_id=pad_token_id)).eval()
    limit = max_sequence_length(model)
    assert limit == 40 - pad_token_id - 1
    model(input_ids=torch.full((1, limit), 7))
    with pytest.raises((IndexError, RuntimeError), match="out of"):  # past the position table
        model(input_ids=torch.full((1, limit + 1), 7))


def test_head_model_goes_through_base_model(tiny_bert_config):
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(tiny_bert_config(num_labels=3))
    assert encoder_layers(model)[0].value is model.bert.encoder.layer[0].attention.self.value


def test_compressed_type_uses_its_family_layout(tiny_bert):
    tiny_bert.config.model_type = "obce_bert"
    attention = tiny_bert.encoder.layer[0].attention.self
    attention.qk_head_sizes, attention.v_head_sizes = [8, 2, 8, 8], [8, 8, 1, 8]
    layers = encoder_layers(tiny_bert)
    assert layers[0].head_sizes("query") == (8, 2, 8, 8)
    assert layers[0].head_sizes("value") == (8, 8, 1, 8)
    assert layers[1].head_sizes("value") == (8, 8, 8, 8)
    with pytest.raises(ValueError, match="only query, key and value"):
        layers[0].head_sizes("output")


def test_decoder_is_rejected():
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32))
    with pytest.raises(ValueError, match=r"unsupported architecture 'gpt2'.*bert.*electra.*roberta"):
        encoder_layers(model)


def test_causal_bert_is_rejected(tiny_bert_config):
    from transformers import BertModel

    with pytest.raises(ValueError, match="causal decoder"):
        encoder_layers(BertModel(tiny_bert_config(is_decoder=True)))


def test_not_a_transformers_model():
    with pytest.raises(TypeError, match="Linear"):
        encoder_layers(nn.Linear(2, 2))


def test_table_names_the_required_families():
    assert {"bert", "roberta", "xlm-roberta", "electra"} <= set(ARCHITECTURES)


def test_layer_numbering_round_trip():
    assert [to_user_layer(i) for i in range(3)] == [1, 2, 3]
    assert [from_user_layer(to_user_layer(i)) for i in range(3)] == [0, 1, 2]
    assert from_user_layer(np.int64(2)) == 1 and to_user_layer(np.int64(1)) == 2
    for bad in (0, -1, "1", 1.5, True):
        with pytest.raises(ValueError, match="layer"):
            from_user_layer(bad)
    with pytest.raises(TypeError):
        to_user_layer("1")  # not 2
    with pytest.raises(ValueError, match=r"1\.\.2"):
        from_user_layer(3, n_layers=2)


def test_check_component():
    assert check_component("value") == "value"
    with pytest.raises(ValueError, match="'values'.*query, key, value"):
        check_component("values")


def test_load_model_from_local_folder(tiny_bert_dir):
    model, tokenizer = load_model(tiny_bert_dir, device="cpu")
    assert not model.training
    assert len(encoder_layers(model)) == 2
    assert max_sequence_length(model, tokenizer) == 128
    with pytest.raises(TypeError, match="name_or_path"):
        load_model(3)


@pytest.mark.parametrize("where", ["missing", "./missing", "a/b/missing"])
def test_load_model_names_a_path_that_is_no_model(tmp_path, monkeypatch, where):
    """A path is never sent to the hub as a name: a missing folder, or one without config.json, is named."""
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / where) if where == "missing" else where
    with pytest.raises(FileNotFoundError, match=f"no model folder at '{path}'"):
        load_model(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        load_model(tmp_path / "empty")


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_folder_without_its_tokenizer_is_refused(tmp_path, tiny_bert, family):
    """transformers reads such a folder with a tokenizer of the 5 special tokens: every word would be [UNK] (BERT) or
    dropped (RoBERTa)."""
    model = tiny_bert if family == "bert" else _family_models()["roberta"]
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    quoted = re.escape(repr(str(folder)))
    with pytest.raises(FileNotFoundError, match=rf"{quoted} holds no tokenizer files: .*save_pretrained\({quoted}\)"):
        load_model(folder, device="cpu")
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 40}')
    with pytest.raises(ValueError, match="has 5 tokens, the model a vocabulary of 100: not the model's tokenizer"):
        load_model(folder, device="cpu")


def test_folder_with_its_tokenizer_loads(tiny_bert_dir, tiny_tokenizer):
    # 88 tokens for a vocabulary of 100: a model may have unused ids.
    assert len(load_tokenizer(tiny_bert_dir)) == len(tiny_tokenizer) == 88


def test_truncated_weights_are_named(tiny_bert_dir, tmp_path):
    import shutil

    from obce.models import load_model

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bert_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # an interrupted copy
    with pytest.raises(OSError, match="are truncated or not a safetensors file"):
        load_model(str(broken), "cpu")


@pytest.mark.parametrize(
    "head, loaded_as",
    [
        ("ForSequenceClassification", "BertForSequenceClassification"),
        ("ForTokenClassification", "BertForTokenClassification"),
        ("ForQuestionAnswering", "BertForQuestionAnswering"),
        ("ForMaskedLM", "BertModel"),  # a pretraining head is not the user's: the encoder is analysed
        ("Model", "BertModel"),
    ],
)
def test_load_model_keeps_a_fine_tuned_task_head(tmp_path, tiny_bert_config, tiny_tokenizer, head, loaded_as):
    """A checkpoint fine-tuned with a task head comes with it, so pruning it gives a smaller model of the same task."""
    import transformers
    from test_plans import random_table

    from obce.plans import uniform_plan
    from obce.prune import prune_model

    torch.manual_seed(0)
    original = getattr(transformers, f"Bert{head}")(tiny_bert_config(num_labels=3)).eval()
    original.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    model, _ = load_model(tmp_path / "model", "cpu")
    assert type(model).__name__ == loaded_as
    if loaded_as == "BertModel":
        return
    small = prune_model(model, random_table(model), uniform_plan(2, 50, start_layer=1), progress=False)
    small.save_pretrained(tmp_path / "small")
    again = getattr(transformers, f"AutoModel{head}").from_pretrained(tmp_path / "small").eval()
    assert type(again).__name__ == f"ObceBert{head}"
    head_params = {k: v for k, v in original.state_dict().items() if not k.startswith("bert.")}
    assert head_params
    for name, tensor in head_params.items():
        torch.testing.assert_close(again.state_dict()[name], tensor, msg=name)
