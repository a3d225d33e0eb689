"""Names that become folders, and paths the file system can hold.

Rule: a name that neve_tune turns into a folder (a Ray experiment ``name``, a study's
name in a Ray search) is one plain path component: no ``/`` or ``\\``, not ``.`` or
``..``, no NUL, at most :data:`MAX_NAME_CHARS` characters, so it stays inside the folder
it is put in. An output path's every component must fit the file system (at most
:data:`MAX_COMPONENT_BYTES` bytes in UTF-8, the usual ``NAME_MAX``). Both are checked
before any work, in one line naming the parameter.

    >>> check_folder_name("name", "digits-neve-0")
    'digits-neve-0'
    >>> check_folder_name("--name", "../../escape")
    Traceback (most recent call last):
    ...
    ValueError: --name must be a plain folder name (no '/', '\\\\', '.' or '..'), got '../../escape'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["MAX_COMPONENT_BYTES", "MAX_NAME_CHARS", "check_folder_name", "check_path_fits", "shown"]

MAX_NAME_CHARS = 200  # leaves room for the suffixes Ray and neve_tune add to a folder name
MAX_COMPONENT_BYTES = 255  # NAME_MAX of ext4, xfs, btrfs, APFS, NTFS (in UTF-16 units there)


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters with its length said (a 600-character
    name would make the one error line a page)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return text[: limit - 3] + "..." + size


def check_folder_name(label: str, name: Any) -> str:
    """``name`` if it is one plain path component of at most :data:`MAX_NAME_CHARS`
    characters; else a ``ValueError`` (``TypeError`` for a non-string) naming ``label``."""
    if not isinstance(name, str):
        raise TypeError(f"{label} must be a string, got {shown(name)}")
    if not name.strip():
        raise ValueError(f"{label} must be a non-empty folder name, got {name!r}")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(
            f"{label} must be at most {MAX_NAME_CHARS} characters (it names a folder), "
            f"got {len(name)}: {shown(name)}"
        )
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if name in (".", "..") or any(s in name for s in seps) or "\0" in name or os.path.isabs(name):
        raise ValueError(
            f"{label} must be a plain folder name (no '/', '\\\\', '.' or '..'), got {shown(name)}"
        )
    return name


def check_path_fits(label: str, path: str | os.PathLike) -> Path:
    """``path`` if each of its components fits the file system (at most
    :data:`MAX_COMPONENT_BYTES` bytes); else a ``ValueError`` naming ``label`` and the
    component (the OS would refuse it only when the file is written, after the work)."""
    p = Path(path)
    for part in p.parts:
        size = len(os.fsencode(part))
        if size > MAX_COMPONENT_BYTES and part != p.anchor:
            raise ValueError(
                f"{label} {shown(str(p))}: the name {shown(part, 40)} is {size} bytes long; "
                f"file systems hold at most {MAX_COMPONENT_BYTES}"
            )
    return p
