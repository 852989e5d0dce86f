"""Small file helpers: atomic writes, output-folder rules, file modes and folder locks.

Nothing is ever half-written: files are written to a temporary name in the same folder
and renamed into place (``os.replace`` is atomic on POSIX). Everything written gets one
mode (files 0666, folders 0777, less the umask: :func:`set_default_modes`). An output
location that is a regular file or cannot be written is refused before any work
(:func:`check_writable`), and one process at a time writes into a folder
(:class:`FolderLock`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from sdcompress.errors import FolderLockedError, OutputError, OutputExistsError

logger = logging.getLogger(__name__)


def _jsonable(obj: Any) -> Any:
    """Floats that JSON cannot hold (nan, inf) become strings; tensors become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (nan/inf stored as strings)."""
    return write_text_atomic(path, json.dumps(_jsonable(obj), indent=2) + "\n")


def save_figure_atomic(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=kwargs.pop("dpi", 120), bbox_inches="tight", **kwargs)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def set_default_modes(path: str | Path) -> Path:
    """Give ``path`` (and everything under it) the usual modes: files 0666, folders 0777,
    both less the umask (0644 / 0755 under the common umask 022).

    ``tempfile.mkdtemp``/``mkstemp`` create 0700/0600 entries and safetensors writes 0600
    files; everything the toolkit writes gets one mode instead, so a run folder can be
    shared like any other output. Call it on a temporary name before the rename.
    """
    path = Path(path)
    mask = _umask()
    if path.is_dir() and not path.is_symlink():
        os.chmod(path, 0o777 & ~mask)
        for root, dirs, files in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o777 & ~mask)
            for f in files:
                if not os.path.islink(os.path.join(root, f)):
                    os.chmod(os.path.join(root, f), 0o666 & ~mask)
    elif path.is_file() and not path.is_symlink():
        os.chmod(path, 0o666 & ~mask)
    return path


def check_writable(path: str | Path, *, what: str = "--output-dir") -> Path:
    """Refuse an output folder that cannot be created or written, before anything runs.

    The nearest existing folder on the way to ``path`` must be a folder (not a regular
    file) and writable; this is probed by creating and removing a temporary file there
    (permission bits alone say nothing for root or on read-only mounts).

    Raises:
        OutputError: ``path`` (or a parent) is a regular file, or the location is not writable.
    """
    path = Path(path).expanduser()
    base = path
    while not base.exists() and base != base.parent:
        if base.is_symlink():  # a dangling link: mkdir would fail
            raise OutputError(f"{what} {str(path)!r}: {str(base)!r} is a broken symbolic link; choose another {what}")
        base = base.parent
    if not base.is_dir():
        which = "is" if base == path else f"is inside {str(base)!r}, which is"
        raise OutputError(f"{what} {str(path)!r} {which} a regular file, not a folder; choose another {what}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".sdcompress-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what} {str(path)!r} cannot be written ({str(base)!r}: {exc.strerror or exc}); "
                          f"choose a writable {what}") from exc
    return path


def make_dirs(path: str | Path, *, what: str = "--output-dir") -> list[Path]:
    """``mkdir -p path``; returns the folders it created, outermost first (so a caller
    that fails can remove exactly those, see :func:`remove_created`).

    Raises:
        OutputError: the folder cannot be created.
    """
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise OutputError(f"{what} {str(path)!r} is a regular file, not a folder; choose another {what}") from exc
    except OSError as exc:
        raise OutputError(f"cannot create {what} {str(path)!r}: {exc.strerror or exc}; choose a writable {what}") from exc
    return missing[::-1]


def remove_created(created: list[Path]) -> None:
    """Remove the folders :func:`make_dirs` created, innermost first, where still empty."""
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            break


def check_output_dir(path: str | Path, *, overwrite: bool = False, marker: str | None = None) -> Path:
    """Refuse an output folder that already holds results unless ``overwrite``, and one
    that cannot be written (:func:`check_writable`).

    A folder is "taken" when it exists and is non-empty (or, with ``marker``, when it
    holds that file). Nothing is created here: callers create the folder only once all
    inputs are validated, so bad input never leaves a partial folder behind.

    Raises:
        OutputError: ``path`` is a regular file, or the location is not writable.
        OutputExistsError: the folder holds a run and ``overwrite`` is false.
    """
    path = check_writable(path)
    taken = path.exists() and (marker is None and any(path.iterdir()) or marker is not None and (path / marker).exists())
    if taken and not overwrite:
        raise OutputExistsError(f"output folder {str(path)!r} already holds a run; pass --overwrite or choose another --output-dir")
    return path


#: the lock file a run holds in its folder while it runs
LOCK_FILE = ".sdcompress.lock"


class FolderLock:
    """An exclusive lock on an output folder, held while one process writes into it.

    The lock is ``flock`` on ``FOLDER/.sdcompress.lock``, whose text records who holds it
    (pid, host, start time) for the refusal message. The kernel drops an ``flock`` when
    its process dies (even by SIGKILL), so a lock file left behind by a dead run is not
    held: the next run takes it over and logs so. Released locks are removed.

    With ``wait`` the lock is waited for instead of refused (a cache entry that another
    process is building); ``name`` replaces the lock file's name.

    Use as a context manager, or :meth:`acquire` / :meth:`release`.
    """

    def __init__(self, folder: str | Path, *, what: str = "output folder", name: str = LOCK_FILE, wait: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.what = what
        self.wait = wait
        self._fd: int | None = None

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        if not isinstance(info, dict) or "pid" not in info:
            return "another process"
        where = "" if info.get("host") in (None, socket.gethostname()) else f" on {info['host']}"
        return f"pid {info['pid']}{where}, since {info.get('since', '?')}"

    def acquire(self) -> "FolderLock":
        """Take the lock.

        Raises:
            FolderLockedError: another live process holds it.
            OutputError: the lock file cannot be created.
        """
        import fcntl

        fd: int | None = None
        try:
            while True:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                except OSError as exc:
                    raise OutputError(f"cannot create the lock file {str(self.path)!r}: {exc.strerror or exc}; "
                                      f"the {self.what}'s folder must be writable") from exc
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
                except OSError:
                    os.close(fd)
                    fd = None
                    raise FolderLockedError(
                        f"{self.what} {str(self.folder)!r} is in use by another sdcompress run ({self._holder()}); "
                        "wait for it to finish or choose another --output-dir"
                    ) from None
                if self._same_file(fd):  # the holder may have removed it between our open and flock: retry
                    break
                os.close(fd)
                fd = None
            self._fd, fd = fd, None  # held from here on: release() removes it whatever happens next
            old = os.read(self._fd, 4096)
            if old.strip() and not self.wait:
                logger.warning("taking over the stale lock of %s in %s (that process is gone)", self._holder(), self.folder)
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.ftruncate(self._fd, 0)
            since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())
            os.write(self._fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode())
            os.fsync(self._fd)
            return self
        except BaseException:  # interrupted (SIGTERM, Ctrl-C) part-way: leave no lock file of ours behind
            if self._fd is not None:
                self.release()
            elif fd is not None:
                self._drop_unheld(fd)
            raise

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _drop_unheld(self, fd: int) -> None:
        """Close ``fd`` (opened, lock not yet taken); remove the file if nobody holds it."""
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if self._same_file(fd):
                self.path.unlink(missing_ok=True)
        except OSError:
            pass  # another process holds it: its file, not ours to remove
        finally:
            os.close(fd)

    def held_elsewhere(self) -> str | None:
        """Who holds the lock when another process does (``None`` when free), without
        taking it: a shared ``flock`` probe, so many processes may probe at once.

        Data-parallel ranks that work in a private copy of the folder use it to refuse a
        folder in use exactly when the main process will.
        """
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None  # no lock file: free
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return self._holder()
        finally:
            os.close(fd)  # closing drops the probe's shared lock
        return None

    def check_free(self) -> None:
        """Raise as :meth:`acquire` would when another process holds the lock; take nothing.

        Raises:
            FolderLockedError: another live process holds it.
        """
        holder = self.held_elsewhere()
        if holder is not None:
            raise FolderLockedError(f"{self.what} {str(self.folder)!r} is in use by another sdcompress run ({holder}); "
                                    "wait for it to finish or choose another --output-dir")

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op when not held)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # removed while still held: no one can take a file that is going away
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
