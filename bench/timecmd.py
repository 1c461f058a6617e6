#!/usr/bin/env python3
"""Time one command, or two commands alternated run by run, and print per command `median min max cpu` in
seconds, where cpu is the median user+system CPU time of a run (less sensitive than wall time to other load on
the machine).

One command:   timecmd.py [--runs N] [--warmup N] [--before SH] [--cwd DIR] -- CMD...
Two commands:  timecmd.py [--runs N] [--warmup N] --before SH --cwd DIR --before-b SH --cwd-b DIR -- A... :: B...

With two, each round runs both, and the order swaps every round (A B, B A, A B, ...), so a load swing on a
shared machine lands on both tools alike instead of moving their ratio; one line is printed per command, A
first. --before (--before-b for B) runs a shell command, untimed, before every run, e.g. to delete a cache. Each
run's exit status must equal --expect-rc, or this exits 2 naming the run and showing the command's output, so a
benchmark can never time a failure.
"""
import argparse
import resource
import statistics
import subprocess
import sys
import time


class Timed:
    def __init__(self, cmd, before, cwd):
        self.cmd, self.before, self.cwd = cmd, before, cwd
        self.times, self.cpus = [], []

    def run(self, expect_rc, keep):
        if self.before:
            subprocess.run(self.before, shell=True, check=True, cwd=self.cwd)
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(self.cmd, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        dt = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != expect_rc:
            sys.stderr.write(f"timecmd: {' '.join(self.cmd)} exited {p.returncode}, expected {expect_rc}:\n")
            sys.stderr.write(p.stdout.decode(errors="replace")[-4000:])
            return False
        if keep:
            self.times.append(dt)
            self.cpus.append((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
        return True

    def line(self):
        t = self.times
        return f"{statistics.median(t):.4f} {min(t):.4f} {max(t):.4f} {statistics.median(self.cpus):.4f}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--before", default=None, help="shell command run untimed before each run")
    ap.add_argument("--before-b", default=None, help="the same for the second command")
    ap.add_argument("--expect-rc", type=int, default=0)
    ap.add_argument("--cwd", default=None)
    ap.add_argument("--cwd-b", default=None)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    if "::" in cmd:
        split = cmd.index("::")
        tools = [Timed(cmd[:split], args.before, args.cwd), Timed(cmd[split + 1:], args.before_b, args.cwd_b)]
    else:
        tools = [Timed(cmd, args.before, args.cwd)]
    if any(not t.cmd for t in tools):
        ap.error("no command given")
    for i in range(args.warmup + args.runs):
        order = tools if i % 2 == 0 else list(reversed(tools))
        for tool in order:
            if not tool.run(args.expect_rc, keep=i >= args.warmup):
                return 2
    for tool in tools:
        print(tool.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
