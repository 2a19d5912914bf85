#!/usr/bin/env bash
# Stage git revisions for a before/after on the GPU machine: device_run.sh's profile@REV,
# decode@REV and shared-prefix@REV steps run the benchmark on REV's backend and kernels (this
# tree's benchmark scripts). Carry build/revisions/REV (`run`'s carry) next to .device.
#
#   bash benchmarks/stage_revision.sh REV ...     # prints each staged folder
set -euo pipefail
cd "$(dirname "$0")/.."
for rev in "$@"; do
  dir=build/revisions/$rev
  rm -rf "$dir"
  mkdir -p "$dir"
  git archive "$rev" backend kernels | tar -x -C "$dir"
  echo "$dir"
done
