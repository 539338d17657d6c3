"""Original vs compressed MiniLM, fine-tuned on the offline sentence-polarity task over several seeds.

    python benchmarks/bench_finetune.py [--fraction 0.6] [--seeds 0 1 2] [--steps 300]
                                        [--distill T:W [T:W ...]] [--folds FOLD [FOLD ...]]
                                        [--after-finetune SCORE [SCORE ...]] [--recovery-steps 100]
                                        [--out runs/bench_finetune]

The built-in MiniLM is analysed on 150 sentences of the built-in Wikipedia sample (seed 0), pruned
by a plan that keeps ``--fraction`` of the encoder's parameters (obce.plans.target_plan), and
both models are fine-tuned with the same seeds and budget (obce.train.compare: early stopping on
dev accuracy, best checkpoint scored on the held-out test split). Each ``--distill T:W`` adds a row:
the compressed model fine-tuned distilling the original's run of the same seed, at temperature T
with weight W on the teacher term (obce.train.finetune's ``teacher``). Each ``--folds FOLD`` adds a row: the
model compressed with that folding of the removed neurons (obce.prune.prune_model's ``fold``). Each
``--after-finetune SCORE`` adds a row compressed the other way round: each seed's fine-tuned original is ranked by
SCORE (``taylor``: the supervised first-order estimate of obce.scores, on 8 × 32 training sentences), pruned to the
same fraction with the least-squares fold, and fine-tuned ``--recovery-steps`` more (head kept); ``none`` is the
control: the fine-tuned original trained as many steps more, uncompressed. The table, the
plan, the parameter counts and the wall time go to benchmarks/results/finetune_<task>.md. Runs
already in ``--out`` with the same settings are reused.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import machine

import obce
from obce._io import atomic_write_text
from obce.models import builtin_model_path
from obce.prune import FOLD_MODES
from obce.scores import add_scores, task_batches
from obce.train import finetune, load_for_task, results_table

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fraction", type=float, default=0.6, help="encoder parameters to keep")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300, help="training steps per run (3 epochs of polarity)")
    p.add_argument("--task", default="polarity")
    p.add_argument(
        "--distill",
        nargs="+",
        default=[],
        metavar="T:W",
        help="rows of the compressed model distilling the original: temperature:weight, e.g. 2:0.5",
    )
    p.add_argument(
        "--folds",
        nargs="+",
        default=[],
        choices=[f for f in FOLD_MODES if f != "none"],
        help="rows of the model compressed with another folding than none, e.g. linear",
    )
    p.add_argument(
        "--after-finetune",
        nargs="+",
        default=[],
        choices=["lam", "std", "taylor", "none"],
        metavar="SCORE",
        help="rows of each seed's fine-tuned original compressed by SCORE (lam, std or taylor; linear fold), then "
        "fine-tuned --recovery-steps more; none: not compressed (the control for the extra steps)",
    )
    p.add_argument("--recovery-steps", type=int, default=100, help="steps after compressing a fine-tuned original")
    p.add_argument("--out", type=Path, default=Path("runs/bench_finetune"))
    args = p.parse_args()

    start = time.perf_counter()
    model, tokenizer = obce.load_model(device="cpu")
    table = obce.analyze(model, tokenizer=tokenizer, device="cpu")
    plan = obce.target_plan(model, table, args.fraction)
    report = obce.dry_run(model, table, plan)
    compressed_dir = args.out / "compressed"
    compressed = obce.prune_model(model, table, plan)
    compressed.save_pretrained(compressed_dir)
    tokenizer.save_pretrained(compressed_dir)
    prepared = time.perf_counter() - start

    models = {"minilm": str(builtin_model_path()), "minilm-obce": str(compressed_dir)}
    comparison = obce.compare(models, args.task, args.out / "compare", seeds=args.seeds, max_steps=args.steps)
    runs = list(comparison.runs)
    for variant in args.distill:
        temperature, weight = (float(v) for v in variant.split(":"))
        label = f"minilm-obce-kd-T{temperature:g}-w{weight:g}"
        distilled = obce.compare(
            {"minilm": models["minilm"], label: str(compressed_dir)},
            args.task,
            args.out / "compare",
            seeds=args.seeds,
            max_steps=args.steps,
            teachers={label: "minilm"},
            temperature=temperature,
            distill_weight=weight,
        )
        runs += [r for r in distilled.runs if r.name == label]
    for fold in args.folds:
        label, folder = f"minilm-obce-{fold}", args.out / f"compressed-{fold}"
        obce.prune_model(model, table, plan, fold=fold, tokenizer=tokenizer).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folded = obce.compare(
            {"minilm": models["minilm"], label: str(folder)}, args.task, args.out / "compare", seeds=args.seeds,
            max_steps=args.steps,
        )  # fmt: skip
        runs += [r for r in folded.runs if r.name == label]
    originals = [r for r in comparison.runs if r.name == "minilm"]
    task = obce.load_task(args.task) if args.after_finetune else None
    for score in args.after_finetune:
        for original in originals:
            runs.append(compress_finetuned(original, task, score, args.fraction, args.recovery_steps, args.out))
    total = time.perf_counter() - start

    RESULTS.mkdir(exist_ok=True)
    where = machine.summary(machine.describe())
    text = "\n".join(
        [
            f"# Fine-tuning original vs compressed MiniLM on `{args.task}`",
            "",
            f"Command: `python benchmarks/bench_finetune.py --fraction {args.fraction} "
            f"--seeds {' '.join(map(str, args.seeds))} --steps {args.steps}"
            + (f" --distill {' '.join(args.distill)}" if args.distill else "")
            + (f" --folds {' '.join(args.folds)}" if args.folds else "")
            + (f" --after-finetune {' '.join(args.after_finetune)}" if args.after_finetune else "")
            + (f" --recovery-steps {args.recovery_steps}" if args.after_finetune else "")
            + "`  ",
            f"Machine: {where}; CPU only; {datetime.date.today()}. Wall time {total / 60:.1f} min "
            f"(analysis and pruning {prepared:.0f} s, then {len(args.seeds)} seeds × "
            f"{2 + len(args.distill) + len(args.folds) + len(args.after_finetune)} models; "
            "runs found finished in the output folder are reused).",
            "",
            f"Plan (target {args.fraction:.0%} of the encoder, levels from λ medians):",
            "",
            "```",
            str(report),
            "```",
            "",
            results_table(runs),
            "",
        ]
    )
    atomic_write_text(RESULTS / f"finetune_{args.task}.md", text, overwrite=True)
    atomic_write_text(
        RESULTS / f"finetune_{args.task}.json",
        json.dumps(
            {
                "fraction": args.fraction,
                "seeds": args.seeds,
                "steps": args.steps,
                "wall_s": total,
                "encoder_fraction": report.encoder_fraction,
                "model_fraction": report.model_fraction,
                "plan": plan.to_dict(),
                "runs": [r.to_dict() for r in runs],
            },
            indent=2,
            default=str,
        ),
        overwrite=True,
    )
    print(text)


def compress_finetuned(original, task, score: str, fraction: float, steps: int, out: Path):
    """``original`` (a fine-tuned run) ranked by ``score`` on its own outputs, pruned to ``fraction`` of the
    encoder with the least-squares fold (uncompressed for ``none``), then fine-tuned ``steps`` more from its head."""
    label = "minilm-finetuned-more" if score == "none" else f"minilm-finetuned-{score}-linear"
    model, tokenizer = load_for_task(original.model_dir, task, fresh_head=False)
    if score != "none":
        model.eval()
        table = obce.analyze(model, tokenizer=tokenizer, device="cpu", progress=False)
        if score == "taylor":
            table = add_scores(table, model, ["taylor"], batches=task_batches(task, tokenizer, seed=0))
        plan = obce.target_plan(model, table, fraction, score=score)
        model = obce.prune_model(model, table, plan, fold="linear", score=score, tokenizer=tokenizer, progress=False)
    return finetune(
        model, task, out / "after-finetune" / label / f"seed-{original.seed}", seed=original.seed, max_steps=steps,
        eval_steps=max(steps // 4, 1), patience=0, tokenizer=tokenizer, name=label, progress=False,
    )  # fmt: skip


if __name__ == "__main__":
    main()
