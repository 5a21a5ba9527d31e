#!/bin/bash
# usage: route_icount.sh FASTMIRROR_BIN PERCENT [CASE...] -> instructions per request, per case
# Each case (benchmarks/issue10/route_config.py: none, miss, last, edits) through
# ../issue8/e2e_icount.sh at 500 and 3000 requests; per request = (c3000 - c500) / 2500.
BIN=$1; PCT=$2; shift 2; CASES=${*:-none miss last edits}
HERE=$(dirname "$0")
for c in $CASES; do
  a=$(ROUTES=$c "$HERE/../issue8/e2e_icount.sh" "$BIN" 500 "$PCT")
  b=$(ROUTES=$c "$HERE/../issue8/e2e_icount.sh" "$BIN" 3000 "$PCT")
  echo "$c $PCT% $(( (b - a) / 2500 ))"
done
