"""Is λ the right neuron score? Ablation against simpler scores at the same size, and the bias folding choices.

    python benchmarks/ablate.py [--seeds 0 1 2] [--fractions 0.6 0.45] [--recovery-steps 50] [--work runs/ablate]
    python benchmarks/ablate.py --report      # rewrite the Markdown from the results so far

The built-in MiniLM is fine-tuned once on the offline ``polarity`` task (seed 0; the default preset, 3 epochs
with early stopping, or ``--finetune-steps`` steps). Every score of :mod:`obce.scores` is computed on that
fine-tuned model (150 Wikipedia sentences, seed 0, [CLS] points; Taylor on 8 × 32 training sentences), and for
each score :func:`obce.plans.target_plan` builds a plan keeping each ``--fractions`` of the encoder, ranking by
that score (so every score prunes to the same size). The levels are the paper's P30/P50/P70, with P90 added
where those cannot reach the size (with layers 1-2 untouched, P70 everywhere else keeps about 53 % of the
encoder, so 45 % needs it).

1. Retention: the fine-tuned model compressed with each score and each bias folding, evaluated with no further
   training. Foldings: ``none``; ``mean`` and ``mean+std`` of each neuron over every real token of the corpus;
   ``mean@cls`` and ``mean+std@cls`` of its [CLS] outputs (``statistics="point"``); ``linear``, the reader's
   removed inputs replaced by their least-squares fit from the kept ones over the corpus tokens.
2. Corpus stability of the kept sets at P50 in layers 3-6 (pretrained MiniLM): 150 vs 700 vs 1500 sentences,
   and two seeds of 150.
3. Recovery: the retention model with folding ``mean@cls``, ``none`` and ``linear``, fine-tuned
   ``--recovery-steps`` more steps.

What varies with the seed: the random score's draw (retention and recovery) and the recovery fine-tune's seed
(head is kept; data order and dropout). Deterministic scores give one retention result (no seed).

Measures on held-out data, for every configuration: test accuracy (400 sentences) and its standard error
sqrt(p(1-p)/n); ROC AUC of the head's margin (accuracy without the decision threshold, which pruning can shift
while the ranking of sentences survives); agreement with the original's predictions; the mean KL divergence
KL(original ‖ compressed) of the head's predictions on the test split; the mean cosine between mean-pooled
encoder outputs of the compressed and the original fine-tuned encoder on 400 Wikipedia sentences not among the
150 analysed.

Each configuration writes one JSON line to benchmarks/results/ablation.jsonl as soon as it is done; a rerun skips
configurations already there (resumable). The Markdown report goes to benchmarks/results/ablation.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import machine
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

import obce
from obce._io import atomic_write_text
from obce.activations import compute_activations
from obce.importance import ImportanceTable, compute_importance
from obce.models import builtin_model_path
from obce.pipeline import build_plan
from obce.plans import EncoderShape, dry_run, select_neurons, uniform_plan
from obce.prune import prune_model
from obce.scores import add_scores, random_score, task_batches
from obce.train import finetune, load_for_task

RESULTS = Path(__file__).resolve().parent / "results"
JSONL = RESULTS / "ablation.jsonl"
MARKDOWN = RESULTS / "ablation.md"
SCORES = ("lam", "lam_tokens", "lam_head", "lam_weighted", "std", "abs_mean", "weight", "taylor", "random")
# Fold label -> prune_model's (fold, statistics): over every real token ("token"), or at [CLS] ("point").
FOLD_ARGS = {
    "none": ("none", "token"),
    "mean": ("mean", "token"),
    "mean+std": ("mean+std", "token"),
    "mean@cls": ("mean", "point"),
    "mean+std@cls": ("mean+std", "point"),
    "linear": ("linear", "token"),
}
FOLDS = tuple(FOLD_ARGS)
# Recovery starts from the [CLS] means (the library's default before these results), from no folding (the
# default since: retention showed the first sends some models to a constant prediction) and from the
# least-squares fit (the closest to the original without training).
RECOVERY_FOLDS = ("mean@cls", "none", "linear")
TASK = "polarity"
N_ANALYSED = 150
N_HELD_OUT = 400
MEASURES = {"accuracy", "auc", "positive_rate", "agreement", "kl", "cosine"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def read_results() -> list[dict]:
    if not JSONL.is_file():
        return []
    return [json.loads(line) for line in JSONL.read_text(encoding="utf-8").splitlines() if line.strip()]


def append_result(row: dict) -> None:
    """Append one configuration's line (the file is rewritten atomically, so a crash never leaves half a line)."""
    lines = JSONL.read_text(encoding="utf-8") if JSONL.is_file() else ""
    atomic_write_text(JSONL, lines + json.dumps(row, sort_keys=True) + "\n", overwrite=True)


