#!/usr/bin/env bash
# Blackwell/Hopper readiness: every kernels/*.cu builds for sm_90, sm_100 and
# sm_120 with nvcc (-Xptxas -v) and spills no registers. Exit 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
for f in kernels/*.cu; do
  for a in 90 100 120; do
    if ! nvcc -std=c++17 -arch=sm_$a -Xptxas -v -c "$f" -o "$tmp/k.o" >"$tmp/log" 2>&1; then
      echo "FAIL build $f sm_$a"; cat "$tmp/log"; fail=1; continue
    fi
    regs=$(grep -oE "Used [0-9]+ registers" "$tmp/log" | head -1)
    if grep -qE "[1-9][0-9]* bytes spill" "$tmp/log"; then
      echo "FAIL spills $f sm_$a"; grep spill "$tmp/log"; fail=1
    else
      echo "ok   $f sm_$a ($regs, no spills)"
    fi
  done
done
exit $fail
