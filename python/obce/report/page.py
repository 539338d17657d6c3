"""The report of a run folder: one self-contained HTML page, a Markdown summary and the figures as PNG.

Everything shown is read from the run folder's files (see :mod:`obce.pipeline`), so the report can
be rebuilt at any time with ``obce report``; sections whose files are not there yet (no plan, no
fine-tuning) are left out. The page is built once as a list of sections of paragraphs, tables and
figures, then written twice: as HTML (figures embedded as base64 PNG, styles inline, no external
asset) and as Markdown (figures referenced as the PNG files beside it).
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from .._io import atomic_write_text
from ..importance import ImportanceTable
from ..models.adapters import COMPONENTS
from ..pipeline import COMPRESSED, ORIGINAL, RunFolder
from ..plans import PruningPlan
from ..tasks import task_info
from ..train import TRAINING_LOG
from .figures import (
    lambda_by_layer_figure,
    lambda_distributions_figure,
    parameters_figure,
    persistence_figure,
    save_png,
    training_figure,
)

__all__ = ["Figure", "Section", "Table", "report_sections", "summary_lines", "write_report"]

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"
_ROLES = {"high": "the highest λ", "low": "the lowest non-zero λ"}
_FIGURE_FILES = (
    "parameters.png", "lambda_by_layer.png", "lambda_distributions.png", *(f"persistence_{r}.png" for r in _ROLES),
    "training.png",
)  # fmt: skip
"""Every figure the report draws: the ones it did not draw this time are removed (nothing else of the folder is)."""
_ENCODER_LAYERS = (
    "Encoder layers are the transformer layers only (attention and feed-forward blocks with their layer norms); "
    "the embeddings, the pooler and a task head are never pruned and not counted in that fraction. The whole model "
    "adds them."
)


@dataclass
class Table:
    """A table: header cells and rows of cells (text); ``left`` columns are aligned left, the others right."""

    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    left: int = 1


@dataclass
class Figure:
    """A PNG file of the report folder and its caption; a ``wide`` one takes the page's width."""

    file: str
    caption: str
    wide: bool = False


@dataclass
class Section:
    """A titled part of the report: paragraphs, tables and figures, in order; ``details`` only in HTML
    (long lists, folded)."""

    title: str
    blocks: list = field(default_factory=list)
    details: list[tuple[str, str]] = field(default_factory=list)


def _n(value) -> str:
    return f"{int(value):,}"


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.2f} %"


def _score(value: float) -> str:
    return f"{100 * value:.2f}"


def _g(value: float) -> str:
    return f"{value:.4g}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _level(level: float | None) -> str:
    if level is None:
        return "–"
    return f"P{level:g}"


def _run_folder(run_dir: str | os.PathLike) -> RunFolder:
    run = RunFolder(run_dir)
    if not (run / run.SETTINGS).is_file():
        raise FileNotFoundError(f"{str(run.path)!r} is not a run folder (no {run.SETTINGS})")
    if not run.is_run():  # another program's settings.json: nothing of it is read or written over
        raise FileNotFoundError(f"{str(run.path)!r} is not an obce run folder (its {run.SETTINGS} is not obce's)")
    return run


def _read(run: RunFolder, name: str):
    path = run / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# --------------------------------------------------------------------------------------------------
# Sections


def summary_lines(run_dir: str | os.PathLike, *, plain: bool = False) -> list[str]:
    """The report's summary of a run folder, one sentence per line: what the model kept, how much
    faster it runs and how each fine-tuned model scored (only what the folder holds so far); Markdown, or
    with ``plain`` text for a terminal.

    Raises
    ------
    FileNotFoundError
        If ``run_dir`` is not a run folder (no ``settings.json``).
    """
    run = _run_folder(run_dir)
    plan = run.plan() if (run / run.PLAN).is_file() else None
    metrics = _user((_read(run, run.METRICS) or {}).get("models"))
    lines = _summary_lines(_user(run.settings()), plan, _read(run, run.PARAMS), _read(run, run.SPEED), metrics)
    return [line.replace("`", "").replace(_BACKTICK, "`") for line in lines] if plain else lines


