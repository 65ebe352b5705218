"""Checks on what a command will write, made before any work starts, so a mistake costs no time
and leaves no half-written file: the folder must be writable, the file's name must say a format
pyrovae writes.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import ConfigError

#: Picture formats a figure may be written in, by file suffix (matplotlib's writers).
IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".pdf": "pdf", ".svg": "svg"}


def writable_folder(folder: str | Path, what: str = "files") -> Path:
    """Refuse a folder that cannot be written: its nearest existing ancestor (it may not exist
    yet) must be a folder this process may write in.

    :param what: what will be written there, for the message.
    """
    folder = Path(folder)
    probe = folder.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(
            f"cannot write {what} in {folder}: {probe} is a file, not a folder; choose another path"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write {what} in {folder}: {probe} is not writable (permission denied); choose a "
            "folder you can write, or change its permissions"
        )
    return folder


def output_file(path: str | Path, suffixes: dict | tuple, what: str = "the output") -> Path:
    """Refuse an output file whose suffix is not one of ``suffixes``, that names a folder, or
    whose folder cannot be written (a missing folder is created when the file is written)."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ConfigError(f"cannot write {path}: name a {' or '.join(suffixes)} file for {what}")
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a folder; name a file in it")
    writable_folder(path.parent, path.name)
    return path


def image_format(path: str | Path) -> str:
    """The matplotlib format a figure file's suffix names."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise ConfigError(f"cannot write {path}: name a {' or '.join(IMAGE_FORMATS)} file for a figure")
    return IMAGE_FORMATS[suffix]