def key(row: dict) -> tuple:
    fields = ("phase", "score", "seed", "fraction", "fold", "steps", "original_steps")
    return tuple(row.get(f) for f in fields)


# --------------------------------------------------------------------------------------------------
# Setup: the fine-tuned original, its scores, the held-out data and the original's outputs


def finetuned_original(work: Path, steps: int | None):
    folder = work / ("original" if steps is None else f"original-{steps}steps")
    result = finetune(str(builtin_model_path()), TASK, folder, seed=0, max_steps=steps, eval_steps=steps, name="minilm")
    model, tokenizer = load_for_task(result.model_dir, TASK, fresh_head=False)
    return model.eval(), tokenizer, result


def scored_table(model, tokenizer, task, seeds: list[int], folder: Path) -> ImportanceTable:
    """The fine-tuned model's λ table with every score of SCORES as a column (``random_<seed>`` per seed)."""
    if (folder / "importance.csv").is_file():
        table = ImportanceTable.load(folder)
        missing = [f"random_{s}" for s in seeds if f"random_{s}" not in table.value_columns]
        if not missing:
            return table
    start = time.perf_counter()
    table = obce.analyze(model, tokenizer=tokenizer, n_sentences=N_ANALYSED, seed=0, heads=True, progress=False)
    acts = compute_activations(model, tokenizer, table.sentences, token="cls", progress=False)
    tokens = compute_importance(compute_activations(model, tokenizer, table.sentences, token="tokens", progress=False))
    table = add_scores(
        table,
        model,
        ["lam_tokens", "lam_head", "lam_weighted", "abs_mean", "weight", "taylor"],
        acts=acts,
        tokens_table=tokens,
        batches=task_batches(task, tokenizer, n_batches=8, batch_size=32, seed=0),
    )
    table = table.with_columns({f"random_{s}": random_score(table, s) for s in seeds})
    table.settings["scores_s"] = round(time.perf_counter() - start, 1)
    table.save(folder, overwrite=True)
    return table


def held_out_sentences(analysed: list[str]) -> list[str]:
    seen = set(analysed)
    pool = obce.sample_sentences(None, N_HELD_OUT + 2 * N_ANALYSED, seed=1)
    held_out = [s for s in pool if s not in seen][:N_HELD_OUT]
    if len(held_out) < N_HELD_OUT:
        raise ValueError(f"only {len(held_out)} held-out sentences")
    return held_out


@torch.no_grad()
def run_outputs(model, tokenizer, texts: list[str], *, pooled: bool, batch_size: int = 64) -> torch.Tensor:
    """Logits of the head, or mean-pooled last hidden states of the encoder, in the order of ``texts``."""
    model.eval()
    order = np.argsort([len(t) for t in texts])
    out = [None] * len(texts)
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in rows], truncation=True, max_length=128, padding=True, return_tensors="pt")
        if pooled:
            hidden = model.base_model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            values = (hidden * mask).sum(1) / mask.sum(1)
        else:
            values = model(**enc).logits
        for i, v in zip(rows, values, strict=True):
            out[i] = v.double()
    return torch.stack(out)


