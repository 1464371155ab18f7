"""Where a submission runs: a bubblewrap sandbox per run, with limits, watched from outside.

One :class:`Sandbox` runs one command at a time per call of :meth:`Sandbox.run` (several calls may run at once,
each in its own sandbox). With bubblewrap (``bwrap``, Flatpak's sandbox; Debian/Ubuntu package ``bubblewrap``):

* new namespaces for PIDs, network, IPC, UTS and cgroups: the command is PID 2 under bubblewrap's init; when the
  sandbox ends (the command exits, or we kill bubblewrap), the kernel ends every process in it -- no daemon,
  detached child or orphan kernel survives. No network: the sandbox has only its own loopback.
* an unprivileged user: run as a normal user, bubblewrap maps uid 65534 in a new user namespace (no capability,
  and no further user namespaces inside); run as root, bubblewrap sets the sandbox up with root's privileges and
  the command first drops to a uid of its own (:func:`drop_privileges`, one uid per concurrent run, so that one
  sandbox's process count never starves another's) with no capability and ``no_new_privs``.
* the root file system read-only and nearly empty: ``/usr`` (and the ``/bin``, ``/lib*`` links), a few files
  of ``/etc`` (the loader cache, alternatives, fonts), the Python installation and the virtual environment,
  read-only. Files of ``site-packages`` that would import the course package from the checkout (an editable
  install's ``.pth`` and finder) are hidden, so the package can only come from the read-only snapshot the grader
  mounts. Nothing else of the host is there: not the checkout, the masters, ``build/``, other submissions, the
  grader's files or the CSV.
* a private, size-limited tmpfs on ``/tmp`` and ``/dev/shm``, the only writable places.
* limits: per process, address space, CPU time, file size and core dumps (``setrlimit``), and the number of
  processes of the sandbox's uid; from outside, a watchdog polls the sandbox's process tree and kills the whole
  sandbox at the wall-clock limit, when its processes together hold more memory (PSS) than allowed, or when it
  has more processes than allowed.

``Sandbox(enabled=False)`` (``grade --no-sandbox``) runs the same command as a plain child process, in its own
session, with the same limits and watchdog: no isolation at all (see :data:`NO_SANDBOX_WARNING`).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dcn_lessons.grading._base import GradingError

#: Said on every run with ``--no-sandbox``.
NO_SANDBOX_WARNING = (
    "warning: --no-sandbox: submissions run as you, unconfined: they can read and change your files (the "
    "masters, other submissions, the CSV), reach the network and leave processes behind. Only the comparison "
    "stays out of their reach (it runs in a separate process on their raw answers). Grade untrusted work only "
    "inside a sandbox (install bubblewrap) or a container."
)

#: Where the grader's snapshot of the course package appears inside the sandbox (read-only).
PACKAGE_MOUNT = "/grader/pkg"
#: Where the grader's per-run files appear inside the sandbox.
IO_MOUNT = "/grader/io"
#: First uid of the runs when the grader is root (one per concurrent run).
ROOT_RUN_UID = 1_700_000_000

_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "fonts", "localtime")


@dataclass(frozen=True)
class Limits:
    """What one run may use. ``wall_s``: seconds, enforced from outside; ``memory_bytes``: the sum of its
    processes' proportional set size (and, per process, twice that as address space); ``processes``: how many
    at once; ``tmp_bytes``: each private tmpfs; ``file_bytes``: the largest file it may write."""

    wall_s: float = 300.0
    memory_bytes: int = 6 * 2**30
    processes: int = 256
    tmp_bytes: int = 2 * 2**30
    file_bytes: int = 512 * 2**20


@dataclass
class Outcome:
    """How a run ended. ``killed``: None when it ended by itself, else ``"timeout"``, ``"memory"``,
    ``"processes"`` or ``"cancelled"`` (the watchdog ended it, with ``reason`` saying so). ``stdout``: at most
    ``max_stdout`` bytes of what it wrote there; ``log``: the tail of what it wrote to stderr."""

    returncode: int | None
    stdout: bytes
    log: str
    killed: str | None = None
    reason: str = ""
    seconds: float = 0.0
    peak_memory: int = 0
    peak_processes: int = 0
    leftovers: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- processes
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (from ``/proc``; processes that left the tree are not found)."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def _memory(pid: int) -> int:
    """Proportional set size of ``pid`` in bytes (resident size where smaps_rollup is missing); 0 when gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _identity(pid: int) -> int | None:
    """The start time of ``pid`` (which, with the pid, names one process for good), or None when it is gone or
    a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == b"Z" else int(fields[19])


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    return _identity(pid) is not None


def _uid_pids(uid: int) -> list[int]:
    """The processes (not zombies) that run as ``uid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid and _alive(int(entry)):
                    out.append(int(entry))
            except OSError:
                continue
    return out