def _summary_lines(settings: dict, plan, params, speed, metrics) -> list[str]:
    analysis = settings.get("steps", {}).get("analyze", {})
    lines = []
    if params:
        before, after = params[ORIGINAL], params[COMPRESSED]
        lines.append(
            f"{analysis.get('model', '?')} pruned with plan `{_user(plan.name) if plan else '?'}`: "
            f"the encoder layers keep {_n(after['encoder_layers'])} of {_n(before['encoder_layers'])} parameters "
            f"({_pct(after['encoder_layers'] / before['encoder_layers'])}), the whole model {_n(after['total'])} of "
            f"{_n(before['total'])} ({_pct(after['total'] / before['total'])})."
        )
    elif analysis:
        made = f"; plan `{_user(plan.name)}` made" if plan else ""
        lines.append(f"{analysis.get('model', '?')}: λ of its neurons over {analysis['n_sentences']} sentences{made}; "
                     "not pruned yet.")  # fmt: skip
    if speed:
        fastest = _fastest(speed)
        lines.append(
            f"CPU inference: {_g(fastest[ORIGINAL])} s → {_g(fastest[COMPRESSED])} s per batch of "
            f"{speed['batch_size']} × {speed['tokens']} tokens ({fastest[ORIGINAL] / fastest[COMPRESSED]:.2f}× as "
            f"fast; fastest of {_count(speed['repeats'], 'repeat')})." + _disturbed(fastest)
        )
    if metrics:
        for label, entry in metrics.items():
            info = task_info(entry["task"])
            for split in info.report_splits:
                scores = ", ".join(f"{m} {_score(entry['metrics'][split][m])}" for m in info.metric_names)
                lines.append(f"{label}: {info.display_name} {split} {scores} (×100).")
    return lines


def _points_text(token: str, n_sentences: int, n_points: int | None = None) -> str:
    """What a neuron's points are, for each token mode (:data:`obce.TOKEN_MODES`)."""
    if token == "tokens":
        return f"every token of the {n_sentences} sentences" + (f" ({n_points:,} points)" if n_points else "")
    which = "the [CLS] token" if token == "cls" else "the mean over the tokens"
    return f"{which} of each of the {n_sentences} sentences"


def _summary(run: RunFolder, settings: dict, plan, params, speed, metrics) -> Section:
    steps = settings.get("steps", {})
    analysis = steps.get("analyze", {})
    section = Section("Summary")
    section.blocks += _summary_lines(settings, plan, params, speed, metrics) or ["The run folder holds no results yet."]
    rows = [["run folder", _user(str(run.path))]]
    if analysis:
        path = analysis.get("model_path")
        rows += [
            ["model", analysis["model"] + (f" ({path})" if path and path != analysis["model"] else "")],
            ["corpus", analysis["corpus_description"]],
            ["sentences, seed", f"{analysis['n_sentences']}, seed {analysis['seed']}"],
            ["points", _points_text(analysis["token"], analysis["n_sentences"])],
        ]
    if "plan" in steps:
        plan_text = steps["plan"]["plan"]
        rows.append(["plan", plan_text if isinstance(plan_text, str) else json.dumps(plan_text)])
    if "prune" in steps:
        prune = steps["prune"]
        # Runs recorded before the score was a setting ranked by λ.
        ranked = SCORE_TITLES[prune.get("score", "lam")]
        score = steps.get("score")
        if prune.get("score") == "taylor" and score:
            most = score["n_batches"] * score["batch_size"]
            ranked += f" on {score['task']}'s training sentences (a sample of up to {most}, seed {score['seed']})"
        rows.append(["neurons ranked by", ranked])
        folding = {"none": "none", "linear": "linear (least-squares fit from the kept neurons)"}.get(
            prune["fold"], f"{prune['fold']} of {prune['statistics']} statistics"
        )
        rows.append(["bias folding", folding])
    if "finetune" in steps:
        ft = steps["finetune"]
        rows.append(
            [
                "fine-tuning",
                (
                    f"{ft['task']}: {_count(ft['steps'], 'step')} of batch {ft['batch_size']}, max length "
                    # Every eval_steps steps, and at the last: fewer than asked when there are fewer steps.
                    f"{ft['max_length']}, lr {ft['lr']:g}, {_count(-(-ft['steps'] // ft['eval_steps']), 'evaluation')} "
                    "on dev "
                    f"(every {_count(ft['eval_steps'], 'step')}, best kept), "
                    f"seed {ft['seed']}"
                    + ("; the compressed model distilled the fine-tuned original" if ft.get("distill") else "")
                ),
            ]
        )
    versions = settings.get("versions", {})
    if versions:
        rows.append(["versions", ", ".join(f"{k} {v}" for k, v in versions.items())])
    for i, (_, command) in enumerate(_commands(settings)):
        rows.append(["commands" if i == 0 else "", command])
    section.blocks.append(Table(["setting", "value"], rows, left=2))
    return section