def measure(model, tokenizer, data: dict) -> dict:
    logits = run_outputs(model, tokenizer, data["test_texts"], pooled=False)
    embeddings = run_outputs(model, tokenizer, data["held_out"], pooled=True)
    predictions = logits.argmax(-1)
    n = len(predictions)
    accuracy = float((predictions == data["test_labels"]).double().mean())
    ref_log_p = F.log_softmax(data["ref_logits"], -1)
    kl = (ref_log_p.exp() * (ref_log_p - F.log_softmax(logits, -1))).sum(-1)
    cosine = F.cosine_similarity(embeddings, data["ref_embeddings"], dim=-1)
    return {
        "accuracy": accuracy,
        "accuracy_se": math.sqrt(accuracy * (1 - accuracy) / n),
        "n_test": n,
        "auc": float(roc_auc_score(data["test_labels"], logits[:, 1] - logits[:, 0])),
        "positive_rate": float(predictions.double().mean()),
        "agreement": float((predictions == data["ref_logits"].argmax(-1)).double().mean()),
        "kl": float(kl.mean()),
        "kl_se": float(kl.std() / math.sqrt(n)),
        "cosine": float(cosine.mean()),
        "cosine_se": float(cosine.std() / math.sqrt(len(cosine))),
        "n_held_out": len(cosine),
    }


def plan_for(model, table, fraction: float, column: str):
    """The plan ``obce prune --plan target:<fraction>`` makes: the paper's levels P30/P50/P70, with P90 added where
    those cannot reach ``fraction`` (with layers 1-2 untouched, P70 everywhere else keeps about 53 % of MiniLM's
    encoder: 45 % needs a higher level). Every score goes through the same rule, so sizes still match.
    """
    return build_plan(f"target:{fraction}", model, table, score=column)


def compress(model, tokenizer, table, plan, fold: str, column: str):
    """The model pruned by ``plan``, ranking by ``column``, with the folding labelled ``fold`` (FOLD_ARGS)."""
    fold_mode, statistics = FOLD_ARGS[fold]
    return prune_model(
        model, table, plan, fold=fold_mode, statistics=statistics, score=column, tokenizer=tokenizer, progress=False
    )


def score_column(score: str, seed: int | None) -> str:
    return f"random_{seed}" if score == "random" else score


# --------------------------------------------------------------------------------------------------
# Phases


def retention(model, tokenizer, table, data, args, done: set, after) -> None:
    plans = {}
    # The default folding (none) first, over every score and size, so that a partial run answers the main question.
    for fold in FOLDS:
        for fraction in args.fractions:
            for score in SCORES:
                for seed in args.seeds if score == "random" else [None]:
                    column = score_column(score, seed)
                    row = {"phase": "retention", "score": score, "seed": seed, "fraction": fraction, "fold": fold}
                    row.update(steps=0, original_steps=args.finetune_steps)
                    if key(row) in done:
                        continue
                    start = time.perf_counter()
                    if (column, fraction) not in plans:
                        plans[(column, fraction)] = plan_for(model, table, fraction, column)
                    plan = plans[(column, fraction)]
                    report = dry_run(model, table, plan, score=column)
                    small = compress(model, tokenizer, table, plan, fold, column)
                    row.update(measure(small, tokenizer, data))
                    row.update(
                        encoder_fraction=report.encoder_fraction,
                        model_params=report.model_after,
                        plan=plan.to_dict()["levels"],
                        plan_notes=plan.notes,
                        seconds=round(time.perf_counter() - start, 1),
                    )
                    append_result(row)
                    done.add(key(row))
                    after()
                    log(f"retention {score} seed={seed} {fraction:.0%} fold={fold}: acc {row['accuracy']:.4f}")


def recovery(model, tokenizer, table, data, args, done: set, after) -> None:
    task = obce.load_task(TASK)
    for fold in RECOVERY_FOLDS:
        for seed in args.seeds:
            for fraction in args.fractions:
                for score in SCORES:
                    row = {"phase": "recovery", "score": score, "seed": seed, "fraction": fraction, "fold": fold}
                    row.update(steps=args.recovery_steps, original_steps=args.finetune_steps)
                    if key(row) in done:
                        continue
                    start = time.perf_counter()
                    column = score_column(score, seed)
                    plan = plan_for(model, table, fraction, column)
                    small = compress(model, tokenizer, table, plan, fold, column)
                    name = recovery_name(row)
                    result = finetune(
                        small,
                        task,
                        args.work / "recovery" / name,
                        seed=seed,
                        max_steps=args.recovery_steps,
                        eval_steps=args.recovery_steps,
                        patience=0,
                        tokenizer=tokenizer,
                        name=name,
                    )
                    row.update(measure(small, tokenizer, data))
                    row.update(
                        encoder_fraction=dry_run(model, table, plan, score=column).encoder_fraction,
                        train_seconds=round(result.train_seconds, 1),
                        seconds=round(time.perf_counter() - start, 1),
                    )
                    append_result(row)
                    done.add(key(row))
                    after()
                    log(f"recovery {score} seed={seed} {fraction:.0%} fold={fold}: acc {row['accuracy']:.4f}")


