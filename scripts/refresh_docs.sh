#!/usr/bin/env bash
# Regenerates the figures and tables that README.md and docs/ show, from the demos themselves.
#   bash scripts/refresh_docs.sh [DATA_DIR]   (DATA_DIR holds att_faces/ and fsdd/; default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data}"
runs="$(mktemp -d)"
for task in face speaker; do
  rmlora demo --task "$task" --data-dir "$data" --out "$runs/$task" --no-progress
  mkdir -p "docs/$task-demo"
  cp "$runs/$task"/report.md "$runs/$task"/*.png "$runs/$task"/summary.json "docs/$task-demo/"
done
echo "copied into docs/face-demo and docs/speaker-demo; paste docs/face-demo/report.md's tables into README.md"
