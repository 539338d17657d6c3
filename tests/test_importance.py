"""λ per neuron and per head, the importance table, and the end-to-end analysis."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import mst_longest_edge

from obce.activations import compute_activations
from obce.corpus import sample_sentences
from obce.importance import (
    NEURON_COLUMNS,
    ImportanceTable,
    analyze,
    check_sample_size,
    compute_importance,
    head_importance,
)
from obce.kernel import fast_death_radii
from obce.models.adapters import COMPONENTS, encoder_layers


def max_gap(values: np.ndarray) -> np.ndarray:
    """λ of 1-D clouds (columns): the longest edge of a 1-D minimum spanning tree is the largest gap."""
    return np.diff(np.sort(values.astype(np.float64), axis=0), axis=0).max(axis=0)


@pytest.fixture
def acts(tiny_bert, tiny_tokenizer, sentences):
    return compute_activations(tiny_bert, tiny_tokenizer, sentences, token="mean", progress=False)


def test_lambda_equals_kernel_and_oracle(acts):
    table = compute_importance(acts)
    assert len(table) == 2 * (5 * 32 + 37)
    assert list(table.neurons.columns) == list(NEURON_COLUMNS)
    checked = 0
    for layer in (1, 2):
        for component in COMPONENTS:
            values = acts.get(layer, component)
            lam = table.lam(layer, component)
            np.testing.assert_array_equal(lam, fast_death_radii(values.numpy()).astype(np.float64))
            np.testing.assert_allclose(lam, max_gap(values.numpy()), rtol=1e-5)
            assert (lam > 0).all()
            np.testing.assert_allclose(
                table.column("mean", layer, component), values.double().mean(0), rtol=1e-5, atol=1e-7
            )
            np.testing.assert_allclose(
                table.column("std", layer, component), values.double().std(0, correction=0), rtol=1e-4
            )
            token_mean, token_std = acts.token_stats(layer, component)
            np.testing.assert_array_equal(table.column("token_mean", layer, component), token_mean.numpy())
            np.testing.assert_array_equal(table.column("token_std", layer, component), token_std.numpy())
            checked += 1
    assert checked == 12
    assert table.settings["token"] == "mean" and table.settings["n_points"] == 12


def test_zeroed_neuron_has_zero_lambda(tiny_bert, tiny_tokenizer, sentences):
    layers = encoder_layers(tiny_bert)
    zeroed = {(1, "value"): 0, (1, "intermediate"): 5, (2, "query"): 3, (2, "output"): 7}
    with torch.no_grad():
        for (layer, component), neuron in zeroed.items():
            linear = layers[layer - 1].linear(component)
            linear.weight[neuron] = 0.0
            linear.bias[neuron] = 0.0
    acts = compute_activations(tiny_bert, tiny_tokenizer, sentences, token="mean", progress=False)
    table = compute_importance(acts)
    for (layer, component), neuron in zeroed.items():
        lam = table.lam(layer, component)
        assert lam[neuron] == 0.0
        assert (np.delete(lam, neuron) > 0).all()  # only the zeroed neuron collapsed


def test_cls_query_of_first_layer_is_constant(tiny_bert, tiny_tokenizer, sentences):
    # The first layer sees the same [CLS] embedding in every sentence: one point, λ = 0.
    table = compute_importance(compute_activations(tiny_bert, tiny_tokenizer, sentences, progress=False))
    for component in ("query", "key", "value", "attention_output", "intermediate", "output"):
        lam = table.lam(1, component)
        assert (lam == 0).all() if component in ("query", "key", "value") else (lam > 0).all()


def test_head_view(acts):
    heads = head_importance(acts)
    assert len(heads) == 2 * 3 * 4
    row = heads[(heads["layer"] == 2) & (heads["component"] == "key") & (heads["head"] == 1)].iloc[0]
    cloud = acts.get(2, "key")[:, 8:16].numpy()
    assert row["size"] == 8
    np.testing.assert_allclose(row["lam"], mst_longest_edge(cloud), rtol=1e-5)
    assert (heads["lam"] > 0).all()


def test_head_view_unequal_sizes(acts):
    acts.head_sizes = {**acts.head_sizes, "value": ((8, 8, 8, 8), (20, 0, 4, 8))}
    heads = head_importance(acts, ["value"])
    layer2 = heads[heads.layer == 2].set_index("head")
    values = acts.get(2, "value").numpy()
    np.testing.assert_allclose(layer2.loc[0, "lam"], mst_longest_edge(values[:, :20]), rtol=1e-5)
    assert layer2.loc[1, "lam"] == 0.0
    np.testing.assert_allclose(layer2.loc[2, "lam"], mst_longest_edge(values[:, 20:24]), rtol=1e-5)
    np.testing.assert_allclose(layer2.loc[3, "lam"], mst_longest_edge(values[:, 24:]), rtol=1e-5)
    with pytest.raises(ValueError, match="only query, key and value"):
        head_importance(acts, ["output"])
    # Sizes that overrun the layer would read the next layer's neurons.
    acts.head_sizes = {**acts.head_sizes, "value": ((8, 8, 8, 16), (8, 8, 8, 8))}
    with pytest.raises(ValueError, match=r"layer 1 value: head sizes \(8, 8, 8, 16\) add up to 40, the layer has 32"):
        head_importance(acts, ["value"])
    table = compute_importance(acts)
    with pytest.raises(TypeError, match="head_importance takes the Activations .* got ImportanceTable"):
        head_importance(table)
    with pytest.raises(TypeError, match="compute_importance takes the Activations .* got ImportanceTable"):
        compute_importance(table)


def test_stats(acts):
    table = compute_importance(acts)
    stats = table.stats()
    assert list(stats.columns) == ["layer", "component", "n", "median", "mean", "p30", "p50", "p70"]
    assert list(stats["component"][:6]) == list(COMPONENTS) and list(stats["layer"]) == [1] * 6 + [2] * 6
    row = stats[(stats.layer == 2) & (stats.component == "intermediate")].iloc[0]
    lam = table.lam(2, "intermediate")
    assert row["n"] == 37
    assert row["median"] == np.median(lam) == row["p50"]
    assert row["p30"] == np.percentile(lam, 30) and row["p70"] == np.percentile(lam, 70)
    assert row["p30"] < row["p70"]


def test_save_load_round_trip(acts, tmp_path):
    table = compute_importance(acts, heads=True, settings={"seed": 3, "model": None})
    folder = table.save(tmp_path / "run")
    assert sorted(os.listdir(folder)) == ["importance.csv", "importance.json", "importance_heads.csv", "sentences.txt"]
    loaded = ImportanceTable.load(folder)
    pd.testing.assert_frame_equal(loaded.neurons, table.neurons)
    pd.testing.assert_frame_equal(loaded.heads, table.heads)
    assert loaded.settings == table.settings
    assert loaded.sentences == table.sentences
    np.testing.assert_array_equal(loaded.lam(2, "value"), table.lam(2, "value"))
    with pytest.raises(FileExistsError, match="importance.csv"):
        table.save(folder)
    table.save(folder, overwrite=True)
    with pytest.raises(FileNotFoundError):
        ImportanceTable.load(tmp_path / "nothing")


def test_save_over_an_older_table_removes_what_it_lacks(acts, tmp_path):
    full = compute_importance(acts, heads=True)
    folder = full.save(tmp_path)
    bare = ImportanceTable(full.neurons, full.settings)
    with pytest.raises(FileExistsError, match="importance_heads.csv, sentences.txt"):
        bare.save(folder)
    bare.save(folder, overwrite=True)
    assert sorted(os.listdir(folder)) == ["importance.csv", "importance.json"]
    loaded = ImportanceTable.load(folder)
    assert loaded.heads is None and loaded.sentences is None


def test_a_save_that_fails_midway_changes_nothing(acts, tmp_path, monkeypatch):
    """Every file is written before any replaces its older copy: a failed save leaves the old table whole."""
    folder = compute_importance(acts, heads=True).save(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    other = ImportanceTable(compute_importance(acts).neurons.assign(lam=1.0), {"seed": 9})
    real_replace = os.replace

    def replace(src, dst):  # the disk fills up once the first file has been written
        if "importance.json" in str(dst):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        other.save(folder, overwrite=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temporary file left either


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("importance.csv", b"", "importance.csv is not a file ImportanceTable.save wrote"),
        ("importance.csv", None, "last line has no line end: cut short"),
        ("importance.csv", b"\x89PNG\r\n\x1a\n\x00\x00\n", "importance.csv is not a file"),
        ("importance_heads.csv", b"", "importance_heads.csv is not a file"),
        ("importance.json", b"{seed: 3}", "importance.json is not a file"),
        ("importance.json", b"[1, 2]\n", "expected a JSON object, got list"),
    ],
)
def test_a_damaged_file_is_named(acts, tmp_path, name, content, match):
    folder = compute_importance(acts, heads=True).save(tmp_path / "run")
    path = folder / name
    path.write_bytes(path.read_bytes()[:-40] if content is None else content)
    with pytest.raises(ValueError, match=match):
        ImportanceTable.load(folder)


def test_table_input_checks(acts):
    table = compute_importance(acts)
    with pytest.raises(ValueError, match=r"no neurons for layer 0 .* layers are \[1, 2\] \(counted from 1\)"):
        table.lam(0, "query")
    with pytest.raises(ValueError, match="unknown component 'ffn'"):
        table.lam(1, "ffn")
    with pytest.raises(TypeError, match="layer must be an int"):
        table.lam(True, "query")
    np.testing.assert_array_equal(table.lam(np.int64(1), "query"), table.lam(1, "query"))
    with pytest.raises(ValueError, match="unknown column 'lambda'"):
        table.column("lambda", 1, "query")
    with pytest.raises(ValueError, match="lacks the column"):
        ImportanceTable(table.neurons.drop(columns="token_std"))
    with pytest.raises(ValueError, match="unknown component"):
        ImportanceTable(table.neurons.assign(component="ffn"))
    with pytest.raises(ValueError, match="counted from 1"):
        ImportanceTable(table.neurons.assign(layer=table.neurons["layer"] - 1))
    with pytest.raises(TypeError, match="DataFrame"):
        ImportanceTable({"layer": [1]})


@pytest.mark.parametrize(
    "edit, match",
    [
        # Saved, NaN became an empty cell that could not be read back.
        (lambda n: n.assign(mean=np.where(n.index == 0, np.nan, n["mean"])), "column 'mean' has 1 non-finite"),
        (lambda n: n.assign(flag=True), r"extra columns must be numeric scores, got \['flag'\]"),
        (lambda n: n.assign(layer=n["layer"].astype(str)), "column 'layer' must hold numbers"),
        (lambda n: n.assign(layer=n["layer"] + 0.5), "column 'layer' must hold whole numbers"),
        # A neuron listed twice, another missing: its values would be read as its neighbour's.
        (lambda n: n.assign(neuron=np.where(n["neuron"] == 5, 4, n["neuron"])), "numbered 0, 1, 2, ... in row order"),
        (lambda n: n.iloc[::-1], "numbered 0, 1, 2, ... in row order"),
    ],
)
def test_a_table_holds_finite_numbers_one_row_per_neuron_in_order(acts, edit, match):
    neurons = compute_importance(acts).neurons
    with pytest.raises(ValueError, match=match):
        ImportanceTable(edit(neurons))


def test_a_refused_save_changes_nothing_and_numbers_keep_their_type(acts, tmp_path):
    settings = {"seed": np.int64(3), "share": np.float32(0.5), "path": tmp_path, "sizes": np.arange(2000)}
    table = compute_importance(acts, settings=settings)
    with pytest.raises(ValueError, match="sentence 1 must be a non-empty single line"):
        ImportanceTable(table.neurons, sentences=["fine", "two\nlines"])
    bad = ImportanceTable(table.neurons, sentences=["fine"])
    bad.sentences.append("two\nlines")  # the list stays the caller's to change: save checks it again
    with pytest.raises(ValueError, match="sentence 1 must be a non-empty single line"):
        bad.save(tmp_path / "new")
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())
    table.save(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(ValueError, match="sentence 1"):
        bad.save(tmp_path / "run", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    settings = ImportanceTable.load(tmp_path / "run").settings
    assert settings["seed"] == 3 and settings["share"] == 0.5 and settings["path"] == str(tmp_path)
    assert settings["sizes"] == list(range(2000))  # an array in full, not its shortened text
    votes = np.arange(len(table)) - 7  # an integer score column comes back as integers
    ImportanceTable(table.neurons.assign(votes=votes, ratio=2.0)).save(tmp_path / "scored")
    loaded = ImportanceTable.load(tmp_path / "scored").neurons
    assert loaded["votes"].dtype == np.int64 and loaded["ratio"].dtype == np.float64
    np.testing.assert_array_equal(loaded["votes"], votes)


def test_an_overflowed_output_names_its_layer_and_neuron(acts):
    """A float16 model that overflowed: the error names the neuron in the table's numbering, not a joined column."""
    offsets = acts.offsets["intermediate"]
    acts.values["intermediate"][3, int(offsets[1]) + 5] = float("inf")
    with pytest.raises(ValueError, match="layer 2 intermediate neuron 5 has a NaN or infinite output"):
        compute_importance(acts)


