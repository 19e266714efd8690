#!/usr/bin/env bash
# pycdeq on a CUDA machine in one command: the CUDA tests, the benchmark suite (--quick) on CUDA,
# then the torch.compile / CUDA-graph benchmark, everything (logs, results json/md, plots,
# BENCHMARKS.md) written under OUT_DIR.
#
#   bash benchmarks/gpu.sh OUT_DIR
#
# For a machine (H100/H200) that has torch, numpy, scipy, scikit-learn, matplotlib, tqdm, pytest,
# hypothesis and torchdiffeq but NO network and NO pycdeq install: pycdeq is used from this
# checkout (PYTHONPATH) and the other benchmark-only peers travel with the checkout as wheels in
# ./.whl (git-ignored). Download them, on a machine with network, from the repository root:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl torchdeq==0.1.0
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl torchode==1.0.1
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl torchtyping==0.1.5
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl typeguard==2.13.3
#
# (torchode needs torchtyping, which needs typeguard < 3; sympy comes with torch. All four are
# pure-Python wheels.) The wheels are installed into a temporary folder on PYTHONPATH, never into
# the machine's site-packages. Budget: about 10 minutes in all, most important first (see the
# timeouts below). A failing step or benchmark is logged and the script goes on; its exit
# status is 0 unless OUT_DIR cannot be created. Read OUT_DIR/summary.txt first.

set -u
OUT=${1:?usage: bash benchmarks/gpu.sh OUT_DIR}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
cd "$REPO" || exit 2
export PYTHONDONTWRITEBYTECODE=1

# --- environment ----------------------------------------------------------------------------------
SITE=$(mktemp -d)
if compgen -G ".whl/*.whl" > /dev/null; then
  if "$PY" -m pip install --no-index --no-deps --quiet --target "$SITE" .whl/*.whl > "$OUT/pip.log" 2>&1; then
    note "wheels: installed $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
  else
    note "wheels: pip install failed (see pip.log); peer comparisons will be skipped"
  fi
else
  note "wheels: none in .whl/ (torchdeq / torchode comparisons will be skipped)"
fi
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
{
  date -u
  git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "commit unknown"
  nvidia-smi 2>&1 | head -20
  "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
  "$PY" -c "import pycdeq, torchdiffeq; print('pycdeq', pycdeq.__file__)" 2>&1
  for m in torchdeq torchode; do "$PY" -c "import $m; print('$m', getattr($m, '__version__', 'ok'))" 2>&1 | tail -1; done
} > "$OUT/env.txt" 2>&1
note "environment: $(grep '^torch ' "$OUT/env.txt" || echo 'torch not importable')"

# Budget (the device is lent for about 15 minutes, start-up included): paper protocol <= 250 s,
# CUDA tests <= 120 s, the overhead / TorchDEQ / Neural ODE tables <= 120 s, compile <= 120 s.
# --- the paper's headline under its protocol (bench_paper, batch 128) ---------------------------------
# Real images need Fashion-MNIST's IDX files in the checkout (not installable on the machine): copy
# them before the run with `mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/`
# (about 30 MB); without them the benchmark times synthetic images (its table says so). The trained
# weights land in OUT_DIR/paper_weights: copy them back to continue the run, or to measure the
# trained regime on the CPU (python -m benchmarks.bench_paper --weights DIR).
start=$SECONDS
PAPER_DATA=()
[ -d "$REPO/.data/fashion-mnist" ] && PAPER_DATA=(--data-dir "$REPO/.data/fashion-mnist")
timeout 250 "$PY" -m benchmarks.bench_paper --device cuda --time-budget 200 --out "$OUT/results" \
  --weights "$OUT/paper_weights" \
  ${PAPER_DATA[@]+"${PAPER_DATA[@]}"} > "$OUT/bench_paper.log" 2>&1
rc=$?
note "bench_paper: exit $rc in $((SECONDS - start)) s (results/paper_protocol.md, bench_paper.log)"

# --- CUDA tests -------------------------------------------------------------------------------------
start=$SECONDS
timeout 120 "$PY" -m pytest -q -p no:cacheprovider -m "not julia" -k cuda tests > "$OUT/tests_cuda.log" 2>&1
rc=$?
note "cuda tests: exit $rc in $((SECONDS - start)) s ($(tail -1 "$OUT/tests_cuda.log"))"

# --- solver overhead, TorchDEQ and Neural ODE tables on CUDA (issue 12's targets) ---------------------
start=$SECONDS
timeout 120 "$PY" -m benchmarks discrete ode --quick --device cuda --out "$OUT/results" --timeout 100 > "$OUT/suite.log" 2>&1
rc=$?
note "benchmark suite: exit $rc in $((SECONDS - start)) s (per-benchmark logs in results/logs/)"
grep '^\[benchmarks\]' "$OUT/suite.log" | grep -v ': /' | tee -a "$SUMMARY" > /dev/null

# --- torch.compile and the CUDA-graph loop (issue 12; docs/compile.md) ----------------------------
# Eager vs compiled f vs compiled model vs graph_block=8 (with and without the compiled f) vs
# compile(mode="reduce-overhead"), MNIST-dense then the small CIFAR-10 MDEQ, batch 128. The table
# (results/compile.md) is rewritten after each model: a timeout keeps what was measured.
start=$SECONDS
timeout 120 "$PY" -m benchmarks.bench_compile --quick --device cuda --out "$OUT/results" > "$OUT/compile.log" 2>&1
rc=$?
note "compile / CUDA-graph benchmark: exit $rc in $((SECONDS - start)) s (log: compile.log)"
if [ -f "$OUT/results/compile.md" ]; then
  grep '^| ' "$OUT/results/compile.md" | tee -a "$SUMMARY" > /dev/null
else
  note "compile / CUDA-graph benchmark: no table written"
fi
rm -rf "$SITE"
exit 0
