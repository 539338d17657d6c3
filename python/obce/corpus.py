"""Sentences to probe a model with: a Wikipedia dump, a text file or a Hugging Face dataset.

The method samples about 150 short English sentences: Wikipedia entries are split into sentences at periods
(not those of abbreviations and initials), question and exclamation marks, and a seeded random subset of the
sentences of 6 to 25 words is kept. Splitting, word counts and sampling are the same for every source; a dump's
sentences are also cleaned of what its markup leaves behind:

- a MediaWiki XML dump (``.xml``, or bz2-compressed ``.bz2``), streamed page by page and cleaned with gensim's
  Wikipedia tools; redirects are dropped, and so are sentences that markup leftovers give away (no capital
  start, no final period, question or exclamation mark, unbalanced brackets or quotes) (a compressed text file
  is refused: decompress it);
- a plain text file with one text per line, streamed;
- a Hugging Face dataset, streamed (needs the optional ``datasets`` package and a network).

The built-in corpus is the English Wikipedia sample dump shipped in the gensim wheel (106 articles,
about 12,000 sentences after cleaning), so everything works offline.
"""

from __future__ import annotations

import bz2
import hashlib
import heapq
import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from ._checks import checked_int, checked_seed
from ._io import atomic_write_text

__all__ = [
    "Corpus",
    "builtin_dump_path",
    "load_sentences",
    "sample_sentences",
    "save_sentences",
    "sentences_text",
    "split_sentences",
]

_BUILTIN_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_DUMP_SUFFIXES = (".xml", ".bz2")
# A line starting with one of these is a heading, a list item, a table row or an indented block.
_MARKUP_LINE_STARTS = tuple("=*#|!{}:;")
# Text that survives gensim's filtering when a template or a file link is removed around it:
# empty parentheses "()", "( ;" or "(;", a dangling unit "( m)", a space before punctuation, table pipes.
_LEFTOVERS = (
    "()", "( ", "(;", "(,", " )", " ,", " .", " ;", " :", "|", "{", "}", "[", "]", "<", ">", "=",
    "File:", "Image:", "thumb", "http",
)  # fmt: skip
# A quote mark standing alone, where a removed template's foreign word was: "the Muslim ', and".
_LONE_QUOTE = re.compile(r"""(?:^|\s)['"‘’“”](?=[\s,.;:)]|$)""")
# A sentence ends at a period, question or exclamation mark, with any closing quotes or brackets, before
# white space ("3.14" goes on).
_TERMINATOR = r"""[.?!]["'’”»)\]]*"""
_SENTENCE_END = re.compile(_TERMINATOR + r"(?=\s)")
_ENDS_A_SENTENCE = re.compile(_TERMINATOR + "$")
# A period after one of these words ends an abbreviation, not a sentence: an initial ("William B.", "by J. K.
# Rowling"), dotted letters ("U.S.", "e.g."), a title or another short form that Wikipedia writes before more of a
# sentence. A capital alone that ends a sentence ("vitamin C.") cannot be told from an initial: two sentences are
# then read as one, which harms less than a name cut in two.
_ABBREVIATION = re.compile(
    r"(?:^|[\s(\[\"'])"
    r"(?:[A-Z]|(?:[A-Za-z]\.)+[A-Za-z]|Mr|Mrs|Ms|Dr|Prof|St|Mt|Ft|Jr|Sr|Rev|Gen|Col|Lt|Sgt|Capt|Maj|Brig|Adm"
    r"|Cmdr|Gov|Sen|Rep|Pres|Hon|No|Nos|Vol|Fig|pp?|vs?|c|ca|approx|Inc|Ltd|Co|Corp|Jan|Feb|Mar|Apr|Aug|Sept?|Oct"
    r"|Nov|Dec|al)$"
)
# "no." before a number means "number" ("world no. 1"); before anything else it may end a sentence ("He said no.").
_NUMBER_SIGN = re.compile(r"(?:^|[\s(\[\"'])nos?$")
# A sentence starts with no lower-case letter: a period before one ends an abbreviation the list lacks ("cf. the"),
# a question mark inside a sentence ("the film "Why?" was").
_NEXT_WORD = re.compile(r"\s+(\S)")
# The version of the rules that turn a corpus into a sample (the split, the cleaning, the draw), part of a corpus's
# description: a run analysed under other rules had another sample, and is not taken for this one. 2: abbreviations
# and initials, ? and ! (2026-12-07); 3: "no. 1", ranks, curly quotes, markup leftovers, a draw uniform over
# distinct sentences.
SAMPLING_RULES = 3
_ABBREVIATION_REACH = 32  # characters: the longest abbreviation and the character before it
_FILTER_CHUNK = 512


