"""Writing outputs so that a crash or a kill never costs the previous good file.

Every file ``icg`` writes (checkpoints, features, pictures, the run's config) goes through :func:`atomic_write`:
the data goes to a temporary file *in the destination folder* (never ``$TMPDIR``, which is often another
filesystem on clusters, where a "move" is a copy over the destination), is flushed to disk with ``fsync``, and
replaces the destination with ``os.replace``, a single atomic rename. A reader (or a resumed run) sees the old
file or the new one, never a mixture.

Where the filesystem supports it (Linux: ext4, xfs, btrfs, tmpfs), the temporary file is created with
``O_TMPFILE``: it has no name until it is complete, so a process killed while writing leaves nothing behind (the
kernel frees the unnamed file). Elsewhere (NFS, macOS) it is a named hidden sibling,
``.<name>.partial-<pid>@<host>-<token>``; a kill can leave one, and the next write of the same file removes every
such sibling whose process (on this host) no longer runs. :func:`staging_folder` names staging folders the same
way, so a killed synthetic generation is cleaned up by the next one.

Files and folders are created with modes ``0o666`` / ``0o777`` less the umask, like any file a program opens, not
the owner-only ``0o600`` / ``0o700`` of ``tempfile.mkstemp`` / ``mkdtemp``.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "remove_orphans", "staging_folder"]

_PARTIAL = re.compile(r"\.partial-(?P<pid>\d+)@(?P<host>.+)-[0-9a-f]{8}$")
# errors of open(O_TMPFILE) on filesystems (or kernels) without it
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL}


def _partial_name(name: str) -> str:
    """``.<name>.partial-<pid>@<host>-<token>``: says whose it is, so that orphans can be told from live files."""
    return f".{name}.partial-{os.getpid()}@{socket.gethostname()}-{secrets.token_hex(4)}"


def _is_orphan(path: Path) -> bool:
    """True for a partial file or folder left by a process of this host that no longer runs."""
    match = _PARTIAL.search(path.name)
    if match is None or match["host"] != socket.gethostname():
        return False  # another host's process may still be writing it
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # the process exists, under another user
        return False
    return False


def remove_orphans(folder: str | Path, name: str) -> list[Path]:
    """Removes the partial files and staging folders of ``folder/name`` left by killed processes; returns them."""
    removed = []
    for path in Path(folder).glob(f".{_glob_escape(name)}.partial-*"):
        if _is_orphan(path):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _glob_escape(name: str) -> str:
    """``name`` with the glob metacharacters ``*?[`` made literal (checkpoint names contain ``=`` and ``[``)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _fsync_folder(folder: Path) -> None:
    """Makes a rename in ``folder`` durable (the folder entry, not only the file's data)."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _open_unnamed(folder: Path) -> int | None:
    """A file descriptor of a new ``O_TMPFILE`` file in ``folder``, or None where the filesystem has none."""
    if not hasattr(os, "O_TMPFILE") or not Path("/proc/self/fd").is_dir():
        return None
    try:
        return os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o666)
    except OSError as error:
        if error.errno in _NO_TMPFILE:
            return None
        raise


def _link_unnamed(handle: int, path: Path) -> None:
    """Gives the ``O_TMPFILE`` file ``handle`` the name ``path``. A folder descriptor makes ``os.link`` call
    ``linkat`` with ``AT_SYMLINK_FOLLOW`` (plain ``link`` would try to link the ``/proc`` symlink itself)."""
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.link(f"/proc/self/fd/{handle}", path.name, dst_dir_fd=folder, follow_symlinks=True)
    finally:
        os.close(folder)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Writes ``path`` atomically: ``write(stream)`` fills a temporary file beside it, which is fsynced and renamed
    over ``path``. On any error (or Ctrl-C) the destination is unchanged and the temporary file is removed.

    Args:
        path: the destination; its folder is created if needed.
        write: called once with a binary stream open for writing.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    remove_orphans(folder, path.name)
    temporary = folder / _partial_name(path.name)
    handle = _open_unnamed(folder)
    unnamed = handle is not None
    if handle is None:
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
            if unnamed:  # give the complete file a name, then move it over the destination
                _link_unnamed(stream.fileno(), temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(folder)
    return path


def staging_folder(destination: str | Path) -> Path:
    """Creates an empty hidden folder beside ``destination`` to build it in, named so that :func:`remove_orphans`
    recognises it once its process is gone; first removes such orphans. Renaming it to ``destination`` is the
    caller's business."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(destination.parent, destination.name)
    folder = destination.parent / _partial_name(destination.name)
    folder.mkdir()
    return folder
