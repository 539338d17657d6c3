"""Hooked activation capture against a manual forward pass through the same modules."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import BertModel

from obce.activations import TOKEN_MODES, compute_activations, reader_input_moments
from obce.models.adapters import COMPONENTS


def manual_components(model, tokenizer, sentence: str) -> list[dict[str, torch.Tensor]]:
    """Each layer's six components for one sentence, computed step by step (no padding, no hooks)."""
    encoded = tokenizer(sentence, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**encoded, output_hidden_states=True).hidden_states
        layers = []
        for i, block in enumerate(model.encoder.layer):
            h = hidden[i][0]
            attention = block.attention.self
            heads, size = attention.num_attention_heads, attention.attention_head_size
            query, key, value = attention.query(h), attention.key(h), attention.value(h)
            q, k, v = query, key, value

            q, k, v = (x.view(-1, heads, size).transpose(0, 1) for x in (q, k, v))  # (heads, tokens, size)
            weights = (q @ k.transpose(-1, -2) / size**0.5).softmax(-1)
            context = (weights @ v).transpose(0, 1).reshape(-1, heads * size)
            attention_output = block.attention.output.dense(context)
            attended = block.attention.output.LayerNorm(attention_output + h)
            intermediate = block.intermediate.intermediate_act_fn(block.intermediate.dense(attended))
            output = block.output.dense(intermediate)
            # The manual pass must reproduce the model's own next hidden state.
            torch.testing.assert_close(block.output.LayerNorm(output + attended), hidden[i + 1][0])
            layers.append(
                dict(
                    query=query,
                    key=key,
                    value=value,
                    attention_output=attention_output,
                    intermediate=intermediate,
                    output=output,
                    context=context,  # what attention_output reads
                )
            )
    return layers


@pytest.fixture
def manual(tiny_bert, tiny_tokenizer, sentences):
    return [manual_components(tiny_bert, tiny_tokenizer, s) for s in sentences]


@pytest.mark.parametrize(
    ("progress", "label"), [(True, "activations"), ("diagram pass", "diagram pass"), (False, None)]
)
def test_progress_bar_label(tiny_bert, tiny_tokenizer, sentences, capsys, progress, label):
    compute_activations(tiny_bert, tiny_tokenizer, sentences, components=["value"], batch_size=5, progress=progress)
    err = capsys.readouterr().err
    assert (f"{label}: 100%" in err) if label else err == ""


