#!/bin/bash
# P = 45, s = 5: loopback and 1 Gb/s ingress, d = 1,033,510 then 11,173,962; 3 runs each.
# Run from the repository root with draco installed (root, for --link).
out=${OUT:-rounds.jsonl}  # (the run of 2026-12-02 wrote /tmp/digest-bench/results.jsonl)
for dim in 1033510 11173962; do
  rounds=6; [ $dim = 11173962 ] && rounds=4
  for link in "" "--link 1gbit"; do
    for rep in 1 2 3; do
      for vote in full digest; do
        python -m draco.cli.bench net --vote $vote --workers 45 --adversaries 5 --dim $dim \
          --rounds $rounds $link >> $out 2>>"$out.err" || echo "FAILED $vote $dim $link" >> $out
      done
    done
  done
done
echo DONE >> $out
