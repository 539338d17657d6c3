"""The obce command: help of every command, one-line errors with the right exit status, build info."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer

from obce import cli, pipeline

COMMANDS = ("analyze", "prune", "finetune", "evaluate", "compress", "report", "info")


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
    code, _, err = run_cli(capsys, "analyze", "--output", str(stranger), "--corpus", str(tmp_path / "missing.txt"))
    assert code == 1 and err.count("\n") == 1 and "not a run folder" in err
    assert (stranger / "notes.txt").read_text() == "mine\n" and sorted(p.name for p in stranger.iterdir()) == [
        "notes.txt"
    ]

    code, _, err = run_cli(capsys, "analyze", "--output", str(tmp_path / "new"), "--corpus", str(tmp_path / "no.txt"))
    assert code == 1 and err.count("\n") == 1 and "no.txt" in err and "Traceback" not in err

    code, _, err = run_cli(capsys, "evaluate", "--output", str(tmp_path / "empty-run"))
    assert code == 1 and "no fine-tuned model" in err


def test_hub_failure_is_one_line_naming_the_model(monkeypatch, capsys, tmp_path):
    from transformers import AutoTokenizer

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", offline)
    code, _, err = run_cli(capsys, "analyze", "--model", "org/some-model", "--output", str(tmp_path / "run"))
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "could not load 'org/some-model' from the Hugging Face hub: We couldn't connect" in err
    assert "HF_HUB_OFFLINE=1" in err


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("an internal error")

    monkeypatch.setattr(pipeline, "compress", broken)
    with pytest.raises(RuntimeError, match="an internal error"):
        cli.main(["compress"])


def test_interrupt_says_how_to_resume(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "compress", interrupted)
    code, _, err = run_cli(capsys, "compress")
    assert code == 130 and "resume" in err and err.count("\n") == 1


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
