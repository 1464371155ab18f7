"""The clean process: it makes the inputs and judges the answers, and never runs learner code.

``python -m dcn_lessons.grading.verdict prepare|judge`` reads one JSON job from stdin:

* ``exercises``: the snapshot's ``dcn_lessons/exercises`` folder; ``questions``: name -> list of
  ``{"lesson", "check", "answer"}``; ``points``: name -> points;
* ``runs``: ``[{"id", "seed", "path"}]`` -- for ``prepare`` where to write each run's encoded inputs (per question
  and check, every case's ``args`` of ``Question.cases(seed)``); for ``judge`` where its encoded answers are.

``judge`` writes one JSON line per run, in order, as soon as it is judged: ``{"id", "status", "scores",
"feedback", "message"}``. For every case it decodes the raw answer (NumPy without pickles; nothing in it is
executed), recomputes the case from the seed and calls the check's ``verify``, which computes the reference here.
A question scores its points when every case of every check passes; ``feedback`` holds the first failure's
teaching message. Answers that are not shaped as the inputs were (missing question, wrong number of cases, not
decodable) make the run ``tampered``.
"""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path


class _Exercises:
    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.core = runpy.run_path(str(self.folder / "_core.py"))
        self.modules: dict = {}

    def question(self, check: dict):
        lesson = check["lesson"]
        if lesson not in self.modules:
            self.modules[lesson] = runpy.run_path(str(self.folder / f"{lesson}.py"), init_globals=self.core)
        return self.modules[lesson][check["check"]]


def prepare(job: dict, ex: _Exercises) -> dict:
    """Write every run's inputs; return the package attributes each check wants unavailable in a second run."""
    for run in job["runs"]:
        inputs = {name: [[list(case["args"]) for case in ex.question(c).cases(int(run["seed"]))] for c in checks]
                  for name, checks in job["questions"].items()}
        part = Path(run["path"] + ".part")
        part.write_bytes(ex.core["encode"](inputs))
        part.replace(run["path"])
    return {f"{name}/{i}": list(ex.question(c).unavailable)
            for name, checks in job["questions"].items() for i, c in enumerate(checks)}


class _Malformed(Exception):
    pass


def _first_failure(ex: _Exercises, check: dict, cases: list, results) -> str:
    """The teaching message of the first case that fails, or '' when all pass."""
    if not isinstance(results, list) or len(results) != len(cases):
        raise _Malformed
    question = ex.question(check)
    for case, result in zip(cases, results):
        try:
            question.judge(case, result)
        except ex.core["ExerciseError"] as e:
            return str(e)
        except Exception as e:  # noqa: BLE001  (a result no check foresaw)
            return f"{check['answer']}: the check could not use your answer ({type(e).__name__}: {e})"
    return ""


def _load(ex: _Exercises, path: str | None):
    if path is None:
        return None
    try:
        return ex.core["decode"](Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise _Malformed(f"its answers came back in a form the grader does not accept ({e})") from None


def judge_one(job: dict, ex: _Exercises, run: dict) -> dict:
    """The verdict on one run's answers (and, for checks that make package attributes unavailable, on the answers
    of its second run, ``run["masked"]``: None when that run produced none). ``run["plain_only"]``: judge the first
    run alone, as if nothing were made unavailable (the grader asks this to learn whether a second run can change
    anything: a question that fails its first run scores 0 whatever the second)."""
    scores = {name: 0.0 for name in job["questions"]}
    feedback: dict = {}
    try:
        outputs = _load(ex, run["path"])
        masked = _load(ex, run["masked"]) if "masked" in run else None
        for name, checks in job["questions"].items():
            got = outputs.get(name) if isinstance(outputs, dict) else None
            if not isinstance(got, list) or len(got) != len(checks):
                raise _Malformed(f"its answers to {name} are missing or malformed")
            message = ""
            for i, check in enumerate(checks):
                cases = ex.question(check).cases(int(run["seed"]))
                message = _first_failure(ex, check, cases, got[i])
                hidden = ex.question(check).unavailable
                if not message and hidden and not run.get("plain_only"):
                    again = masked.get(name) if isinstance(masked, dict) else None
                    second = again[i] if isinstance(again, list) and len(again) == len(checks) else None
                    try:
                        wrong = second is None or bool(_first_failure(ex, check, cases, second))
                    except _Malformed:
                        wrong = True
                    if wrong:
                        message = (f"{check['answer']}: right only while the package's own "
                                   f"{', '.join(n.replace(':', '.') for n in hidden)} is there to call: the exercise "
                                   "asks you to compute it yourself")
                if message:
                    break
            if message:
                feedback[name] = message
            else:
                scores[name] = float(job["points"][name])
    except _Malformed as e:
        return {"id": run["id"], "status": "tampered", "scores": {q: 0.0 for q in scores}, "feedback": {},
                "message": str(e) or "its answers are missing or malformed"}
    return {"id": run["id"], "status": "graded", "scores": scores, "feedback": feedback, "message": ""}


def main(argv: list[str] | None = None) -> None:
    from dcn_lessons.grading.sandbox import drop_privileges

    drop_privileges()
    mode = (argv if argv is not None else sys.argv[1:])[0]
    job = json.loads(sys.stdin.read())
    ex = _Exercises(job["exercises"])
    if mode == "prepare":
        print(json.dumps({"unavailable": prepare(job, ex)}), flush=True)
        return
    for run in job["runs"]:
        print(json.dumps(judge_one(job, ex, run)), flush=True)


if __name__ == "__main__":
    main()
