#!/usr/bin/env python3
"""Tables of the benchmarks pipeline (docs/benchmarks-pipeline.sh) from its results folder.

    python3 docs/benchmarks-table.py RES > tables.md

Reads RES/ppl-*.json, RES/tasks-*.json and RES/policy-*.json (lm-eval-shaped, as `dmc eval
--json` writes them) and prints three Markdown tables: accuracy ± stderr per task with the
held-out perplexity, the real CR each row reached on each task (`cr,none`), and the perplexity
comparison at matched real CR. A missing file leaves "–" in its cells; a task scored on fewer
items than its split is marked with *. Only the standard library is used.
"""
import json
import os
import sys

RES = sys.argv[1] if len(sys.argv) > 1 else "runs/benchmarks/results"
TASKS = "piqa hellaswag arc_easy arc_challenge winogrande boolq lambada_openai openbookqa copa siqa mmlu".split()
POLICIES = "window streaming h2o tova".split()


def load(name):
    p = os.path.join(RES, name)
    return json.load(open(p)) if os.path.exists(p) else None


def rows():
    """(label, ppl file, {task: (result, n-samples)})."""
    out = []

    def add(label, ppl, task_files):
        tasks = {}
        for f in task_files:
            d = load(f)
            if not d:
                continue
            for t, r in d["results"].items():
                tasks[t] = (r, d.get("n-samples", {}).get(t, {}))
        out.append((label, load(ppl), tasks))

    add("original, vanilla", "ppl-original.json", ["tasks-original.json"])
    add("plain control, vanilla", "ppl-control.json", ["tasks-control.json"])
    for cr in (2, 4):
        add(f"DMC CR {cr}", f"ppl-cr{cr}.json", [f"tasks-cr{cr}.json"])
    for cr in (2, 4):
        for p in POLICIES:
            add(f"original, {p} at CR {cr}", f"policy-{p}-cr{cr}-ppl.json",
                [f"policy-{p}-cr{cr}-{t}.json" for t in TASKS])
    return out


def cell(r, ns):
    if r is None:
        return "–"
    acc, se = r.get("acc,none"), r.get("acc_stderr,none")
    if acc is None:
        return "–"
    star = "\\*" if ns and ns.get("effective", 0) < ns.get("original", 0) else ""
    return f"{acc:.3f}±{se:.3f}{star}"


def main():
    rs = rows()
    print("| model, cache | held-out ppl | real CR (ppl) | " + " | ".join(TASKS) + " |")
    print("|---" * (3 + len(TASKS)) + "|")
    for label, ppl, tasks in rs:
        p = f"{ppl['ppl']:.4f}" if ppl else "–"
        c = f"{ppl.get('cr', 1):.2f}×" if ppl else "–"
        cells = [cell(*tasks.get(t, (None, None))) for t in TASKS]
        print(f"| {label} | {p} | {c} | " + " | ".join(cells) + " |")

    print()
    print("Real CR per task (`cr,none`: tokens over slots per layer and head of every scored sequence):")
    print()
    print("| model, cache | " + " | ".join(TASKS) + " |")
    print("|---" * (1 + len(TASKS)) + "|")
    for label, _, tasks in rs:
        if "vanilla" in label:
            continue
        cells = []
        for t in TASKS:
            r = tasks.get(t, (None, None))[0]
            cells.append(f"{r['cr,none']:.2f}×" if r and "cr,none" in r else "–")
        print(f"| {label} | " + " | ".join(cells) + " |")

    print()
    orig = load("ppl-original.json")
    ctrl = load("ppl-control.json")
    if not orig:
        return
    pct = lambda a, b: f"{100 * (a / b - 1):+.2f}%"
    print("| CR | DMC vs original | DMC vs its plain control | " + " | ".join(f"{p} vs original" for p in POLICIES) + " |")
    print("|---" * (3 + len(POLICIES)) + "|")
    for cr in (2, 4):
        dmc = load(f"ppl-cr{cr}.json")
        if not dmc:
            continue
        cells = [f"{pct(dmc['ppl'], orig['ppl'])} ({dmc['ppl']:.4f} at {dmc['cr']:.2f}×)",
                 pct(dmc["ppl"], ctrl["ppl"]) if ctrl else "–"]
        for p in POLICIES:
            q = load(f"policy-{p}-cr{cr}-ppl.json")
            cells.append(f"{pct(q['ppl'], orig['ppl'])} ({q['ppl']:.4f} at {q['cr']:.2f}×)" if q else "–")
        print(f"| {cr} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
