"""Runs a command and writes what it cost: wall time, the CPU time of the command and every
process below it (getrusage RUSAGE_CHILDREN: user + system, summed over all descendants
that were waited for, which is every compiler a build runs), and the largest resident set
of any one of them. Usage: python rusage.py OUT.json COMMAND [ARGS...]; exits with the
command's exit code.
"""

import json
import os
import resource
import subprocess
import sys
import time


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    started = time.monotonic()
    code = subprocess.call(argv)
    wall = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    record = {"schema_version": 1, "argv": argv, "exit_code": code,
              "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
              "user_seconds": round(usage.ru_utime, 1), "system_seconds": round(usage.ru_stime, 1),
              "max_rss_of_one_process_gb": round(usage.ru_maxrss / 1024 / 1024, 2),
              "cores": os.cpu_count(),
              "parallel_efficiency": round(cpu / (wall * (os.cpu_count() or 1)), 3) if wall else None}
    with open(out, "w") as handle:
        json.dump(record, handle, indent=2)
    return code


if __name__ == "__main__":
    sys.exit(main())