@pytest.mark.parametrize("token", TOKEN_MODES)
def test_hooks_equal_manual_forward(tiny_bert, tiny_tokenizer, sentences, manual, token):
    acts = compute_activations(tiny_bert, tiny_tokenizer, sentences, token=token, batch_size=5, progress=False)
    lengths = [m[0]["query"].shape[0] for m in manual]
    assert len(set(lengths)) > 3  # batches really mix lengths, so padding is exercised
    assert acts.n_tokens == sum(lengths)
    assert acts.n_points == (sum(lengths) if token == "tokens" else len(sentences))
    for layer in (1, 2):
        for component in COMPONENTS:
            per_sentence = [m[layer - 1][component] for m in manual]
            if token == "cls":
                expected = torch.stack([x[0] for x in per_sentence])
            elif token == "mean":
                expected = torch.stack([x.mean(0) for x in per_sentence])
            else:
                expected = torch.cat(per_sentence)
            got = acts.get(layer, component)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            every_token = torch.cat(per_sentence).double()
            mean, std = acts.token_stats(layer, component)
            torch.testing.assert_close(mean, every_token.mean(0), rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(std, every_token.std(0, correction=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("token", TOKEN_MODES)
def test_batch_size_does_not_change_values(tiny_bert, tiny_tokenizer, sentences, token):
    one = compute_activations(tiny_bert, tiny_tokenizer, sentences, token=token, batch_size=1, progress=False)
    for batch_size in (3, 32):
        many = compute_activations(
            tiny_bert, tiny_tokenizer, sentences, token=token, batch_size=batch_size, progress=False
        )
        for component in COMPONENTS:
            torch.testing.assert_close(many.values[component], one.values[component], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(many.token_mean[component], one.token_mean[component])
            torch.testing.assert_close(many.token_std[component], one.token_std[component])


def test_reader_moments_equal_the_manual_forward(tiny_bert, tiny_tokenizer, sentences, manual):
    wanted = [(0, "value"), (1, "intermediate"), (1, "value")]
    moments = reader_input_moments(tiny_bert, tiny_tokenizer, sentences, wanted, batch_size=5, progress=False)
    assert set(moments) == set(wanted)
    for (layer, component), source in zip(wanted, ("context", "intermediate", "context"), strict=True):
        x = torch.cat([m[layer][source] for m in manual]).double()
        got = moments[layer, component]
        assert got.n_tokens == len(x)
        torch.testing.assert_close(got.mean, x.mean(0), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got.covariance, torch.cov(x.T, correction=0), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="only value and intermediate are read by one linear layer, got 'query'"):
        reader_input_moments(tiny_bert, tiny_tokenizer, sentences, [(0, "query")], progress=False)
    with pytest.raises(ValueError, match="sentences is empty"):
        reader_input_moments(tiny_bert, tiny_tokenizer, [], wanted, progress=False)
    twice = reader_input_moments(tiny_bert, tiny_tokenizer, sentences, wanted[:1] * 2, batch_size=5, progress=False)
    assert twice[wanted[0]].n_tokens == moments[wanted[0]].n_tokens  # a key given twice is folded in once


def test_reader_moments_refuse_a_bad_key_before_any_hook(tiny_bert, tiny_tokenizer, sentences):
    before = tiny_bert(**tiny_tokenizer(sentences[:2], padding=True, return_tensors="pt")).last_hidden_state
    for wanted, match in (
        ([(0, "value"), (0, "query")], "only value and intermediate"),
        ([(0, "value"), (-1, "value")], "layer must be a code index from 0 to 1, got -1"),
        ([(2, "value")], "got 2"),
    ):
        with pytest.raises(ValueError, match=match):
            reader_input_moments(tiny_bert, tiny_tokenizer, sentences, wanted, progress=False)
        assert not any(m._forward_pre_hooks for m in tiny_bert.modules())
    after = tiny_bert(**tiny_tokenizer(sentences[:2], padding=True, return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert reader_input_moments(tiny_bert, tiny_tokenizer, sentences, [], progress=False) == {}


def test_reader_moments_are_ordinary_tensors(tiny_bert, tiny_tokenizer, sentences):
    moments = reader_input_moments(tiny_bert, tiny_tokenizer, sentences, [(1, "value")], progress=False)[1, "value"]
    assert not moments.mean.is_inference() and not moments.covariance.is_inference()
    moments.mean -= 1  # a caller may shift them in place


def test_a_one_shot_iterable_corpus(tiny_bert, tiny_tokenizer, sentences):
    acts = compute_activations(tiny_bert, tiny_tokenizer, (s for s in sentences), progress=False)
    plain = compute_activations(tiny_bert, tiny_tokenizer, sentences, progress=False)
    assert acts.sentences == sentences
    torch.testing.assert_close(acts.values["value"], plain.values["value"], rtol=0, atol=0)


@pytest.mark.parametrize("token", TOKEN_MODES)
def test_left_padding_gives_the_same_values(tiny_bert, tiny_tokenizer, sentences, token):
    right = compute_activations(tiny_bert, tiny_tokenizer, sentences, batch_size=4, token=token, progress=False)
    left_tokenizer = copy.deepcopy(tiny_tokenizer)
    left_tokenizer.padding_side = "left"
    left = compute_activations(tiny_bert, left_tokenizer, sentences, batch_size=4, token=token, progress=False)
    for component in COMPONENTS:
        torch.testing.assert_close(left.values[component], right.values[component], rtol=1e-5, atol=1e-5)


def test_layout_and_views(tiny_bert, tiny_tokenizer, sentences):
    acts = compute_activations(tiny_bert, tiny_tokenizer, sentences, progress=False)
    assert acts.components == COMPONENTS
    assert acts.n_layers == 2
    assert acts.offsets["intermediate"] == (0, 37, 74)
    assert acts.values["intermediate"].shape == (len(sentences), 74)
    view = acts[2, "intermediate"]
    assert view.data_ptr() == acts.values["intermediate"][:, 37:].data_ptr()
    assert acts.head_sizes["query"] == ((8, 8, 8, 8), (8, 8, 8, 8))
    assert acts.sentences == sentences and acts.token == "cls"
    with pytest.raises(ValueError, match="layers are counted from 1"):
        acts.get(0, "query")
    with pytest.raises(ValueError, match="unknown component"):
        acts.get(1, "attention")


def test_component_subset_and_hooks_removed(tiny_bert, tiny_tokenizer, sentences):
    tiny_bert.train()
    acts = compute_activations(tiny_bert, tiny_tokenizer, sentences, components=["value", "query"], progress=False)
    assert acts.components == ("query", "value")
    assert tiny_bert.training  # the caller's mode is restored
    assert not any(m._forward_hooks for m in tiny_bert.modules())
    with pytest.raises(ValueError, match="was not captured"):
        acts.get(1, "output")


@pytest.mark.parametrize("token", TOKEN_MODES)
def test_head_model_and_bfloat16(tiny_bert_config, tiny_tokenizer, sentences, token):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=2)).eval()
    full = compute_activations(model, tiny_tokenizer, sentences, token=token, progress=False)
    half = compute_activations(model, tiny_tokenizer, sentences, token=token, precision="bfloat16", progress=False)
    assert half.values["output"].dtype == torch.float32
    assert not torch.equal(half.values["output"], full.values["output"])  # autocast really ran
    torch.testing.assert_close(half.values["output"], full.values["output"], rtol=0.1, atol=0.1)
    torch.testing.assert_close(half.token_std["output"], full.token_std["output"], rtol=0.05, atol=0.01)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"token": "first"}, ValueError, "unknown token mode 'first'"),
        ({"components": ["query", "gate"]}, ValueError, "unknown component 'gate'"),
        ({"components": []}, ValueError, "components is empty"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int, got 0"),
        ({"precision": "int8"}, ValueError, "unknown precision 'int8'"),
    ],
)
def test_bad_options(tiny_bert, tiny_tokenizer, sentences, options, error, match):
    with pytest.raises(error, match=match):
        compute_activations(tiny_bert, tiny_tokenizer, sentences, progress=False, **options)


def test_bad_corpus(tiny_bert, tiny_tokenizer):
    with pytest.raises(ValueError, match="sentences is empty"):
        compute_activations(tiny_bert, tiny_tokenizer, [], progress=False)
    with pytest.raises(TypeError, match="sequence of str"):
        compute_activations(tiny_bert, tiny_tokenizer, "one sentence", progress=False)
    with pytest.raises(TypeError, match="sequence of str, got NoneType"):
        compute_activations(tiny_bert, tiny_tokenizer, None, progress=False)
    with pytest.raises(TypeError, match="sentence 1 is a bytes"):
        compute_activations(tiny_bert, tiny_tokenizer, ["One.", b"two."], progress=False)
    # Refused before the forward pass, not when the table is saved.
    for bad in ("", "  ", "Line one.\nLine two."):
        with pytest.raises(ValueError, match="sentence 1 must be a non-empty single line"):
            compute_activations(tiny_bert, tiny_tokenizer, ["One.", bad], progress=False)
    long = "word " * 40  # 160 character-level tokens, over the limit of 128
    with pytest.raises(ValueError, match="1 sentence.*limit of 128 tokens.*sentence 1"):
        compute_activations(tiny_bert, tiny_tokenizer, ["Short.", long], progress=False)


def test_another_models_tokenizer_is_named(tiny_bert_config, tiny_tokenizer, sentences):
    """Ids beyond the vocabulary failed inside the embedding; [CLS] points without a [CLS] were first words."""
    small = BertModel(tiny_bert_config(vocab_size=20))
    with pytest.raises(ValueError, match=r"token id \d+, beyond the model's vocabulary of 20"):
        compute_activations(small, tiny_tokenizer, sentences, progress=False)
    from conftest import tiny_vocab
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordPiece(tiny_vocab(), unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # No post-processor: no special token is added, as with GPT-style tokenizers.
    bare = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="[PAD]", model_max_length=128)
    assert bare.num_special_tokens_to_add() == 0
    model = BertModel(tiny_bert_config())
    with pytest.raises(ValueError, match="reads the first token, but \\w+ adds no special token"):
        compute_activations(model, bare, sentences, progress=False)
    assert compute_activations(model, bare, sentences, token="mean", progress=False).n_points == len(sentences)


def test_not_an_encoder(tiny_tokenizer, sentences):
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=64))
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'"):
        compute_activations(model, tiny_tokenizer, sentences, progress=False)


