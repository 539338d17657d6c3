"""Corpus reading and seeded sampling."""

from __future__ import annotations

import bz2
import os
import re
import sys
import types
from collections import Counter

import pytest

from obce.corpus import (
    Corpus,
    builtin_dump_path,
    load_sentences,
    sample_sentences,
    save_sentences,
    split_sentences,
)

DUMP = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">
  <siteinfo><sitename>Test</sitename></siteinfo>
  <page><title>Cats</title><ns>0</ns><id>1</id><revision><id>10</id><text>'''Cats''' are small animals \
that many people keep at home.{{citation needed}} They sleep for most of the ''whole'' day.&lt;ref&gt;A book \
about cats.&lt;/ref&gt;
==History of cats==
* A list item that should not appear in the corpus at all.
{| class="wikitable" style="width: 100%"
! Year !! Cats
|-
| 1900 || 12
|}
Cats were [[domestication|domesticated]] in the Near East long ago. Short one. Cats (from ) were \
named by people living in a city near the river.
[[Category:Animals]]</text></revision></page>
  <page><title>Kitty</title><ns>0</ns><id>2</id><revision><id>11</id><text>#REDIRECT [[Cats]] and enough \
words here to pass the filter.</text></revision></page>
  <page><title>Talk:Cats</title><ns>1</ns><id>3</id><revision><id>12</id><text>This talk page sentence has \
enough words to be kept.</text></revision></page>
</mediawiki>
"""
EXPECTED = [
    "Cats are small animals that many people keep at home.",
    "They sleep for most of the whole day.",
    "Cats were domesticated in the Near East long ago.",
]


@pytest.fixture(scope="module")
def builtin_sentences() -> list[str]:
    return list(Corpus.builtin_sample().sentences())


@pytest.mark.parametrize("suffix", [".xml", ".xml.bz2"])
def test_wikipedia_dump_is_cleaned(tmp_path, suffix):
    path = tmp_path / f"dump{suffix}"
    data = DUMP.encode()
    path.write_bytes(bz2.compress(data) if suffix.endswith(".bz2") else data)
    corpus = Corpus.resolve(path)
    assert corpus.kind == "wikipedia"
    assert list(corpus.sentences()) == EXPECTED


def test_builtin_corpus_is_clean_and_large(builtin_sentences):
    assert 11_000 <= len(builtin_sentences) <= 13_000
    for sentence in builtin_sentences:
        assert 6 <= len(sentence.split()) <= 25, sentence
        assert re.search(r"""[.?!]["'’”»)]*$""", sentence), sentence
        assert sentence.count("(") == sentence.count(")") and sentence.count('"') % 2 == 0, sentence
        for leftover in ("[[", "]]", "{{", "}}", "|", "'''", "==", "<ref", "#REDIRECT", "()", "(;", "(,", " ' "):
            assert leftover not in sentence, sentence
        assert not re.search(r" (no|v|Brig|Maj|Rep)\.$", sentence), sentence  # cut at an abbreviation


def test_builtin_dump_path_exists():
    assert builtin_dump_path().is_file()


def test_sample_is_seeded_and_in_corpus_order(builtin_sentences):
    first = sample_sentences(None, 150, seed=0)
    assert first == sample_sentences(None, 150, seed=0)
    other = sample_sentences(None, 150, seed=1)
    assert len(set(first) & set(other)) < 30
    positions = [builtin_sentences.index(s) for s in first]
    assert positions == sorted(positions) and len(set(positions)) == 150


def test_sample_from_a_list_is_uniform():
    corpus = ["zero", "one", "two"]
    counts = Counter(sample_sentences(corpus, 1, seed=seed)[0] for seed in range(3000))
    assert set(counts) == set(corpus)
    assert all(850 < n < 1150 for n in counts.values()), counts


def test_sample_whole_corpus_keeps_everything():
    corpus = [f"sentence number {i}" for i in range(10)]
    assert sample_sentences(corpus, 10, seed=3) == corpus


def test_accept_filter_spans_chunks():
    corpus = [f"text {i}" for i in range(1300)]
    calls = []

    def accept(chunk):
        calls.append(len(chunk))
        return [int(s.split()[1]) % 2 == 0 for s in chunk]

    sample = sample_sentences(corpus, 650, seed=0, accept=accept)
    assert sample == corpus[::2]
    assert calls == [512, 512, 276]


