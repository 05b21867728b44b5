#!/usr/bin/env bash
# Regenerates every figure and table that README.md and docs/ show, from the runs themselves.
#   bash scripts/refresh_docs.sh [DATA_DIR] [PART...]
# DATA_DIR holds att_faces/ and fsdd/ (default ../shared/data). PARTs (default: all of them, in this order):
#   calib  the device calibration curve and the converter percentile (validation data only)
#   demos  face-demo, face-sequence, face-wan2022, speaker-demo, speaker-sequence
#   style  style-demo (STYLE_SEEDS seeds, default 3)
#   style-attention  the attention option on the same seeds and docs/style.md's comparison table
#   eval   the unlearning evaluation (docs/eval-*, docs/evaluation.md)
#   costs  docs/paper-figures.md and README.md's tables, from the summaries above
# demos and style run side by side, one thread each (the CI-size machine has two cores; the style lane is
# the long one, about 20 CPU-minutes per seed); eval runs its face and speaker protocols in two lanes, each
# seed's pretrained model cached between the protocols of a workload.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data}"
shift || true
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(calib demos style style-attention eval costs)
want() { [[ " ${parts[*]} " == *" $1 "* ]]; }
runs="$(mktemp -d)"
style_seeds="${STYLE_SEEDS:-3}"
run() {  # run NAME ARGS...: one scenario into docs/NAME
  local name="$1"; shift
  rmlora demo "$@" --out "$runs/$name" --no-progress --threads 1 > "$runs/$name.log" 2>&1 || { cat "$runs/$name.log"; return 1; }
  rm -rf "docs/$name" && mkdir -p "docs/$name"
  cp "$runs/$name"/report.md "$runs/$name"/*.png "docs/$name/"
  # the summary without indentation: the evaluation runs' (18 lanes x 10 seeds) stay under 2 MB
  python3 -c 'import json, sys; json.dump(json.load(open(sys.argv[1])), open(sys.argv[2], "w"), separators=(",", ":"))' \
    "$runs/$name/summary.json" "docs/$name/summary.json"
  echo "regenerated docs/$name"
}
if want calib; then
  python3 benchmarks/calibrate_device.py --plot docs/sigma_curve.png --json > docs/sigma_curve.json
  for w in face speaker; do  # the calibration percentile, on validation data only (README: The chip)
    python3 benchmarks/calibration_percentile.py --workload "$w" --data-dir "$data" --seeds "$([ $w = face ] && echo 3 || echo 2)" \
      --json > "docs/calibration_percentile_$w.json"
  done
fi
style=""
if want style || want style-attention; then  # the ConvNeXt default, the attention option on the same seeds, the table
  ( if want style; then run style-demo --workload style --seeds "$style_seeds"; fi &&
    if want style-attention; then
      run style-attention --workload style --configuration cpu-attention --seeds "$style_seeds" &&
      python3 scripts/style_compare.py docs/style-demo/summary.json docs/style-attention/summary.json docs/style.md
    fi ) &
  style=$!
fi
if want demos; then
  run face-demo --workload face --data-dir "$data"
  run face-sequence --workload face --data-dir "$data" --seeds 3 --requests "forget:s3,add:s6,forget:s1,add:s7,undo:1"
  run face-wan2022 --workload face --data-dir "$data" --preset wan2022
  run speaker-demo --workload speaker --data-dir "$data"
  run speaker-sequence --workload speaker --data-dir "$data" --seeds 1 --requests "forget:jackson,add:yweweler,forget:george,repair,undo:1"
fi
[ -n "$style" ] && wait "$style"
if want eval; then  # the field's methods on both paths, 10 seeds on one fixed split (3 for the sequence)
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
fi
if want costs; then
  python3 scripts/paper_figures.py docs/paper-figures.md
  python3 scripts/readme_tables.py README.md docs/face-demo/summary.json
fi
echo "done: ${parts[*]}"
