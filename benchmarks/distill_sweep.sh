#!/bin/bash
# Issue 12's distillation rounds, end to end (2026-12-03; results in docs/distill_experiments.md
# and BENCHMARKS.md). Every student: 3 (or 2) of the teacher's 6 layers, learning rate 2e-4,
# batch 32, STEPS optimizer steps; "plain" = the same initial weights on the gold labels only.
#   bash benchmarks/distill_sweep.sh [RUNS_DIR]            round 4 (default; ~1 h 40 min quiet)
#   ROUND=3 bash benchmarks/distill_sweep.sh [RUNS_DIR]    round 3 (~1 h)
#   STEPS=20 ...                                           a quick check of the script
# Round 4: distilled + hidden states (TinyBERT's uniform layer map, teacher online) on the
# labelled texts only, seeds 1-5, against plain seeds 1-5; with 3 teacher-labelled word-level
# variants per text at 2x STEPS (and plain at 2x STEPS), logits only, and 2 layers, seeds 1-3.
# Round 3: distilled (logits, 3 variants per text) and plain, 3 and 2 layers; + hidden states.
# Then int8 exports, their test accuracy, paired comparisons (benchmarks/compare_runs.py) and
# bench-infer.
set -euo pipefail
R=${1:-runs/sweep}
N=.venv/bin/nluft
STEPS=${STEPS:-530}  # 2 epochs of the 8,484 labelled texts at batch 32
# Every distill key is set here, whatever configs/sentiment_distill.yaml says (later keys win).
BASE=(distill.hidden_weight=0 distill.layer_map=null distill.cache=true distill.augment.copies=0)
KD=(configs/sentiment_distill.yaml teacher="$R/teacher" "${BASE[@]}" distill.alpha=0.2
    distill.temperature=2 distill.student_layers=null)
HIDDEN=(distill.cache=false distill.hidden_weight=1.0)
[ -f "$R/teacher/results/test.json" ] || $N train configs/sentiment.yaml output_dir="$R/teacher"
# the student's initial weights, as the distill run recorded them in its resolved config
student_dir() { sed -n 's/^  name_or_path: //p' "$1/config.yaml" | head -1; }
kd() {  # NAME SEED KEEP_EVERY STEPS [key=value ...]
  local name=$1 seed=$2 every=$3 steps=$4
  shift 4
  $N distill "${KD[@]}" output_dir="$R/$name-s$seed" distill.keep_every="$every" \
    train.max_steps="$steps" train.seed="$seed" "$@"
}
plain() {  # NAME SEED STEPS INIT_FROM_RUN
  $N train configs/sentiment_distill.yaml "${BASE[@]}" distill.teacher=null distill.keep_every=null \
    distill.student_layers=null model.name_or_path="$(student_dir "$R/$4")" \
    output_dir="$R/$1-s$2" train.max_steps="$3" train.seed="$2"
}
if [ "${ROUND:-4}" = 3 ]; then
  for seed in 1 2 3; do
    for size in "3 2" "2 3"; do  # layers, distill.keep_every
      read -r layers every <<< "$size"
      kd "kd$layers" $seed "$every" "$STEPS" distill.augment.copies=3
      plain "plain$layers" $seed "$STEPS" "kd$layers-s$seed"
    done
    kd kdh3 $seed 2 "$STEPS" distill.augment.copies=3 "${HIDDEN[@]}" 'distill.layer_map=[2,4,6]'
  done
  pairs=("kd3 plain3" "kdh3 plain3" "kd2 plain2")
  first=kd3-s1  # the student bench-infer times (speed depends on the architecture, not weights)
else
  for seed in 1 2 3 4 5; do
    kd kdhn3 $seed 2 "$STEPS" "${HIDDEN[@]}" 'distill.layer_map=[2,4,6]'
    plain plain3 $seed "$STEPS" "kdhn3-s$seed"
  done
  for seed in 1 2 3; do
    kd kdha3 $seed 2 $((2 * STEPS)) distill.augment.copies=3 "${HIDDEN[@]}" 'distill.layer_map=[2,4,6]'
    plain plainl3 $seed $((2 * STEPS)) "kdhn3-s$seed"
    kd kdn3 $seed 2 "$STEPS"
    kd kdhn2 $seed 3 "$STEPS" "${HIDDEN[@]}" 'distill.layer_map=[3,6]'
    plain plain2 $seed "$STEPS" "kdhn2-s$seed"
  done
  pairs=("kdhn3 plain3" "kdha3 plainl3" "kdha3 plain3" "kdn3 plain3" "kdhn2 plain2")
  first=kdhn3-s1
fi
for run in "$R"/teacher "$R"/*-s[0-9]; do
  [ -d "$run/export-int8" ] || $N export "$run" --quantize int8
  $N eval "$run" --export "$run/export-int8" --json > "$run/int8-test.json"
done
for run in "$R"/*/; do  # test accuracy (%) of each run, fp32 and int8
  python3 -c "import json,sys; d=json.load(open(sys.argv[1]+'results/test.json')); \
t=open(sys.argv[1]+'int8-test.json').read(); q=json.loads(t[t.index('{'):]); \
print(sys.argv[1], round(100*d['accuracy'], 2), round(100*q['accuracy'], 2))" "$run"
done
for pair in "${pairs[@]}"; do  # paired over the seeds both have, fp32 then int8
  read -r a b <<< "$pair"
  seeds=$(cd "$R" && ls -d "$a"-s* | sed 's/.*-s//' | while read -r s; do
    [ -d "$b-s$s" ] && echo "$s"; done)
  for p in results/test_predictions.jsonl results/export-int8/test_predictions.jsonl; do
    .venv/bin/python benchmarks/compare_runs.py $(for s in $seeds; do echo "$R/$a-s$s"; done) \
      --against $(for s in $seeds; do echo "$R/$b-s$s"; done) --predictions "$p"
  done
done
$N bench-infer "$R/teacher" --export "$R/$first/export" --export "$R/teacher/export-int8" \
  --export "$R/$first/export-int8" --rounds 3 --latency-examples 40 --json "$R/bench-infer.json"