def builtin_dump_path() -> Path:
    """Path of the English Wikipedia sample dump shipped in the gensim wheel.

    Returns
    -------
    pathlib.Path
        The ``.xml.bz2`` dump (106 articles).

    Raises
    ------
    FileNotFoundError
        If the installed gensim does not ship the file.
    """
    import gensim

    path = Path(gensim.__file__).parent / "test" / "test_data" / _BUILTIN_DUMP
    if not path.is_file():
        raise FileNotFoundError(f"the built-in Wikipedia sample is missing from gensim: {path}")
    return path


def split_sentences(text: str, *, min_words: int = 6, max_words: int | None = 25) -> Iterator[str]:
    """Split a text into sentences and keep those with an allowed number of words.

    A sentence ends at a period, question mark or exclamation mark (with any closing quotes or brackets)
    followed by white space and a word that does not start in lower case, so ``0.3`` is not split; a period
    after an initial (``William B.``; a capital alone, so ``vitamin C. It ...`` goes on as one sentence), dotted
    letters (``U.S.``, ``e.g.``) or a common short form (``St.``, ``Dr.``, ``No.``, ``ca.``) ends no sentence.
    White space inside a sentence is collapsed to single spaces.

    Parameters
    ----------
    text : str
        Any text.
    min_words, max_words : int
        Inclusive bounds on the number of white-space separated words; ``max_words=None`` means
        no upper bound.

    Yields
    ------
    str
        The sentences, in order.

    Examples
    --------
    >>> list(split_sentences("One two three. Four five six seven.", min_words=3))
    ['One two three.', 'Four five six seven.']
    >>> list(split_sentences('Was it J. S. Bach? "It was." He said so.', min_words=1))
    ['Was it J. S. Bach?', '"It was."', 'He said so.']

    Raises
    ------
    ValueError
        If ``min_words`` is not a positive int, or ``max_words`` neither None nor an int of at least ``min_words``.
    """
    _check_word_bounds(min_words, max_words)
    start = 0
    for end in _SENTENCE_END.finditer(text):
        following = _NEXT_WORD.match(text, end.end())
        if following and following.group(1).islower():
            continue
        # The word before the period, found within the few characters before it: a search from the sentence's
        # start would read a text whose periods are all abbreviations once per period.
        before = max(start, end.start() - _ABBREVIATION_REACH)
        if end.group()[0] == "." and (
            _ABBREVIATION.search(text, before, end.start())
            or (following and following.group(1).isdigit() and _NUMBER_SIGN.search(text, before, end.start()))
        ):
            continue
        yield from _bounded(text[start : end.end()], min_words, max_words)
        start = end.end()
    yield from _bounded(text[start:], min_words, max_words)


def _words(text: str) -> list[str]:
    # A byte-order mark inside a text (files joined together) is no part of a word.
    return text.replace("\ufeff", " ").split()


def _bounded(piece: str, min_words: int, max_words: int | None) -> Iterator[str]:
    words = _words(piece)
    if len(words) >= min_words and (max_words is None or len(words) <= max_words):
        yield " ".join(words)


def _check_word_bounds(min_words, max_words) -> None:
    checked_int(min_words, "min_words")
    if max_words is not None:
        checked_int(max_words, f"max_words (at least min_words={min_words})", minimum=min_words, alternative=" or None")


