#!/usr/bin/env python3
"""Tables of the retrofit-at-scale pipeline (docs/scale-pipeline.sh) from its results folder.

    python3 docs/scale-summary.py RES [SHARED] > summary.md

SHARED is a second results folder to read runs' metrics.jsonl from when RES lacks them (a slice
whose base and control are bit-identical re-runs of another slice's).

Reads the eval/policy/decode/tasks JSONs and the runs' metrics the pipeline collected in RES and
prints Markdown tables. It also writes RES/compare-subset.json (the --compare shape that
`dmc eval plot` reads): every method on the comparison subset, GQA at its KV-head reduction
(its cache holds 4/N heads' worth, so its compression is 4/N although its cache is vanilla).
Only the standard library is used.
"""
import json
import lzma
import os
import statistics
import sys

RES = sys.argv[1] if len(sys.argv) > 1 else "runs/scale/results"
BASE_KV_HEADS = int(os.environ.get("BASE_KV_HEADS", "4"))


def load(name):
    p = os.path.join(RES, name)
    return json.load(open(p)) if os.path.exists(p) else None


def metrics(run):
    # a slice that shares another slice's (bit-identical) runs reads their metrics there;
    # committed results keep them xz-compressed
    for d in [RES] + sys.argv[2:3]:
        for ext, opener in ((".jsonl", open), (".jsonl.xz", lzma.open)):
            p = os.path.join(d, f"metrics-{run}{ext}")
            if os.path.exists(p):
                with opener(p, "rt") as f:
                    return [json.loads(line) for line in f if line.strip()]
    return []


def pct(x, ref):
    return f"{100 * (x / ref - 1):+.1f}%"


models = ["base", "control"] + [m for m in ("cr2", "cr4", "cr8") if load(f"eval-{m}-heldout.json")] + \
    [m for m in ("gqa-kv2", "gqa-kv1") if load(f"eval-{m}-heldout.json")] + \
    [m for m in ("cr2-export", "cr4-export", "cr8-export") if load(f"eval-{m}-heldout.json")]  # CALIBRATE=1
ev = {m: {d: load(f"eval-{m}-{d}.json") for d in ("heldout", "subset", "wikitext", "tinystories")} for m in models}


def kv_cr(m):
    if m.startswith("gqa-kv"):
        return BASE_KV_HEADS / int(m[len("gqa-kv"):])
    return ev[m]["heldout"]["cr"]


out = []
p = out.append

# The base model.
mb = metrics("base")
if mb:
    steady = [r for r in mb if r["step"] > 10]
    toks = sum(r["tokens"] for r in mb)
    p("## Base model\n")
    p("| pre-training tokens | steps | tokens/s (median, step > 10) | MFU (median; peak 989 TFLOP/s dense bf16) | final train loss |")
    p("|---|---|---|---|---|")
    p(f"| {toks:,} | {mb[-1]['step']} | {statistics.median(r['tokens_per_s'] for r in steady):,.0f} | "
      f"{100 * statistics.median(r['mfu'] for r in steady):.1f}% | {mb[-1]['lm_loss']:.3f} |\n")

# Perplexity of every model.
p("## Perplexity with the real cache (sequences of the training length)\n")
p("| model | real CR (held-out) | KV cache vs base | held-out ppl | vs control | wikitext-2 | vs control | TinyStories valid | vs control |")
p("|---|---|---|---|---|---|---|---|---|")
ctl = ev["control"]
for m in models:
    e = ev[m]
    row = [m, f"{e['heldout']['cr']:.2f}×", f"1/{kv_cr(m):.2f}"]
    for d in ("heldout", "wikitext", "tinystories"):
        row += [f"{e[d]['ppl']:.2f}", pct(e[d]["ppl"], ctl[d]["ppl"]) if m != "control" else "0"]
    p("| " + " | ".join(row) + " |")
p("")

# Relaxed training against hard-decision inference: the LM loss over the last 100 steps (the
# same batches for every run) and, where the runs logged it, the hard held-out loss.
runs = [m for m in models if m != "base" and metrics(m)]
if runs:
    import math

    def tail_mean(m, key, n):
        xs = [r[key] for r in metrics(m) if r.get(key) is not None][-n:]
        return sum(xs) / len(xs) if xs else None

    c_train, c_hard = tail_mean("control", "lm_loss", 100), tail_mean("control", "eval_lm_loss", 1)
    p("## Relaxed training against inference (perplexity ratios to the control)\n")
    p("| model | training LM loss, last 100 steps | hard-decision held-out loss (eval_every, last) | real cache, held-out |")
    p("|---|---|---|---|")
    for m in runs:
        tr, hd = tail_mean(m, "lm_loss", 100), tail_mean(m, "eval_lm_loss", 1)
        tr_s = f"{100 * (math.exp(tr - c_train) - 1):+.1f}%" if m != "control" else "0"
        hd_s = "-" if hd is None or c_hard is None else (f"{100 * (math.exp(hd - c_hard) - 1):+.1f}%" if m != "control" else "0")
        p(f"| {m} | {tr_s} | {hd_s} | {pct(ev[m]['heldout']['ppl'], ctl['heldout']['ppl']) if m != 'control' else '0'} |")
    p("")

