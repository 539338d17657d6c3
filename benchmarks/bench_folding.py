"""Bias folding on a fine-tuned classifier: test accuracy right after compression, per fold and statistics.

    python benchmarks/bench_folding.py MODEL_DIR [--fraction 0.6] [--task polarity]

MODEL_DIR is a sequence classifier fine-tuned on the task (e.g. a folder written by obce.train.finetune).
λ is computed on the built-in corpus (150 sentences, seed 0), a plan keeps --fraction of the encoder, and
the model is compressed with each bias folding and each source of statistics, then scored on the test split
with no further training.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import obce
from obce.tasks import compute_metrics

CONFIGURATIONS = [("none", "point"), ("mean", "point"), ("mean", "token"), ("mean+std", "point"), ("mean+std", "token")]


def accuracy(model, tokenizer, task, split: str) -> float:
    rows = task.data[split]
    columns = task.text_columns
    predictions = []
    with torch.inference_mode():
        for i in range(0, len(rows), 64):
            batch = rows[i : i + 64]
            texts = [[row[c] for row in batch] for c in columns]
            encoded = tokenizer(*texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            predictions.append(model(**encoded).logits.argmax(-1).numpy())
    labels = np.array([row["label"] for row in rows])
    return compute_metrics(task, np.concatenate(predictions), labels)["accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir")
    p.add_argument("--fraction", type=float, default=0.6)
    p.add_argument("--task", default="polarity")
    args = p.parse_args()
    model = AutoModelForSequenceClassification.from_pretrained(args.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    task = obce.load_task(args.task)
    split = task.report_splits[0]
    table = obce.analyze(model, tokenizer=tokenizer, device="cpu", progress=False)
    plan = obce.target_plan(model, table, args.fraction)
    print(f"| fold | statistics | {split} accuracy |\n|---|---|---|")
    print(f"| (original) | | {100 * accuracy(model, tokenizer, task, split):.2f} |")
    for fold, statistics in CONFIGURATIONS:
        small = obce.prune_model(model, table, plan, fold=fold, statistics=statistics).eval()
        print(f"| {fold} | {statistics} | {100 * accuracy(small, tokenizer, task, split):.2f} |", flush=True)


if __name__ == "__main__":
    main()
