# Shared by the pipelines in docs/ (scale-pipeline.sh, benchmarks-pipeline.sh): resumable steps
# under a deadline. Source it after setting D (working folder), RES (results), DMC (the binary),
# DEVICE and DEADLINE (seconds since the epoch; 0 = none).
#
# Every step leaves a marker in $D/.done and is skipped when the script runs again; a step that
# would run past DEADLINE is interrupted with SIGINT (a retrofit saves its checkpoint and resumes
# next time) and the script exits 0.

mkdir -p "$D/.done" "$RES"
log() { echo "[$(date -u +%T)] $*" | tee -a "$RES/pipeline.log"; }
left() { if (( DEADLINE > 0 )); then echo $(( DEADLINE - $(date +%s) )); else echo 864000; fi; }

# step NAME SECONDS CMD...: run CMD once, if about SECONDS are left before the deadline; its
# output goes to $RES/NAME.log.
step() {
	local name=$1 need=$2 l rc
	shift 2
	[[ -e $D/.done/$name ]] && return 0
	l=$(left)
	if (( l < need )); then
		log "stopping before $name (needs ~${need}s, ${l}s left): run again to go on"
		exit 0
	fi
	log "$name: $*"
	timeout -s INT -k 60 "$l" "$@" >>"$RES/$name.log" 2>&1
	rc=$?
	if (( rc == 0 )); then
		touch "$D/.done/$name"
		log "$name done"
	elif (( rc == 124 )); then
		log "$name reached the deadline (interrupted; run again to resume)"
		exit 0
	else
		log "$name FAILED (exit $rc): see $RES/$name.log"
		tail -5 "$RES/$name.log"
		exit 1
	fi
}

# train NAME ARGS...: a retrofit run in $D/NAME, resumed when it has a checkpoint.
train() {
	local name=$1
	shift
	if [[ -e $D/$name/checkpoints/latest && ! -e $D/.done/$name ]]; then
		step "$name" 60 "$DMC" retrofit --out "$D/$name" --resume --device "$DEVICE"
	else
		step "$name" 60 "$DMC" retrofit --out "$D/$name" "$@"
	fi
	[[ -e $D/$name/metrics.jsonl ]] && cp "$D/$name/metrics.jsonl" "$RES/metrics-$name.jsonl"
	[[ -e $D/$name/heldout.json ]] && cp "$D/$name/heldout.json" "$RES/heldout-$name.json"
	return 0
}

# A step that stops the script early still waits for the background evaluations (they stop at
# the deadline too).
trap wait EXIT