def recovery_name(row: dict) -> str:
    return f"{row['score']}-{row['fraction']:g}-seed{row['seed']}-{row['steps']}steps-{row['fold']}"


def measure_missing(model, tokenizer, table, data, args) -> None:
    """Measures added after some configurations ran, taken for those rows from the same models: retention
    models are rebuilt (deterministic), recovery models read from their run folders."""
    rows = read_results()
    stale = [r for r in rows if r["phase"] in ("retention", "recovery") and MEASURES - set(r)]
    for row in stale:
        column = score_column(row["score"], row["seed"])
        if row["phase"] == "retention":
            small = compress(
                model, tokenizer, table, plan_for(model, table, row["fraction"], column), row["fold"], column
            )
        else:
            small, _ = load_for_task(args.work / "recovery" / recovery_name(row), TASK, fresh_head=False)
        row.update(measure(small.eval(), tokenizer, data))
        log(f"measured again: {row['phase']} {row['score']} seed={row['seed']} {row['fraction']:.0%} {row['fold']}")
    if stale:
        atomic_write_text(JSONL, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), overwrite=True)


def stability(done: set) -> None:
    """Jaccard overlap of the neurons kept at P50 (per layer and component) between corpus samples."""
    samples = {"150/s0": (150, 0), "150/s1": (150, 1), "700/s0": (700, 0), "1500/s0": (1500, 0)}
    pairs = [("150/s0", "150/s1"), ("150/s0", "700/s0"), ("150/s0", "1500/s0"), ("700/s0", "1500/s0")]
    todo = [p for p in pairs if ("stability", f"{p[0]} vs {p[1]}", None, None, None, None, None) not in done]
    if not todo:
        return
    model, tokenizer = obce.load_model(device="cpu")
    tables = {}
    for name, (n, seed) in samples.items():
        start = time.perf_counter()
        tables[name] = obce.analyze(model, tokenizer=tokenizer, n_sentences=n, seed=seed, progress=False)
        log(f"stability: analysed {name} in {time.perf_counter() - start:.0f} s")
    shape = EncoderShape.from_model(model)
    # From layer 3, the layers a plan prunes (in layer 1, [CLS] query/key/value are the same for every sentence).
    plan = uniform_plan(shape.num_layers, 50, start_layer=3)
    for a, b in todo:
        row = {"phase": "stability", "score": f"{a} vs {b}", "seed": None, "fraction": None, "fold": None}
        row["steps"] = None
        for score in ("lam", "std"):
            sel_a = select_neurons(plan, tables[a], shape, score=score)
            sel_b = select_neurons(plan, tables[b], shape, score=score)
            for part in ("qk", "value", "intermediate"):
                overlaps = [
                    len(np.intersect1d(getattr(x, part), getattr(y, part)))
                    / len(np.union1d(getattr(x, part), getattr(y, part)))
                    for x, y in zip(sel_a[2:], sel_b[2:], strict=True)
                ]
                row[f"{score}_{part}"] = float(np.mean(overlaps))
                row[f"{score}_{part}_per_layer"] = [round(o, 4) for o in overlaps]
        append_result(row)
        done.add(key(row))
        log(f"stability {a} vs {b}: λ intermediate {row['lam_intermediate']:.3f}")


# --------------------------------------------------------------------------------------------------
# Report


def cell(values: pd.Series, digits: int = 1, scale: float = 100.0) -> str:
    v = values.to_numpy(dtype=float) * scale
    if len(v) == 0:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def acc_cell(rows: pd.DataFrame) -> str:
    se = 100 * rows["accuracy_se"].mean()
    return f"{cell(rows['accuracy'])} (SE {se:.1f})" if len(rows) else "–"