def _namespace_members(ns: str) -> list[int]:
    """The live processes whose PID namespace is ``ns`` (as ``/proc/PID/ns/pid`` reads, e.g. ``pid:[4026532189]``);
    processes we may not inspect are not ours and are skipped."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns and _alive(int(entry)):
                    out.append(int(entry))
            except OSError:
                continue
    return out


def _read_info(fd: int, wait_s: float = 30.0) -> dict:
    """bubblewrap's ``--info-fd`` JSON (``child-pid``: the sandbox's first process, as the host sees it); {} when
    it ended before writing it."""
    import select

    data, deadline = b"", time.monotonic() + wait_s
    while b"}" not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    try:
        return json.loads(data.decode())
    except ValueError:
        return {}


def _kill_tree(pids: list[int]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def drop_privileges() -> None:
    """Inside a sandbox set up by root: become ``DCN_GRADE_UID`` (no groups, no capability left). Does nothing
    for any other caller; the first thing the sandboxed commands do."""
    uid = os.environ.pop("DCN_GRADE_UID", "")
    if not uid or os.geteuid() != 0:
        return
    os.setgroups([])
    os.setresgid(int(uid), int(uid), int(uid))
    os.setresuid(int(uid), int(uid), int(uid))
    if os.geteuid() == 0 or os.getuid() == 0:  # pragma: no cover  (setresuid cannot half-succeed)
        raise SystemExit("could not drop root privileges")


# ------------------------------------------------------------------------------------------------ the limits
_LIMITS_CODE = (
    "import os, resource, sys, json\n"
    "lim = json.loads(sys.argv[1])\n"
    "for name, value in lim.items():\n"
    "    which = getattr(resource, name)\n"
    "    hard = resource.getrlimit(which)[1]\n"
    "    value = value if hard == resource.RLIM_INFINITY else min(value, hard)\n"
    "    resource.setrlimit(which, (value, value))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def _rlimits(limits: Limits, nproc: int) -> dict[str, int]:
    return {
        "RLIMIT_AS": 2 * limits.memory_bytes,
        "RLIMIT_CPU": int(limits.wall_s) + 10,
        "RLIMIT_FSIZE": limits.file_bytes,
        "RLIMIT_CORE": 0,
        "RLIMIT_NPROC": nproc,
    }


def _user_tasks(uid: int) -> int:
    """How many tasks (threads included) ``uid`` runs now: what RLIMIT_NPROC counts."""
    n = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                n += len(os.listdir(f"/proc/{entry}/task"))
        except OSError:
            continue
    return n


# ----------------------------------------------------------------------------------------------- the sandbox
class Sandbox:
    """Runs commands confined by bubblewrap (``enabled=True``) or unconfined (``enabled=False``).

    ``enabled=True`` raises :class:`GradingError` when bubblewrap is missing or cannot create its namespaces here
    (the message says what to do); :meth:`check` is that test on its own.
    """

    def __init__(self, enabled: bool = True, bwrap: str | None = None) -> None:
        self.enabled = enabled
        self.root = os.geteuid() == 0
        self.bwrap = bwrap or shutil.which("bwrap") or ""
        self._slots = list(range(64))
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        if enabled:
            self.check()

    # -- set-up
    def check(self) -> None:
        """Raise :class:`GradingError` unless bubblewrap runs a command here."""
        if not self.bwrap:
            raise GradingError(
                "bubblewrap (bwrap) was not found: grading runs every submission in a bubblewrap sandbox. Install it "
                "(Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap; Arch: pacman -S "
                "bubblewrap), or grade inside a container (see the README), or pass --no-sandbox to run submissions "
                "unconfined"
            )
        try:
            proc = subprocess.run(self._bwrap_argv([], [], {}, None, Limits()) + ["/bin/true"],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise GradingError(f"bubblewrap ({self.bwrap}) could not start: {e}") from None
        if proc.returncode != 0:
            raise GradingError(
                f"bubblewrap ({self.bwrap}) cannot create its sandbox here: {proc.stderr.strip()[-300:]}. It needs "
                "user namespaces (sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0) or to "
                "run as root; inside Docker or Podman see the README. Or pass --no-sandbox to run submissions "
                "unconfined"
            )

    def _python_dirs(self) -> list[str]:
        dirs = {sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix,
                str(Path(sys.executable).parent), str(Path(os.path.realpath(sys.executable)).parent.parent)}
        dirs = sorted(d for d in dirs if d and os.path.isdir(d) and not d.startswith("/usr"))
        return [d for d in dirs if not any(d != o and d.startswith(o.rstrip("/") + "/") for o in dirs)]

    def _hidden_files(self) -> list[str]:
        """Files of site-packages that would import the course package from outside the snapshot: an editable
        install's ``.pth`` and finder, and a ``.pth`` that names the package's folder."""
        import site

        hidden = []
        import dcn_lessons

        home = str(Path(dcn_lessons.__file__).resolve().parent.parent)
        for sp in {*site.getsitepackages(), *(p for p in sys.path if p.endswith("site-packages"))}:
            if not os.path.isdir(sp):
                continue
            for name in os.listdir(sp):
                path = os.path.join(sp, name)
                if not os.path.isfile(path):
                    continue
                if name.startswith("__editable__") and "dcn_lessons" in name:
                    hidden.append(path)
                elif name.endswith(".pth"):
                    try:
                        text = Path(path).read_text(errors="replace")
                    except OSError:
                        continue
                    if "dcn_lessons" in text or home in text:
                        hidden.append(path)
        return sorted(hidden)

    def _bwrap_argv(self, ro: list[tuple[str, str]], rw: list[tuple[str, str]], env: dict[str, str],
                    chdir: str | None, limits: Limits, info_fd: int | None = None) -> list[str]:
        a = [self.bwrap, *(["--info-fd", str(info_fd)] if info_fd is not None else []), "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
             "--die-with-parent", "--new-session", "--hostname", "grader"]
        if self.root:  # set up with root's privileges; the command drops to its own uid (drop_privileges)
            a += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            a += ["--unshare-user", "--uid", "65534", "--gid", "65534", "--disable-userns", "--cap-drop", "ALL"]
        for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            p = f"/{top}"
            if os.path.islink(p):
                a += ["--symlink", os.readlink(p), p]
            elif os.path.isdir(p):
                a += ["--ro-bind", p, p]
        a += ["--ro-bind", "/usr", "/usr"]
        for name in _ETC:
            if os.path.exists(f"/etc/{name}"):
                a += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        for d in self._python_dirs():
            a += ["--perms", "0755", "--dir", str(Path(d).parent), "--ro-bind", d, d]
        for f in self._hidden_files():
            a += ["--ro-bind", "/dev/null", f]
        for src, dst in ro:
            a += ["--perms", "0755", "--dir", str(Path(dst).parent), "--ro-bind", src, dst]
        for src, dst in rw:
            a += ["--perms", "0755", "--dir", str(Path(dst).parent), "--bind", src, dst]
        a += ["--proc", "/proc", "--dev", "/dev",
              "--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
              "--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/dev/shm",
              "--remount-ro", "/", "--clearenv"]
        for k, v in env.items():
            a += ["--setenv", k, v]
        if chdir:
            a += ["--chdir", chdir]
        return a + ["--"]

    # -- running
    def cancel(self) -> None:
        """End every run now, and every later one at once (after Ctrl-C, say)."""
        self._cancelled.set()

    def run(self, argv: list[str], *, env: dict[str, str], ro: list[tuple[str, str]] = (),
            rw: list[tuple[str, str]] = (), stdin: Path | None = None, limits: Limits = Limits(),
            workdir: Path, chdir: str | None = None, max_stdout: int = 300 * 2**20) -> Outcome:
        """Run ``argv`` (paths as the sandbox sees them) with environment ``env`` only, ``ro``/``rw`` as (host
        path, sandbox path) mounts, ``stdin`` from a file. ``workdir``: a host folder of this run, for its stdout
        and stderr files (and, without the sandbox, ``/tmp``). Returns when every process of the run has ended."""
        with self._lock:  # the least recently used uid: its last run's processes are long gone
            slot = self._slots.pop(0)
        try:
            return self._run(list(argv), dict(env), list(ro), list(rw), stdin, limits, Path(workdir), chdir,
                             max_stdout, slot)
        finally:
            with self._lock:
                self._slots.append(slot)

    def _run(self, argv, env, ro, rw, stdin, limits, workdir, chdir, max_stdout, slot) -> Outcome:
        out_path, err_path = workdir / "stdout", workdir / "stderr"
        uid = ROOT_RUN_UID + slot if self.enabled and self.root else None
        if uid is not None:  # a uid of our own: nothing else may run as it (a previous run still ending, say)
            deadline = time.monotonic() + 10
            while _uid_pids(uid) and time.monotonic() < deadline:
                _kill_tree(_uid_pids(uid))
                time.sleep(0.05)
        if self.enabled:
            if self.root:
                env = dict(env, DCN_GRADE_UID=str(uid))
                nproc = limits.processes
            else:  # RLIMIT_NPROC counts all of this user's tasks at the outer level: leave room for them
                nproc = _user_tasks(os.getuid()) + limits.processes
            info_r, info_w = os.pipe()
            cmd = self._bwrap_argv(ro, rw, env, chdir, limits, info_w) + argv
            popen_env, cwd = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, "/"
        else:
            info_r = info_w = None
            nproc = _user_tasks(os.getuid()) + limits.processes if os.geteuid() != 0 else 1 << 20
            cmd = argv
            popen_env, cwd = env, chdir
        wrapper = [sys.executable, "-S", "-E", "-c", _LIMITS_CODE, json.dumps(_rlimits(limits, nproc))]
        start = time.monotonic()
        out = Outcome(None, b"", "")
        seen: dict[int, int | None] = {}  # pid -> start time, of every process the watchdog saw
        with open(out_path, "wb") as fo, open(err_path, "wb") as fe, \
                (open(stdin, "rb") if stdin else open(os.devnull, "rb")) as fi:
            proc = subprocess.Popen(wrapper + cmd, stdin=fi, stdout=fo, stderr=fe, env=popen_env, cwd=cwd,
                                    start_new_session=True, pass_fds=() if info_w is None else (info_w,))
        namespace = None
        if info_w is not None:  # the sandbox's PID namespace: at the end, wait until nothing is left in it
            os.close(info_w)
            child = _read_info(info_r).get("child-pid")
            os.close(info_r)
            try:
                namespace = os.readlink(f"/proc/{int(child)}/ns/pid") if child else None
            except (OSError, ValueError):
                namespace = None  # already gone, and with it everything in its namespace
        try:
            while True:
                try:
                    proc.wait(timeout=0.25)
                    break
                except subprocess.TimeoutExpired:
                    pass
                elapsed = time.monotonic() - start
                tree = process_tree(proc.pid)
                seen.update((p, _identity(p)) for p in tree[1:] if p not in seen)
                mem = sum(_memory(p) for p in tree[1:]) if len(tree) <= 4 * limits.processes else 0
                out.peak_memory, out.peak_processes = max(out.peak_memory, mem), max(out.peak_processes, len(tree))
                if self._cancelled.is_set():
                    out.killed, out.reason = "cancelled", "stopped: grading was interrupted"
                elif elapsed > limits.wall_s:
                    out.killed, out.reason = "timeout", f"stopped after {limits.wall_s:g} s"
                elif len(tree) > limits.processes:
                    out.killed, out.reason = "processes", f"stopped: more than {limits.processes} processes at once"
                elif mem > limits.memory_bytes:
                    out.killed, out.reason = "memory", (f"stopped: its processes held more than "
                                                        f"{limits.memory_bytes / 2**30:g} GiB of memory")
                if out.killed:
                    self._end(proc)
                    break
        finally:
            seen.update((p, _identity(p)) for p in process_tree(proc.pid)[1:] if p not in seen)
            if proc.poll() is None:
                self._end(proc)
            out.leftovers = self._reap(proc, seen, uid, namespace)
        out.returncode, out.seconds = proc.returncode, time.monotonic() - start
        with open(out_path, "rb") as f:
            out.stdout = f.read(max_stdout + 1)
        with open(err_path, "rb") as f:
            f.seek(max(0, err_path.stat().st_size - 8192))
            out.log = f.read().decode(errors="replace")
        return out

    def _end(self, proc: subprocess.Popen) -> None:
        """Kill a run: bubblewrap first (its death ends the sandbox's PID namespace, hence every process in it),
        then whatever is still in the tree (all of it, without the sandbox)."""
        tree = process_tree(proc.pid)
        _kill_tree(tree if not self.enabled else tree[:1])
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
        _kill_tree(process_tree(proc.pid)[1:])

    def _reap(self, proc: subprocess.Popen, seen: dict[int, int | None], uid: int | None, namespace: str | None,
              wait_s: float = 10.0) -> list[int]:
        """Wait until nothing of the run is left: no process of its tree (``seen``: every one the watchdog saw),
        none in its PID namespace, none of its own uid when it had one. With the sandbox the namespace empties
        itself once its first process is gone (which may outlive bubblewrap by a moment); without it, what is
        found is killed. Returns what could not be ended."""
        deadline = time.monotonic() + wait_s
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # without the sandbox: the run's own session
        except (ProcessLookupError, PermissionError):
            pass
        while True:
            proc.poll()
            ours = {p for p, start in seen.items() if start is not None and _identity(p) == start}
            tree = process_tree(proc.pid)[1:] if proc.returncode is None else []  # its pid is ours until reaped
            left = sorted(ours | {p for p in tree if _alive(p)}
                          | set(_uid_pids(uid) if uid is not None else ())
                          | set(_namespace_members(namespace) if namespace else ()))
            if proc.returncode is not None and not left:
                return []
            if time.monotonic() > deadline:
                return left
            _kill_tree(left)
            time.sleep(0.05)


def sandbox_env(home: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a sandboxed command: nothing of the grader's, caches and config in ``home``."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": home, "USER": "grader", "LOGNAME": "grader", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "TMPDIR": str(Path(home).parent), "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
        "MPLCONFIGDIR": f"{home}/.mpl", "XDG_CACHE_HOME": f"{home}/.cache", "XDG_CONFIG_HOME": f"{home}/.config",
        "IPYTHONDIR": f"{home}/.ipython", "JUPYTER_CONFIG_DIR": f"{home}/.jupyter",
        "JUPYTER_DATA_DIR": f"{home}/.jupyter-data", "JUPYTER_RUNTIME_DIR": f"{home}/.jupyter-runtime",
        "JUPYTER_PLATFORM_DIRS": "1", "NUMBA_CACHE_DIR": f"{home}/.cache/numba",
        "DCN_LESSONS_CACHE": f"{home}/.cache/dcn_lessons", "MPLBACKEND": "Agg",
    }
    env.update(extra or {})
    return env

