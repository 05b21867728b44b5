#!/usr/bin/env bash
# Regenerates every figure and table that README.md and docs/ show, from the runs themselves.
#   bash scripts/refresh_docs.sh [DATA_DIR]   (DATA_DIR holds att_faces/ and fsdd/; default ../shared/data)
# Two lanes run side by side, one thread each (the CI-size machine has two cores): the style run in
# one, the face and speaker runs in the other; about 50 min on the 2-core CPU machine. Then the
# unlearning evaluation (docs/evaluation.md) in two lanes again: face protocols in one, speaker in the
# other, each seed's pretrained model cached between the protocols of a workload.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data}"
runs="$(mktemp -d)"
run() {  # run NAME ARGS...: one scenario into docs/NAME
  local name="$1"; shift
  rmlora demo "$@" --out "$runs/$name" --no-progress > "$runs/$name.log" 2>&1 || { cat "$runs/$name.log"; return 1; }
  rm -rf "docs/$name" && mkdir -p "docs/$name"
  cp "$runs/$name"/report.md "$runs/$name"/*.png "$runs/$name"/summary.json "docs/$name/"
}
python3 benchmarks/calibrate_device.py --plot docs/sigma_curve.png --json > docs/sigma_curve.json
for w in face speaker; do  # the calibration percentile, on validation data only (README: The chip)
  python3 benchmarks/calibration_percentile.py --workload "$w" --data-dir "$data" --seeds "$([ $w = face ] && echo 3 || echo 2)" \
    --json > "docs/calibration_percentile_$w.json"
done
run style-demo --workload style &
style=$!
run face-demo --workload face --data-dir "$data"
run face-sequence --workload face --data-dir "$data" --seeds 3 --requests "forget:s3,add:s6,forget:s1,add:s7,undo:1"
run face-wan2022 --workload face --data-dir "$data" --preset wan2022
run speaker-demo --workload speaker --data-dir "$data"
run speaker-sequence --workload speaker --data-dir "$data" --seeds 1 --requests "forget:jackson,add:yweweler,forget:george,repair,undo:1"
wait "$style"
# the unlearning evaluation: the field's methods on both paths, 10 seeds on one fixed split (3 for the sequence);
# the face protocols in one lane, the speaker protocols in the other
cache="$runs/cache"
eval=(--configuration eval --methods field --data-dir "$data" --cache "$cache")
( run eval-face-class --workload face "${eval[@]}" \
  && run eval-face-samples --workload face "${eval[@]}" --requests "forget:10%" \
  && run eval-face-sequence --workload face "${eval[@]}" --requests "forget:s3,forget:s17" --seeds 3 ) &
faces=$!
run eval-speaker-class --workload speaker "${eval[@]}"
run eval-speaker-samples --workload speaker "${eval[@]}" --requests "forget:10%"
wait "$faces"
python3 scripts/evaluation_doc.py docs > docs/evaluation.md
python3 scripts/readme_tables.py README.md docs/face-demo/summary.json
echo "regenerated docs/sigma_curve.png, docs/calibration_percentile_*.json, docs/face-demo, docs/face-sequence, docs/face-wan2022, docs/speaker-demo," \
     "docs/speaker-sequence, docs/style-demo, docs/eval-*, docs/evaluation.md and README.md's tables"
