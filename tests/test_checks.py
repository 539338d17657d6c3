"""One rule for the counts every function takes: a numpy integer is an integer, a bool or a float is not."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from obce._checks import checked_int
from obce.corpus import sample_sentences, split_sentences
from obce.pipeline import Budget, SpeedSettings
from obce.tasks import _make_task, task_info


def test_checked_int():
    assert checked_int(np.int64(3), "n") == 3 and type(checked_int(np.uint8(3), "n")) is int
    assert checked_int(0, "patience", minimum=0) == 0
    for bad in (True, 2.0, "3", None, 0, -1):
        with pytest.raises(ValueError, match=f"n must be a positive int, got {bad!r}"):
            checked_int(bad, "n")
    with pytest.raises(ValueError, match=r"k must be an int >= 5 or None, got 4"):
        checked_int(4, "k", minimum=5, alternative=" or None")


def test_numpy_integers_pass_wherever_ints_do():
    n = np.int64(2)
    assert sample_sentences(["a b.", "c d.", "e f."], n, seed=np.int64(0)) == sample_sentences(
        ["a b.", "c d.", "e f."], 2, seed=0
    )
    assert list(split_sentences("One two. Three four.", min_words=n)) == ["One two.", "Three four."]
    task = _make_task(task_info("rte"), {"train": [{"sentence1": "a", "sentence2": "b", "label": 0}] * 3}, "test")
    assert len(task.subsample(n).labels("train")) == 2
    # Settings recorded in JSON: stored as plain ints.
    for settings in (Budget(steps=np.int64(10)), SpeedSettings(repeats=np.int32(2))):
        assert json.loads(json.dumps(asdict(settings))) == asdict(settings)