def _parameters(parameters: pd.DataFrame, params: dict, figure: str) -> Section:
    before, after = params[ORIGINAL], params[COMPRESSED]
    totals = Table(
        ["", "original", "compressed", "kept"],
        [
            [name, _n(before[key]), _n(after[key]), _pct(after[key] / before[key])]
            for name, key in (
                ("encoder layers", "encoder_layers"),
                ("whole model (embeddings, layers, pooler, any head)", "total"),
            )
        ],
    )
    components = [*COMPONENTS, "other"]
    rows = []
    for layer, group in parameters.groupby("layer", sort=True):
        by = group.set_index("component")
        cells = [f"{_n(by.at[c, 'params_compressed'])} / {_n(by.at[c, 'params_original'])}" for c in components]
        kept = by["params_compressed"].sum() / by["params_original"].sum()
        total = f"{_n(by['params_compressed'].sum())} / {_n(by['params_original'].sum())}"
        rows.append([str(layer), *cells, total, _pct(kept)])
    per_layer = Table(["layer", *components, "total", "kept"], rows)
    return Section(
        "The model before and after",
        [
            _ENCODER_LAYERS,
            totals,
            "Parameters per layer and component, compressed / original (`other`: the layer norms).",
            per_layer,
            Figure(figure, "Parameters per layer, original (outline) and compressed (filled), by component."),
        ],
    )


def _importance(table: ImportanceTable, figure: str) -> Section:
    # One point per sentence except with token="tokens", where n_points counts tokens.
    n_sentences = (
        len(table.sentences) if table.sentences else table.settings.get("n_sentences", table.settings.get("n_points"))
    )
    token = table.settings.get("token", "cls")
    first = table.neurons[(table.neurons["layer"] == 1) & table.neurons["component"].isin(["query", "key", "value"])]
    constant_first_layer = token == "cls" and len(first) > 0 and bool((first["lam"] == 0).all())
    stats = table.stats()
    medians = stats.pivot(index="layer", columns="component", values="median")[table.components]
    rows = [[str(layer), *(_g(v) for v in values)] for layer, values in medians.iterrows()]
    return Section(
        "Neuron importance λ",
        [
            (
                "λ of a neuron is the largest finite 0-dimensional persistence death (the longest edge of the "
                "Euclidean minimum spanning tree) of its outputs at "
                + _points_text(token, n_sentences, table.settings.get("n_points"))
                + ". It is 0 where a neuron's output is the same at every point"
                + (
                    ": here every query, key and value neuron of layer 1, whose input at [CLS] (the [CLS] embedding) "
                    "does not depend on the sentence."
                    if constant_first_layer
                    else "."
                )
            ),
            Figure(figure, "Median λ per layer for each component (the paper's Figure 6), on a logarithmic axis."),
            Table(["layer", *table.components], rows),
        ],
    )


_TOP = 3
"""How many of the highest-λ neurons of each component the report names."""