def _is_clean_wiki_sentence(sentence: str) -> bool:
    # A piece that starts in lower case or leaves a parenthesis open was cut at an abbreviation the split
    # does not know, or is part of a quotation of several sentences (an odd number of double quotes, or
    # curly ones that do not pair up); a piece without a final period is a caption or a list fragment.
    return (
        (sentence[0].isupper() or sentence[0].isdigit() or sentence[0] in '"“')
        and _ENDS_A_SENTENCE.search(sentence) is not None
        and sentence.count("(") == sentence.count(")")
        and sentence.count('"') % 2 == 0
        and sentence.count("“") == sentence.count("”")
        and not any(bad in sentence for bad in _LEFTOVERS)
        and _LONE_QUOTE.search(sentence) is None
    )


def _dump_pages(f, path: Path) -> Iterator[tuple[str, str, str]]:
    """(title, text, page id) of each article of the dump ``path`` opened as ``f``; a file that is no XML is
    named as such."""
    from xml.etree.ElementTree import ParseError

    from gensim.corpora.wikicorpus import extract_pages

    try:
        # Namespace 0 holds the articles; talk, user, template ... pages are skipped.
        yield from extract_pages(f, filter_namespaces=("0",))
    except (ParseError, ValueError) as err:  # ValueError: XML, but not MediaWiki's
        raise ValueError(
            f"corpus file {str(path)!r} is not a MediaWiki XML dump ({err}); a .xml or .bz2 corpus must be one: "
            "decompress a compressed text file (one text per line) first"
        ) from None
    except (OSError, EOFError) as err:  # a truncated download, or a .bz2 name on an uncompressed file
        raise ValueError(f"corpus file {str(path)!r} cannot be read to its end: {err}") from None


def _wiki_article_texts(path: Path) -> Iterator[str]:
    from gensim.corpora.wikicorpus import filter_wiki

    opener = bz2.open if path.suffix.lower() == ".bz2" else open
    with opener(path, "rb") as f:
        for _title, text, _page_id in _dump_pages(f, path):
            if not text or text.lstrip()[:9].upper() == "#REDIRECT":
                continue
            # gensim keeps the bold and italic quote marks; they are not part of the text.
            plain = filter_wiki(text).replace("'''", "").replace("''", "")
            # One paragraph per line: a sentence never spans two, so table cells and captions
            # (lines without a final period) cannot glue onto the next paragraph's first sentence.
            for line in plain.splitlines():
                line = line.strip()
                if line and not line.startswith(_MARKUP_LINE_STARTS):
                    yield line


