#!/usr/bin/env python3
"""Interleaved comparison of `dbp bench` with the reference systems of ../shared/peers, same machine,
same moment: for each round, each configuration runs ours, then PyTorch, back to back. Ratios are
computed per round and the median reported, because absolute figures drift on a shared machine.

    /usr/bin/python3 bench/peers/compare.py training [--rounds 3] [--batches 32,128,512] [--threads 1,2]
    /usr/bin/python3 bench/peers/compare.py gemm [--rounds 3] [--batches 32,128,512]
    /usr/bin/python3 bench/peers/compare.py actors [--rounds 3]

PyTorch is Debian's python3-torch with OpenBLAS (apt: python3-torch python3-threadpoolctl
libopenblas0-pthread). OpenBLAS 0.3.21 does not recognise every CPU: where it falls back to a generic
kernel ("Prescott"), the peer is measured twice, as detected and with OPENBLAS_CORETYPE forced to the
best kernel the CPU runs (--coretype, default SkylakeX when the CPU has AVX-512, else Haswell), and the
faster of the two is the one ratios are taken against.
"""
import argparse, json, os, re, signal, statistics, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PEERS = os.path.join(os.path.dirname(REPO), "shared", "peers")
DBP = os.path.join(REPO, "src", "DistributedBackprop.Cli", "bin", "Release", "net10.0", "dbp")


def default_coretype():
    flags = open("/proc/cpuinfo").read()
    return "SkylakeX" if "avx512f" in flags else "Haswell"


def ours_command(batch, threads, extra=()):
    return [DBP, "bench", "--batch-size", str(batch), "--threads", str(threads), "--no-gemm", "--json", *extra]


def ours(batch, threads, extra=()):
    out = subprocess.run(ours_command(batch, threads, extra), check=True, capture_output=True, text=True).stdout
    return json.loads(out)


DDP_SECONDS = 300


def ddp(coretype):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    env.pop("OPENBLAS_CORETYPE", None)
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    # On a Zen 5 VM (2026-12-02) a gloo process spun at 100 % for 14 minutes without finishing: bounded, and the
    # whole process group ended (the spawned processes would outlive their parent), so the round goes on without it.
    proc = subprocess.Popen(["/usr/bin/python3", os.path.join(PEERS, "torch_ddp.py")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=PEERS, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=DDP_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        print(f"compare.py: PyTorch DDP did not finish within {DDP_SECONDS} s; its figures are left out of this round", file=sys.stderr)
        return {}
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, out, err)
    return {name: float(v) for name, v in re.findall(r"^(\w+)\s+world=\d+ batch/proc=\d+ ddp=\w+: median\s+([0-9.]+)", out, re.M)}


def torch(batch, threads, coretype):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    env.pop("OPENBLAS_CORETYPE", None)
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    out = subprocess.run(["/usr/bin/python3", os.path.join(PEERS, "torch_mlp.py"), "throughput", "--arch", "relu",
                          "--batches", str(batch), "--threads", str(threads)], check=True, capture_output=True, text=True, env=env).stdout
    m = re.search(r"median\s+([0-9.]+) samples/s", out)
    kernel = re.search(r"'openblas', '[^']*', '([^']*)'", out)
    return float(m.group(1)), kernel.group(1) if kernel else "?"


def training(args):
    rows = {}
    for r in range(args.rounds):
        for threads in args.threads:
            for batch in args.batches:
                o = ours(batch, threads)["samples_per_second"]
                detected, kernel = torch(batch, threads, None)
                forced, forced_kernel = torch(batch, threads, args.coretype)
                best = max(detected, forced)
                key = (threads, batch)
                rows.setdefault(key, []).append((o, detected, forced, best, kernel, forced_kernel))
                print(f"round {r + 1} threads {threads} batch {batch}: ours {o:,.0f}  torch[{kernel}] {detected:,.0f}  torch[{forced_kernel}] {forced:,.0f}  ratio {o / best:.2f}", file=sys.stderr)
    print("| threads | batch | ours samples/s | PyTorch (OpenBLAS as detected) | PyTorch (OpenBLAS forced) | ours / best PyTorch |")
    print("|---|---|---|---|---|---|")
    for (threads, batch), runs in sorted(rows.items()):
        med = lambda i: statistics.median(x[i] for x in runs)
        ratio = statistics.median(x[0] / x[3] for x in runs)
        print(f"| {threads} | {batch} | {med(0):,.0f} | {med(1):,.0f} ({runs[0][4]}) | {med(2):,.0f} ({runs[0][5]}) | {ratio:.2f} (min {min(x[0] / x[3] for x in runs):.2f}, n={len(runs)}) |")


def core_to_core_ns():
    """A cache line's one-way trip between cores 0 and 1 now (bench/core-to-core.sh); NaN where it cannot run (one core, no gcc).
    On this project's 2-vCPU VMs it moves between ~50 and ~250 ns as the hypervisor places the vCPUs, and with it how
    long every line the other core wrote last takes to read: the local-mode update's lanes took 43–50 µs in a round at
    the short distance and 102–128 µs in rounds at the long one (README, "Where two cores lose")."""
    try:
        out = subprocess.run(["bash", os.path.join(REPO, "bench", "core-to-core.sh")], check=True, capture_output=True, text=True).stdout
        return float(re.search(r"([0-9.]+) ns one way", out).group(1))
    except (subprocess.CalledProcessError, AttributeError, FileNotFoundError):
        return float("nan")


def two_halves_at_once(data):
    """Samples/s of two plain single-thread trainers run at the same moment, pinned to cores 0 and 1, each on half of
    the 2-worker step (batch 128 in 4 chunks, as each worker computes with --workers 2 at batch 256), summed: two
    cores' worth of the same work with no exchange at all, each process updating its own model. What any local-mode
    design could reach on the round's placement; NaN where there are not two cores."""
    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        return float("nan")
    cmd = ours_command(128, 1, ["--chunks", "4", "--data", data])
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda c=c: os.sched_setaffinity(0, {c})) for c in cores]
    total = 0.0
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, out, err)
        total += json.loads(out)["samples_per_second"]
    return total


