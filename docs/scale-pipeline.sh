#!/usr/bin/env bash
# The retrofit-at-scale pipeline (issue 15; docs/scale-pipeline.md explains each step):
# prepare the corpora → pre-train a base Llama from scratch → DMC retrofits at CR 2, 4, 8 and
# a plain control with the same tokens → GQA uptraining at matched KV size → evaluation
# (held-out perplexity with the real caches, the training-free policies at the DMC models'
# real CR, downstream tasks) → decode throughput of the learned models at context 4096.
#
# It is resumable: every step leaves a marker in $D/.done and is skipped when run again; with
# DEADLINE (seconds since the epoch) a step that would run past it is interrupted with SIGINT
# (a retrofit saves a checkpoint and resumes next time) and the script stops with status 0,
# so a machine lent in slices of minutes runs it call after call. Results (JSON, logs,
# metrics) collect in $RES.
#
#   make scale-pipeline                                  # the defaults below, on GPU 0
#   DEADLINE=$(( $(date +%s) + 540 )) docs/scale-pipeline.sh   # one slice
#   DEVICE=cpu MODEL=my-tiny.yaml PRE_STEPS=4 ... docs/scale-pipeline.sh   # a wiring check
set -uo pipefail

DMC=${DMC:-dmc}                               # the dmc binary (built with make build-cuda)
A=${A:-../shared/assets}                      # the shared assets
D=${D:-runs/scale}                            # working folder: data, runs, exports
RES=${RES:-$D/results}                        # what the pipeline reports
T=${T:-$A/llama2-tokenizer/tokenizer.model}   # tokenizer of the corpora and the base model
INPUTS=${INPUTS:-"$A/gutenberg $A/wikipedia-en"}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-base-30m-gqa}                  # preset or YAML config of the base model
SEQ=${SEQ:-1024}                              # training and evaluation sequence length
PRE_STEPS=${PRE_STEPS:-1500} PRE_BATCH=${PRE_BATCH:-32} PRE_LR=${PRE_LR:-3e-3}
# 3000 retrofit steps (49M tokens, two epochs of the train split): the runs of docs/results/scale.md
# since 2026-12-03; 600 was the first run's.
RET_STEPS=${RET_STEPS:-3000} RET_BATCH=${RET_BATCH:-16} RET_LR=${RET_LR:-5e-4}
CRS=${CRS:-"2 4 8"}
KV_HEADS=${KV_HEADS:-"2 1"}                   # GQA uptraining targets (the base has 4 KV heads)
HELDOUT_TOKENS=${HELDOUT_TOKENS:-131072}      # each run's own final evaluation
EVAL_TOKENS=${EVAL_TOKENS:-131072}            # held-out perplexity tokens per model
OOD_TOKENS=${OOD_TOKENS:-65536}               # wikitext-2 and TinyStories perplexity tokens
CMP_TOKENS=${CMP_TOKENS:-16384}               # the subset the CPU-only policies are compared on
POLICIES=${POLICIES:-"window streaming h2o tova"}
TASKS=${TASKS-piqa,hellaswag,arc_easy,arc_challenge,winogrande,lambada_openai}  # TASKS= skips them
TASK_LIMIT=${TASK_LIMIT:-500}
BENCH=${BENCH:-1}                             # BENCH=0 skips the decode benchmarks
BENCH_PROMPT=${BENCH_PROMPT:-3968} BENCH_GEN=${BENCH_GEN:-128}
WORKERS=${WORKERS:-$(nproc)}
POLICY_PROCS=${POLICY_PROCS:-$(( WORKERS > 4 ? WORKERS - 4 : 1 ))}  # cores of the CPU-only evaluations
DEADLINE=${DEADLINE:-0}
# The reference objective (plain cross-entropy, dmc-spec.md §5) by default for every training
# run. DISTILL=1 distils the control and the DMC runs from the base (the default recipe's
# choice); GQA uptraining stays plain, since its teacher would be its own pooled start.
DISTILL=${DISTILL:-0}
# Held-out loss with hard decisions and no noise every EVAL_EVERY retrofit steps (in each run's
# metrics.jsonl as eval_lm_loss): the gap between relaxed training and inference.
EVAL_EVERY=${EVAL_EVERY:-250}
# CALIBRATE=1 exports the DMC models with dmc export --calibrate-cr (the decision offset moved
# until held-out text compresses by the target; about a minute per model on the GPU) and
# evaluates the calibrated exports (crN-export) next to the runs.
CALIBRATE=${CALIBRATE:-0}
# FT_DECISIONS: the DMC runs' stage 3 (fine_tune_decisions). anneal (the recipe's default)
# shrinks its noise to none; soft is the reference; hard trains on the hard decisions of
# inference (straight-through gradients).
FT_DECISIONS=${FT_DECISIONS:-anneal}
# DMC_SET: more --set overrides for the DMC runs only, e.g. DMC_SET="head_cr_cap=16 window=8".
DMC_SET=${DMC_SET:-}
DMC_SETS=()
for kv in $DMC_SET; do DMC_SETS+=(--set "$kv"); done
# CONTROL=0 leaves the plain control to another invocation (sharing D, e.g. one running
# concurrently on the same GPU with CRS=" " KV_HEADS=" "); the policies wait for it.
CONTROL=${CONTROL:-1}
CAL=()
(( CALIBRATE )) && CAL=(--calibrate-cr --device "$DEVICE")
COMMON=(--set seq_len=$SEQ --device $DEVICE --heldout-tokens $HELDOUT_TOKENS)