@dataclass(frozen=True)
class Corpus:
    """Where sentences come from and how texts are cut into sentences.

    Build one with :meth:`builtin_sample`, :meth:`wikipedia`, :meth:`text_file`, :meth:`hf_dataset`
    or :meth:`resolve`; iterate its sentences with :meth:`sentences`.

    Parameters
    ----------
    kind : {"wikipedia", "text", "hf"}
        A MediaWiki XML dump, a text file with one text per line, or a Hugging Face dataset.
    location : str
        Path of the file, or name of the dataset.
    config : str, optional
        Dataset configuration (``hf`` only).
    split : str
        Dataset split (``hf`` only).
    column : str
        Dataset column holding the text (``hf`` only).
    split_into_sentences : bool
        Cut each text into sentences (:func:`split_sentences`, the method's split at periods); if False each
        text is one sentence.
    min_words, max_words : int
        Inclusive bounds on a sentence's number of words (``max_words=None``: no upper bound).
    builtin : bool
        True for the built-in sample dump (recorded as such in results).
    """

    kind: Literal["wikipedia", "text", "hf"]
    location: str
    config: str | None = None
    split: str = "train"
    column: str = "text"
    split_into_sentences: bool = True
    min_words: int = 6
    max_words: int | None = 25
    builtin: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("wikipedia", "text", "hf"):
            raise ValueError(f"kind must be 'wikipedia', 'text' or 'hf', got {self.kind!r}")
        _check_word_bounds(self.min_words, self.max_words)

    @classmethod
    def builtin_sample(cls, **options) -> Corpus:
        """The English Wikipedia sample dump shipped in the gensim wheel (works offline)."""
        return cls("wikipedia", str(builtin_dump_path()), builtin=True, **options)

    @classmethod
    def wikipedia(cls, path: str | os.PathLike, **options) -> Corpus:
        """A MediaWiki XML dump, plain or bz2-compressed, e.g. ``enwiki-latest-pages-articles.xml.bz2``.

        Reading a file that is no XML dump (a compressed text file) raises ValueError."""
        return cls("wikipedia", str(_existing_file(path)), **options)

    @classmethod
    def text_file(cls, path: str | os.PathLike, **options) -> Corpus:
        """A UTF-8 text file with one text per line."""
        return cls("text", str(_existing_file(path)), **options)

    @classmethod
    def hf_dataset(
        cls, name: str, config: str | None = None, *, split: str = "train", column: str = "text", **options
    ) -> Corpus:
        """A Hugging Face dataset, streamed; needs ``datasets`` and a network."""
        return cls("hf", name, config=config, split=split, column=column, **options)

    @classmethod
    def resolve(cls, source: Corpus | str | os.PathLike | None) -> Corpus:
        """Turn what a user wrote into a corpus.

        Parameters
        ----------
        source : Corpus, str, path-like or None
            None: the built-in sample dump. An existing file ending in ``.xml``, ``.bz2``: a
            Wikipedia dump (a compressed text file is not read: decompress it); any other existing file:
            a text file. ``"hf:NAME"`` or ``"hf:NAME:CONFIG"``, or a name that is not a file: a Hugging
            Face dataset.

        Returns
        -------
        Corpus

        Raises
        ------
        FileNotFoundError
            If ``source`` looks like a file path (a path object, a file suffix, a leading ``/``, ``.`` or
            ``~``, or an existing folder) but no such file exists; any other string is a dataset name.
        ValueError
            If ``source`` holds white space (a sentence, not a file or a dataset name).
        TypeError
            If ``source`` has another type.
        """
        if source is None:
            return cls.builtin_sample()
        if isinstance(source, Corpus):
            return source
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"corpus must be None, a Corpus, a path or a dataset name, got {type(source).__name__}")
        text = os.fspath(source)
        if text.startswith("hf:"):
            name, _, config = text[3:].partition(":")
            return cls.hf_dataset(name, config or None)
        path = Path(text).expanduser()
        if path.is_file():
            return cls.wikipedia(path) if path.name.lower().endswith(_DUMP_SUFFIXES) else cls.text_file(path)
        if isinstance(source, os.PathLike) or path.suffix or text.startswith(("/", ".", "~")) or path.is_dir():
            raise FileNotFoundError(
                f"no corpus file at {text!r} (for a Hugging Face dataset, write 'hf:NAME' or 'hf:NAME:CONFIG')"
            )
        if any(c.isspace() for c in text):  # no dataset name holds white space: text meant as a sentence
            raise ValueError(f"corpus {text!r} is neither a file nor a dataset name; pass sentences as a list of str")
        return cls.hf_dataset(text)

    def describe(self) -> str:
        """A one-line description, recorded with results."""
        if self.builtin:
            where = f"builtin:{_BUILTIN_DUMP}"
        elif self.kind == "hf":
            where = f"hf:{self.location}" + (f":{self.config}" if self.config else "")
            where += f" split={self.split} column={self.column}"
        else:
            where = f"{self.kind}:{self.location}"
        words = f"{self.min_words}-{self.max_words if self.max_words is not None else 'inf'} words"
        split = "split into sentences, " if self.split_into_sentences else ""
        return f"{where} ({split}{words}, sampling rules {SAMPLING_RULES})"

    def with_options(self, **options) -> Corpus:
        """A copy with some fields changed (e.g. ``min_words=1, max_words=None``)."""
        return replace(self, **options)

    def texts(self) -> Iterator[str]:
        """The raw texts, streamed: cleaned article paragraphs, lines of the file, or dataset rows."""
        if self.kind == "wikipedia":
            yield from _wiki_article_texts(Path(self.location))
        elif self.kind == "text":
            with open(self.location, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is no text
                try:
                    yield from (line for line in f if line.strip())
                except UnicodeDecodeError as err:
                    raise ValueError(f"corpus file {self.location!r} is not UTF-8 text: {err}") from None
        else:
            # A row may be a whole article: its headings and list items are lines, never parts of a sentence.
            for text in _hf_texts(self.location, self.config, self.split, self.column):
                yield from (line for line in text.splitlines() if line.strip())

    def sentences(self) -> Iterator[str]:
        """The sentences, streamed, in the corpus's order."""
        for text in self.texts():
            if self.split_into_sentences:
                pieces = split_sentences(text, min_words=self.min_words, max_words=self.max_words)
            else:
                pieces = _bounded(text, self.min_words, self.max_words)
            if self.kind == "wikipedia":
                pieces = (p for p in pieces if _is_clean_wiki_sentence(p))
            yield from pieces


def _existing_file(path: str | os.PathLike) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"expected a file path, got {type(path).__name__}")
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"no such corpus file: {os.fspath(path)!r}")
    return resolved