# DMC against GQA and the training-free policies on the same subset, at matched compression.
sub_ctl = ctl["subset"]["ppl"]
p(f"## At matched compression, on the same {ctl['subset']['tokens']:,} held-out tokens (control {sub_ctl:.3f})\n")
p("| target CR | DMC real CR | DMC ppl | DMC vs control | goal | GQA (same KV size) | best training-free policy at DMC's real CR | DMC increase / best policy's | all policies |")
p("|---|---|---|---|---|---|---|---|---|")
goals = {2: 0.01, 4: 0.03, 8: 0.08}
rows = [{"cache": "vanilla", "ppl": sub_ctl, "real_cr": 1.0}]
for cr in (2, 4, 8):
    d = ev.get(f"cr{cr}", {}).get("subset")
    if not d:
        continue
    inc = d["ppl"] / sub_ctl - 1
    pols = {}
    for pol in ("window", "streaming", "h2o", "tova"):
        r = load(f"policy-{pol}-cr{cr}.json")
        if r:
            pols[pol] = r
            rows.append({"cache": pol, "ppl": r["ppl"], "real_cr": r["cr"]})
    rows.append({"cache": "dmc", "ppl": d["ppl"], "real_cr": d["cr"]})
    best = min(pols.items(), key=lambda kv: kv[1]["ppl"]) if pols else None
    gqa = ev.get(f"gqa-kv{BASE_KV_HEADS // cr}") if BASE_KV_HEADS % cr == 0 and BASE_KV_HEADS // cr >= 1 else None
    gqa_s = "-"
    if gqa:
        g = gqa["subset"]["ppl"]
        gqa_s = f"{g:.3f} ({pct(g, sub_ctl)}): DMC {'better' if d['ppl'] < g else 'worse'}"
        rows.append({"cache": "gqa", "ppl": g, "real_cr": float(cr)})
    best_s, ratio_s = "-", "-"
    if best:
        binc = best[1]["ppl"] / sub_ctl - 1
        best_s = f"{best[0]} {best[1]['ppl']:.3f} ({pct(best[1]['ppl'], sub_ctl)}) at {best[1]['cr']:.2f}×"
        ratio_s = f"{inc / binc:.1f}" if binc > 0 else "policy not worse than control"
        ratio_s += " (goal ≤ 0.5)"
    goal = goals[cr]
    met = "met" if inc <= goal else f"unmet by {100 * (inc - goal):.1f} points"
    allp = ", ".join(f"{k} {pct(v['ppl'], sub_ctl)}" for k, v in pols.items())
    p(f"| {cr} | {d['cr']:.2f}× (≥ {0.9 * cr:.1f}: {'yes' if d['cr'] >= 0.9 * cr else 'no'}) | {d['ppl']:.3f} | {pct(d['ppl'], sub_ctl)} | "
      f"≤ +{100 * goal:.0f}%: {met} | {gqa_s} | {best_s} | {ratio_s} | {allp} |")
p("")
with open(os.path.join(RES, "compare-subset.json"), "w") as f:
    json.dump({"model": "control (policies), DMC and GQA retrofits", "rows": rows}, f, indent=1)

# Decode throughput.
dec = [(m, load(f"decode-{m}.json")) for m in ("base", "cr2", "cr4", "cr8")]
dec = [(m, d) for m, d in dec if d]
if dec:
    p("## Decode throughput on the H200 at the largest batch that fits\n")
    p("| model | cache | prompt + gen | batch | real CR | decode tok/s | vs base | ms/step (median) | roofline fraction | prefill tok/s | GPU memory |")
    p("|---|---|---|---|---|---|---|---|---|---|---|")
    base_tok = dec[0][1]["rows"][0]["decode_tok_s"] if dec[0][0] == "base" else None
    for m, d in dec:
        for r in d["rows"]:
            vs = f"{r['decode_tok_s'] / base_tok:.2f}×" if base_tok else "-"
            p(f"| {m} | {r['cr']} | {r['prompt']}+{r['gen']} | {r['batch']} | {r['real_cr']:.2f} | {r['decode_tok_s']:,.0f} | {vs} | "
              f"{r['step_ms_median']:.2f} | {100 * r['frac_of_roofline']:.0f}% | {r['prefill_tok_s']:,.0f} | {r['gpu_mem_gib']:.1f} GiB |")
    p("")

# Downstream tasks.
tk = [(m, load(f"tasks-{m}.json")) for m in models]
tk = [(m, t) for m, t in tk if t]
if tk:
    names = sorted(tk[0][1]["results"])
    p("## Downstream tasks (GPU engine, real caches; first items of each split)\n")
    p("| model | " + " | ".join(names) + " |")
    p("|---|" + "---|" * len(names))
    for m, t in tk:
        cells = []
        for n in names:
            r = t["results"].get(n, {})
            a = r.get("acc,none")
            se = r.get("acc_stderr,none", 0)
            cells.append(f"{a:.3f} ± {se:.3f}" if a is not None else "-")
        p(f"| {m} | " + " | ".join(cells) + " |")
    n = tk[0][1].get("n-samples", {})
    if n:
        p("\nitems per task: " + ", ".join(f"{k} {v.get('effective', v)}" for k, v in sorted(n.items())))
    p("")

print("\n".join(out))