. "$(dirname "$0")/pipeline-lib.sh"

# evaluate M: held-out perplexity of model $D/M with its real cache on three corpora, and on
# the subset the training-free policies are compared on.
evaluate() {
	local m=$1 dev=(--device "$DEVICE" --seq-len "$SEQ")
	step "eval-$m-heldout" 30 "$DMC" eval --model "$D/$m" --data "$D/data" --max-tokens "$EVAL_TOKENS" "${dev[@]}" --json "$RES/eval-$m-heldout.json"
	step "eval-$m-subset" 20 "$DMC" eval --model "$D/$m" --data "$D/data" --max-tokens "$CMP_TOKENS" "${dev[@]}" --json "$RES/eval-$m-subset.json"
	step "eval-$m-wikitext" 30 "$DMC" eval --model "$D/$m" --data "$A/wikitext-2-valid/wiki.valid.tokens" --max-tokens "$OOD_TOKENS" "${dev[@]}" --json "$RES/eval-$m-wikitext.json"
	step "eval-$m-tinystories" 30 "$DMC" eval --model "$D/$m" --data "$A/tinystories-valid/tinystories_valid_head.txt" --max-tokens "$OOD_TOKENS" "${dev[@]}" --json "$RES/eval-$m-tinystories.json"
}

# policies CR: the training-free policies on the control model at the real CR the DMC model of
# target CR reached on the same subset (CPU only; in the background while the GPU trains).
policies() {
	local cr=$1 real p
	real=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["cr"], 4))' "$RES/eval-cr$cr-subset.json") || return 1
	for p in $POLICIES; do
		GOMAXPROCS=$POLICY_PROCS step "policy-$p-cr$cr" 60 "$DMC" eval --model "$D/control" --data "$D/data" --seq-len "$SEQ" \
			--max-tokens "$CMP_TOKENS" --cache "$p" --cr "$real" --json "$RES/policy-$p-cr$cr.json"
	done
}

# launch_policies CR: policies CR in the background, once per invocation, when the DMC model's
# subset evaluation is there.
declare -A LAUNCHED
launch_policies() {
	if [[ -e $D/.done/eval-cr$1-subset && -e $D/.done/control && -z ${LAUNCHED[$1]:-} ]]; then
		LAUNCHED[$1]=1
		(policies "$1") &
	fi
}
log "pipeline: DMC=$DMC D=$D DEVICE=$DEVICE MODEL=$MODEL SEQ=$SEQ steps $PRE_STEPS/$RET_STEPS, deadline in $(left)s"