def _hf_texts(name: str, config: str | None, split: str, column: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"reading the Hugging Face dataset {name!r} needs the 'datasets' package: pip install datasets"
        ) from err
    rows = datasets.load_dataset(name, config, split=split, streaming=True)
    for row in rows:
        if column not in row:
            raise ValueError(f"dataset {name!r} has no column {column!r}; its columns are {sorted(row)}")
        value = row[column]
        if isinstance(value, str) and value.strip():
            yield value


def sample_sentences(
    source: Corpus | str | os.PathLike | Sequence[str] | None = None,
    n: int = 150,
    seed: int = 0,
    *,
    accept: Callable[[list[str]], Iterable[bool]] | None = None,
    limit: int | None = None,
) -> list[str]:
    """Draw a seeded random sample of sentences, streaming the corpus once.

    Each distinct sentence gets a random key, a hash of its text keyed by the seed, and the sample is the ``n``
    sentences of smallest key: uniform over the distinct sentences whatever repeats the corpus holds (a dump
    repeats some: 22 of the built-in sample's 11,730), with memory for ``n`` sentences whatever the corpus size,
    so a full Wikipedia dump is never held whole. A larger ``n`` with the same seed draws a sample that holds
    the smaller one. The sample is returned in corpus order.

    Parameters
    ----------
    source : Corpus, str, path-like, sequence of str or None
        Where to read (see :meth:`Corpus.resolve`; None is the built-in Wikipedia sample). A list
        or tuple of strings is taken as the sentences themselves.
    n : int
        Sample size (the method uses 150).
    seed : int
        Seed of the random choice.
    accept : callable, optional
        Called with chunks of sentences, returns one bool per sentence; rejected sentences are
        not eligible (used to drop sentences longer than a model's token limit).
    limit : int, optional
        Stop after this many eligible sentences (e.g. to sample from the start of a full dump).

    Returns
    -------
    list of str
        ``n`` distinct sentences, in corpus order.

    Raises
    ------
    ValueError
        If ``n`` or ``limit`` is not a positive int, the corpus has no eligible sentence, or it
        has fewer than ``n`` distinct ones.

    Examples
    --------
    >>> sample_sentences(["a b c.", "d e f.", "g h i."], n=2, seed=0)  # doctest: +SKIP
    ['a b c.', 'g h i.']
    """
    for name, value in (("n", n), ("limit", limit)):
        if value is None and name == "limit":
            continue
        checked_int(value, name)
    n, seed = int(n), checked_seed(seed)
    if limit is not None and limit < n:
        raise ValueError(f"limit={limit} is smaller than the sample of n={n} sentences")
    if isinstance(source, (list, tuple)):
        if not all(isinstance(s, str) for s in source):
            raise TypeError("a sequence corpus must hold only str sentences")
        stream: Iterable[str] = (" ".join(_words(s)) for s in source if _words(s))
        description = f"given as a list of {len(source)} strings"
    else:
        corpus = Corpus.resolve(source)
        stream = corpus.sentences()
        description = corpus.describe()

    key_of = _sentence_keys(seed)
    # A max-heap of the n smallest keys so far (negated), each with its sentence's first place in the corpus.
    # A repeat has its first copy's key: it is in the sample already, or its key is too large to be now.
    heap: list[tuple[int, str, int]] = []
    members: set[str] = set()
    refused = [0]  # sentences `accept` refused, for the message below
    for index, sentence in enumerate(itertools.islice(_accepted(stream, accept, refused), limit)):
        if sentence in members:
            continue
        entry = (-key_of(sentence), sentence, index)
        if len(heap) < n:
            heapq.heappush(heap, entry)
            members.add(sentence)
        elif entry > heap[0]:
            members.discard(heapq.heapreplace(heap, entry)[1])
            members.add(sentence)
    if not heap:
        raise ValueError(f"the corpus {description} has no usable sentence")
    if len(heap) < n:
        also = f" that fit the model ({refused[0]} more are longer than its token limit)" if refused[0] else ""
        raise ValueError(
            f"asked for a sample of {n} sentences but the corpus {description} has only {len(heap)} distinct ones{also}"
        )
    return [sentence for _, sentence, _ in sorted(heap, key=lambda entry: entry[2])]


