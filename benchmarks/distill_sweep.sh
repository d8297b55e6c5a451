#!/bin/bash
# Issue 12's third round, end to end (2026-12-03; results in docs/distill_experiments.md and
# BENCHMARKS.md): the teacher (the main job), then for seeds 1-3 the 3- and 2-layer students
# distilled (alpha 0.2, T 2, 3 teacher-labelled variants per text) and plain (same initial
# weights, gold labels), 530 steps each; 3-layer students with hidden-state matching as well;
# int8 exports and their test accuracy; bench-infer. About an hour on a quiet 2-core machine.
#   bash benchmarks/distill_sweep.sh [RUNS_DIR]        (default runs/sweep)
set -euo pipefail
R=${1:-runs/sweep}
N=.venv/bin/nluft
STEPS=${STEPS:-530}  # optimizer steps per student (STEPS=20: a quick check of the script)
KD=(distill.alpha=0.2 distill.temperature=2 distill.augment.copies=3 train.max_steps=$STEPS)
[ -f "$R/teacher/results/test.json" ] || $N train configs/sentiment.yaml output_dir="$R/teacher"
# the student's initial weights, as the distill run recorded them in its resolved config
student_dir() { sed -n 's/^  name_or_path: //p' "$1/config.yaml" | head -1; }
for seed in 1 2 3; do
  for size in "3 2" "2 3"; do  # layers, distill.keep_every
    read -r layers every <<< "$size"
    $N distill configs/sentiment_distill.yaml teacher="$R/teacher" output_dir="$R/kd$layers-s$seed" \
      distill.keep_every="$every" "${KD[@]}" train.seed=$seed
    $N train configs/sentiment_distill.yaml distill.teacher=null distill.keep_every=null \
      model.name_or_path="$(student_dir "$R/kd$layers-s$seed")" output_dir="$R/plain$layers-s$seed" \
      train.max_steps=$STEPS train.seed=$seed
  done
  $N distill configs/sentiment_distill.yaml teacher="$R/teacher" output_dir="$R/kdh3-s$seed" \
    distill.keep_every=2 "${KD[@]}" distill.cache=false distill.hidden_weight=1.0 \
    'distill.layer_map=[2,4,6]' train.seed=$seed
done
for run in "$R"/teacher "$R"/kd*-s* "$R"/plain*-s*; do
  $N export "$run" --quantize int8
  $N eval "$run" --export "$run/export-int8" --json > "$run/int8-test.json"
done
for run in "$R"/*/; do  # test accuracy (%) of each run, fp32 and int8
  python3 -c "import json,sys; d=json.load(open(sys.argv[1]+'results/test.json')); \
t=open(sys.argv[1]+'int8-test.json').read(); q=json.loads(t[t.index('{'):]); \
print(sys.argv[1], round(100*d['accuracy'], 2), round(100*q['accuracy'], 2))" "$run"
done
$N bench-infer "$R/teacher" --export "$R/kd3-s1/export" --export "$R/kd2-s1/export" \
  --export "$R/teacher/export-int8" --export "$R/kd3-s1/export-int8" --export "$R/kd2-s1/export-int8" \
  --rounds 3 --latency-examples 40 --json "$R/bench-infer.json"