# 1. Data: both corpora into one set of shards, whole files held out. Wikipedia's articles are
#    split at </doc> (its <doc ...> header line stays in the text); books hold no separator.
step data 120 "$DMC" data prepare --tokenizer "$T" --out "$D/data" --heldout-files 0.1 --workers "$WORKERS" \
	--separator '</doc>' $INPUTS

# 2. The base model from scratch (plain language modelling), exported in fp32.
train base --model "$MODEL" --init random --control --config demo-pretrain --data "$D/data" \
	--set seq_len=$SEQ --set batch_size=$PRE_BATCH --set lr=$PRE_LR --set warmup_steps=100 --set checkpoint_every=250 \
	--steps "$PRE_STEPS" --device "$DEVICE" --heldout-tokens "$HELDOUT_TOKENS"
step base-export 30 "$DMC" export --run "$D/base" --out "$D/base-export" --dtype fp32
step base-sample 30 "$DMC" generate --model "$D/base-export" --prompt "The old man looked at the sea and" \
	--max-tokens 64 --temperature 0 --device "$DEVICE"
evaluate base

# 3. The plain control and the DMC retrofits, all from the base with the same steps and data.
RET=(--data "$D/data" --steps "$RET_STEPS" --set batch_size=$RET_BATCH --set lr=$RET_LR --set eval_every=$EVAL_EVERY "${COMMON[@]}")
KD=(--set distill_weight=$DISTILL)
if (( CONTROL )); then
	train control --model "$D/base-export" --control "${RET[@]}" "${KD[@]}"
	evaluate control
fi
for cr in $CRS; do
	train "cr$cr" --model "$D/base-export" --target-cr "$cr" "${RET[@]}" "${KD[@]}" --set fine_tune_decisions=$FT_DECISIONS "${DMC_SETS[@]}"
	evaluate "cr$cr"
	launch_policies "$cr"
done

# 4. GQA uptraining at matched KV size: mean-pool the KV heads, then the control's training.
for kv in $KV_HEADS; do
	step "gqa-kv$kv-init" 30 "$DMC" convert --model "$D/base-export" --kv-heads "$kv" --out "$D/gqa-kv$kv-init"
	train "gqa-kv$kv" --model "$D/gqa-kv$kv-init" --control "${RET[@]}" --set distill_weight=0
	evaluate "gqa-kv$kv"
done

# 5. The DMC exports (calibrated with CALIBRATE=1, then evaluated like the runs) and decode
#    throughput at context BENCH_PROMPT+BENCH_GEN with real text prompts, the largest batch
#    that fits (learned decisions: sized for the export's measured CR).
if [[ $DEVICE == cuda ]] && (( BENCH )); then
	step bench-base 90 "$DMC" bench decode --model "$D/base-export" --cr 1 --batch max --prompt "$BENCH_PROMPT" \
		--gen "$BENCH_GEN" --data "$D/data" --json "$RES/decode-base.json"
fi
for cr in $CRS; do
	if (( BENCH || CALIBRATE )); then
		step "cr$cr-export" 90 "$DMC" export --run "$D/cr$cr" --out "$D/cr$cr-export" "${CAL[@]}"
	fi
	(( CALIBRATE )) && evaluate "cr$cr-export"
	if [[ $DEVICE == cuda ]] && (( BENCH )); then
		step "bench-cr$cr" 120 "$DMC" bench decode --model "$D/cr$cr-export" --cr dmc --batch max --prompt "$BENCH_PROMPT" \
			--gen "$BENCH_GEN" --data "$D/data" --json "$RES/decode-cr$cr.json"
	fi
done

# 6. Downstream tasks on the GPU engine (the real caches).
for m in control $(for cr in $CRS; do echo "cr$cr"; done) $(for kv in $KV_HEADS; do echo "gqa-kv$kv"; done); do
	[[ -z $TASKS ]] && break
	step "tasks-$m" 60 "$DMC" eval --model "$D/$m" --tasks "$TASKS" --limit "$TASK_LIMIT" --data-dir "$A" \
		--device "$DEVICE" --json "$RES/tasks-$m.json"
done

for cr in $CRS; do launch_policies "$cr"; done
wait
log "pipeline complete"
