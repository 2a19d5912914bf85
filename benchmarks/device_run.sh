#!/usr/bin/env bash
# Run GPU checks and benchmarks in one call on the lent GPU machine (its compile cache and the
# machine itself last only while calls keep coming, so one call should do build + check + bench).
#
#   bash benchmarks/device_run.sh [STEP ...]      # from the repo root, with .device/ carried
#
# Steps (default: tests): tests (every GPU test: ~530 s, near a call's 600 s limit),
# tests-kernels / tests-engine (the kernel files / the rest, for two calls), tests:EXPR
# (pytest -k EXPR, `+` for spaces), decode (engine_decode.py), profile (profile_decode_step.py),
# profile-shared (the same, 64 and 16 sequences sharing a 5000-token prefix, at 100 and 800
# tokens of their own, flashinfer vs prefix tiles), linear (kernel_linear.py, 1-64 rows),
# launch-overhead (launch_overhead.py: host time per launch of an eager step's kernels),
# eager-step (profile_eager_step.py: mixed steps' wall vs launch vs kernel time),
# attention (kernel_decode_attention.py), shared-prefix (kernel_shared_prefix.py --quick;
# shared-prefix-sweep adds its launch sweep and kernel profile at the target point,
# shared-prefix-ws times the warp-specialized kernel's launches at the --quick points), apps-a
# (chain-summary, map-reduce, shared-prompt, mixed), apps-b (multi-agent, multi-app),
# app:WORKLOAD (one of them), and for a before/after in one call profile@REV / decode@REV /
# shared-prefix@REV (profile_decode_step.py --batches 1 32 --attention triton /
# engine_decode.py --batches 1 32 / kernel_shared_prefix.py --quick on a revision staged by
# stage_revision.sh; REV `this` is this tree, run the same way), and
# app:WORKLOAD@REV (REV's own bench of one workload; REPEAT=N in the environment runs the
# app steps' workloads N times each, medians and every run in the table and JSON). Each
# step's log, and the JSON it writes, land in $OUT ($OUT/REV for @ steps). Needs
# .device/wheels from ../shared/device/prepare.sh (guided decoding's test needs llguidance
# too: `bash ../shared/device/prepare.sh --platform manylinux_2_31_x86_64 llguidance`) and,
# for the app workloads and that test, the default model's tokenizer files in .device/tokenizer.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${OUT:-$root/build/device}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .device/wheels/*.whl
export PYTHONPATH=/tmp/site:$root/backend:$root/kernels:$root/integrations:$root
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PARROTLET_TEST_TOKENIZER=$root/.device/tokenizer OUT=$out
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

gpu_tests=(
  tests/kernels/test_flashinfer_backend.py tests/kernels/test_triton_linear.py
  tests/kernels/test_triton_paged_decode.py tests/kernels/test_triton_prefix_tiles.py
  tests/kernels/test_triton_shared_prefix.py tests/engine/models/test_llama_fused.py
  tests/engine/test_engine_gpu.py tests/engine/test_cuda_graphs_gpu.py tests/serve/test_serve_gpu.py
  tests/engine/test_guided_decoding.py
)

run_step() {
  case "$1" in
    tests) python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short "${gpu_tests[@]}" ;;
    tests-kernels | tests-engine)  # `tests` in two parts (it took 527 s on the H100, 2026-12-07)
      local files=("${gpu_tests[@]:0:5}")
      [ "$1" = tests-engine ] && files=("${gpu_tests[@]:5}")
      python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short "${files[@]}" ;;
    tests:*) local expr=${1#tests:}
      python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short -k "${expr//+/ }" \
        "${gpu_tests[@]}" ;;
    decode) python3 benchmarks/engine_decode.py ;;
    profile) python3 benchmarks/profile_decode_step.py ;;
    profile-shared)
      for context in 5100 5800; do
        python3 benchmarks/profile_decode_step.py --batches 64 16 --context $context \
          --shared-prefix 5000 --attention flashinfer tiles | grep -v "^    " || return 1
      done ;;
    linear) python3 benchmarks/kernel_linear.py --rows 1 4 16 32 64 ;;
    attention) python3 benchmarks/kernel_decode_attention.py ;;
    launch-overhead) python3 benchmarks/launch_overhead.py ;;
    eager-step) python3 benchmarks/profile_eager_step.py ;;
    shared-prefix) python3 benchmarks/kernel_shared_prefix.py --quick ;;
    shared-prefix-sweep) python3 benchmarks/kernel_shared_prefix.py --quick --sweep ;;
    shared-prefix-ws) python3 benchmarks/kernel_shared_prefix.py --quick --ws-sweep ;;
    profile@* | decode@* | shared-prefix@* | app:*@*) run_on_revision "${1%@*}" "${1#*@}" ;;
    apps-a | apps-b | app:*)
      local workloads=(chain-summary map-reduce shared-prompt mixed)  # ~6 min on the H100
      [ "$1" = apps-b ] && workloads=(multi-agent multi-app)  # multi-app: untimed since ab465f2
      [[ "$1" == app:* ]] && workloads=("${1#app:}")
      python3 -m parrotlet.cli bench "${workloads[@]}" --device cuda --arch llama3-8b-random \
        --tokenizer .device/tokenizer --out "$out" --repeat "${REPEAT:-1}" ;;
    *) echo "unknown step $1" >&2; return 2 ;;
  esac
}

run_on_revision() {  # BENCH REV: this tree's benchmark script (an app workload: REV's bench)
  local tree=$root/build/revisions/$2  # on REV's backend and kernels
  [ "$2" = this ] && tree=$root
  if [ ! -d "$tree/backend" ]; then
    echo "no $tree: stage it with benchmarks/stage_revision.sh $2 and carry it" >&2
    return 2
  fi
  local command=(benchmarks/profile_decode_step.py --batches 1 32 --attention triton)
  [ "$1" = decode ] && command=(benchmarks/engine_decode.py --batches 1 32)
  [ "$1" = shared-prefix ] && command=(benchmarks/kernel_shared_prefix.py --quick)
  [[ "$1" == app:* ]] && command=(-m parrotlet.cli bench "${1#app:}" --device cuda
    --arch llama3-8b-random --tokenizer .device/tokenizer --out "$out/$2")
  mkdir -p "$out/$2"
  OUT=$out/$2 PYTHONPATH=/tmp/site:$tree/backend:$tree/kernels:$root/integrations:$root \
    python3 "${command[@]}"
}

status=0
for step in "${@:-tests}"; do
  for one in $step; do
    echo "=== $one"
    # streamed, not tailed: a call cut off by its time limit still shows how far it got; the
    # device tool leaves out files whose names have characters such as + @ :
    run_step "$one" 2>&1 | tee "$out/${one//[^A-Za-z0-9._-]/_}.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  done
done
exit $status