def _top_neurons(table: ImportanceTable) -> Section:
    """Which neurons matter: the highest λ of each component over all layers, and how many neurons have λ = 0."""
    rows = []
    for component in table.components:
        neurons = table.neurons[table.neurons["component"] == component]
        top = neurons.nlargest(_TOP, "lam")[["layer", "neuron", "lam"]].itertuples(index=False)
        highest = ", ".join(f"{layer}:{neuron} ({_g(lam)})" for layer, neuron, lam in top)
        rows.append([component, _n(len(neurons)), _n((neurons["lam"] == 0).sum()), highest])
    return Section(
        "The neurons of highest λ",
        [
            f"The {_TOP} highest λ of each component over all layers, as layer:neuron (layers counted from 1, neurons "
            "from 0), and how many neurons have λ = 0 (the same output at every point). Every neuron's λ is in "
            "`importance.csv`.",
            Table(["component", "neurons", "λ = 0", "highest λ (layer:neuron)"], rows, left=1),
        ],
    )


SCORE_TITLES = {"lam": "λ", "std": "standard deviation", "taylor": "Taylor |activation × gradient|"}
"""How the report names the score neurons were ranked by (``obce.pipeline.RUN_SCORES``)."""


def cutoffs(table: ImportanceTable, plan: PruningPlan, score: str = "lam") -> dict[tuple[int, str], float]:
    """The threshold of each value and intermediate unit the plan prunes, on the score column neurons were ranked
    by (kept: above it)."""
    return {
        (layer, c): float(np.percentile(table.column(score, layer, c), level))
        for layer, row in plan.levels.items()
        for c, level in row.items()
        if c in ("value", "intermediate")
    }


def _distributions(table: ImportanceTable, plan: PruningPlan | None, figure: str, score: str) -> Section:
    if plan is None:
        return Section("λ distributions", [Figure(figure, "λ per layer and component.", wide=True)])
    section = Section("λ distributions and the plan's cut-offs")
    cuts, name = cutoffs(table, plan, score), "λ" if score == "lam" else score
    caption = (
        "λ per layer and component; the red lines are the plan's cut-offs (neurons above them are kept). Query "
        "and key are ranked jointly (product of their λ ranks), so they have no single λ cut-off."
        if score == "lam"
        else f"λ per layer and component. Neurons were ranked by their {SCORE_TITLES[score]}, so the cut-offs in "
        "the table below are on that score, not on λ."
    )
    section.blocks += [
        f"Plan `{_user(plan.name)}`" + (f": {_user(plan.notes)}." if plan.notes else "."),
        Figure(figure, caption, wide=True),
    ]
    rows = []
    for layer in table.layers:
        row = [str(layer), _level(plan.level(layer, "query"))]
        for c in ("value", "intermediate"):
            level = plan.level(layer, c)
            row.append(_level(level) + (f" ({name} > {_g(cuts[layer, c])})" if level is not None else ""))
        rows.append(row)
    section.blocks.append(Table(["layer", "query/key", "value", "intermediate"], rows))
    return section


def _diagrams(persistence: dict, removed: list | None, files: Sequence[str]) -> Section:
    section = Section("Persistence diagrams of a high-λ and a low-λ neuron")
    removed_by_layer = {entry["layer"]: set(entry["intermediate"]["removed"]) for entry in removed or []}
    for entry, file in zip(_distinct_neurons(persistence), files, strict=True):
        fate = ""
        if entry["component"] == "intermediate" and entry["layer"] in removed_by_layer:
            fate = "; removed by the plan" if entry["neuron"] in removed_by_layer[entry["layer"]] else "; kept"
        rank = (
            f"{_ROLES[entry['role']]} among its layer's {entry['component']} neurons"
            if entry["lam"] > 0
            else f"one of its layer's {entry['component']} neurons, all of λ = 0"
        )
        section.blocks.append(
            Figure(file, f"Layer {entry['layer']} {entry['component']} neuron {entry['neuron']}, {rank}: λ = "
                   f"{_g(entry['lam'])}{fate}.")
        )  # fmt: skip
    return section


