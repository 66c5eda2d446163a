"""Run a command as the child of this small process; write its peak RSS and CPU time as JSON.

    python -S benchmarks/_peak_rss.py OUT.json COMMAND [ARG ...]

Why a go-between: Linux keeps a process's peak RSS (`ru_maxrss`) across fork and exec as the
larger of its own and that of the process it was forked from, at the fork. A command spawned
straight from the benchmark (hundreds of MiB: pyarrow, deltalake, matplotlib loaded) would report
at least the benchmark's size. Spawned from this process (Python without site, ~10 MiB), the
figure is the command's own: the same high-water mark /proc/PID/status shows as VmHWM.

The command inherits stdin, stdout, stderr and the environment; this process exits with its code.
"""

import json
import os
import sys


def main() -> int:
    out, command = sys.argv[1], sys.argv[2:]
    pid = os.posix_spawnp(command[0], command, os.environ)
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with open(out, "w") as f:
        json.dump({"exit": code, "peak_rss_kib": usage.ru_maxrss, "cpu_s": round(usage.ru_utime + usage.ru_stime, 3)}, f)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
