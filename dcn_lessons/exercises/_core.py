"""What every exercise check shares: comparison helpers whose failures say what is wrong, the :class:`Question`
protocol that splits a check into three steps, and the safe format in which inputs and answers travel.

Self-contained on purpose (NumPy only; PyTorch when a value is a tensor): the lesson modules get this file's
globals injected (:func:`dcn_lessons.exercises.load`), fresh, so nothing a submission patches elsewhere changes
these helpers.

A check is three steps, so that the grader can run them in three places:

1. ``cases(seed)`` -- the inputs: a list of dicts, each with ``"args"`` (what the learner's function is called
   with) and whatever the verdict needs to describe the case (``"what"``, ``"hint"``, ...). Never an expected
   answer: the args are handed to the learner's code.
2. ``run(fn, args)`` -- call the learner's answer on one case's args and return its raw result. The only step
   that runs learner code: inside the learner's kernel, or, when grading, inside the sandbox.
3. ``verify(case, got)`` -- compute the reference and compare; raise :class:`ExerciseError` with a message that
   teaches. Never calls learner code: when grading, it runs in a clean process on the decoded raw results.

Between steps 2 and 3 a result crosses :func:`encode` / :func:`decode` (NumPy's ``.npz`` without pickles plus a
JSON manifest): arrays, numbers, strings, ``None``, ``...``, tuples, lists and dicts of those. Anything else
arrives as an :class:`Opaque` that names its type. A learner's in-kernel check (``grader.check``) takes the same
path with a fixed seed, so the message a learner sees is the one the grader computes.
"""
import io
import json
import zipfile

import numpy as np


class ExerciseError(AssertionError):
    """A check failed; the message says what was expected and what was found."""


# -------------------------------------------------------------------------------- values that cross processes
class Failed:
    """The learner's function did not return a value: ``kind`` is ``"raised"`` (``detail``: "Type: message"),
    ``"notimpl"`` (raised NotImplementedError), ``"ellipsis"`` (returned ``...``), ``"notcallable"`` (``detail``:
    the type found), ``"missing"`` (``detail``: the name no cell defined) or ``"message"`` (``detail``: a whole
    sentence, from a step of :meth:`Question.run` that explains itself)."""

    def __init__(self, kind, detail=""):
        self.kind, self.detail = str(kind), str(detail)

    def message(self, what):
        if self.kind == "notimpl":
            return f"{what}: not written yet (it raised NotImplementedError)"
        if self.kind == "ellipsis":
            return f"{what}: not written yet (it returned ...)"
        if self.kind == "raised":
            return f"{what} raised {self.detail}"
        if self.kind == "notcallable":
            return f"{what}: expected a function, got {self.detail}"
        if self.kind == "missing":
            return (f"{what}: no cell defined `{self.detail}` (run the exercise's cell, and keep the name the "
                    "template gives)")
        return self.detail

    def __repr__(self):
        return f"Failed({self.kind!r}, {self.detail!r})"


class Opaque:
    """A result that is none of the values :func:`encode` keeps (a module, a generator, a custom object): its type
    name, and its contents as an array when ``np.asarray`` could make one of numbers."""

    def __init__(self, type_name, array=None, error=""):
        self.type_name, self.array, self.error = str(type_name), array, str(error)

    def __repr__(self):
        return f"<{self.type_name}>"


_MANIFEST = "manifest"
_FORMAT = "dcn-lessons-values/1"
_NUMERIC = "biufc"
#: Limits on what :func:`decode` accepts (a result comes from code we do not trust).
MAX_BYTES = 256 * 2**20
MAX_NODES = 200_000
MAX_DEPTH = 24


def _to_array(v):
    """``v`` as a NumPy array when it is a tensor, an array or a NumPy scalar, else None."""
    if isinstance(v, (np.ndarray, np.generic)):
        return np.asarray(v), "array" if isinstance(v, np.ndarray) else "scalar"
    if type(v).__module__.startswith("torch") and hasattr(v, "detach"):
        t = v.detach().cpu()
        if hasattr(t, "resolve_conj"):
            t = t.resolve_conj().resolve_neg()
        try:
            return t.numpy(), "tensor"
        except TypeError:  # bfloat16 and friends: NumPy has no such dtype
            return t.double().numpy(), "tensor"
    return None