def actors(args):
    """Local mode (issue: actors): batch 256 on Fashion-MNIST rows; plain trainer, 1 and 2 worker actors,
    PyTorch 2 threads (batch 256) and PyTorch DDP (2 gloo processes, 128 each), and two plain single-thread trainers at
    once on half the step each (two_halves_at_once: the ceiling with no exchange). Each round also times a cache line
    between the two cores just before and just after the 2-worker run: the round's scaling depends on it."""
    data = os.path.join(os.path.dirname(REPO), "shared", "datasets", "fashion-mnist")
    runs = []
    for r in range(args.rounds):
        row = {}
        for name, threads, extra in [("plain_1t", 1, []), ("workers_1", 1, ["--workers", "1"]), ("workers_2", 1, ["--workers", "2"]), ("plain_2t", 2, [])]:
            if name == "workers_2":
                row["core_to_core_ns_before"] = core_to_core_ns()
            res = ours(256, threads, ["--data", data, *extra])
            if name == "workers_2":
                row["core_to_core_ns_after"] = core_to_core_ns()
            row[name] = res["samples_per_second"]
            if name == "workers_2":
                row["server_fraction"] = res.get("server_time_fraction", float("nan"))
                row["wait_fraction"] = res.get("wait_for_slowest_fraction", float("nan"))
                copies = res.get("theta_copies_fraction")  # null when no epoch ended while timed
                row["theta_copies_fraction"] = float("nan") if copies is None else copies
        row["halves_2"] = two_halves_at_once(data)
        row["torch_2t"] = max(torch(256, 2, None)[0], torch(256, 2, args.coretype)[0])
        d = ddp(args.coretype)
        row["ddp_2"] = d.get("ddp2", float("nan"))
        row["ddp_base"] = d.get("base", float("nan"))
        runs.append(row)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:,.3f}" if v < 10 else f"{k} {v:,.0f}" for k, v in row.items()), file=sys.stderr)
    med = lambda k: statistics.median(x[k] for x in runs)
    ratio = lambda a, b: statistics.median(x[a] / x[b] for x in runs)
    print("| configuration (batch 256, Fashion-MNIST rows) | samples/s (median) |")
    print("|---|---|")
    for k, label in [("plain_1t", "plain trainer, 1 thread"), ("plain_2t", "plain trainer, 2 threads"), ("workers_1", "local mode, 1 worker actor"),
                     ("workers_2", "local mode, 2 worker actors"), ("torch_2t", "PyTorch, 2 threads (best OpenBLAS kernel)"),
                     ("halves_2", "two plain 1-thread trainers at once, batch 128 each, summed (no exchange)"), ("ddp_2", "PyTorch DDP, 2 gloo processes × 128"), ("ddp_base", "PyTorch 1 process, no DDP, batch 128")]:
        print(f"| {label} | {med(k):,.0f} |")
    print()
    rounds = lambda a, b: ", ".join(f"{x[a] / x[b]:.2f}" for x in runs)
    print(f"- scaling, 2 workers / 1 worker: {ratio('workers_2', 'workers_1'):.2f} (rounds {rounds('workers_2', 'workers_1')})")
    print(f"- no exchange at all, two single-thread trainers at once on half the step each (batch 128, 4 chunks, cores pinned) / 1 worker: "
          f"{ratio('halves_2', 'workers_1'):.2f} (rounds {rounds('halves_2', 'workers_1')}); 2 workers / those two: {ratio('workers_2', 'halves_2'):.2f} "
          f"(rounds {rounds('workers_2', 'halves_2')})")
    print(f"- actor overhead, 1 worker / plain trainer: {ratio('workers_1', 'plain_1t'):.2f} (rounds {rounds('workers_1', 'plain_1t')})")
    print(f"- 2 workers / plain trainer with 2 threads: {ratio('workers_2', 'plain_2t'):.2f} (rounds {rounds('workers_2', 'plain_2t')})")
    print(f"- 2 workers / PyTorch 2 threads: {ratio('workers_2', 'torch_2t'):.2f}; 2 workers / PyTorch DDP: {ratio('workers_2', 'ddp_2'):.2f}")
    print(f"- parameter server share of the step with 2 workers: {med('server_fraction'):.1%}; waiting for the slower worker: {med('wait_fraction'):.1%}")
    copies = ", ".join(f"{r.get('theta_copies_fraction', float('nan')):.0%}" for r in runs)
    print(f"- steps whose update kept a copy of θ per worker (auto's layout tuner), per round: {copies}")
    print(f"- a cache line between the two cores, before / after each round's 2-worker run (ns one way): "
          + ", ".join(f"{x['core_to_core_ns_before']:.0f}/{x['core_to_core_ns_after']:.0f}" for x in runs))
    print(f"- rounds: {len(runs)}")