def _distinct_neurons(persistence: dict) -> list[dict]:
    """The saved neurons, each once: where no λ of the layer is above 0, the highest and the lowest are one neuron."""
    seen, distinct = set(), []
    for entry in persistence["neurons"]:
        key = (entry["layer"], entry["component"], entry["neuron"])
        if key not in seen:
            seen.add(key)
            distinct.append(entry)
    return distinct


def _removed(removed: list) -> Section:
    rows, details = [], []
    for entry in removed:
        cells = [f"{len(entry[k]['removed'])} of {entry[k]['total']}" for k in ("query_key", "value", "intermediate")]
        heads = ", ".join(map(str, entry["removed_heads"])) or "–"
        rows.append([str(entry["layer"]), *cells, heads])
        if any(entry[k]["removed"] for k in ("query_key", "value", "intermediate")):
            lists = "; ".join(
                f"{k}: {', '.join(map(str, entry[k]['removed'])) or '–'}"
                for k in ("query_key", "value", "intermediate")
            )
            details.append((f"Layer {entry['layer']}: removed indices", lists))
    return Section(
        "Removed neurons and heads",
        [
            (
                "Neurons removed per layer (indices in `removed.json`); a head left without value dimensions is "
                "removed whole (heads counted from 0)."
            ),
            Table(["layer", "query/key", "value", "intermediate", "removed heads"], rows),
        ],
        details,
    )


def _fastest(speed: dict) -> dict[str, float]:
    return {label: min(times) for label, times in speed["seconds"].items()}


def _disturbed(fastest: dict[str, float]) -> str:
    """A warning where the compressed model, which does fewer operations, timed slower than the original."""
    if fastest[COMPRESSED] <= fastest[ORIGINAL]:
        return ""
    return (
        " The compressed model does fewer operations: timed slower, other work most likely disturbed every repeat; "
        "time it again on a quiet machine with more repeats (`--speed-repeats`)."
    )


def _speed(speed: dict) -> Section:
    fastest = _fastest(speed)
    rows = [
        [
            label,
            _g(fastest[label]),
            _g(float(np.median(speed["seconds"][label]))),
            ", ".join(_g(s) for s in speed["seconds"][label]),
        ]
        for label in (ORIGINAL, COMPRESSED)
    ]
    return Section(
        "Inference speed on the CPU",
        [
            (
                f"One forward pass of a batch of {speed['batch_size']} × {speed['tokens']} random token ids (seed "
                f"{speed['seed']}), {_count(speed['threads'], 'thread')}, {_count(speed['repeats'], 'timed repeat')} "
                "after a warm-up, the models in turns. On a shared machine the fastest repeat is the least disturbed "
                f"by other work: by it, the compressed model is {fastest[ORIGINAL] / fastest[COMPRESSED]:.2f}× as fast."
                + _disturbed(fastest)
            ),
            Table(["model", "fastest s", "median s", "every repeat (s)"], rows),
        ],
    )


def _training_logs(run: RunFolder) -> dict[str, list[dict]]:
    """Label -> the logged loss and dev scores of each fine-tuned model that kept its log."""
    logs = {}
    for label, folder in run.finetuned().items():
        if (folder / TRAINING_LOG).is_file():
            logs[label] = json.loads((folder / TRAINING_LOG).read_text(encoding="utf-8"))
    return logs


