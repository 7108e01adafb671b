#!/bin/bash
# The quiet-machine runs of 2026-12-02 ~05:00 UTC (each under /work/quiet.sh: the background
# experiment paused, the CPU lock held exclusively). P = 45, s = 5, 1 Gb/s; vote order
# alternated between runs. Run from the repository root with draco installed (root, --link).
out=${OUT:-rounds-quiet.jsonl}
# d = 1,033,510: 3 runs per vote, 6 rounds (1 warm-up), PS ingress shaped; then both ways.
for shape in "" "--link-both"; do
  for rep in 1 2 3; do
    if [ $((rep % 2)) = 1 ]; then order="full digest"; else order="digest full"; fi
    for vote in $order; do
      python -m draco.cli.bench net --vote $vote --workers 45 --adversaries 5 --dim 1033510 \
        --rounds 6 --link 1gbit $shape >> $out
    done
  done
done
# d = 11,173,962: 2 runs per vote, 3 rounds (1 warm-up), PS ingress shaped.
for rep in 1 2; do
  if [ $((rep % 2)) = 1 ]; then order="full digest"; else order="digest full"; fi
  for vote in $order; do
    python -m draco.cli.bench net --vote $vote --workers 45 --adversaries 5 --dim 11173962 \
      --rounds 3 --link 1gbit >> $out
  done
done
# --vote auto on one machine: draco-run (real workers, fc, d = 1,033,510) in both votes, 2 runs
# each, order alternated; loopback_draco_run.json holds the per-round times.
for rep in 1 2; do
  if [ $((rep % 2)) = 1 ]; then order="full digest"; else order="digest full"; fi
  for vote in $order; do
    draco-run --workers 45 --adversaries 5 --model fc --rounds 12 --eval-every 0 \
      --attack constant --vote $vote --run-dir loop-$vote-$rep > /dev/null
  done
done
