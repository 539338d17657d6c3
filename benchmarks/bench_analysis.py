"""Time the whole analysis: load, sample 150 sentences, one hooked forward pass, λ of every neuron.

Two models: the built-in all-MiniLM-L6-v2 (6 layers, hidden 384) and a BERT-base-sized model
(``BertConfig()``: 12 layers, hidden 768, random weights seeded, with the MiniLM tokenizer, whose
vocabulary is BERT's). The first run's λ of every component is checked against an independent
reference (the largest gap of the sorted outputs, float64), after that run's timing and before the
next; its second model load warms the page cache for the later runs. Each run starts from the files
on disk, so the first run includes one-time costs (imports excepted); times are wall clock.

Results: one JSON line per run (with ``obce.build_info()``, the machine and its load average)
to ``benchmarks/results/analysis_timing.jsonl`` and the table to ``analysis_timing.md``.

Usage::

    python benchmarks/bench_analysis.py                 # both models, 3 runs each
    python benchmarks/bench_analysis.py --models builtin --runs 1 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import machine
import numpy as np
import torch

import obce
import obce.models
from obce._io import atomic_write_text
from obce.importance import analyze

RESULTS = Path(__file__).resolve().parent / "results"
LIMITS_S = {"builtin": 30.0, "bert-base": 60.0}


TOKENIZER: str | None = None  # --tokenizer: a folder with a BERT uncased tokenizer
CORPUS: str | None = None  # --corpus: the corpus to sample


def bert_base(device: str):
    """A randomly initialised BERT-base (seed 0) and the built-in model's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from obce.models import builtin_model_path

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER or builtin_model_path(), local_files_only=True)
    torch.manual_seed(0)
    model = BertModel(BertConfig()).eval().to(device)
    return model, tokenizer


def load(name: str, device: str):
    if name == "builtin":
        return obce.models.load_model(None, device)
    return bert_base(device)


def check_lambda(name: str, table, device: str) -> None:
    """The table's λ must equal the largest gap of each neuron's sorted outputs (the longest edge
    of its 1-D minimum spanning tree), from a separate forward pass over the same sentences."""
    from obce.activations import compute_activations

    model, tokenizer = load(name, device)
    acts = compute_activations(model, tokenizer, table.sentences, progress=False)
    for component in acts.components:
        for layer in range(1, acts.n_layers + 1):
            values = acts.get(layer, component).double().cpu().numpy()
            expected = np.diff(np.sort(values, axis=0), axis=0).max(axis=0)
            np.testing.assert_allclose(
                table.lam(layer, component), expected, rtol=1e-5, atol=1e-6, err_msg=f"layer {layer} {component}"
            )


def run_once(name: str, device: str) -> dict:
    cpu_start = time.process_time()
    start = time.perf_counter()
    if name == "builtin":
        table = analyze(None, CORPUS, device=device, progress=False)
        load_extra = 0.0
    else:
        model, tokenizer = bert_base(device)
        load_extra = time.perf_counter() - start
        table = analyze(model, CORPUS, tokenizer=tokenizer, device=device, progress=False)
        table.settings["model"] = "bert-base"
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    t = table.settings["timings_s"]
    load = t["load"] + load_extra
    return {
        "model": name,
        "device": device,
        "neurons": len(table),
        "n_sentences": table.settings["n_sentences"],
        "n_tokens": table.settings["n_tokens"],
        "total_s": round(total, 3),
        "cpu_s": round(cpu, 3),
        "forward_s": t["forward"],
        "kernel_s": t["kernel"],
        "rest_s": round(total - t["forward"] - t["kernel"], 3),
        "load_s": round(load, 3),
        "corpus_s": t["corpus"],
        "table_s": round(t["importance"] - t["kernel"], 3),
        "limit_s": LIMITS_S[name],
        "_table": table,
    }


def markdown(rows: list[dict], command: str, info: dict) -> str:
    lines = [
        "# Whole-analysis timing",
        "",
        "Load the model, sample 150 sentences of the built-in Wikipedia corpus (seed 0), one hooked forward",
        "pass per batch of 32 capturing all six components of every layer, λ of every neuron, the table.",
        "`forward` is the hooked forward pass (with token statistics); `kernel` is `obce.fast_death_radii`;",
        "`rest` is loading, corpus sampling and the table's statistics. Wall-clock seconds; `cpu s` is the",
        "process's CPU time (all threads), which other work on a shared machine does not inflate.",
        "",
        f"Reproduce: `{command}`",
        "",
        f"Machine: {machine.summary(info)}; obce build: {json.dumps(info['build_info'])}",
        "",
        "| model | device | run | neurons | tokens | total s | forward s | kernel s | rest s (load / corpus / table) | "
        "cpu s | limit s | 1-min load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['device']} | {r['run']} | {r['neurons']} | {r['n_tokens']} | {r['total_s']:.2f} | "
            f"{r['forward_s']:.2f} | {r['kernel_s']:.3f} | {r['rest_s']:.2f} ({r['load_s']:.2f} / "
            f"{r['corpus_s']:.2f} / {r['table_s']:.2f}) | {r['cpu_s']:.1f} | {r['limit_s']:.0f} | "
            f"{r['load_average_1m']:.2f} |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(LIMITS_S), default=["builtin", "bert-base"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default="analysis_timing", help="results file stem in benchmarks/results")
    parser.add_argument("--tokenizer", help="tokenizer folder for bert-base (default: the built-in model's)")
    parser.add_argument("--corpus", help="corpus to sample (default: the built-in Wikipedia sample)")
    args = parser.parse_args()
    global TOKENIZER, CORPUS
    TOKENIZER, CORPUS = args.tokenizer, args.corpus

    info = machine.describe(gpu=args.device.startswith("cuda"))
    rows = []
    for name in args.models:
        for run in range(1, args.runs + 1):
            row = run_once(name, args.device)
            table = row.pop("_table")
            if run == 1:
                check_lambda(name, table, args.device)
            row.update(run=run, load_average_1m=os.getloadavg()[0])
            rows.append(row)
            print(json.dumps({**row, "machine": info}), flush=True)

    RESULTS.mkdir(exist_ok=True)
    command = "python benchmarks/bench_analysis.py " + " ".join(
        f"--{k} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items() if v is not None
    )
    jsonl = "".join(json.dumps({**r, "machine": info}) + "\n" for r in rows)
    atomic_write_text(RESULTS / f"{args.name}.jsonl", jsonl, overwrite=True)
    atomic_write_text(RESULTS / f"{args.name}.md", markdown(rows, command, info), overwrite=True)
    for name in args.models:
        best = min(r["total_s"] for r in rows if r["model"] == name)
        verdict = "within" if best <= LIMITS_S[name] else "OVER"
        print(f"{name}: best {best:.2f} s, {verdict} the {LIMITS_S[name]:.0f} s target")


if __name__ == "__main__":
    main()