def _scores(metrics: dict, settings: dict, curves: str | None) -> Section:
    labels = list(metrics)
    info = task_info(metrics[labels[0]]["task"])
    columns = [(split, m) for split in info.report_splits for m in info.metric_names]
    rows = []
    for label in labels:
        entry = metrics[label]
        cells = [_score(entry["metrics"][split][m]) for split, m in columns]
        rows.append([label, _n(entry["params"]["total"]), str(entry["steps"]), *cells])
    ft = settings.get("steps", {}).get("finetune", {})
    budget = (
        f" with the same seed ({ft['seed']}) and budget ({ft['steps']} steps of batch {ft['batch_size']}, max length "
        f"{ft['max_length']})"
        if ft
        else ""
    )
    return Section(
        f"Task scores: {info.display_name}",
        [
            (
                f"Each model was fine-tuned{budget}"
                + (
                    "; the compressed model also learned from the fine-tuned original's outputs"
                    if ft.get("distill")
                    else ""
                )
                + f"; the best of the dev evaluations was kept and scored on {', '.join(info.report_splits)}"
                + (
                    f" ({info.selection_split} is also the split the best was chosen on, as usual for GLUE, whose "
                    "test labels are not public: a choice that flatters every model alike)"
                    if info.selection_split in info.report_splits
                    else ""
                )
                + ". Scores ×100; parameters include the classification head."
            ),
            Table(["model", "parameters", "steps", *(f"{split} {m}" for split, m in columns)], rows),
            *([Figure(curves, "Training loss and dev score by step, for each model.")] if curves else []),
        ],
    )


def _evaluations(evaluation: dict) -> Section:
    """The scores of ``obce evaluate`` (``evaluation.json``: "task/split" -> label -> model, length, metrics)."""
    names = list(dict.fromkeys(m for by in evaluation.values() for entry in by.values() for m in entry["metrics"]))
    rows = []
    for key, by in evaluation.items():
        for label, entry in by.items():
            scores = [_score(entry["metrics"][m]) if m in entry["metrics"] else "–" for m in names]
            rows.append([key.replace("/", " ", 1), label, str(entry["max_length"]), *scores])
    header = ["task split", "model", "max length", *names]
    note = "Scores (×100) of `obce evaluate`, kept in `evaluation.json`."
    return Section("Evaluations", [note, Table(header, rows, left=2)])


def _commands(settings: dict) -> list[tuple[str | None, str]]:
    """(working directory, command) of each recorded command; runs recorded before the directory was have None."""
    return [(None, c) if isinstance(c, str) else (c["cwd"], c["command"]) for c in settings.get("commands", [])]


def _reproduce(settings: dict) -> Section:
    blocks, where = [], None
    for cwd, command in _commands(settings):
        if cwd is not None and cwd != where:  # relative paths of a command mean what they meant there
            blocks.append(f"`cd {shlex.quote(cwd)}`")
            where = cwd
        blocks.append(f"`{command}`")
    blocks.append("Every setting is in `settings.json`; each step's inputs and outputs are files of the run folder.")
    timings = settings.get("timings_s", {})
    if timings:
        blocks.append(Table(["step", "wall time (s)"], [[k, f"{v:.1f}"] for k, v in timings.items()]))
    return Section("Reproduce", blocks)


# --------------------------------------------------------------------------------------------------
# Rendering


_BACKTICK = "\ue000"
"""A backtick of the user's text (a path, a name, a command): shown as written, never a `code` span's boundary."""


