"""The obce command: help of every command, one-line errors with the right exit status, build info."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import typer

from obce import cli, pipeline

COMMANDS = ("analyze", "prune", "finetune", "evaluate", "compress", "report", "info")


@pytest.fixture(autouse=True)
def _in_a_scratch_folder(tmp_path, monkeypatch):
    """A command that wrongly runs instead of failing writes its default run folder here, not in the checkout."""
    monkeypatch.chdir(tmp_path)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``obce ARGS`` in this process: (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_every_command_is_listed_in_the_main_help(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(capsys, command):
    code, out, err = run_cli(capsys, command, "--help")
    assert code == 0 and not err
    assert f"obce {command}" in out
    click_command = typer.main.get_command(cli.app).commands[command]
    for param in click_command.params:
        # Every option and argument explains itself in one line of its own.
        assert param.help and "\n" not in param.help, param.name
        if getattr(param, "opts", None) and param.param_type_name == "option":
            assert param.opts[0] in out


def test_defaults_are_shared_with_the_pipeline():
    options = {p.name: p for p in typer.main.get_command(cli.app).commands["compress"].params}
    assert options["plan"].default == pipeline.DEFAULT_PLAN == "target:0.6"
    assert options["steps"].default == pipeline.Budget().steps
    assert options["max_length"].default == pipeline.Budget().max_length
    assert options["task"].default == "polarity" and options["sentences"].default == 150


@pytest.mark.parametrize(
    "args, quoted",
    [
        (("compress", "--bogus"), "--bogus"),
        (("compress", "--plan", "nonsense"), "nonsense"),
        (("prune", "--plan", "uniform:Pxx"), "uniform:Pxx"),
        (("prune", "--plan", "target:1.5"), "target:1.5"),
        (("prune", "--plan", "missing-plan.json"), "missing-plan.json"),
        (("compress", "--task", "imdb"), "imdb"),
        (("finetune", "--steps", "0"), "--steps"),
        (("analyze", "--sentences", "many"), "--sentences"),
        (("analyze", "--token", "last"), "last"),
        (("prune", "--fold", "median"), "median"),
        (("prune", "--score", "taylor"), "taylor"),
        (("compress", "--device", "tpu:x"), "tpu:x"),
        (("compress", "--device", "mps"), "mps"),
        (("compress", "--device", "meta"), "meta"),
        (("compress", "--device", "cpu:1"), "cpu:1"),
        (("compress", "--no-finetune", "--steps", "7"), "--steps"),
        (("compress", "--no-finetune", "--distill"), "--distill"),
        (("finetune", "--fp16", "--bf16"), "--bf16"),
        (("frobnicate",), "frobnicate"),
        ((), "Usage"),
    ],
)
def test_usage_errors_give_one_line_and_status_2(capsys, args, quoted):
    code, out, err = run_cli(capsys, *args)
    if not args:  # no command: the help, as a usage error
        assert code == 2 and quoted in out + err
        return
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("obce: error:"), err
    assert quoted in lines[0] and "Traceback" not in err


def test_user_errors_give_one_line_and_status_1(capsys, tmp_path):
    code, _, err = run_cli(capsys, "report", "--output", str(tmp_path / "nowhere"))
    assert code == 1 and err.count("\n") == 1 and "not a run folder" in err

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine\n")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("A sentence that is long enough to be sampled here.\n")
    code, _, err = run_cli(capsys, "analyze", "--output", str(stranger), "--corpus", str(corpus))
    assert code == 1 and err.count("\n") == 1 and "not a run folder" in err
    assert (stranger / "notes.txt").read_text() == "mine\n" and sorted(p.name for p in stranger.iterdir()) == [
        "notes.txt"
    ]

    code, _, err = run_cli(capsys, "analyze", "--output", str(tmp_path / "new"), "--corpus", str(tmp_path / "no.txt"))
    assert code == 1 and err.count("\n") == 1 and "no.txt" in err and "Traceback" not in err

    code, _, err = run_cli(capsys, "evaluate", "--output", str(tmp_path / "empty-run"))
    assert code == 1 and "no fine-tuned model" in err
    assert not (tmp_path / "empty-run").exists()  # the failed command wrote nothing


def test_model_folder_without_its_tokenizer_is_one_line(capsys, tmp_path, tiny_bert):
    """transformers would read a folder without tokenizer files with a tokenizer of the 5 special tokens."""
    tiny_bert.save_pretrained(tmp_path / "notok")
    capsys.readouterr()  # the saving's progress bar
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("One two three four five six.\nSeven eight nine ten eleven twelve.\n", encoding="utf-8")
    args = ("analyze", "-m", str(tmp_path / "notok"), "-c", str(corpus), "-n", "2", "-o", str(tmp_path / "run"))
    code, _, err = run_cli(capsys, *args)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert f"'{tmp_path / 'notok'}' holds no tokenizer files" in err and "tokenizer.save_pretrained(" in err


@pytest.mark.parametrize("command", ["prune", "compress"])
def test_a_model_that_cannot_be_pruned_is_refused_before_the_analysis(capsys, tmp_path, tiny_bert_config, command):
    from obce.models.compressed import LayerSizes, compressed_config

    sizes = [LayerSizes.full(4, 8, 37)] * 2
    compressed_config(tiny_bert_config(), sizes).save_pretrained(tmp_path / "compressed")
    code, _, err = run_cli(capsys, command, "-m", str(tmp_path / "compressed"), "-o", str(tmp_path / "run"))
    assert code == 1 and err.count("\n") == 1
    assert "cannot be pruned: ObceBertModel is compressed already: prune the original" in err
    assert not (tmp_path / "run").exists()


def test_evaluate_reads_the_scored_split_alone(monkeypatch, capsys, tmp_path):
    from test_tasks import write_glue_task

    from obce import train

    glue = write_glue_task(tmp_path / "glue", "sst2")
    (glue / "SST-2" / "train.tsv").unlink()
    seen = []

    def score(folder, task, split, **options):
        seen.append((sorted(task.data), split, options["progress"]))
        return {"accuracy": 0.5}

    monkeypatch.setattr(train, "evaluate", score)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # a model folder (train.evaluate is replaced)
    args = ("evaluate", str(model), "--task", "sst2", "--glue-dir", str(glue), "-o", str(tmp_path / "run"))
    code, out, err = run_cli(capsys, *args, "--no-progress")
    assert code == 0, err
    assert seen == [(["dev"], "dev", False)] and "accuracy 50.00" in out
    assert json.loads((tmp_path / "run" / "evaluation.json").read_text())["sst2/dev"]["model"]["metrics"]


def _finetuned_model(folder, task):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "finetune.json").write_text(json.dumps({"task": task, "max_length": 32}))
    return folder


def test_evaluate_scores_on_the_task_the_models_were_fine_tuned_on(monkeypatch, capsys, tmp_path):
    from test_tasks import write_glue_task

    from obce import train

    glue = write_glue_task(tmp_path / "glue", "mnli")
    seen = []

    def score(folder, task, split, **options):
        seen.append((task.name, split, options["max_length"]))
        return {"accuracy": 0.5}

    monkeypatch.setattr(train, "evaluate", score)
    model = _finetuned_model(tmp_path / "model", "mnli")
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "evaluate", str(model), "--glue-dir", str(glue), "-o", str(run))
    assert code == 0, err
    assert "model (dev_mismatched): accuracy 50.00" in out
    # MNLI reports matched and mismatched: both are scored without --split.
    assert seen == [("mnli", "dev", 32), ("mnli", "dev_mismatched", 32)]
    assert set(json.loads((run / "evaluation.json").read_text())) == {"mnli/dev", "mnli/dev_mismatched"}

    other = _finetuned_model(tmp_path / "other", "rte")
    code, _, err = run_cli(capsys, "evaluate", str(model), str(other), "--glue-dir", str(glue), "-o", str(run))
    assert code == 1 and "fine-tuned on different tasks (mnli, rte): pass --task" in err

    seen.clear()
    args = ("evaluate", str(other), "--task", "mnli", "--split", "dev", "--glue-dir", str(glue), "-o", str(run))
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and seen == [("mnli", "dev", 32)]
    assert "other was fine-tuned on rte, scored on mnli" in err


def test_finetune_overwrite_drops_the_scores_of_the_models_it_removes(tmp_path):
    run = pipeline.RunFolder(tmp_path / "run")
    run.prepare()
    (run / run.FINETUNE / "original").mkdir(parents=True)
    run.write_json(run.METRICS, {})
    run.write_json(run.EVALUATION, {"polarity/test": {"original": {"metrics": {"accuracy": 0.5}}}})
    run.record("finetune", {"steps": 1}, timings_s={"analyze": 1.0, "finetune_original": 2.0})
    cli._clear_finetuning(run)
    assert not (run / run.FINETUNE).exists() and not (run / run.METRICS).exists()
    assert not (run / run.EVALUATION).exists()
    assert run.settings()["timings_s"] == {"analyze": 1.0} and "finetune" not in run.settings()["steps"]


def test_finetune_refuses_what_it_would_mislabel_or_delete_before_clearing_anything(capsys, tmp_path):
    run = pipeline.RunFolder(tmp_path / "run")
    run.prepare()
    run.record()
    for own in (run / run.COMPRESSED, run / run.FINETUNE / "original"):
        own.mkdir(parents=True)
        (own / "config.json").write_text("{}")
    done = run / run.FINETUNE / "original"
    run.write_json(run.METRICS, {"models": {}})
    other = tmp_path / "other" / "compressed"  # another run's compressed model
    other.mkdir(parents=True)
    (other / "config.json").write_text("{}")
    for args, message in (
        (["--distill", str(other)], "distillation fine-tunes the compressed model"),
        ([str(done)], "is a fine-tuning of this run: fine-tune it in another run folder"),
        ([str(other)], "is not this run's compressed model, and the report would take it for it"),
    ):
        code, _, err = run_cli(capsys, "finetune", "--overwrite", *args, "--output", str(run.path))
        assert code == 1 and message in err, err
        assert (done / "config.json").is_file() and (run / run.METRICS).is_file()


def test_hub_failure_is_one_line_naming_the_model(monkeypatch, capsys, tmp_path):
    from transformers import AutoTokenizer

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", offline)
    code, _, err = run_cli(capsys, "analyze", "--model", "org/some-model", "--output", str(tmp_path / "run"))
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "could not load 'org/some-model' from the Hugging Face hub: We couldn't connect" in err
    assert "HF_HUB_OFFLINE=1" in err


@pytest.mark.parametrize("error", [RuntimeError, TypeError])
def test_a_bug_keeps_its_traceback(monkeypatch, error):
    def broken(*args, **kwargs):
        raise error("an internal error")

    monkeypatch.setattr(pipeline, "compress", broken)
    with pytest.raises(error, match="an internal error"):
        cli.main(["compress"])


def test_obce_debug_shows_a_user_errors_traceback(monkeypatch, capsys):
    def refused(*args, **kwargs):
        raise ValueError("a bad input")

    monkeypatch.setattr(pipeline, "compress", refused)
    monkeypatch.setenv("OBCE_DEBUG", "1")
    with pytest.raises(ValueError, match="a bad input"):
        cli.main(["compress"])
    monkeypatch.setenv("OBCE_DEBUG", "0")
    code, _, err = run_cli(capsys, "compress")
    assert code == 1 and err == "obce: error: a bad input\n"


def test_interrupt_says_how_to_resume(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "compress", interrupted)
    code, _, err = run_cli(capsys, "compress")
    assert code == 130 and "run the same command again to resume" in err and err.count("\n") == 1
    # The same command with --overwrite would clear what was done.
    code, _, err = run_cli(capsys, "compress", "--overwrite")
    assert code == 130 and "run again without --overwrite to resume" in err


def test_a_hub_task_without_datasets_is_refused_before_any_work(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets fails
    monkeypatch.setattr(pipeline, "run_analysis", lambda *a, **k: pytest.fail("refused before the analysis"))
    for command in (["compress", "--task", "sst2"], ["finetune", "--task", "sst2"]):
        code, _, err = run_cli(capsys, *command, "--output", str(tmp_path / "run"))
        assert code == 1 and "needs the 'datasets' package" in err and "--glue-dir" in err, err
        assert not (tmp_path / "run").exists()


def test_info(capsys):
    import obce

    code, out, _ = run_cli(capsys, "info")
    assert code == 0
    fields = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert fields["version"] == obce.__version__
    assert {"openmp", "cuda", "gpus", "threads", "torch_version"} <= set(fields)

    code, out, _ = run_cli(capsys, "info", "--json")
    info = json.loads(out)
    assert code == 0 and info["version"] == obce.__version__
    assert info["openmp"] == obce.build_info()["openmp"] and isinstance(info["gpus"], list)


def test_module_entry_point():
    # `python -m obce.cli` is what torchrun and accelerate launch start on every process.
    result = subprocess.run(
        [sys.executable, "-m", "obce.cli", "info", "--json"], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"]


def test_recorded_command_can_be_pasted_back(tmp_path):
    from types import SimpleNamespace

    run = pipeline.RunFolder(tmp_path / "run")
    run.prepare()
    ctx = SimpleNamespace(obj={"command": ["obce", "analyze", "--corpus", "my corpus.txt"]}, info_name="analyze")
    cli._record_command(ctx, run)
    assert run.settings()["commands"] == [{"cwd": os.getcwd(), "command": "obce analyze --corpus 'my corpus.txt'"}]