def encode(value):
    """``value`` as bytes (see the module doc for what is kept); NumPy arrays and tensors keep dtype and shape."""
    arrays = {}

    def enc(v, depth):
        if depth > MAX_DEPTH:
            return {"t": "opaque", "type": type(v).__name__, "error": "nested too deeply"}
        if v is None:
            return {"t": "none"}
        if v is Ellipsis:
            return {"t": "ellipsis"}
        if isinstance(v, Failed):
            return {"t": "failed", "kind": v.kind, "detail": v.detail}
        if isinstance(v, Opaque):
            node = {"t": "opaque", "type": v.type_name, "error": v.error}
            if v.array is not None:
                node["a"] = f"a{len(arrays)}"
                arrays[node["a"]] = v.array
            return node
        if type(v) is bool:
            return {"t": "bool", "v": v}
        if type(v) is int:
            return {"t": "int", "v": str(v)}
        if type(v) is float:
            return {"t": "float", "v": repr(v)}
        if type(v) is str:
            return {"t": "str", "v": v}
        if type(v) in (tuple, list):
            return {"t": type(v).__name__, "items": [enc(x, depth + 1) for x in v]}
        if type(v) is dict and all(type(k) is str for k in v):
            return {"t": "dict", "items": {k: enc(x, depth + 1) for k, x in v.items()}}
        found = _to_array(v)
        if found is not None and found[0].dtype.kind in _NUMERIC:
            arr, kind = found
            name = f"a{len(arrays)}"
            arrays[name] = arr
            return {"t": kind, "a": name}
        try:  # anything else: its type, and its numbers if it has any
            arr = np.asarray(v if found is None else found[0], dtype=np.float64)
            error = ""
        except Exception as e:  # noqa: BLE001  (any error of a learner's object)
            arr, error = None, f"{type(e).__name__}: {e}"
        return enc(Opaque(type(v).__name__, arr, error), depth)

    manifest = {"format": _FORMAT, "value": enc(value, 0)}
    buf = io.BytesIO()
    arrays[_MANIFEST] = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode(data, tensors=False):
    """The value :func:`encode` wrote; ``tensors=True`` gives tensors back as ``torch.Tensor`` (else arrays).

    Raises ValueError for anything else (a pickle, a compressed or oversized member, a malformed manifest):
    ``data`` may come from code we do not trust, so nothing in it is executed and its size is bounded.
    """
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_BYTES:
        raise ValueError(f"expected at most {MAX_BYTES} bytes of encoded values")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
            if len(infos) > MAX_NODES or any(i.compress_type != zipfile.ZIP_STORED for i in infos):
                raise ValueError("unexpected archive members")
        npz = np.load(io.BytesIO(data), allow_pickle=False)
        manifest = json.loads(bytes(npz[_MANIFEST]).decode())
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001  (zip, npy and json errors)
        raise ValueError(f"not encoded values ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise ValueError("not encoded values (unknown format)")
    count = [0]
    torch = None
    if tensors:
        import torch

    def array(node):
        name = node.get("a")
        if not isinstance(name, str) or name == _MANIFEST or name not in npz.files:
            raise ValueError("a value names an array that is not there")
        arr = npz[name]
        if arr.dtype.kind not in _NUMERIC:
            raise ValueError(f"an array of dtype {arr.dtype} (expected numbers)")
        return arr

    def dec(node, depth):
        count[0] += 1
        if count[0] > MAX_NODES or depth > MAX_DEPTH + 1 or not isinstance(node, dict):
            raise ValueError("malformed values")
        t = node.get("t")
        if t == "none":
            return None
        if t == "ellipsis":
            return Ellipsis
        if t == "failed":
            return Failed(node.get("kind", "message"), node.get("detail", ""))
        if t == "opaque":
            return Opaque(node.get("type", "object"), array(node) if "a" in node else None, node.get("error", ""))
        if t == "bool":
            return bool(node["v"])
        if t == "int":
            if not isinstance(node["v"], str) or len(node["v"]) > 4300:
                raise ValueError("malformed int")
            return int(node["v"])
        if t == "float":
            return float(node["v"])
        if t == "str":
            return str(node["v"])
        if t in ("tuple", "list"):
            items = [dec(x, depth + 1) for x in node["items"]]
            return tuple(items) if t == "tuple" else items
        if t == "dict":
            return {str(k): dec(x, depth + 1) for k, x in node["items"].items()}
        if t == "array":
            return array(node)
        if t == "scalar":
            return array(node)[()]
        if t == "tensor":
            arr = array(node)
            return torch.from_numpy(arr.copy()) if torch is not None else arr
        raise ValueError(f"unknown value kind {t!r}")

    try:
        return dec(manifest.get("value"), 0)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001  (KeyError, TypeError of a malformed manifest)
        raise ValueError(f"malformed values ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------------------- the three steps
def call_answer(fn, args):
    """Call the learner's ``fn(*args)``; a crash, ``NotImplementedError`` or ``...`` becomes a :class:`Failed`."""
    if not callable(fn):
        return Failed("notcallable", type(fn).__name__)
    try:
        out = fn(*args)
    except NotImplementedError:
        return Failed("notimpl")
    except Exception as e:  # noqa: BLE001  (the learner's bug, reported in one line)
        return Failed("raised", f"{type(e).__name__}: {e}")
    if out is Ellipsis:
        return Failed("ellipsis")
    return out


class Question:
    """One graded exercise, split into ``cases`` / ``run`` / ``verify`` (see the module doc).

    Calling it, ``question(fn)``, is the learner's check: every case in turn, run, encoded and decoded, then
    verified; silent when right, :class:`ExerciseError` at the first case that is wrong. ``seed`` is the seed of
    that check (the grader picks a fresh one per submission). ``unavailable`` names package attributes
    (``"dcn_lessons.reference:bilinear_sample"``) that a second, graded run can make unavailable to the learner's
    code, to tell an answer that delegates to the package from one that computes (see
    ``dcn_lessons.grading.sandbox``); empty by default.
    """

    def __init__(self, cases, verify, run=None, seed=0, unavailable=()):
        self.cases, self.verify, self.run = cases, verify, run or call_answer
        self.seed, self.unavailable = int(seed), tuple(unavailable)

    def judge(self, case, got):
        """Verify one decoded result: a :class:`Failed` is reported with the case's ``"call"`` name."""
        if isinstance(got, Failed):
            raise ExerciseError(got.message(case.get("call", "your function")))
        self.verify(case, got)

    def __call__(self, fn, seed=None):
        for case in self.cases(self.seed if seed is None else int(seed)):
            args = decode(encode(list(case["args"])), tensors=True)  # fresh copies, as in the sandbox
            self.judge(case, decode(encode(self.run(fn, args))))


# ------------------------------------------------------------------------------------------------ comparisons
def _np(x, what):
    if isinstance(x, Failed):
        raise ExerciseError(x.message(what))
    if isinstance(x, Opaque):
        if x.array is None:
            raise ExerciseError(f"{what}: expected an array of numbers, got {x.type_name} ({x.error})")
        x = x.array
    found = _to_array(x)
    if found is not None:
        x = found[0]
    if x is None:
        raise ExerciseError(f"{what}: your function returned None -- did you forget `return`?")
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ExerciseError(f"{what}: expected an array of numbers, got {type(x).__name__} ({e})") from None


def call(fn, *args, what="your function", **kwargs):
    """Call the learner's function in this process; turn a crash or a placeholder into a readable failure."""
    out = call_answer(lambda *a: fn(*a, **kwargs), args) if callable(fn) else Failed("notcallable", type(fn).__name__)
    if isinstance(out, Failed):
        raise ExerciseError(out.message(what))
    return out


def expect_shape(got, shape, what="result"):
    """Fail unless ``got`` has exactly ``shape``."""
    arr = _np(got, what)
    if tuple(arr.shape) != tuple(shape):
        raise ExerciseError(f"{what}: expected shape {list(shape)}, got {list(arr.shape)}")
    return arr


def expect_close(got, want, what="result", atol=1e-8, rtol=1e-6, hint=""):
    """Fail unless ``got`` matches ``want`` elementwise; name the first wrong index and both values."""
    want = np.asarray(want, dtype=np.float64)
    arr = expect_shape(got, want.shape, what)
    bad = ~np.isclose(arr, want, atol=atol, rtol=rtol, equal_nan=False)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        n = int(bad.sum())
        msg = (
            f"{what}: {n} of {bad.size} values are wrong; first at index {list(idx)}: "
            f"got {arr[idx]:.6g}, expected {want[idx]:.6g}"
        )
        if hint:
            msg += f"\nHint: {hint}"
        raise ExerciseError(msg)
    return arr


def _first_match(got, variants):
    """The name of the first ``(name, value)`` of ``variants`` that ``got`` equals: which typical mistake a
    wrong answer made (or None)."""
    try:
        arr = np.asarray(got.array if isinstance(got, Opaque) else got, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    for name, want in variants:
        want = np.asarray(want, dtype=np.float64)
        if arr.shape == want.shape and np.allclose(arr, want, atol=1e-8, rtol=1e-6):
            return name
    return None

