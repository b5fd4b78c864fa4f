#!/usr/bin/env python3
"""Where a step's time goes between the processes of a run on one host: reads the DIR/PID.tsv files that
DBP_STEP_TIMELINE=DIR makes `dbp serve`, `dbp worker` and `dbp train --workers N` write (StepTimeline.cs), and
prints for each event the median and quartiles of its time after the step's first `dealt` (the server sending the
step's work), first and last over the processes that record it, and the step's length (one `dealt` to the next
dealt step: with local steps the steps go by H). The first quarter of the steps (JIT, connections) and the last two
are left out, or pass --from STEP. A line cut short (a process killed before its buffer was written) is skipped.
The clock is the host's monotonic clock: processes on different machines cannot be compared this way.
  python3 bench/step-timeline.py DIR [--from STEP]
Events: server dealt / arrived (a worker's gradient in) / covered (every chunk in: the sum and update start) / applied
(with shards: told them to apply); worker received
(its work) / started (θ whole) / computed / bounded (its largest magnitude taken, the gradient sent next); with --server-shards: shard slice-summing, server slice-summed, shard
slice-applying / slice-applied."""
import argparse, collections, glob, os, statistics, sys


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--from", dest="first", type=int, default=None, help="first step to include")
    args = parser.parse_args()
    files = glob.glob(os.path.join(args.dir, "*.tsv"))
    if not files:
        sys.exit(f"step-timeline.py: no .tsv files in {args.dir} (was DBP_STEP_TIMELINE={args.dir} set for the run?)")
    events = collections.defaultdict(lambda: collections.defaultdict(list))
    per_second = None
    cut = 0
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if line.startswith("# ticks per second "):
                    per_second = float(line.split()[4].rstrip(";"))
                    continue
                fields = line.rstrip("\n").split("\t")
                try:
                    ticks, what, step, _who = fields
                    events[int(step)][what].append(int(ticks))
                except ValueError:
                    cut += 1
    if cut:
        print(f"step-timeline.py: skipped {cut} line(s) that are not ticks, event, step, who", file=sys.stderr)
    if per_second is None:
        sys.exit(f"step-timeline.py: no header line in the files of {args.dir}")
    dealt = sorted(s for s in events if "dealt" in events[s])
    if len(dealt) < 4:
        sys.exit(f"step-timeline.py: only {len(dealt)} steps with a `dealt` event in {args.dir}")
    first = args.first if args.first is not None else dealt[len(dealt) // 4]
    following = dict(zip(dealt, dealt[1:]))
    steps = [s for s in dealt if first <= s <= dealt[-3]]
    if not steps:
        sys.exit(f"step-timeline.py: no dealt step from {first} to {dealt[-3]} in {args.dir}")
    micro = 1e6 / per_second
    rows = collections.defaultdict(list)
    for s in steps:
        start = min(events[s]["dealt"])
        rows["(next step dealt)"].append((min(events[following[s]]["dealt"]) - start) * micro)
        for what, ticks in events[s].items():
            rows[f"{what}, first"].append((min(ticks) - start) * micro)
            if len(ticks) > 1:
                rows[f"{what}, last"].append((max(ticks) - start) * micro)
    print(f"steps {steps[0]}..{steps[-1]} ({len(steps)}); µs after the step's first `dealt`: median (quartiles)")
    for name, values in sorted(rows.items(), key=lambda kv: statistics.median(kv[1])):
        if len(values) < max(3, len(steps) // 2):
            continue
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        print(f"  {name:28s} {statistics.median(values):9.0f}  ({q[0]:.0f}–{q[2]:.0f})")


if __name__ == "__main__":
    main()
