"""Shared fixtures: a tiny offline BERT, its tokenizer and a few sentences."""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import pdist, squareform

TINY_MAX_TOKENS = 128
SENTENCES = [
    "The cat sat on the mat.",
    "A very small model reads a few short sentences about nothing in particular.",
    "Rivers flow to the sea.",
    "Persistent homology measures how long connected components survive in a filtration.",
    "In 1905, a physicist published four papers that changed how people think about time and light.",
    "Bees dance.",
    "Mountains rise slowly over millions of years as plates push against each other.",
    "She asked: why does the model pad short inputs?",
    "Numbers like 3.14 and 2.71 appear often in mathematics.",
    "The quick brown fox jumps over the lazy dog again and again.",
    "Clouds formed.",
    "Trains leave the station at noon, and the last one leaves at midnight.",
]


def mst_deaths(cloud: np.ndarray) -> np.ndarray:
    """The reference H0 diagram: sorted MST edge lengths of one (n_points, dim) cloud, in float64, zero-length
    edges kept."""
    cloud = np.asarray(cloud, dtype=np.float64)
    # scipy reads a zero in a dense matrix as "no edge", so duplicates are taken out first: each
    # one joins its twin at distance 0.
    unique = np.unique(cloud, axis=0)
    weights = minimum_spanning_tree(squareform(pdist(unique))).data
    return np.sort(np.concatenate([np.zeros(len(cloud) - len(unique)), weights]))


def mst_longest_edge(cloud: np.ndarray) -> float:
    """The reference λ of a cloud of at least 2 points."""
    return float(mst_deaths(cloud).max())


def tiny_vocab() -> dict[str, int]:
    """Special tokens, lowercase letters, digits, punctuation and their word-piece forms (88 entries)."""
    pieces = list(string.ascii_lowercase + string.digits)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *pieces, *".,;:'\"()-!?", *(f"##{p}" for p in pieces)]
    return {w: i for i, w in enumerate(words)}


def _tiny_bert_config(**overrides):
    from transformers import BertConfig

    options = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=TINY_MAX_TOKENS,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    options.update(overrides)
    return BertConfig(**options)


@pytest.fixture(scope="session")
def tiny_bert_config():
    """Factory of BertConfig small enough for unit tests (hidden 32, 2 layers, 4 heads, 128 positions);
    keyword arguments override fields."""
    return _tiny_bert_config


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A character-level WordPiece tokenizer built offline (limit 128 tokens)."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab=tiny_vocab(), model_max_length=TINY_MAX_TOKENS)


@pytest.fixture
def tiny_bert():
    """A fresh, seeded, randomly initialised tiny BertModel in eval mode (tests may modify it)."""
    from transformers import BertModel

    torch.manual_seed(0)
    return BertModel(_tiny_bert_config()).eval()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tiny_tokenizer):
    """A folder holding a saved tiny BertModel and its tokenizer (read it, don't write to it)."""
    from transformers import BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_bert")
    BertModel(_tiny_bert_config()).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def sentences() -> list[str]:
    """Twelve short English sentences of different lengths."""
    return list(SENTENCES)
