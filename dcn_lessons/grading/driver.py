"""What runs inside the sandbox: the submission's notebook, then its answers on the grader's inputs.

Two parts, both from the grader's read-only snapshot of the package:

* :func:`main`, the runner (``python -m dcn_lessons.grading.driver``, the sandbox's command). It reads its
  request from stdin (a JSON line, then the notebook's bytes, then the encoded inputs), starts a fresh kernel with
  nbclient, executes every cell in order (a cell that raises or calls ``sys.exit`` stops nothing), and then runs
  one more cell in that kernel: :func:`collect`. The inputs are written where that cell reads them only then, so
  no cell of the submission can see them earlier. The runner writes one framed result (:data:`MAGIC`, a JSON
  line, the encoded answers) to its stdout, which nothing else in the sandbox inherits, and ends at once:
  ending the sandbox ends the kernel and whatever it started.
* :func:`collect`, executed inside the learner's kernel: for each question of the plan, it loads the check's
  module afresh from the snapshot, looks up the learner's answer by name, runs it on every case's inputs with
  the check's ``run`` step, and writes the raw results in the safe format of ``exercises._core``. It judges
  nothing: a cell that patched NumPy, ``runpy`` or the checks changes only what comes back, and the verdict,
  computed in a clean process from inputs only the grader knows in advance, decides.

Statuses in the result: ``ran`` (answers collected), ``crashed`` (the kernel died), ``tampered`` (the kernel
lived but the collection failed or wrote nothing: the submission broke what the driver needs).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

MAGIC = b"DCN-GRADE-RESULT/1\n"
_STARTED = time.monotonic()
#: Largest request the runner reads (notebook plus inputs).
MAX_REQUEST = 256 * 2**20


def collect(namespace: dict, plan: dict) -> None:
    """Inside the learner's kernel: run every answer on its inputs and write the raw results (see module doc).

    ``plan``: ``exercises`` (the snapshot's ``dcn_lessons/exercises`` folder), ``inputs`` and ``outputs`` (file
    paths), ``questions`` (name -> list of ``{"lesson", "check", "answer"}``). The inputs hold, per question and
    check, the list of each case's arguments; the outputs the same shape of results.
    """
    import runpy

    folder = Path(plan["exercises"])
    core = runpy.run_path(str(folder / "_core.py"))
    inputs = core["decode"](Path(plan["inputs"]).read_bytes(), tensors=True)
    modules: dict = {}
    missing = object()
    outputs = {}
    for name, checks in plan["questions"].items():
        per_check = []
        for i, check in enumerate(checks):
            if check["lesson"] not in modules:
                modules[check["lesson"]] = runpy.run_path(str(folder / f"{check['lesson']}.py"), init_globals=core)
            question = modules[check["lesson"]][check["check"]]
            fn = namespace.get(check["answer"], missing)
            results = []
            for args in inputs[name][i]:
                results.append(core["Failed"]("missing", check["answer"]) if fn is missing else question.run(fn, args))
            per_check.append(results)
        outputs[name] = per_check
    part = Path(plan["outputs"] + ".part")
    part.write_bytes(core["encode"](outputs))
    os.replace(part, plan["outputs"])


def _read_request(stream) -> tuple[dict, bytes, bytes]:
    header = json.loads(stream.readline(1 << 20))
    n_nb, n_in = int(header["notebook_bytes"]), int(header["inputs_bytes"])
    if n_nb + n_in > MAX_REQUEST:
        raise ValueError("request too large")
    notebook, inputs = stream.read(n_nb), stream.read(n_in)
    if len(notebook) != n_nb or len(inputs) != n_in:
        raise ValueError("request cut short")
    return header, notebook, inputs


def _error_of(cell) -> str:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return f"{out.get('ename', 'Error')}: {str(out.get('evalue', ''))[:300]}"
    return ""


def _execute(header: dict, notebook: bytes, inputs: bytes, work: Path, finish) -> None:
    """Run the notebook and the driver cell; hand the result to ``finish(meta, answers)``, which never returns
    (so the kernel is not shut down politely: the sandbox's end kills it at once)."""
    t_import = time.monotonic()
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    times = {"imports_s": round(time.monotonic() - t_import, 3)}
    nb = nbformat.reads(notebook.decode("utf-8"), as_version=4)
    assignment = str(nb.metadata.get("otter", {}).get("assignment_name", "") or "")
    name = f"{assignment}.ipynb" if assignment.isidentifier() or assignment.replace("_", "").isalnum() else ""
    (work / (name or Path(header.get("notebook_name", "submission.ipynb")).name)).write_bytes(notebook)  # otter.Notebook() wants it
    grade_dir = Path(header["grade_dir"])
    grade_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    plan = dict(header["plan"], inputs=str(grade_dir / "inputs.bin"), outputs=str(grade_dir / "outputs.bin"))
    client = NotebookClient(nb, timeout=None, allow_errors=True, kernel_name="python3", startup_timeout=180,
                            resources={"metadata": {"path": str(work)}})
    t0 = time.monotonic()
    errors = 0
    try:
        with client.setup_kernel():
            times["kernel_start_s"] = round(time.monotonic() - t0, 3)
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
                errors += bool(_error_of(cell))
                cell.outputs = []  # keep the runner's memory flat
            times["notebook_s"] = round(time.monotonic() - t0 - times["kernel_start_s"], 3)
            Path(plan["inputs"]).write_bytes(inputs)
            source = (f"__import__('runpy').run_path({str(Path(__file__).resolve())!r}, run_name='dcn_grading_driver')"
                      f"['collect'](globals(), {plan!r})")
            cell = nbformat.v4.new_code_cell(source)
            nb.cells.append(cell)
            t1 = time.monotonic()
            client.execute_cell(cell, len(nb.cells) - 1)
            times["driver_s"] = round(time.monotonic() - t1, 3)
            times["runner_s"] = round(time.monotonic() - _STARTED, 3)
            out_path = Path(plan["outputs"])
            failure = _error_of(cell)
            if failure or not out_path.is_file():
                finish({"status": "tampered", "times": times, "cell_errors": errors,
                        "message": "the grader could not collect your answers in your kernel ("
                                   + (failure or "nothing was written") + "): did a cell replace part of Python, "
                                   "NumPy or the course package?"}, b"")
            finish({"status": "ran", "times": times, "cell_errors": errors, "message": ""}, out_path.read_bytes())
    except DeadKernelError as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else "no reason given"
        finish({"status": "crashed", "times": times, "cell_errors": errors, "message": f"the kernel died ({first})"}, b"")


def _end_children() -> None:
    """Kill what this runner started (the kernel and its children): without the sandbox nothing else would."""
    try:
        from dcn_lessons.grading.sandbox import _kill_tree, process_tree

        _kill_tree(process_tree(os.getpid())[1:])
    except Exception:  # noqa: BLE001  (best effort on the way out)
        pass


def _undumpable() -> None:
    """Make this process non-dumpable: its ``/proc`` entries (open files, memory) then belong to root, so the
    kernel it starts, which runs as the same user, can neither read the inputs from it nor write its result."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):  # not Linux
        pass


def main() -> None:
    from dcn_lessons.grading.sandbox import drop_privileges

    drop_privileges()
    _undumpable()
    result = os.fdopen(os.dup(1), "wb")  # not inherited by the kernel (dup'ed fds are not inheritable)
    os.dup2(2, 1)
    header, notebook, inputs = _read_request(sys.stdin.buffer)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    home = Path(os.environ["HOME"])
    for sub in ("", ".mpl", ".cache", ".config", ".ipython", ".jupyter", ".jupyter-data", ".jupyter-runtime"):
        (home / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    work = Path(header["work_dir"])
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chdir(work)

    def finish(meta: dict, outputs: bytes) -> None:
        meta["outputs_bytes"] = len(outputs)
        result.write(MAGIC + json.dumps(meta).encode() + b"\n" + outputs)
        result.flush()
        _end_children()
        os._exit(0)

    try:
        _execute(header, notebook, inputs, work, finish)
    except Exception as e:  # noqa: BLE001  (the kernel would not start, the notebook would not parse ...)
        finish({"status": "error", "message": f"{type(e).__name__}: {str(e).strip()[:300]}"}, b"")


def parse_result(data: bytes) -> tuple[dict, bytes] | None:
    """The runner's result from its stdout (the last frame), or None when there is none or it is malformed."""
    at = data.rfind(MAGIC)
    if at < 0:
        return None
    rest = data[at + len(MAGIC):]
    line, _, payload = rest.partition(b"\n")
    try:
        meta = json.loads(line)
        n = int(meta["outputs_bytes"])
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(meta, dict) or len(payload) != n:
        return None
    return meta, payload


if __name__ == "__main__":
    main()
