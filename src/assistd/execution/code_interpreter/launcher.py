"""Runs inside the sandbox as the session's first process: set the resource limits, then
become the IPython kernel. Standard library only; assistd itself is not visible in the sandbox.

argv: a JSON object {"RLIMIT_…": [soft, hard], …}, then the kernel's own arguments.
"""

import json
import os
import resource
import sys


def main() -> None:
    for name, value in json.loads(sys.argv[1]).items():
        resource.setrlimit(getattr(resource, name), tuple(value))
    os.nice(10)  # the host's own work goes first
    os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", *sys.argv[2:]])


main()
