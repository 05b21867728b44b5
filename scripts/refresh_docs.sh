#!/usr/bin/env bash
# Regenerates every figure and table that README.md and docs/ show, from the runs themselves.
#   bash scripts/refresh_docs.sh [DATA_DIR]   (DATA_DIR holds att_faces/ and fsdd/; default ../shared/data)
# Measured on the 2-core CPU machine, one thread: face ~4 min, face sequence ~5 min, speaker ~15 min, speaker sequence ~15 min, style ~24 min.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data}"
runs="$(mktemp -d)"
run() {  # run NAME ARGS...: one scenario into docs/NAME
  local name="$1"; shift
  rmlora demo "$@" --out "$runs/$name" --no-progress
  rm -rf "docs/$name" && mkdir -p "docs/$name"
  cp "$runs/$name"/report.md "$runs/$name"/*.png "$runs/$name"/summary.json "docs/$name/"
}
run face-demo --workload face --data-dir "$data"
run face-sequence --workload face --data-dir "$data" --seeds 3 --requests "forget:s3,add:s6,forget:s1,add:s7,undo:1"
run speaker-demo --workload speaker --data-dir "$data"
run speaker-sequence --workload speaker --data-dir "$data" --seeds 1 --requests "forget:jackson,add:yweweler,forget:george,repair,undo:1"
run style-demo --workload style
python3 scripts/readme_tables.py README.md docs/face-demo/summary.json
echo "regenerated docs/face-demo, docs/face-sequence, docs/speaker-demo, docs/speaker-sequence, docs/style-demo and README.md's tables"
