"""The copy of the course package that grading uses: never the live checkout.

* In a git checkout (an editable install): ``git archive HEAD`` of ``dcn_lessons/`` and ``kernels/``. A package
  file that differs from HEAD (edited, deleted, untracked) is not graded with: the snapshot is HEAD's, and
  :attr:`Snapshot.notes` says so, naming the files.
* In an installed package (a wheel): its files as pip recorded them. Each is checked against the hash in the
  wheel's ``RECORD``; a file that no longer matches refuses grading (:class:`GradingError`: reinstall), and a
  file that ``RECORD`` does not list (dropped there later) is not copied.

The snapshot is written once per grading run into the grader's temporary folder, compiled to bytecode, and
mounted read-only into every sandbox; the clean process that computes the verdict imports from it too.
"""
from __future__ import annotations

import base64
import compileall
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from dcn_lessons.grading._base import GradingError


@dataclass
class Snapshot:
    """``root`` holds ``dcn_lessons/`` (and ``kernels/`` when the checkout has it); ``source`` says where it
    came from; ``notes``: what the instructor should know (files that differ from HEAD)."""

    root: Path
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def kernels(self) -> Path | None:
        """The folder of CUDA sources inside the snapshot, if any."""
        for k in (self.root / "kernels", self.root / "dcn_lessons" / "kernels"):
            if k.is_dir():
                return k
        return None


def _git(top: Path, *args: str, binary: bool = False):
    proc = subprocess.run(["git", "-C", str(top), *args], capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise GradingError(f"git {' '.join(args[:2])} failed in {top}: {proc.stderr.decode(errors='replace').strip()[-300:]}")
    return proc.stdout if binary else proc.stdout.decode(errors="replace")


def _checkout_of(pkg: Path) -> Path | None:
    """The top of the git work tree that tracks ``pkg`` (the package folder), or None."""
    if shutil.which("git") is None:
        return None
    proc = subprocess.run(["git", "-C", str(pkg), "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0:
        return None
    top = Path(proc.stdout.strip())
    tracked = subprocess.run(["git", "-C", str(top), "ls-files", "--error-unmatch", "dcn_lessons/__init__.py"],
                             capture_output=True, timeout=60)
    return top if tracked.returncode == 0 and (top / "dcn_lessons").resolve() == pkg else None


def _from_git(top: Path, dest: Path) -> Snapshot:
    head = _git(top, "rev-parse", "--short", "HEAD").strip()
    paths = [p for p in ("dcn_lessons", "kernels") if _git(top, "ls-tree", "HEAD", p).strip()]
    data = _git(top, "archive", "--format=tar", "HEAD", *paths, binary=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        try:
            tar.extractall(dest, filter="data")
        except TypeError:  # Python < 3.11.4 has no filters; git archive writes plain files only
            tar.extractall(dest)
    dirty = [line[3:] for line in _git(top, "status", "--porcelain", "--untracked-files=all", "--", *paths).splitlines()
             if line.strip()]
    notes = []
    if dirty:
        shown = ", ".join(dirty[:6]) + (f" and {len(dirty) - 6} more" if len(dirty) > 6 else "")
        notes.append(f"note: {len(dirty)} package file(s) differ from HEAD in {top} ({shown}): grading with HEAD "
                     f"{head}, not with them (commit them to grade with them)")
    return Snapshot(dest, f"git HEAD {head} of {top}", notes)


def _from_install(pkg: Path, dest: Path) -> Snapshot:
    from importlib import metadata

    try:
        dist = metadata.distribution("dcn_lessons")
    except metadata.PackageNotFoundError:
        dist = None
    files = [f for f in (dist.files or [])] if dist is not None else []
    files = [f for f in files if f.parts and f.parts[0] == "dcn_lessons" and f.hash is not None]
    if not files or Path(dist.locate_file("dcn_lessons")).resolve() != pkg:
        raise GradingError(f"{pkg}: neither a git checkout nor a package pip installed (no RECORD with hashes): "
                           "grading needs one of them to take its snapshot of the checks")
    changed = []
    for f in files:
        src = Path(dist.locate_file(f))
        try:
            data = src.read_bytes()
        except OSError:
            changed.append(str(f))
            continue
        digest = base64.urlsafe_b64encode(hashlib.new(f.hash.mode, data).digest()).rstrip(b"=").decode()
        if digest != f.hash.value:
            changed.append(str(f))
            continue
        target = dest / Path(*f.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    if changed:
        raise GradingError(f"the installed dcn_lessons was changed after pip installed it ({', '.join(changed[:5])}"
                           f"{' ...' if len(changed) > 5 else ''}): reinstall it (pip install --force-reinstall) "
                           "before grading")
    return Snapshot(dest, f"installed dcn_lessons {dist.version} at {pkg} (checked against its RECORD)")


def _seal(dest: Path) -> None:
    """Compile the snapshot's modules to bytecode once (the sandbox cannot) and make it readable by any uid."""
    compileall.compile_dir(str(dest / "dcn_lessons"), quiet=2, workers=1)
    for d, _, names in os.walk(dest):
        os.chmod(d, 0o755)
        for n in names:
            os.chmod(os.path.join(d, n), 0o644)


def take_snapshot(dest: Path) -> Snapshot:
    """Write the snapshot of the imported ``dcn_lessons`` into ``dest`` (an empty folder) and return it."""
    import dcn_lessons

    pkg = Path(dcn_lessons.__file__).resolve().parent
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    top = _checkout_of(pkg)
    snap = _from_git(top, dest) if top is not None else _from_install(pkg, dest)
    if not (dest / "dcn_lessons" / "__init__.py").is_file():
        raise GradingError(f"the snapshot ({snap.source}) holds no dcn_lessons package")
    _seal(dest)
    return snap



def mask_snapshot(snap: Snapshot, names: list[str], dest: Path) -> Snapshot:
    """A copy of ``snap`` in which each ``"dcn_lessons.module:attribute"`` of ``names`` is replaced, at the end of
    its module's source, by a function that raises ``RuntimeError`` saying it is unavailable. Whatever imports it
    (the learner's code, or the package itself) gets the stand-in; nothing in the sandbox can undo it, the copy
    being mounted read-only. Used for the second run of checks that set ``Question.unavailable``."""
    dest = Path(dest)
    shutil.copytree(snap.root, dest, ignore=shutil.ignore_patterns("__pycache__"))
    for name in names:
        module, _, attr = name.partition(":")
        parts = module.split(".")
        if parts[0] != "dcn_lessons" or not attr.isidentifier() or not all(p.isidentifier() for p in parts):
            raise GradingError(f"unavailable: {name!r} is not 'dcn_lessons.module:attribute'")
        base = dest.joinpath(*parts)
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if not path.is_file():
            raise GradingError(f"unavailable: {name!r} names no module of the package ({path} is missing)")
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"\n\ndef {attr}(*args, **kwargs):  # made unavailable by the grader\n"
                    f"    raise RuntimeError({(module + '.' + attr + ' is unavailable while this answer is graded')!r})\n")
    _seal(dest)
    return Snapshot(dest, f"{snap.source}, with {', '.join(names)} unavailable", [])