def test_limit_stops_reading():
    corpus = [f"text {i}" for i in range(100)]
    assert sample_sentences(corpus, 5, seed=0, limit=5) == corpus[:5]
    sample = sample_sentences(corpus, 5, seed=0, limit=20)
    assert set(sample) <= set(corpus[:20])
    with pytest.raises(ValueError, match="limit=4 is smaller than the sample of n=5 sentences"):
        sample_sentences(corpus, 5, seed=0, limit=4)


def test_byte_order_mark_is_not_text(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\ufeffThe first line of the file has a mark.\n", encoding="utf-8")
    assert list(Corpus.resolve(str(path)).sentences()) == ["The first line of the file has a mark."]
    assert load_sentences(path) == ["The first line of the file has a mark."]


def test_text_file_lines_are_split_into_sentences(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text(
        "One two three four five six. Seven eight nine ten eleven twelve.\n\n"
        "Too short.\nA line   with    spaces has seven words\n",
        encoding="utf-8",
    )
    corpus = Corpus.resolve(str(path))
    assert corpus.kind == "text"
    assert list(corpus.sentences()) == [
        "One two three four five six.",
        "Seven eight nine ten eleven twelve.",
        "A line with spaces has seven words",
    ]
    whole = corpus.with_options(split_into_sentences=False, min_words=1, max_words=None)
    assert list(whole.sentences())[1] == "Too short."


def test_hf_dataset_is_streamed(monkeypatch):
    calls = {}

    def load_dataset(name, config, split, streaming):
        calls.update(name=name, config=config, split=split, streaming=streaming)
        return iter(
            [
                {"text": "The first text has six words. Tiny."},
                {"text": "  "},
                {"text": "Another text here with six words."},
                {"text": "History\nThe earliest themes are found in old books.\n- List of books on the subject"},
            ]
        )

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    corpus = Corpus.resolve("hf:wiki_like:en")
    # A row's lines are apart: a heading or a list item never starts a sentence.
    assert list(corpus.sentences()) == [
        "The first text has six words.",
        "Another text here with six words.",
        "The earliest themes are found in old books.",
        "- List of books on the subject",
    ]
    assert calls == {"name": "wiki_like", "config": "en", "split": "train", "streaming": True}
    with pytest.raises(ValueError, match="no column 'body'"):
        list(Corpus.hf_dataset("wiki_like", column="body").sentences())


def test_hf_dataset_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        list(Corpus.resolve("some_dataset").sentences())


def test_resolve_rules(tmp_path):
    assert Corpus.resolve(None).builtin
    corpus = Corpus.hf_dataset("x")
    assert Corpus.resolve(corpus) is corpus
    assert Corpus.resolve("wikitext").kind == "hf"
    with pytest.raises(ValueError, match="'A short sentence.' is neither a file nor a dataset name; pass sentences"):
        Corpus.resolve("A short sentence.")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        Corpus.resolve(str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError):
        Corpus.resolve("missing.txt")
    with pytest.raises(TypeError, match="int"):
        Corpus.resolve(3)
    with pytest.raises(ValueError, match="kind"):
        Corpus("html", "x")
    with pytest.raises(ValueError, match="max_words"):
        Corpus.hf_dataset("x", min_words=5, max_words=2)


def test_empty_corpus_is_an_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no usable sentence"):
        sample_sentences(path, 1)
    with pytest.raises(ValueError, match="no usable sentence"):
        sample_sentences([], 1)


def test_text_corpus_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("One two three four five six.\nCaf\u00e9 au lait is a drink of coffee.\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"corpus file '.*latin1.txt' is not UTF-8 text"):
        sample_sentences(path, 1)


@pytest.mark.parametrize("name", ["texts.txt.bz2", "texts.xml"])
def test_text_file_named_as_a_dump_is_refused(tmp_path, name):
    """A .bz2 or .xml corpus is read as a MediaWiki dump: a text file named so is refused, not an XML traceback."""
    path = tmp_path / name
    text = b"One two three four five six.\nSeven eight nine ten eleven twelve.\n"
    path.write_bytes(bz2.compress(text) if name.endswith(".bz2") else text)
    with pytest.raises(ValueError, match=rf"corpus file '.*{name}' is not a MediaWiki XML dump .*decompress"):
        sample_sentences(path, 1)


def test_xml_that_is_no_mediawiki_dump_is_named(tmp_path):
    path = tmp_path / "other.xml"
    path.write_text("<root><a>One two three four five six.</a></root>", encoding="utf-8")
    with pytest.raises(ValueError, match=r"corpus file '.*other.xml' is not a MediaWiki XML dump"):
        sample_sentences(path, 1)


def test_damaged_dump_is_named(tmp_path):
    """A truncated download, or a .bz2 name on a plain file: the error names the file, not only bz2's complaint."""
    dump = b"<mediawiki><page><ns>0</ns><title>A</title><revision><text>One two three.</text></revision></page>"
    cut = tmp_path / "cut.xml.bz2"
    cut.write_bytes(bz2.compress(dump * 50)[:-40])
    plain = tmp_path / "DUMP.BZ2"  # the suffix in capitals is still a dump's
    plain.write_bytes(dump)
    for path in (cut, plain):
        with pytest.raises(ValueError, match=rf"corpus file '.*{path.name}' cannot be read to its end"):
            sample_sentences(path, 1)


def test_sample_larger_than_corpus_is_an_error(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("One two three four five six.\nSeven eight nine ten eleven twelve.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="asked for a sample of 3 sentences .* has only 2"):
        sample_sentences(path, 3)


def test_a_sample_holds_each_sentence_once():
    ten = [f"Sentence number {i} of ten." for i in range(10)]
    with pytest.raises(ValueError, match="asked for a sample of 11 sentences .* has only 10 distinct ones"):
        sample_sentences(ten * 100, 11)
    for seed in range(20):  # repeats late in the stream, while their first copy is in the sample
        sample = sample_sentences(ten[:6] + [f"Filler {i} here." for i in range(40)] + ten * 5, 8, seed)
        assert len(set(sample)) == 8


def test_a_sample_is_uniform_over_distinct_sentences():
    """A repeat is no second chance: each of five distinct sentences is in a sample of 2 with probability 2/5,
    the repeated first one too (a reservoir that counted repeats kept the early ones more often: 0.51 for "b")."""
    corpus = ["a", "b", "a", "c", "d", "e", "a"]
    seeds = 5000
    counts = Counter(s for seed in range(seeds) for s in sample_sentences(corpus, 2, seed))
    assert set(counts) == set("abcde")
    sd = (0.4 * 0.6 / seeds) ** 0.5  # 0.0069
    assert all(abs(k / seeds - 0.4) < 4 * sd for k in counts.values()), counts


def test_a_larger_sample_holds_the_smaller_one(builtin_sentences):
    small, large = sample_sentences(builtin_sentences, 150, 3), sample_sentences(builtin_sentences, 600, 3)
    assert set(small) < set(large)
    assert sample_sentences(builtin_sentences, 150, 4) != small


@pytest.mark.parametrize(
    ("bounds", "match"),
    [
        ({"min_words": 0}, "min_words must be a positive int, got 0"),
        ({"min_words": 3, "max_words": 2}, r"max_words \(at least min_words=3\) must be an int >= 3 or None, got 2"),
    ],
)
def test_bad_word_bounds(bounds, match):
    with pytest.raises(ValueError, match=match):
        list(split_sentences("Hello world.  ", **bounds))  # min_words=0 gave an empty sentence
    with pytest.raises(ValueError, match=match):
        Corpus.builtin_sample(**bounds)


def test_numpy_integers_are_sizes_and_seeds():
    import numpy as np

    sentences = [f"Sentence {i} is here." for i in range(10)]
    assert sample_sentences(sentences, np.int64(3), np.int32(4)) == sample_sentences(sentences, 3, 4)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_bad_sample_size(n):
    with pytest.raises(ValueError, match="n must be a positive int"):
        sample_sentences(["a b"], n)


def test_bad_seed():
    with pytest.raises(TypeError, match="seed"):
        sample_sentences(["a b"], 1, seed="0")


def test_split_sentences_keeps_decimals():
    text = "Pi is about 3.14 and e is about 2.71 in value. Next   sentence has six words here."
    assert list(split_sentences(text)) == [
        "Pi is about 3.14 and e is about 2.71 in value.",
        "Next sentence has six words here.",
    ]


def test_split_sentences_knows_abbreviations_initials_and_quotes():
    text = (
        "Many species, e.g. the red fox, live in the forests of the U.S. and Canada. William B. Yeats met "
        'Dr. Smith at St. Louis in 1903. Was it known? "They had met before." It ends with ca. 1.5 m. He lived '
        '(in the U.S.) for years. The film "Why?" was made by J. K. Smith, cf. the book. Done!'
    )
    assert list(split_sentences(text, min_words=1)) == [
        "Many species, e.g. the red fox, live in the forests of the U.S. and Canada.",
        "William B. Yeats met Dr. Smith at St. Louis in 1903.",
        "Was it known?",
        '"They had met before."',
        "It ends with ca. 1.5 m.",
        "He lived (in the U.S.) for years.",
        'The film "Why?" was made by J. K. Smith, cf. the book.',  # no sentence starts in lower case
        "Done!",
    ]
    text = (
        "He ended at world no. 8, the oldest player. He said no. Then White v. Crook came to Brig. Gen. Smith "
        "and Maj. Jones. She wrote “It was over.” Then she left."
    )
    assert list(split_sentences(text, min_words=1)) == [
        "He ended at world no. 8, the oldest player.",
        "He said no.",  # "no." is a number sign before a number only
        "Then White v. Crook came to Brig. Gen. Smith and Maj. Jones.",
        "She wrote “It was over.”",
        "Then she left.",
    ]


def test_each_period_reads_only_the_few_characters_before_it(monkeypatch):
    """Read from the sentence's start, a text whose periods all end abbreviations took quadratic time (20,000
    initials: 49 s)."""
    import obce.corpus

    reads = []

    class Recorded:
        def search(self, text, pos, endpos):
            reads.append(endpos - pos)
            return abbreviation.search(text, pos, endpos)

    abbreviation = obce.corpus._ABBREVIATION
    monkeypatch.setattr(obce.corpus, "_ABBREVIATION", Recorded())
    assert list(split_sentences("A. " * 1_000 + "End.", min_words=1, max_words=None)) == [
        " ".join(["A."] * 1_000 + ["End."])
    ]
    assert len(reads) == 1_000 and max(reads) <= 32


def test_save_and_load_round_trip(tmp_path):
    sentences = ["First sentence.", "Second one, with ünïcode."]
    path = save_sentences(sentences, tmp_path / "run" / "sentences.txt")
    assert load_sentences(path) == sentences
    assert os.listdir(path.parent) == ["sentences.txt"]  # no temporary file left behind
    with pytest.raises(FileExistsError):
        save_sentences(sentences, path)
    save_sentences(sentences[:1], path, overwrite=True)
    assert load_sentences(path) == sentences[:1]
    with pytest.raises(ValueError, match="single line"):
        save_sentences(["two\nlines"], tmp_path / "bad.txt")
    # A file's leading byte-order mark is no text (load_sentences drops it), so no sentence may start with one.
    with pytest.raises(ValueError, match=r"sentence 0 starts with a byte-order mark \(U\+FEFF\)"):
        save_sentences(["\ufeffMarked."], tmp_path / "bom.txt")
    # A lone surrogate (text decoded with errors="surrogateescape") has no UTF-8 form to write or tokenize.
    with pytest.raises(ValueError, match="sentence 1 is not valid Unicode"):
        save_sentences(["Fine.", "Caf\udce9 au lait."], tmp_path / "bad.txt")
    assert not (tmp_path / "bad.txt").exists()
    # ... and a corpus makes none: a mark inside a text (files joined together) is white space.
    assert list(split_sentences("\ufeffOne two. \ufeffThree four.", min_words=1)) == ["One two.", "Three four."]
    assert sample_sentences(["\ufeffOne two."], 1) == ["One two."]


# ---- boundaries, and settings passed through -------------------------------------------------


def test_word_bounds_are_inclusive():
    words = [f"W{i}" for i in range(26)]
    text = ". ".join(" ".join(words[:n]) for n in (25, 26, 6, 5)) + "."
    assert [len(s.split()) for s in split_sentences(text)] == [25, 6]


def test_a_dump_sentence_with_an_unclosed_parenthesis_is_dropped(tmp_path):
    dump = (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10"><page><title>Cats</title>'
        "<ns>0</ns><id>1</id><revision><id>10</id><text>Cats are small animals that many people keep. "
        "Cats (such as the ones seen at home sleep all day.</text></revision></page></mediawiki>"
    )
    path = tmp_path / "dump.xml"
    path.write_text(dump, encoding="utf-8")
    assert list(Corpus.resolve(path).sentences()) == ["Cats are small animals that many people keep."]


def test_a_list_corpus_is_normalised_to_single_spaced_lines():
    assert sample_sentences(["  One   two\nthree. "], 1) == ["One two three."]