# OpenBLAS timed on any list of shapes with the peers' own loop (gemm_bench.bench: 5 repetitions of ~0.4 s, median).
NUMPY_SHAPES = """import json, statistics, sys
sys.path.insert(0, sys.argv[1])
from gemm_bench import bench
print(json.dumps({s: statistics.median(bench(*map(int, s.split("x")))) for s in sys.argv[2:]}))
"""


LIBBLAS = "/usr/lib/x86_64-linux-gnu/libblas.so.3"


def require_openblas():
    """numpy and PyTorch call their matrix products through the BLAS that Debian's libblas.so.3 alternative names.
    Without libopenblas0-pthread that is the reference BLAS (3-6 GFLOP/s here; numpy's threadpoolctl still lists
    OpenBLAS when only its LAPACK is installed), and every ratio against it would read 10-20x: refuse instead."""
    if os.path.exists(LIBBLAS) and "openblas" not in os.path.realpath(LIBBLAS):
        sys.exit(f"compare.py: {LIBBLAS} is {os.path.realpath(LIBBLAS)}, not OpenBLAS, so numpy and PyTorch would run the "
                 "reference BLAS; apt-get install libopenblas0-pthread (or update-alternatives --auto libblas.so.3-x86_64-linux-gnu)")


def numpy_gemm_shapes(coretype, shapes):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    env.pop("OPENBLAS_CORETYPE", None)
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    out = subprocess.run(["/usr/bin/python3", "-c", NUMPY_SHAPES, PEERS, *shapes], check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out)


def gemm(args):
    """Every matrix product of a 784-256-128-10 step at each batch (forward, input gradients, and the weight
    gradients as the trainer runs them: the chunk tree's product over 8 chunks), ours from `dbp bench`'s own
    timing of the step's products, OpenBLAS on the same (m×k)·(k×n) as a plain product, both as a fraction of
    the peak FLOP/s `dbp bench` measures for one core with a pure-FMA loop."""
    rows, peaks = {}, []
    for r in range(args.rounds):
        for batch in args.batches:
            out = subprocess.run([DBP, "bench", "--batch-size", str(batch), "--seconds", "0.1", "--windows", "1", "--warmup", "0.1", "--json"],
                                 check=True, capture_output=True, text=True).stdout
            report = json.loads(out)
            peaks.append(report["peak_gflops"])
            # Two products may share a shape (layer 1's input and weight gradients at batch 128): keyed by name too.
            mine = {(f"layer {g['layer']} {g['product']}", f"{g['m']}x{g['k']}x{g['n']}"): g["gflops"] for g in report["gemm"]}
            shapes = sorted({shape for _, shape in mine})
            detected = numpy_gemm_shapes(None, shapes)
            forced = numpy_gemm_shapes(args.coretype, shapes)
            for (name, shape), gflops in mine.items():
                rows.setdefault((batch, name, shape), []).append((gflops, detected[shape], forced[shape]))
        print(f"round {r + 1} done", file=sys.stderr)
    peak = statistics.median(peaks)
    print(f"peak of one core (pure-FMA loop, `dbp bench`): {peak:.1f} GFLOP/s")
    print()
    print(f"| batch | product | (m×k)·(k×n) | ours GFLOP/s (of peak) | OpenBLAS as detected | OpenBLAS {args.coretype} | ours / best OpenBLAS |")
    print("|---|---|---|---|---|---|---|")
    for (batch, name, shape), runs in rows.items():
        m, k, n = shape.split("x")
        med = lambda i: statistics.median(x[i] for x in runs)
        ratio = statistics.median(x[0] / max(x[1], x[2]) for x in runs)
        print(f"| {batch} | {name} | ({m}×{k})·({k}×{n}) | {med(0):.1f} ({med(0) / peak:.0%}) | {med(1):.1f} ({med(1) / peak:.0%}) "
              f"| {med(2):.1f} ({med(2) / peak:.0%}) | {ratio:.2f} (n={len(runs)}) |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["training", "gemm", "actors"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", default="32,128,512")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--coretype", default=default_coretype())
    args = p.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.threads = [int(t) for t in args.threads.split(",")]
    if not os.path.exists(DBP):
        sys.exit(f"build first: dotnet build -c Release src/DistributedBackprop.Cli  ({DBP} is missing)")
    if not os.path.isdir(PEERS):
        sys.exit(f"the peer scripts are expected in {PEERS}")
    require_openblas()
    {"training": training, "gemm": gemm, "actors": actors}[args.what](args)


if __name__ == "__main__":
    main()