def _sentence_keys(seed: int) -> Callable[[str], int]:
    """A sentence's random key for ``seed``: 64 bits of BLAKE2b keyed by the seed, the same on every machine and
    Python (``hash`` is salted per process)."""
    secret = hashlib.blake2b(str(seed).encode(), digest_size=32).digest()

    def key(sentence: str) -> int:
        # surrogatepass: a sentence from a badly decoded file still has a key (it is refused where it is saved).
        text = sentence.encode("utf-8", "surrogatepass")
        return int.from_bytes(hashlib.blake2b(text, digest_size=8, key=secret).digest(), "big")

    return key


def _accepted(
    stream: Iterable[str], accept: Callable[[list[str]], Iterable[bool]] | None, refused: list[int]
) -> Iterator[str]:
    """The sentences of ``stream`` that ``accept`` takes, judged in chunks; ``refused[0]`` counts the others."""
    if accept is None:
        yield from stream
        return
    chunk: list[str] = []

    def taken(part: list[str]) -> list[str]:
        kept = [s for s, ok in zip(part, accept(part), strict=True) if ok]
        refused[0] += len(part) - len(kept)
        return kept

    for sentence in stream:
        chunk.append(sentence)
        if len(chunk) == _FILTER_CHUNK:
            yield from taken(chunk)
            chunk = []
    if chunk:
        yield from taken(chunk)


def save_sentences(sentences: Sequence[str], path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save sentences one per line, atomically.

    Raises
    ------
    ValueError
        If a sentence is empty or spans several lines.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    return atomic_write_text(path, sentences_text(sentences), overwrite=overwrite)


def checked_sentences(sentences: Iterable[str]) -> list[str]:
    """``sentences`` as a list, each one a non-empty single line (what a saved corpus can hold).

    Raises
    ------
    TypeError
        If ``sentences`` is a single str or holds something other than str.
    ValueError
        If a sentence is empty, spans several lines, starts with a byte-order mark or holds a lone surrogate.
    """
    if isinstance(sentences, str) or not isinstance(sentences, Iterable):
        what = "one str" if isinstance(sentences, str) else type(sentences).__name__
        raise TypeError(f"sentences must be a sequence of str, got {what}")
    sentences = list(sentences)  # once: a generator is read only once
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise TypeError(f"sentences must be a sequence of str, sentence {i} is a {type(sentence).__name__}")
        if not sentence.strip() or "\n" in sentence or "\r" in sentence:
            raise ValueError(f"sentence {i} must be a non-empty single line, got {sentence!r}")
        if sentence.startswith("\ufeff"):  # load_sentences reads a file's first one as a byte-order mark
            raise ValueError(f"sentence {i} starts with a byte-order mark (U+FEFF), got {sentence!r}")
        if not sentence.isascii():  # a lone surrogate (from a bad decode) has no UTF-8 form: no tokenizer or file
            try:
                sentence.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(f"sentence {i} is not valid Unicode ({err.reason}), got {sentence!r}") from None
    return sentences


def sentences_text(sentences: Sequence[str]) -> str:
    """The text :func:`save_sentences` writes: one sentence a line.

    Raises
    ------
    TypeError, ValueError
        As :func:`checked_sentences`.
    """
    return "".join(f"{s}\n" for s in checked_sentences(sentences))


def load_sentences(path: str | os.PathLike) -> list[str]:
    """Read sentences saved by :func:`save_sentences` (one per line)."""
    with open(_existing_file(path), encoding="utf-8-sig") as f:
        return [line.rstrip("\n") for line in f if line.strip()]