@pytest.mark.cuda
def test_cuda_matches_cpu_and_half_precision(tiny_bert_config, tiny_tokenizer, sentences):
    from transformers import BertModel

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from obce.importance import compute_importance

    torch.manual_seed(0)
    model = BertModel(tiny_bert_config()).eval()
    cpu = compute_activations(model, tiny_tokenizer, sentences, token="mean", progress=False)
    model.to("cuda")
    gpu = compute_activations(model, tiny_tokenizer, sentences, token="mean", progress=False)
    for component in COMPONENTS:
        assert gpu.values[component].is_cuda and gpu.token_std[component].is_cuda
        torch.testing.assert_close(gpu.values[component].cpu(), cpu.values[component], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(gpu.token_std[component].cpu(), cpu.token_std[component], rtol=1e-4, atol=1e-5)
    lam_gpu, lam_cpu = compute_importance(gpu).neurons["lam"], compute_importance(cpu).neurons["lam"]
    assert (lam_gpu > 0).all()
    torch.testing.assert_close(torch.tensor(lam_gpu.to_numpy()), torch.tensor(lam_cpu.to_numpy()), rtol=1e-2, atol=1e-4)
    for precision in ("float16", "bfloat16"):
        half = compute_activations(model, tiny_tokenizer, sentences, token="mean", precision=precision, progress=False)
        assert half.values["output"].dtype == torch.float32 and half.values["output"].is_cuda
        assert not torch.equal(half.values["output"], gpu.values["output"])
        torch.testing.assert_close(half.values["output"], gpu.values["output"], rtol=0.05, atol=0.05)


def test_a_pruned_layer_without_query_and_key_is_analysed(tiny_bert, tiny_tokenizer, sentences):
    """prune_model may leave a layer no query/key dimension (value kept only in heads whose q·k went):
    its activations are 0 columns wide and its heads' λ 0, not a failed reshape."""
    import numpy as np
    from test_plans import random_table

    from obce.importance import analyze, head_importance
    from obce.plans import PruningPlan
    from obce.prune import prune_model

    first_heads = np.r_[np.ones(16), np.zeros(16)] + np.linspace(0, 0.01, 32)  # heads 0-1 rank highest
    table = random_table(
        tiny_bert,
        overrides={
            (1, "query"): {"lam": first_heads},
            (1, "key"): {"lam": first_heads},
            (1, "value"): {"lam": first_heads[::-1].copy()},
        },
    )
    pruned = prune_model(tiny_bert, table, PruningPlan({1: {"query": 50, "key": 50, "value": 50}}))
    assert pruned.encoder.layer[0].attention.self.query.out_features == 0  # layer 1, counted from 1
    acts = compute_activations(pruned, tiny_tokenizer, sentences, progress=False)
    assert acts.get(1, "query").shape == (len(sentences), 0)
    table = analyze(pruned, sentences, n_sentences=len(sentences), tokenizer=tiny_tokenizer, progress=False)
    assert table.neurons.query("layer == 1 and component == 'query'").empty
    heads = head_importance(acts)
    assert (heads.query("layer == 1 and component == 'query'")["lam"] == 0).all()


def test_one_component_name_stands_for_itself(tiny_bert, tiny_tokenizer, sentences):
    acts = compute_activations(tiny_bert, tiny_tokenizer, sentences, components="value", progress=False)
    assert acts.components == ("value",)
    with pytest.raises(ValueError, match="unknown component 'values'"):
        compute_activations(tiny_bert, tiny_tokenizer, sentences, components="values", progress=False)


def test_each_modules_own_mode_is_restored_and_meta_weights_are_named(tiny_bert_config, tiny_tokenizer, sentences):
    from transformers import BertForSequenceClassification

    from obce.importance import compute_importance
    from obce.scores import taylor_score

    torch.manual_seed(0)
    config = tiny_bert_config(num_labels=2, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    model = BertForSequenceClassification(config).train()
    model.bert.encoder.layer[0].eval()  # e.g. a frozen layer while the rest trains
    modes = {name: m.training for name, m in model.named_modules()}
    acts = compute_activations(model, tiny_tokenizer, sentences[:4], progress=False)
    table = compute_importance(acts)
    batch = {**tiny_tokenizer(sentences[:4], padding=True, return_tensors="pt"), "labels": torch.tensor([0, 1, 1, 0])}
    taylor = taylor_score(table, model, [batch])
    assert {name: m.training for name, m in model.named_modules()} == modes
    # Dropout is off while measuring: a training model gives the outputs and scores of its eval mode.
    model.eval()
    in_eval = compute_activations(model, tiny_tokenizer, sentences[:4], progress=False)
    for component in COMPONENTS:
        torch.testing.assert_close(acts.values[component], in_eval.values[component], rtol=0, atol=0)
    np.testing.assert_array_equal(taylor, taylor_score(table, model, [batch]))
    with pytest.raises(ValueError, match="on the meta device"):
        compute_activations(model.to("meta"), tiny_tokenizer, sentences[:3], progress=False)


# ---- boundaries, and settings passed through -------------------------------------------------


def test_a_sentence_exactly_at_the_token_limit_is_accepted(tiny_bert, tiny_tokenizer):
    exact = " ".join(["a"] * 126)  # 126 one-character tokens + [CLS] + [SEP] = the limit of 128
    assert len(tiny_tokenizer(exact)["input_ids"]) == 128
    acts = compute_activations(tiny_bert, tiny_tokenizer, [exact, "Short."], progress=False)
    assert acts.n_tokens == 128 + len(tiny_tokenizer("Short.")["input_ids"])
    with pytest.raises(ValueError, match="limit of 128 tokens"):
        compute_activations(tiny_bert, tiny_tokenizer, [exact + " a"], progress=False)