def report(args_line: str, finetune_steps: int | None, expected: dict[str, int]) -> str:
    results = read_results()
    original = next(
        (r for r in results if r["phase"] == "original" and r.get("original_steps") == finetune_steps), None
    )
    rows = pd.DataFrame([r for r in results if r["phase"] != "original"])
    lines = [
        "# Neuron scores and bias folding: λ against simpler scores at the same size",
        "",
        f"Command: `{args_line}` (resumable: the same command skips what is done)  ",
        f"Machine: {original['machine'] if original else 'not recorded'}, shared with other jobs, CPU only.  ",
        (
            "Model: built-in all-MiniLM-L6-v2, fine-tuned once on `polarity` (seed 0, "
            f"{'3 epochs' if finetune_steps is None else f'{finetune_steps} steps'}) = the original.  "
        ),
    ]
    if original:
        lines.append(
            f"Original fine-tuned: test accuracy {100 * original['accuracy']:.1f} (SE "
            f"{100 * original['accuracy_se']:.1f}), ROC AUC {100 * original['auc']:.1f}, n = {original['n_test']}."
        )
    lines += ["", (__doc__ or "").split("\n\n", 2)[2].strip(), ""]
    if (RESULTS / "ablation_notes.md").is_file():
        lines += ["What the numbers say, and their caveats: [ablation_notes.md](ablation_notes.md) (by hand).", ""]
    if rows.empty:
        return "\n".join([*lines, "No configuration has finished yet.", ""])
    done = {p: int((rows["phase"] == p).sum()) for p in expected}
    lines.append(f"Configurations finished: {done} of {expected}.")
    if done != expected:
        lines.append(
            "**Partial run**: every finished configuration is reported below; the rest have not run yet. "
            "Running the same command again resumes where this stopped."
        )
    lines.append("")

    ret = rows[rows["phase"] == "retention"]
    if not ret.empty:
        lines += [
            "## 1. Retention (no training after compression)",
            "",
            (
                "One table per measure, a row per score and a column per folding. Accuracy and AUC on the 400 test "
                "sentences, KL averaged over them, cosine over 400 held-out Wikipedia sentences. `x ± s`: mean ± std "
                "over the random score's seeds. The KL and cosine means have standard errors of about 0.01 "
                "(`kl_se`, `cosine_se` in the JSON lines); agreement with the original's predictions is there too."
            ),
            "",
        ]
        measures = {
            "test accuracy, % (SE from the test-set size)": acc_cell,
            "ROC AUC, % (threshold-free: a classifier whose decision threshold moved keeps its AUC)": lambda r: cell(
                r["auc"]
            ),
            "KL(original ‖ compressed), nats": lambda r: cell(r["kl"], 3, 1),
            "cosine of mean-pooled embeddings": lambda r: cell(r["cosine"], 3, 1),
        }
        for fraction in sorted(ret["fraction"].unique(), reverse=True):
            part = ret[ret["fraction"] == fraction]
            kept = ", ".join(
                f"{score} {100 * part[part['score'] == score]['encoder_fraction'].mean():.2f}"
                for score in SCORES
                if (part["score"] == score).any()
            )
            lines += [f"### {fraction:.0%} of the encoder", "", f"Encoder parameters kept (%): {kept}.", ""]
            for title, show in measures.items():
                lines += [f"**{title}**", "", "| score | " + " | ".join(FOLDS) + " |", "|---" * (1 + len(FOLDS)) + "|"]
                for score in SCORES:
                    s = part[part["score"] == score]
                    if not s.empty:
                        lines.append(f"| {score} | " + " | ".join(show(s[s["fold"] == f]) for f in FOLDS) + " |")
                lines.append("")

    stab = rows[rows["phase"] == "stability"]
    if not stab.empty:
        lines += [
            "## 2. Corpus stability of the kept sets (pretrained MiniLM, P50 in layers 3-6)",
            "",
            (
                "Jaccard overlap |A ∩ B| / |A ∪ B| of the neurons kept at P50, mean over layers 3-6 "
                "(two random halves would give about 0.33)."
            ),
            "",
            "| samples | λ query/key | λ value | λ intermediate | std query/key | std value | std intermediate |",
            "|---|---|---|---|---|---|---|",
        ]
        for _, r in stab.iterrows():
            lines.append(
                f"| {r['score']} | "
                + " | ".join(f"{r[f'{s}_{p}']:.3f}" for s in ("lam", "std") for p in ("qk", "value", "intermediate"))
                + " |"
            )
        lines.append("")

    rec = rows[rows["phase"] == "recovery"]
    if not rec.empty:
        steps = sorted(int(x) for x in rec["steps"].unique())
        lines += [
            f"## 3. Recovery: {', '.join(map(str, steps))} fine-tuning steps after compression",
            "",
            (
                "`x ± s`: mean ± std over the fine-tune seeds (n runs in brackets); SE as above, per run. "
                "Constant: runs that predict one class for 95 % or more of the test sentences."
            ),
            "",
        ]
        for fold in RECOVERY_FOLDS:
            part = rec[rec["fold"] == fold]
            if part.empty:
                continue
            fractions = args_fractions(part)
            lines += [
                f"### Folding {fold}",
                "",
                "| score | "
                + " | ".join(f"acc {f:.0%} | AUC {f:.0%} | KL {f:.0%} | cos {f:.0%} | constant" for f in fractions)
                + " |",
                "|---" * (1 + 5 * len(fractions)) + "|",
            ]
            for score in SCORES:
                s = part[part["score"] == score]
                if s.empty:
                    continue
                cells = []
                for fraction in fractions:
                    r = s[s["fraction"] == fraction]
                    constant = int(((r["positive_rate"] >= 0.95) | (r["positive_rate"] <= 0.05)).sum())
                    cells += [
                        f"{acc_cell(r)} [{len(r)}]",
                        cell(r["auc"]),
                        cell(r["kl"], 3, 1),
                        cell(r["cosine"], 3, 1),
                        f"{constant} of {len(r)}",
                    ]
                lines.append(f"| {score} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def args_fractions(rows: pd.DataFrame) -> list[float]:
    return sorted(rows["fraction"].unique(), reverse=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.6, 0.45])
    p.add_argument("--recovery-steps", type=int, default=50)
    p.add_argument(
        "--finetune-steps", type=int, default=None, help="steps of the original's fine-tune (default: 3 epochs)"
    )
    p.add_argument("--work", type=Path, default=Path("runs/ablate"))
    p.add_argument("--report", action="store_true", help="only rewrite the Markdown report")
    args = p.parse_args()
    args_line = "python benchmarks/ablate.py " + " ".join(a for a in sys.argv[1:] if a != "--report")
    RESULTS.mkdir(exist_ok=True)

    def write_report() -> None:
        n_scores = len(SCORES) - 1 + len(args.seeds)  # one random score per seed
        expected = {
            "retention": len(args.fractions) * n_scores * len(FOLDS),
            "stability": 4,
            "recovery": len(args.seeds) * len(args.fractions) * len(SCORES) * len(RECOVERY_FOLDS),
        }
        atomic_write_text(MARKDOWN, report(args_line.strip(), args.finetune_steps, expected) + "\n", overwrite=True)

    if args.report:
        write_report()
        return
    torch.set_num_threads(os.cpu_count() or 1)
    done = {key(r) for r in read_results()}
    log("fine-tuning the original (or reading the finished run)")
    model, tokenizer, _ = finetuned_original(args.work, args.finetune_steps)
    task = obce.load_task(TASK)
    table = scored_table(model, tokenizer, task, args.seeds, args.work / f"scores-{args.finetune_steps or 'default'}")
    log("scores ready")
    data = {
        "test_texts": task.texts("test")[0],
        "test_labels": torch.as_tensor(task.labels("test")),
        "held_out": held_out_sentences(table.sentences),
    }
    data["ref_logits"] = run_outputs(model, tokenizer, data["test_texts"], pooled=False)
    data["ref_embeddings"] = run_outputs(model, tokenizer, data["held_out"], pooled=True)
    original = {"phase": "original", "original_steps": args.finetune_steps, **measure(model, tokenizer, data)}
    original["machine"] = machine.summary(machine.describe())
    if key(original) not in done:
        append_result(original)
    log(f"original: acc {original['accuracy']:.4f}")

    measure_missing(model, tokenizer, table, data, args)
    retention(model, tokenizer, table, data, args, done, write_report)
    stability(done)
    write_report()
    recovery(model, tokenizer, table, data, args, done, write_report)
    log("all done")


if __name__ == "__main__":
    main()
