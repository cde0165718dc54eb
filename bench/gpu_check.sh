#!/usr/bin/env bash
# The GPU check of issue 13, as one command: step overhead per loss, fit throughput, and trials
# packed on one GPU without Ray. Writes every figure to $OUT/gpu_figures.md (and prints it).
#
# On the CPU machine, once (downloads the wheels the GPU machine lacks for `featloss train`:
# pydantic and its own needs, for Python 3.12; they travel in the ignored folder .whl):
#     bash bench/gpu_check.sh --prepare
# On the GPU machine (the device tool's `run`, from the repository root; ~5 min expected, each
# part under its own timeout: 2 + 2.5 + 4 min, 8.5 min at most):
#     run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=570)
# Here, as a dry run of every code path on the CPU (tiny sizes, a few minutes):
#     bash bench/gpu_check.sh --device cpu --dry
#
# The GPU machine has torch and torchvision but no Ray, Optuna, MLflow or mlxtend; nothing here
# imports them (`featloss train` and these bench scripts do not), and the data is generated
# (fuzzy_rgb, random tensors): nothing is downloaded.
set -u -o pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
DEVICE=cuda
DRY=0
PREPARE=0
for arg in "$@"; do
  case "$arg" in
    --device=*) DEVICE=${arg#--device=} ;;
    --device) DEVICE=__next__ ;;
    --dry) DRY=1 ;;
    --prepare) PREPARE=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) if [ "$DEVICE" = __next__ ]; then DEVICE=$arg; else echo "unknown argument $arg" >&2; exit 2; fi ;;
  esac
done
PY=${PYTHON:-python3}

if [ "$PREPARE" = 1 ]; then
  # The versions this checkout is tested with; pure wheels except pydantic-core (CPython 3.12).
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  mkdir -p .whl
  for spec in pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
              typing-inspection==0.4.5 typing-extensions==4.16.0; do
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$spec" || exit 1
  done
  git rev-parse --short HEAD > .whl/COMMIT  # the copy on the GPU machine has no .git
  ls -l .whl
  exit 0
fi

OUT=${OUT:-${TMPDIR:-/tmp}/featloss-gpu-check}  # the device tool sets OUT there
mkdir -p "$OUT"
FIGURES=$OUT/gpu_figures.md
if ! $PY -c "import pydantic" 2> /dev/null; then  # featloss.config needs it; the GPU machine lacks it
  ls .whl/*.whl > /dev/null 2>&1 || { echo "no pydantic and no .whl: run --prepare first" >&2; exit 1; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/featloss-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/featloss-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}  # featloss from this checkout, not installed
export PYTHONUNBUFFERED=1
COMMIT=$(git rev-parse --short HEAD 2> /dev/null || cat .whl/COMMIT 2> /dev/null || echo unknown)
export FEATLOSS_COMMIT=$COMMIT
export FEATLOSS_CACHE=${FEATLOSS_CACHE:-/tmp/featloss-cache}

if [ "$DRY" = 1 ]; then
  STEP_ARGS="--repeats 2 --steps 1 --warmup 1 --backbones small_cnn --classes 10"
  THROUGHPUT_ARGS="--backbones small_cnn --repeats 1"
  PACKING_ARGS="--backbones small_cnn --trials 1,2 --window 6 --train-samples 256"
  LIMITS=(300 300 300)
else
  STEP_ARGS="--repeats 15 --steps 10 --warmup 3"
  THROUGHPUT_ARGS="--backbones small_cnn,cnn_cifar10,resnet18 --repeats 3 --epochs 3"
  PACKING_ARGS="--backbones small_cnn,cnn_cifar10 --trials 1,2,4 --window 8"
  LIMITS=(120 150 240)
fi

{
  echo "# featloss GPU check ($(date -u '+%Y-%m-%d %H:%M UTC'), commit $COMMIT)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2> /dev/null \
    || echo "no nvidia-smi"
  $PY -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| available', torch.cuda.is_available())"
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) x $(nproc)"
  echo '```'
} > "$FIGURES"

part() {  # part NAME SECONDS COMMAND...: run under a timeout, log, append its output
  local name=$1 limit=$2
  shift 2
  echo "== $name (timeout ${limit}s): $*" >&2
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local took=$((SECONDS - start))
  {
    echo
    echo "## $name ($took s, exit $rc$([ $rc = 124 ] && echo ': TIMED OUT'))"
    echo
    echo "\`$*\`"
    echo
    grep -v '^Traceback\|^  File\|^    ' "$OUT/$name.log" | tail -n 80
  } >> "$FIGURES"
  return 0
}

part step_overhead "${LIMITS[0]}" $PY bench/step_overhead.py --device "$DEVICE" $STEP_ARGS
part throughput "${LIMITS[1]}" $PY bench/throughput.py --device "$DEVICE" --dataset fuzzy_rgb \
  $THROUGHPUT_ARGS
part packing_no_ray "${LIMITS[2]}" $PY bench/gpu_packing.py --no-ray --device "$DEVICE" \
  --dataset fuzzy_rgb $PACKING_ARGS

cat "$FIGURES"