def _user(value):
    """Text from the run folder's settings or files, with its backticks marked as the user's (in nested values)."""
    if isinstance(value, str):
        return value.replace("`", _BACKTICK)
    if isinstance(value, dict):
        return {_user(k): _user(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_user(v) for v in value]
    return value


def _inline_markdown(text: str) -> str:
    """HTML of a paragraph: escaped, with `code` spans."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)).replace(_BACKTICK, "&#96;")


_MARKDOWN_SPECIAL = re.compile(r"[\\*~]|\](?=\()|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
"""What would open emphasis, a strikethrough or a link in Markdown: a backslash, *, ~, a ] before (, and _ not inside
a word."""
_MARKDOWN_BLOCK_START = re.compile(r"^(?:>|(?:#{1,6}|[+-]|\d{1,9}[.)])(?=\s|$))")
"""What opens a heading, a quote or a list at the start of a paragraph."""


def _markdown_text(text: str, paragraph: bool = False) -> str:
    """A paragraph, heading or table cell for Markdown, on one line: outside `code` spans, & and < as entities and
    Markdown's emphasis and link characters escaped, so text from the user (a plan's notes, a path, a model name)
    shows as written instead of opening an HTML tag ("λ > x" stays readable); the user's backticks escaped, or inside
    a code span, fenced by more backticks than any run of them inside. A ``paragraph`` that would open a heading, a
    quote or a list is escaped too."""
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())  # no indent: no code block
    out = []
    for i, part in enumerate(text.split("`")):
        if i % 2 == 0:
            part = _MARKDOWN_SPECIAL.sub(lambda m: "\\" + m[0], part.replace("&", "&amp;").replace("<", "&lt;"))
            if i == 0 and paragraph:  # a backslash before the opening's last character: \# or 1\.
                part = _MARKDOWN_BLOCK_START.sub(lambda m: m[0][:-1] + "\\" + m[0][-1], part)
            out.append(part.replace(_BACKTICK, "\\`"))
        elif _BACKTICK in part:
            part = part.replace(_BACKTICK, "`")
            fence = "`" * (1 + max(map(len, re.findall("`+", part))))  # longer than any run of backticks inside
            out.append(f"{fence} {part} {fence}")
        else:
            out.append(f"`{part}`")
    return "".join(out)


def _markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {_markdown_text(title)}", ""]
    for section in sections:
        out += [f"## {_markdown_text(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                cells = [[_markdown_text(c).replace("|", "\\|") for c in row] for row in [block.header, *block.rows]]
                align = [":---" if i < block.left else "---:" for i in range(len(block.header))]
                out += ["| " + " | ".join(cells[0]) + " |", "| " + " | ".join(align) + " |"]
                out += ["| " + " | ".join(row) + " |" for row in cells[1:]]
            elif isinstance(block, Figure):
                caption = _markdown_text(block.caption)
                out.append(f"![{caption}]({block.file})")
                out += ["", f"*{caption}*"]
            else:
                out.append(_markdown_text(block, paragraph=True))
            out.append("")
    return "\n".join(out)


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 80em;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
.scroll { overflow-x: auto; } table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; width: 32em; max-width: 100%; }
figure.wide { width: 60em; }
figure img { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; max-width: 40em; }
code { background: #f5f5f5; padding: 0 .2em; }
details { font-size: .85em; margin: .2em 0; } details p { word-break: break-word; }
"""


