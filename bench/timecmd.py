#!/usr/bin/env python3
"""Time a command: run it --runs times (after --warmup untimed runs) and print `median min max cpu` in seconds,
where cpu is the median user+system CPU time of a run (less sensitive than wall time to other load on the machine).

--before runs a shell command, untimed, before every run (warm-up and timed), e.g. to delete a cache. Each run's
exit status must equal --expect-rc, or this exits 2 naming the run and showing the command's output, so a
benchmark can never time a failure.
"""
import argparse
import resource
import statistics
import subprocess
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--before", default=None, help="shell command run untimed before each run")
    ap.add_argument("--expect-rc", type=int, default=0)
    ap.add_argument("--cwd", default=None)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    if not cmd:
        ap.error("no command given")

    times = []
    cpus = []
    for i in range(args.warmup + args.runs):
        if args.before:
            subprocess.run(args.before, shell=True, check=True, cwd=args.cwd)
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=args.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        dt = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        if p.returncode != args.expect_rc:
            sys.stderr.write(
                f"timecmd: run {i + 1} of {' '.join(cmd)} exited {p.returncode}, expected {args.expect_rc}:\n"
            )
            sys.stderr.write(p.stdout.decode(errors="replace")[-4000:])
            return 2
        if i >= args.warmup:
            times.append(dt)
            cpus.append(cpu)
    print(f"{statistics.median(times):.4f} {min(times):.4f} {max(times):.4f} {statistics.median(cpus):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
