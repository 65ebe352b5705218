"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors, numbers, strings and state dicts — never a pickled object — so
loading one cannot run code. Writes go to a temporary file in the same folder, are flushed to
disk, then renamed over the target, so a crash at any moment leaves the old or the new file whole.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded, with what to do about it."""


#: The name of :func:`atomic_write`'s temporary file of ``name``: ``.name.PID.XXXXXXXX.tmp`` (the
#: writing process, tempfile's eight random characters), hidden, so only :func:`remove_temporaries`
#: ever sees what a write killed midway left. Files of earlier versions have no PID.
TEMPORARY = re.compile(r"\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp")


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file, then rename it over ``path``."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        write(f)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write in the block (by name: a memory map, say), renamed
    over ``path`` when the block ends, removed if it raises, so ``path`` holds its old content or
    the whole new one, never part of it."""
    path, tmp = Path(path), None
    try:
        fd, tmp = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
        )  # TEMPORARY
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would make it: a temporary file is owner-only
        os.close(fd)
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            # a full disk, say: named as the file asked for, not its hidden temporary
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write` in ``folder``: partial files that a
    process killed during a write (``kill -9``, a power cut) left behind, which no later write
    reuses. A file whose writing process still runs on this machine (a concurrent ``pyrovae
    evaluate`` writing ``eval.json``, say) is left to finish.

    :returns: the files removed.
    """
    stale = []
    for p in Path(folder).glob(".*.tmp"):
        match = TEMPORARY.fullmatch(p.name)
        if match and p.is_file() and not (match["pid"] and _running(int(match["pid"]))):
            stale.append(p)
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not inside a write while it tidies up
    if os.name == "nt":
        return True  # Windows' os.kill terminates the process: leave the file
    try:
        os.kill(pid, 0)  # signal 0: is there such a process? (sends nothing)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def save(obj: dict[str, Any], path: str | Path) -> None:
    """Atomically ``torch.save`` ``obj`` to ``path``."""
    atomic_write(path, lambda f: torch.save(obj, f))


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file."""
    atomic_write(path, lambda f: f.write(text.encode()))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; refuses pickled objects and reports truncation clearly."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; {_missing(path)}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        msg = str(e) or type(e).__name__
        if "GLOBAL" in str(e) or "Unsupported global" in str(e):  # a pickle of objects, not tensors
            raise CheckpointError(
                f"{path} holds pickled Python objects, which pyrovae refuses to load (they could run "
                "code). Only load checkpoints written by pyrovae, or re-save the weights as tensors."
            ) from None
        # unreadable (permissions, a folder), not damaged; EINVAL is a truncated file's seek past its end
        if isinstance(e, OSError) and e.errno != errno.EINVAL:
            raise
        if "data location" in msg or "deserialize object on" in msg:  # read, but not placed on the device
            raise CheckpointError(
                f"{path} could not be loaded onto device {map_location} ({load_error_cause(msg)}); "
                "choose another device"
            ) from None
        # a damaged file fails in many ways: in the zip reader, unpickling, decoding, at its end
        raise CheckpointError(
            f"{path} could not be read: it is truncated or corrupted, or not a checkpoint "
            f"({load_error_cause(msg)}). {_other_checkpoint(path)}"
        ) from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path} is not a pyrovae checkpoint (no 'model' entry)")
    return obj


def load_error_cause(msg: str) -> str:
    """The cause in a ``torch.load`` error message, on one line, without its advice to load unsafely."""
    lines = [line.strip() for line in msg.splitlines() if line.strip()]
    cause = next((lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith("error:")), lines[0])
    if len(cause) <= 120:
        return cause
    cut = cause[:120].rsplit(" ", 1)[0].rstrip(" .,;:")  # at a word's end, not inside one
    return cut + " ..."


def _missing(path: Path) -> str:
    """What to do without the file ``path``: use the run's other checkpoint, where it has one."""
    folder = path.parent
    if path.name == "best.pt" and (folder / "checkpoint.pt").exists():
        return "the run's last checkpoint is there: use it (--checkpoint last), or train the run again"
    if path.name == "checkpoint.pt" and (folder / "best.pt").exists():
        return "the run's best.pt is there: use it (--checkpoint best)"
    if path.name in ("best.pt", "checkpoint.pt"):
        return (f"{folder} holds no checkpoint: train the run (pyrovae train --out {folder}, --resume to go "
                "on from its config.json), or copy its files anew if it came from elsewhere")  # fmt: skip
    return f"name 'best', 'last' or a checkpoint file in {folder}"


def _other_checkpoint(path: Path) -> str:
    """What to do without this file: the run's other checkpoint, where it has one."""
    if path.name == "best.pt" and (path.parent / "checkpoint.pt").exists():
        return "The run's last checkpoint may be whole: use it (--checkpoint last), or train the run again."
    if path.name == "checkpoint.pt" and (path.parent / "best.pt").exists():
        return (
            "The run's best.pt may be whole: evaluate or sample from it (--checkpoint best); the run "
            "cannot be resumed without checkpoint.pt, so train it again (--overwrite) to go on."
        )
    return "Train the run again, or copy the file anew if it came from elsewhere."
