"""Probe the sandbox's confinement and limits; prints one JSON object. Run by ``tests/test_grading_sandbox.py``,
as root and, through ``setpriv``, as an unprivileged user (with a Python that user can read):

    python tests/grading/sandbox_probe.py HOST_SECRET_FILE

The course package is mounted read-only from the checkout (no learner code runs here: the commands are ours).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from dcn_lessons.grading.sandbox import PACKAGE_MOUNT, Limits, Sandbox, process_tree, sandbox_env  # noqa: E402

MARK = "dcn-sandbox-probe-mark"

INSIDE = r"""
import json, os, socket, subprocess, sys
from dcn_lessons.grading.sandbox import drop_privileges
drop_privileges()
out = {"uid": os.getuid(), "euid": os.geteuid()}
status = open("/proc/self/status").read()
out["cap_eff"] = [l.split()[1] for l in status.splitlines() if l.startswith("CapEff")][0]
out["no_new_privs"] = [l.split()[1] for l in status.splitlines() if l.startswith("NoNewPrivs")][0]
def writable(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return True
    except OSError:
        return False
out["write_root"] = writable("/probe")
out["write_usr"] = writable("/usr/probe")
out["write_package"] = writable("/grader/pkg/dcn_lessons/probe.py")
out["write_tmp"] = writable("/tmp/probe")
out["sees_secret"] = os.path.exists(sys.argv[1])
out["sees_checkout"] = os.path.exists(sys.argv[2])
try:
    socket.create_connection(("1.1.1.1", 53), timeout=3)
    out["network"] = True
except OSError:
    out["network"] = False
out["processes_visible"] = sum(e.isdigit() for e in os.listdir("/proc"))
subprocess.Popen(["sh", "-c", f"nohup {sys.executable} -c 'import time; time.sleep(600)' {sys.argv[3]} >/dev/null 2>&1 &"],
                 start_new_session=True)
print(json.dumps(out))
"""

FORK_BOMB = r"""
import os, time
from dcn_lessons.grading.sandbox import drop_privileges
drop_privileges()
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
        n += 1
except OSError as e:
    print("refused after", n, flush=True)
os._exit(3)
"""

MEMORY_HOG = r"""
import os, time
from dcn_lessons.grading.sandbox import drop_privileges
drop_privileges()
for _ in range(4):
    if os.fork() == 0:
        block = bytearray(300 * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(600)
time.sleep(600)
"""


def marked() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if MARK.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def main() -> None:
    secret = sys.argv[1]
    box = Sandbox(enabled=True)
    report = {"root_setup": box.root}
    with tempfile.TemporaryDirectory() as work:
        env = sandbox_env("/tmp/home", {"PYTHONPATH": PACKAGE_MOUNT})
        mount = [(str(REPO / "dcn_lessons"), f"{PACKAGE_MOUNT}/dcn_lessons")]

        def run(code: str, limits: Limits, *args: str):
            return box.run([sys.executable, "-s", "-c", code, *args], env=env, ro=mount, limits=limits,
                           workdir=Path(work), chdir="/tmp")

        out = run(INSIDE, Limits(wall_s=60), secret, str(REPO / "notebooks"), MARK)
        report["inside"] = json.loads(out.stdout.decode().strip().splitlines()[-1]) if out.stdout.strip() else out.log
        report["daemon_left"] = marked()
        start = time.monotonic()
        out = run("from dcn_lessons.grading.sandbox import drop_privileges\ndrop_privileges()\nsum(range(10**14))",
                  Limits(wall_s=3))
        report["gil_loop"] = {"killed": out.killed, "seconds": round(time.monotonic() - start, 2),
                              "leftovers": out.leftovers}
        out = run(FORK_BOMB, Limits(wall_s=20, processes=64))
        report["fork_bomb"] = {"killed": out.killed, "stdout": out.stdout.decode(errors="replace")[-200:],
                               "peak_processes": out.peak_processes, "leftovers": out.leftovers,
                               "seconds": round(out.seconds, 2)}
        out = run(MEMORY_HOG, Limits(wall_s=30, memory_bytes=512 * 2**20))
        report["memory_hog"] = {"killed": out.killed, "reason": out.reason, "peak_memory": out.peak_memory,
                                "leftovers": out.leftovers, "seconds": round(out.seconds, 2)}
    report["probe_tree_after"] = len(process_tree(os.getpid()))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
