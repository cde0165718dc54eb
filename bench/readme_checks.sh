#!/usr/bin/env bash
# The single-run figures the README quotes (recipes, POD's normalisation), each from one
# `featloss train` printed beside its result. Usage: bash bench/readme_checks.sh > FILE
# (about 5 minutes on 2 CPU cores). Output: one line per run, the command and its final metrics.
set -uo pipefail
cd "$(dirname "$0")/.."
FEATLOSS=${FEATLOSS:-.venv/bin/featloss}
echo "commit $(git rev-parse --short HEAD); $(nproc) CPU cores; $(date -u +%FT%TZ)"
one() {
    local json
    json=$(PYTHONWARNINGS=ignore "$FEATLOSS" train --dataset mnist5k --backbone small_cnn --epochs 3 --json "$@" 2>/dev/null | tail -n 1)
    python3 - "$json" "$*" <<'PY'
import json, sys
try:
    m = json.loads(sys.argv[1])
except ValueError:
    print(f"featloss train ... {sys.argv[2]}: no result"); raise SystemExit
keys = ("status", "val/accuracy", "test/accuracy")
print(f"featloss train --dataset mnist5k --backbone small_cnn --epochs 3 --json {sys.argv[2]}: "
      + ", ".join(f"{k} {m.get(k) if not isinstance(m.get(k), float) else round(m[k], 4)}" for k in keys))
PY
}
# AM-Softmax recipe (train.lr 1e-3): the lr at which s = 30 trains
for lr in 0.1 0.01 0.001; do one --loss amsoftmax --set train.lr=$lr; done
# W-Softmax recipe (1 softmax warm-up epoch): without it
one --loss wsoftmax --set loss.warmup_epochs=0
one --loss wsoftmax
# sigma2R recipe (network lr 0.02): at 0.1
one --loss sigma2r --set train.lr=0.1
one --loss sigma2r
# POD: the authors' normalisation (official) vs Eq. 14-15 read literally (none), lam = 1
for norm in none official; do
    for d in 9 16 64; do
        one --loss pod --feature-dim $d --set loss.sc_norm=$norm --set train.lr=0.05 \
            --set data.max_train_samples=2400
    done
done