def _html(title: str, sections: list[Section], folder: Path) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        out.append(f"<section><h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                out.append('<div class="scroll"><table><thead><tr>')
                out.append("".join(f"<th>{html.escape(h)}</th>" for h in block.header))
                out.append("</tr></thead><tbody>")
                for row in block.rows:
                    cells = [
                        f"<td>{_inline_markdown(c)}</td>"
                        if i < block.left
                        else f'<td class="num">{html.escape(c)}</td>'
                        for i, c in enumerate(row)
                    ]
                    out.append("<tr>" + "".join(cells) + "</tr>")
                out.append("</tbody></table></div>")
            elif isinstance(block, Figure):
                data = base64.b64encode((folder / block.file).read_bytes()).decode("ascii")
                caption = _inline_markdown(block.caption)
                out.append(
                    f"<figure{' class=wide' if block.wide else ''}>"
                    f'<img src="data:image/png;base64,{data}" alt="{html.escape(block.caption)}">'
                    f"<figcaption>{caption}</figcaption></figure>"
                )
            else:
                out.append(f"<p>{_inline_markdown(block)}</p>")
        for summary, text in section.details:
            out.append(f"<details><summary>{html.escape(summary)}</summary><p>{html.escape(text)}</p></details>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# Entry points


def report_sections(run_dir: str | os.PathLike, *, figures: bool = True) -> tuple[str, list[Section]]:
    """The report's title and sections, read from a run folder; with ``figures`` the PNG files are
    (re)drawn into ``<run_dir>/report/``.

    Raises
    ------
    FileNotFoundError
        If ``run_dir`` is not a run folder (no ``settings.json``).
    """
    run = _run_folder(run_dir)
    settings = _user(run.settings())
    folder = run / run.REPORT
    table = run.table() if (run / run.IMPORTANCE).is_file() else None
    plan = run.plan() if (run / run.PLAN).is_file() else None
    parameters = pd.read_csv(run / run.PARAMETERS) if (run / run.PARAMETERS).is_file() else None
    params, removed = _read(run, run.PARAMS), _read(run, run.REMOVED)
    speed, persistence = _read(run, run.SPEED), _read(run, run.PERSISTENCE)
    metrics = _user((_read(run, run.METRICS) or {}).get("models"))
    evaluation = _user(_read(run, run.EVALUATION))

    def draw(name: str, figure) -> str:
        """``name``, drawn by ``figure()`` (a matplotlib Figure) into the report folder when figures are asked for."""
        if figures:
            folder.mkdir(exist_ok=True)
            save_png(figure(), folder / name, overwrite=True)
        return name

    sections = [_summary(run, settings, plan, params, speed, metrics)]
    if parameters is not None and params:
        sections.append(_parameters(parameters, params, draw("parameters.png", partial(parameters_figure, parameters))))
    if table is not None:
        # λ spans orders of magnitude across layers: a linear axis shows the last layer and flattens the rest.
        name = draw("lambda_by_layer.png", partial(lambda_by_layer_figure, table, log=True))
        sections.append(_importance(table, name))
        sections.append(_top_neurons(table))
        steps = settings.get("steps", {})
        # The plan's score ranked the neurons (a run stopped before pruning has no prune step); runs recorded
        # before the score was a setting ranked by λ.
        score = steps.get("plan", steps.get("prune", {})).get("score", "lam")
        cuts = cutoffs(table, plan) if plan is not None and score == "lam" else None  # drawn on the λ axis
        name = draw("lambda_distributions.png", partial(lambda_distributions_figure, table, log=True, cutoffs=cuts))
        sections.append(_distributions(table, plan, name, score))
    if persistence:
        files = [
            draw(
                f"persistence_{entry['role']}.png",
                partial(persistence_figure, entry["points"], entry["layer"], entry["component"], entry["neuron"]),
            )
            for entry in _distinct_neurons(persistence)
        ]
        sections.append(_diagrams(persistence, removed, files))
    if removed:
        sections.append(_removed(removed))
    if speed:
        sections.append(_speed(speed))
    if metrics:
        logs = _training_logs(run)
        dev_metric = f"eval_{task_info(next(iter(metrics.values()))['task']).main_metric}"
        curves = draw("training.png", partial(training_figure, logs, dev_metric)) if logs else None
        sections.append(_scores(metrics, settings, curves))
    if evaluation:
        sections.append(_evaluations(evaluation))
    sections.append(_reproduce(settings))
    model = settings.get("steps", {}).get("analyze", {}).get("model", "a model")
    return f"obce report: {model}", sections


def write_report(run_dir: str | os.PathLike) -> Path:
    """Build the report of a run folder: ``report/report.html``, ``report/report.md`` and the PNG figures.

    Parameters
    ----------
    run_dir : path-like
        A run folder (see :mod:`obce.pipeline`).

    Returns
    -------
    pathlib.Path
        The HTML page (self-contained: figures embedded, no external asset).

    Raises
    ------
    FileNotFoundError
        If ``run_dir`` is not a run folder.
    """
    title, sections = report_sections(run_dir)
    folder = RunFolder(run_dir) / RunFolder.REPORT
    folder.mkdir(exist_ok=True)
    drawn = {block.file for section in sections for block in section.blocks if isinstance(block, Figure)}
    for stale in set(_FIGURE_FILES) - drawn:  # of results no longer in the folder (a fine-tuning cleared)
        (folder / stale).unlink(missing_ok=True)
    atomic_write_text(folder / MARKDOWN_NAME, _markdown(title, sections), overwrite=True)
    return atomic_write_text(folder / HTML_NAME, _html(title, sections, folder).replace(_BACKTICK, "`"), overwrite=True)
