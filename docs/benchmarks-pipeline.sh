#!/usr/bin/env bash
# The benchmark runs of issue 13 (docs/results/benchmarks-stories260k.md): stories260K's plain
# control and DMC CR 2 and CR 4 models retrofitted on the GPU with the recipes of
# docs/results/retrofit-stories260k.md (8000 steps), every downstream task on its full split for
# the original, the control and both DMC models (GPU engine, real caches), the training-free
# policies at the real CR of each DMC model (CPU only, in the background, one step per task so
# that progress survives a deadline; the long tasks last, each on every core), and HellaSwag
# with the llama2-7b preset (random weights) through the CUDA path, vanilla and DMC forced to
# CR 4, for the scoring speed.
#
# Resumable under DEADLINE like docs/scale-pipeline.sh (docs/pipeline-lib.sh):
#   DEADLINE=$(( $(date +%s) + 550 )) DMC=/tmp/dmc A=../shared/assets D=/tmp/bench docs/benchmarks-pipeline.sh
set -uo pipefail

DMC=${DMC:-dmc}
A=${A:-../shared/assets}
D=${D:-runs/benchmarks}
RES=${RES:-$D/results}
DEVICE=${DEVICE:-cuda}
M=${M:-$A/tinyllamas-stories260K/stories260K.bin}
T=${T:-$A/tinyllamas-stories260K/tok512.bin}
TEXT=${TEXT:-$A/tinystories/tinystories_train_first2MiB.txt}
STEPS=${STEPS:-8000}
TASKS=${TASKS:-piqa,hellaswag,arc_easy,arc_challenge,winogrande,boolq,lambada_openai,openbookqa,copa,siqa,mmlu}
LIMIT=${LIMIT:-0}                          # items per task (0: the full splits)
PPL_TOKENS=${PPL_TOKENS:-50000}            # held-out TinyStories tokens of the perplexity column
POLICIES=${POLICIES:-"window streaming h2o tova"}
BATCH=${BATCH:-256}
BIG=${BIG:-1}                              # 0: skip the 7B scoring-speed runs
BIG_MODEL=${BIG_MODEL:-llama2-7b}
BIG_TOKENIZER=${BIG_TOKENIZER:-$A/llama2-tokenizer/tokenizer.model}
WORKERS=${WORKERS:-$(nproc)}
POLICY_PROCS=${POLICY_PROCS:-$(( WORKERS > 5 ? (WORKERS - 2) / 2 : 1 ))}
DEADLINE=${DEADLINE:-0}

. "$(dirname "$0")/pipeline-lib.sh"

HEAVY=${HEAVY:-"hellaswag lambada_openai boolq"} # the long tasks, scheduled last
POLICY_JOBS=${POLICY_JOBS:-.}              # a regex: only the policy steps whose names match run here

