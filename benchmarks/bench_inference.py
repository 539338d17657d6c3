"""CPU inference time of compressed vs original encoders, and how well each folding choice keeps the outputs.

Two measurements:

1. ``fold``: all-MiniLM-L6-v2 (built in) is analysed on 150 sentences of the built-in Wikipedia sample, pruned
   with a plan, and compared with the original on held-out sentences (not in the sample): mean cosine similarity
   of mean-pooled embeddings, for every ``fold`` x ``statistics`` choice of :func:`obce.prune.prune_model`.
2. ``speed``: forward time at batch 32 x 128 tokens of the original and the compressed model (unequal heads
   computed "padded" and "loop"), for MiniLM pruned as in (1) and for a BERT-base-sized model (random weights,
   random λ: a percentile level fixes the counts) pruned by the paper's BERT-base plan. The FLOP ratio counts
   the multiply-adds of the encoder's linear layers and attention products.

Each result is printed as one JSON line (with ``obce.build_info()`` and the CPU) as it is measured; at the end the
lines go to ``benchmarks/results/<name>.jsonl`` and the tables, with the command and the machine, to ``<name>.md``
(``inference_speed`` by default; read in ``inference_speed_notes.md``).

Usage::

    python benchmarks/bench_inference.py                 # both, as in benchmarks/results/inference_speed.md
    python benchmarks/bench_inference.py --only speed --repeats 7 --name inference_speed_only
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import machine
from transformers import BertConfig, BertModel

from obce._io import atomic_write_text
from obce.corpus import sample_sentences
from obce.importance import ImportanceTable, analyze
from obce.models import COMPONENTS, encoder_layers, load_model
from obce.plans import dry_run, paper_plan, uniform_plan
from obce.prune import FOLD_MODES, STATISTICS, prune_model

MINILM_LEVEL = 50
RESULTS = Path(__file__).resolve().parent / "results"


def emit(record: dict) -> dict:
    print(json.dumps(record, default=str), flush=True)
    return record


def random_table(model, seed: int = 0) -> ImportanceTable:
    """Random λ and statistics: enough for timing, where only the counts a level keeps matter."""
    rng = np.random.default_rng(seed)
    frames = []
    for layer in encoder_layers(model):
        for component in COMPONENTS:
            n = layer.width(component)
            frames.append(
                pd.DataFrame(
                    {
                        "layer": layer.index + 1,
                        "component": component,
                        "neuron": np.arange(n),
                        "lam": rng.uniform(size=n),
                        "mean": np.zeros(n),
                        "std": np.zeros(n),
                        "token_mean": np.zeros(n),
                        "token_std": np.zeros(n),
                    }
                )
            )
    return ImportanceTable(pd.concat(frames, ignore_index=True), settings={"random": seed})


@torch.inference_mode()
def mean_pooled(model, tokenizer, sentences, batch_size=64) -> torch.Tensor:
    out = []
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer(
            sentences[i : i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(out)


def fold_comparison(n_held_out: int) -> list[dict]:
    model, tokenizer = load_model(None, "cpu")
    table = analyze(model, tokenizer=tokenizer, n_sentences=150, seed=0, device="cpu", progress=False)
    seen = set(table.sentences)
    held_out = [s for s in sample_sentences(None, n=n_held_out + 150, seed=1) if s not in seen][:n_held_out]
    reference = mean_pooled(model, tokenizer, held_out)
    n_layers = len(encoder_layers(model))
    # Folding only concerns value and intermediate; the last plan also prunes query/key.
    plans = [
        uniform_plan(n_layers, 10, components=("value", "intermediate")),
        uniform_plan(n_layers, 30, components=("value", "intermediate")),
        uniform_plan(n_layers, MINILM_LEVEL),
    ]
    records = []
    for plan in plans:
        fraction = dry_run(model, table, plan).model_fraction
        for fold in FOLD_MODES:
            # Only the mean folds read the statistics (per token or per point); none and linear have one row.
            with_statistics = fold in ("mean", "mean+std")
            for source in STATISTICS if with_statistics else ("token",):
                pruned = prune_model(
                    model, table, plan, fold=fold, statistics=source, tokenizer=tokenizer, progress=False
                ).eval()
                cosine = torch.nn.functional.cosine_similarity(mean_pooled(pruned, tokenizer, held_out), reference)
                records.append(
                    emit(
                        {
                            "bench": "fold",
                            "model": "all-MiniLM-L6-v2",
                            "plan": plan.notes,
                            "model_fraction": round(fraction, 4),
                            "fold": fold,
                            "statistics": source if with_statistics else "-",
                            "held_out": len(held_out),
                            "cosine_mean": round(float(cosine.mean()), 4),
                            "cosine_min": round(float(cosine.min()), 4),
                        }
                    )
                )
    return records


def encoder_flops(model, tokens: int) -> float:
    """Multiply-adds x 2 of the encoder for one sequence: linear layers plus q.k and attention x v products."""
    total = 0
    for layer in encoder_layers(model):
        for component in COMPONENTS:
            linear = layer.linear(component)
            total += 2 * tokens * linear.in_features * linear.out_features
        total += 2 * tokens * tokens * (layer.query.out_features + layer.value.out_features)
    return float(total)


@torch.inference_mode()
def time_forwards(models: list, batch: dict, repeats: int) -> list[float]:
    """Best forward time of each model, timed in turns so that background load hits all of them alike.

    The minimum, not the median: on a shared machine other work only ever adds time.
    """
    for model in models:
        model(**batch)  # warm-up
    times = [[] for _ in models]
    for _ in range(repeats):
        for model, bucket in zip(models, times, strict=True):
            start = time.perf_counter()
            model(**batch)
            bucket.append(time.perf_counter() - start)
    return [min(bucket) for bucket in times]


def speed(repeats: int, batch_size: int, tokens: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    records = []
    minilm, _ = load_model(None, "cpu")
    torch.manual_seed(0)
    bert_base = BertModel(BertConfig()).eval()
    cases = [
        ("all-MiniLM-L6-v2", minilm, uniform_plan(len(encoder_layers(minilm)), MINILM_LEVEL)),
        ("BERT-base (random weights)", bert_base, paper_plan("bert-base")),
    ]
    for name, model, plan in cases:
        table = random_table(model)
        ids = torch.randint(1000, model.config.vocab_size, (batch_size, tokens), generator=generator)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        modes = ("padded", "loop")
        pruned = {mode: prune_model(model, table, plan, attention=mode).eval() for mode in modes}
        with torch.inference_mode():
            outputs = [pruned[mode](**batch).last_hidden_state for mode in modes]
        if not all(torch.isfinite(o).all() for o in outputs) or not torch.allclose(*outputs, atol=1e-4):
            raise RuntimeError(f"{name}: padded and loop heads disagree or produce non-finite outputs")
        base_time, *mode_times = time_forwards([model, *pruned.values()], batch, repeats)
        base_flops = encoder_flops(model, tokens)
        for attention, t in zip(modes, mode_times, strict=True):
            flop_ratio = base_flops / encoder_flops(pruned[attention], tokens)
            records.append(
                emit(
                    {
                        "bench": "speed",
                        "model": name,
                        "plan": plan.name,
                        "attention": attention,
                        "batch": batch_size,
                        "tokens": tokens,
                        "repeats": repeats,
                        "params_original": sum(p.numel() for p in model.parameters()),
                        "params_compressed": sum(p.numel() for p in pruned[attention].parameters()),
                        "original_s": round(base_time, 4),
                        "compressed_s": round(t, 4),
                        "speedup": round(base_time / t, 3),
                        "flop_ratio": round(flop_ratio, 3),
                        "speedup_over_flop_ratio": round(base_time / t / flop_ratio, 3),
                        "machine": machine.describe(),
                    }
                )
            )
    return records


FOLD_METHOD = (
    "all-MiniLM-L6-v2, importance from 150 sentences of the built-in Wikipedia sample (seed 0, [CLS] points); "
    "{held_out} held-out sentences (seed 1, none of the 150); mean and smallest cosine similarity between the "
    "mean-pooled embeddings of the compressed and the original model, no fine-tuning. Only the mean folds read "
    "the statistics (`token`: over every real token, `point`: at [CLS]); `none` and `linear` have one row."
)
SPEED_METHOD = (
    "Forward passes at batch {batch} x {tokens} tokens on the CPU. The original and its compressed models are "
    "timed in turns (original, padded, loop, original, ...) and the best of {repeats} passes is kept: other work "
    "on a shared machine only ever adds time. The FLOP ratio counts the encoder's multiply-adds (linear layers, "
    "`q·k` and `attention·v` products, useful dimensions only) of the original over the compressed model. "
    f"MiniLM is pruned at P{MINILM_LEVEL} for query/key, value and intermediate from layer 3 on; BERT-base "
    "(random weights, random λ: a percentile level fixes the counts) by the paper's BERT-base plan. `heads`: "
    "the unequal heads computed one call per head (`loop`, the default) or in one padded call (`padded`)."
)


def markdown(fold_records: list[dict], speed_records: list[dict], args, info: dict) -> str:
    lines = [
        "# Compressed encoders: bias folding and inference speed",
        "",
        f"Reproduce: `{shlex.join(['python', 'benchmarks/bench_inference.py', *sys.argv[1:]])}`",
        "",
        f"Machine: {machine.summary(info)}; {datetime.date.today()}, load average (1 min) "
        f"{info['load_average_1m']:.2f} at the start.",
        "",
    ]
    if fold_records:
        lines += [
            "## Bias folding: which choice keeps the outputs closest",
            "",
            FOLD_METHOD.format(held_out=fold_records[0]["held_out"]),
            "",
            "| plan | params kept | fold | statistics | mean cosine | min cosine |",
            "|---|---|---|---|---|---|",
            *(
                f"| {r['plan']} | {r['model_fraction']:.1%} | {r['fold']} | {r['statistics']} | "
                f"{r['cosine_mean']:.4f} | {r['cosine_min']:.4f} |"
                for r in fold_records
            ),
            "",
        ]
    if speed_records:
        lines += [
            "## Speed",
            "",
            SPEED_METHOD.format(batch=args.batch, tokens=args.tokens, repeats=args.repeats),
            "",
            "| model | plan | heads | params kept | original (s) | compressed (s) | speed-up | FLOP ratio "
            "| speed-up / FLOP ratio |",
            "|---|---|---|---|---|---|---|---|---|",
            *(
                f"| {r['model']} | {r['plan']} | {r['attention']} | "
                f"{r['params_compressed'] / r['params_original']:.1%} | {r['original_s']:.3f} | "
                f"{r['compressed_s']:.3f} | {r['speedup']:.2f} | {r['flop_ratio']:.2f} | "
                f"{r['speedup_over_flop_ratio']:.2f} |"
                for r in speed_records
            ),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("fold", "speed"), help="run one of the two measurements")
    parser.add_argument("--repeats", type=int, default=7, help="timed forward passes (the best is reported)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--held-out", type=int, default=200, help="held-out sentences for the fold comparison")
    parser.add_argument("--name", default="inference_speed", help="results file stem in benchmarks/results")
    args = parser.parse_args()
    info = machine.describe()
    torch.manual_seed(0)
    fold_records = fold_comparison(args.held_out) if args.only in (None, "fold") else []
    speed_records = speed(args.repeats, args.batch, args.tokens) if args.only in (None, "speed") else []
    text = markdown(fold_records, speed_records, args, info)
    atomic_write_text(
        RESULTS / f"{args.name}.jsonl",
        "".join(json.dumps({"machine": info, **r}, default=str) + "\n" for r in fold_records + speed_records),
        overwrite=True,
    )
    atomic_write_text(RESULTS / f"{args.name}.md", text, overwrite=True)
    print()
    print(text)


if __name__ == "__main__":
    main()