def test_an_empty_table_and_score_columns_named_like_head_columns_round_trip(acts, tmp_path):
    table = compute_importance(acts)
    scored = table.with_columns({"size": np.linspace(0.1, 0.9, len(table)), "head": np.full(len(table), 1e-300)})
    scored.save(tmp_path / "scored")
    back = ImportanceTable.load(tmp_path / "scored")
    np.testing.assert_array_equal(back.neurons["size"], scored.neurons["size"])
    np.testing.assert_array_equal(back.neurons["head"], scored.neurons["head"])
    ImportanceTable(table.neurons.iloc[:0], sentences=table.sentences).save(tmp_path / "empty")
    assert len(ImportanceTable.load(tmp_path / "empty")) == 0


def test_a_byte_level_tokenizer_is_measured_on_raw_bytes(sentences):
    """Byte-level BPE tokens cover raw bytes, which NFKD can shorten: 'Ａ' is 3 bytes, 'A' one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        cls_token="<s>", sep_token="</s>", model_max_length=66,
    )  # fmt: skip
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=66, pad_token_id=1,
    )  # fmt: skip
    wide = "ＡＢＣＤＥＦＧＨＩＪＫＬＭＮＯＰＱＲＳＴＵＶＷＸＹ"  # 25 letters, 75 tokens: over the limit of 64
    short = [s for s in sentences if len(tokenizer(s)["input_ids"]) <= 64][:6]
    table = analyze(RobertaModel(config).eval(), [wide, *short], n_sentences=len(short), tokenizer=tokenizer,
                    progress=False)  # fmt: skip
    assert wide not in table.sentences and len(table.sentences) == len(short)


def test_a_copy_shares_no_settings_and_an_empty_table_describes_itself(acts):
    table = compute_importance(acts, settings={"timings_s": {"analyze": 1.0}})
    copy = table.with_columns({"score": np.ones(len(table))})
    copy.settings["timings_s"]["analyze"] = 2.0
    assert table.settings["timings_s"]["analyze"] == 1.0
    empty = ImportanceTable(table.neurons.iloc[:0])
    assert repr(empty) == "ImportanceTable(0 neurons)"
    assert empty.stats().empty and list(empty.stats().columns)[:3] == ["layer", "component", "n"]


def test_analyze_tiny_model_from_folder(tiny_bert_dir, sentences):
    long = "word " * 40  # over the tiny model's 128-token limit: never sampled
    corpus = [*sentences, long]
    table = analyze(str(tiny_bert_dir), corpus=corpus, n_sentences=len(sentences), seed=1, progress=False, device="cpu")
    assert table.sentences == sentences
    assert table.settings["model"] == str(tiny_bert_dir)
    assert table.settings["n_sentences"] == 12 and table.settings["seed"] == 1
    assert set(table.settings["timings_s"]) == {"load", "corpus", "forward", "kernel", "importance"}
    with pytest.raises(
        ValueError, match=r"asked for a sample of 13 sentences .* has only 12 distinct ones that fit the model \(1 more"
    ):
        analyze(str(tiny_bert_dir), corpus=corpus, n_sentences=13, progress=False, device="cpu")


def test_head_view_of_the_captured_head_components(tiny_bert, tiny_tokenizer, sentences):
    table = analyze(
        tiny_bert,
        corpus=sentences,
        n_sentences=5,
        tokenizer=tiny_tokenizer,
        components=("value", "intermediate"),
        heads=True,
        progress=False,
    )
    assert set(table.heads["component"]) == {"value"} and len(table.heads) == 2 * 4  # 2 layers of 4 heads


def test_analyze_loaded_model(tiny_bert, tiny_tokenizer, sentences):
    table = analyze(
        tiny_bert, corpus=sentences, n_sentences=5, tokenizer=tiny_tokenizer, token="tokens", progress=False
    )
    assert table.settings["n_points"] == table.settings["n_tokens"] > 5
    with pytest.raises(TypeError, match="needs its tokenizer"):
        analyze(tiny_bert, corpus=sentences, n_sentences=5)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"token": "pooled"}, "unknown token mode"),
        ({"components": ["gate"]}, "unknown component"),
        ({"components": []}, "components is empty"),
        ({"components": ["intermediate"], "heads": True}, "heads=True needs query, key or value"),
        ({"n_sentences": 0}, "n_sentences must be a positive int, got 0"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"precision": "int8"}, "unknown precision 'int8'"),
        ({"n_threads": 0}, "n_threads must be -1"),
    ],
)
def test_analyze_bad_options_fail_before_loading(options, match):
    with pytest.raises(ValueError, match=match):
        analyze("no/such/model", **options)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"seed": 1.5}, TypeError, "seed must be an int, got 1.5"),
        ({"corpus": "missing_corpus.txt"}, FileNotFoundError, "missing_corpus.txt"),
        ({"corpus": 42}, TypeError, "corpus must be None, a Corpus, a path or a dataset name"),
    ],
)
def test_analyze_bad_seed_or_corpus_fail_before_loading(options, error, match):
    """The model named is none that exists: an error from loading it would say so instead."""
    with pytest.raises(error, match=match):
        analyze("no/such/model", **options)


def test_analyze_rejects_a_decoder(tiny_tokenizer, sentences):
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=64))
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'.*supported encoder families"):
        analyze(model, corpus=sentences, n_sentences=3, tokenizer=tiny_tokenizer, progress=False)


@pytest.mark.slow
def test_builtin_model_and_corpus(tmp_path):
    table = analyze(progress=False, device="cpu")
    assert len(table) == 6 * (5 * 384 + 1536)
    assert len(table.sentences) == len(set(table.sentences)) == 150
    assert table.settings["model"] is None and table.settings["corpus"].startswith("builtin:")
    lam = table.neurons["lam"].to_numpy()
    assert np.isfinite(lam).all() and (lam >= 0).all()
    stats = table.stats().set_index(["layer", "component"])
    for component in ("query", "key", "value"):
        assert stats.loc[(1, component), "mean"] == 0.0  # the same [CLS] embedding in every sentence
    deeper = stats.drop(index=1, level="layer")
    assert (deeper["median"] > 0).all()
    # The last layer spreads the [CLS] outputs most (the paper's Figure 6 rises at the end).
    assert stats.loc[(6, "attention_output"), "median"] > stats.loc[(5, "attention_output"), "median"]
    loaded = ImportanceTable.load(table.save(tmp_path))
    pd.testing.assert_frame_equal(loaded.neurons, table.neurons)


def test_figures(acts, tmp_path):
    from obce.report.figures import plot_lambda_by_layer, plot_lambda_distributions, plot_persistence_diagram

    table = compute_importance(acts)
    written = [
        plot_lambda_by_layer(table, tmp_path / "median.png"),
        plot_lambda_distributions(table, tmp_path / "figures" / "distributions.png", log=True),
        plot_persistence_diagram(acts, 2, "intermediate", 4, tmp_path / "diagram.png"),
    ]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["diagram.png", "distributions.png", "figures", "median.png"]
    with pytest.raises(FileExistsError):
        plot_lambda_by_layer(table, tmp_path / "median.png")
    plot_lambda_by_layer(table, tmp_path / "median.png", statistic="p70", overwrite=True)
    with pytest.raises(ValueError, match="unknown statistic 'max'"):
        plot_lambda_by_layer(table, tmp_path / "other.png", statistic="max")
    with pytest.raises(ValueError, match=r"\.png"):
        plot_lambda_by_layer(table, tmp_path / "median.pdf")
    with pytest.raises(ValueError, match=r"neuron must be an int in 0\.\.36, got 37"):
        plot_persistence_diagram(acts, 2, "intermediate", 37, tmp_path / "bad.png")


def test_a_sentence_that_normalization_lengthens_is_measured(tiny_bert, sentences):
    """NFKC (SentencePiece's normalizer) turns U+FDFA's 3 bytes into 18 characters: the sentence is
    tokenized to be measured, found too long and left out of the sample, not sampled and refused."""
    from conftest import tiny_vocab
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    vocab = tiny_vocab()
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.NFKC()
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"\S"), behavior="isolated")  # a token per character
    core.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        model_max_length=128,
    )  # fmt: skip
    odd = "\ufdfa" * 8  # 24 bytes, 146 tokens
    table = analyze(tiny_bert, [*sentences, odd], n_sentences=len(sentences), tokenizer=tokenizer, progress=False)
    assert odd not in table.sentences and len(table.sentences) == len(sentences)


# ---- boundaries, and settings passed through -------------------------------------------------


def test_analyze_samples_with_its_seed(tiny_bert, tiny_tokenizer, sentences):
    def run(seed):
        return analyze(tiny_bert, sentences, n_sentences=4, seed=seed, tokenizer=tiny_tokenizer, progress=False)

    assert run(1).sentences == sample_sentences(sentences, 4, 1)
    assert run(1).sentences != run(2).sentences


def test_one_sentence_is_refused_for_per_sentence_clouds():
    for token in ("cls", "mean"):
        with pytest.raises(ValueError, match="n_sentences=1"):
            check_sample_size(1, token)
    check_sample_size(1, "tokens")


def test_a_sentence_exactly_at_the_limit_can_be_sampled(tiny_bert, tiny_tokenizer, sentences):
    exact = " ".join(["a"] * 126)  # 128 tokens with [CLS] and [SEP]: fits
    table = analyze(
        tiny_bert, [*sentences, exact], n_sentences=len(sentences) + 1, tokenizer=tiny_tokenizer, progress=False
    )
    assert exact in table.sentences


def test_an_overflow_in_a_layers_first_neuron_names_that_layer(tiny_bert, tiny_tokenizer, sentences):
    acts = compute_activations(tiny_bert, tiny_tokenizer, sentences, token="mean", progress=False)
    acts.values["intermediate"][3, acts.offsets["intermediate"][1]] = float("inf")
    with pytest.raises(ValueError, match="layer 2 intermediate neuron 0 has a NaN"):
        compute_importance(acts)