# policies: each training-free policy on the original model at the real CR of each DMC model:
# perplexity at the CR the DMC model reached on the held-out tokens (a fixed budget solved on
# them), and each task at the CR the DMC model reached on that task's own sequences (cr,none of
# its GPU run; a growing budget solved per task). CPU only, POLICY_PROCS runs of 2 threads at
# a time, the long tasks last, so that a deadline leaves whole tasks done.
policies() {
	local cr p t real taskcr jobs=() heavy=() job
	for cr in 2 4; do
		[[ -e $D/.done/ppl-cr$cr ]] || continue
		real=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["cr"], 4))' "$RES/ppl-cr$cr.json") || return 1
		for p in $POLICIES; do
			jobs+=("policy-$p-cr$cr-ppl $p $real ppl")
			for t in ${TASKS//,/ }; do
				taskcr=$(python3 -c 'import json,sys
try: print(round(json.load(open(sys.argv[1]))["results"][sys.argv[2]]["cr,none"], 4))
except Exception: print(sys.argv[3])' "$RES/tasks-cr$cr.json" "$t" "$real")
				if [[ " $HEAVY " == *" $t "* ]]; then
					heavy+=("policy-$p-cr$cr-$t $p $taskcr $t")
				else
					jobs+=("policy-$p-cr$cr-$t $p $taskcr $t")
				fi
			done
		done
	done
	for job in "${jobs[@]}"; do
		set -- $job
		[[ $1 =~ $POLICY_JOBS ]] || continue
		while (( $(jobs -rp | wc -l) >= POLICY_PROCS )); do wait -n; done
		if [[ $4 == ppl ]]; then
			(GOMAXPROCS=2 step "$1" 60 "$DMC" eval --model "$M" --tokenizer "$T" --data "$D/ts" \
				--max-tokens "$PPL_TOKENS" --cache "$2" --cr "$3" --json "$RES/$1.json") &
		else
			(GOMAXPROCS=2 step "$1" 60 "$DMC" eval --model "$M" --tokenizer "$T" --tasks "$4" \
				--limit "$LIMIT" --data-dir "$A" --cache "$2" --cr "$3" --json "$RES/$1.json") &
		fi
	done
	wait
	# The long tasks one at a time on every core (HellaSwag: ~65 s on 16 cores of the H200
	# machine, ~19 min on 2 cores), so that a deadline never kills one half done.
	for job in "${heavy[@]}"; do
		set -- $job
		[[ $1 =~ $POLICY_JOBS ]] || continue
		(GOMAXPROCS=$WORKERS step "$1" $(( 1200 / WORKERS + 30 )) "$DMC" eval --model "$M" --tokenizer "$T" --tasks "$4" \
			--limit "$LIMIT" --data-dir "$A" --cache "$2" --cr "$3" --json "$RES/$1.json")
	done
}

log "benchmarks: DMC=$DMC D=$D DEVICE=$DEVICE steps $STEPS, tasks $TASKS (limit $LIMIT), deadline in $(left)s"

step data 60 "$DMC" data prepare --tokenizer "$T" --split-by-bytes 0.85 --out "$D/ts" "$TEXT"

# The models of docs/results/retrofit-stories260k.md, on the GPU.
train control --model "$M" --tokenizer "$T" --data "$D/ts" --config stories260k --control --set distill_weight=0 \
	--steps "$STEPS" --device "$DEVICE"
train cr2 --model "$M" --tokenizer "$T" --data "$D/ts" --config stories260k --target-cr 2 --steps "$STEPS" --device "$DEVICE"
train cr4 --model "$M" --tokenizer "$T" --data "$D/ts" --config stories260k-cr4 --target-cr 4 --steps "$STEPS" --device "$DEVICE"

# Perplexity with the real caches on the held-out TinyStories tokens (the real CR the policies
# are matched to), then every task on the GPU engine.
declare -A MODEL=([original]="$M" [control]="$D/control" [cr2]="$D/cr2" [cr4]="$D/cr4")
for m in original control cr2 cr4; do
	step "ppl-$m" 30 "$DMC" eval --model "${MODEL[$m]}" --tokenizer "$T" --data "$D/ts" --max-tokens "$PPL_TOKENS" \
		--device "$DEVICE" --json "$RES/ppl-$m.json"
done
# The DMC models' tasks first: the policies are matched to their real CR on each task.
for m in cr2 cr4 original control; do
	step "tasks-$m" 120 "$DMC" eval --model "${MODEL[$m]}" --tokenizer "$T" --tasks "$TASKS" --limit "$LIMIT" \
		--data-dir "$A" --device "$DEVICE" --batch "$BATCH" --json "$RES/tasks-$m.json"
	[[ $m == cr4 ]] && { policies & }
done

# Scoring speed of a 7B model: HellaSwag through the CUDA engine, random weights.
if [[ $DEVICE == cuda && $BIG == 1 ]]; then
	step hellaswag-7b-vanilla 300 "$DMC" eval --model "$BIG_MODEL" --random-weights --device cuda --tokenizer "$BIG_TOKENIZER" \
		--tasks hellaswag --limit "$LIMIT" --data-dir "$A" --batch "$BATCH" --json "$RES/hellaswag-7b-vanilla.json"
	step hellaswag-7b-dmc4 300 "$DMC" eval --model "$BIG_MODEL" --random-weights --device cuda --tokenizer "$BIG_TOKENIZER" \
		--tasks hellaswag --limit "$LIMIT" --data-dir "$A" --batch "$BATCH" --cache dmc --force-cr 4 \
		--json "$RES/hellaswag-7b-dmc4.json"
fi
wait
log "benchmarks complete"
