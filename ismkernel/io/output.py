"""Output files written safely: every check before the first byte, one
writer at a time, temporary names and atomic renames, and room on the disk.

The rules every writer here follows:

- :func:`check_output_path` runs before any work: the name, its suffix, its
  directory (which must exist and take a new file) and the file itself (a
  regular file if it exists, never a directory or a device).
- :class:`OutputLock` is held while a file is written: ``OUT.lock`` beside
  it, locked with ``flock`` and holding the writer's process id. The kernel
  drops the lock when the process ends however it ends, so a lock file left
  by ``kill -9`` is stale and the next run takes it over. A second writer is
  refused before it touches anything.
- New content goes to a temporary name in the same directory and is renamed
  over the target once complete (:func:`atomic_file`, :func:`publish`): a
  crash at any instant leaves the old file or the new one, never a mix.
- :func:`check_space` compares what a run will write with the free space of
  the file system; :func:`is_no_space` recognises a full disk in an error
  from the OS or from HDF5.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import tempfile
from collections.abc import Iterator

from ismkernel.errors import OutputFileError

try:
    import fcntl
except ImportError:  # Windows: no flock; HDF5's own lock still guards the file
    fcntl = None

__all__ = [
    "check_output_path",
    "check_space",
    "OutputLock",
    "atomic_file",
    "publish",
    "remove_quietly",
    "is_no_space",
    "human_bytes",
]


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _directory(path: str) -> str:
    return os.path.dirname(os.path.abspath(path)) or os.sep


def check_output_path(
    path: object,
    what: str = "-o",
    suffixes: tuple[str, ...] | None = None,
    hint: str = "",
) -> str:
    """``path`` as a string after checking it can be written: not empty, the
    expected suffix, a directory that exists and takes new files, and no
    directory, device or other non-regular file in its place. Nothing is
    created (the directory is probed with an unnamed temporary file)."""
    if not isinstance(path, (str, os.PathLike)):
        raise OutputFileError(f"{what} must be a file path, got {path!r}")
    path = os.fspath(path)
    if not path.strip():
        raise OutputFileError(f"{what} is empty; give a file name")
    if suffixes is not None:
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in suffixes:
            wanted = (
                suffixes[0] if len(suffixes) == 1 else "one of " + ", ".join(suffixes)
            )
            raise OutputFileError(
                f"{what} '{path}': the name must end in {wanted}{hint}"
            )
    if os.path.isdir(path):
        raise OutputFileError(
            f"{what} '{path}' is a directory; give a file name inside it"
        )
    if os.path.lexists(path) and not os.path.isfile(path):
        raise OutputFileError(
            f"{what} '{path}' exists and is not a regular file (a device, pipe "
            "or broken link); ismkernel replaces only regular files"
        )
    check_directory(_directory(path), f"{what} '{path}'", os.path.dirname(path))
    return path


def check_directory(directory: str, what: str, shown: str = "") -> None:
    """``directory`` exists, is a directory and takes new files; messages
    call it ``shown`` (as the user wrote it) when given."""
    shown = shown or directory
    if not os.path.exists(directory):
        raise OutputFileError(
            f"{what}: directory '{shown}' does not exist; create it first"
        )
    if not os.path.isdir(directory):
        raise OutputFileError(f"{what}: '{shown}' is not a directory")
    try:
        # An unnamed file (O_TMPFILE where the OS has it): proves the
        # directory takes new files, even for root, and leaves nothing.
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise OutputFileError(
            f"{what}: cannot create files in directory '{shown}' "
            f"({err.strerror or err})"
        ) from None


def free_bytes(directory: str) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def check_space(path: str, needed: int, what: str = "") -> None:
    """Refuse a run that will write ``needed`` bytes beside ``path`` when its
    file system has less free space."""
    directory = _directory(path)
    try:
        free = free_bytes(directory)
    except (OSError, AttributeError):  # no statvfs: the run stops cleanly if full
        return
    if needed > free:
        raise OutputFileError(
            f"'{path}' needs about {human_bytes(needed)}{what} but the file system "
            f"of '{directory}' has {human_bytes(free)} free; free space or write "
            "elsewhere"
        )


def is_no_space(err: BaseException) -> bool:
    """A full disk (or quota), as the OS or HDF5 reports it."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return (
        "No space left on device" in text
        or "errno = 28" in text
        or "Disk quota exceeded" in text
    )


def remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _fsync_path(path: str) -> None:
    """Push ``path`` (a file or a directory) to disk; where the OS cannot
    (directories on some systems), carry on."""
    flags = os.O_RDONLY
    if os.path.isdir(path):
        flags |= getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(tmp: str, path: str) -> None:
    """Rename the complete file ``tmp`` over ``path`` (same directory), after
    pushing its bytes to disk, so a crash leaves one or the other whole."""
    _fsync_path(tmp)
    os.replace(tmp, path)
    _fsync_path(_directory(path))


@contextlib.contextmanager
def atomic_file(path: str, what: str = "") -> Iterator[str]:
    """A temporary name beside ``path`` to write; renamed over ``path`` when
    the block ends without error, removed otherwise. A full disk becomes an
    :class:`OutputFileError` saying that nothing was written."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    remove_quietly(tmp)
    try:
        yield tmp
        publish(tmp, path)
    except BaseException as err:
        remove_quietly(tmp)
        if isinstance(err, OSError) and is_no_space(err):
            raise OutputFileError(
                f"no space left on device writing '{path}'; nothing was written"
                f"{what}; free space and run again"
            ) from None
        raise


class OutputLock:
    """``OUT.lock`` beside the output, held (``flock``) while it is written.

    Only one ismkernel process writes a given output at a time; the second
    is refused with the first one's process id and host. The lock is the
    kernel's, not the file's existence, so a lock file left by a killed run
    does not block the next one.
    """

    def __init__(self, path: str):
        self.target = path
        self.path = path + ".lock"
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        if fcntl is None:
            return self
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise OutputFileError(
                    f"cannot create the lock file '{self.path}' beside "
                    f"'{self.target}' ({err.strerror or err})"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _read_holder(fd)
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                    raise OutputFileError(
                        f"cannot lock '{self.path}' ({err.strerror or err})"
                    ) from None
                raise OutputFileError(
                    f"'{self.target}' is being written by another ismkernel run"
                    f"{holder}; wait for it to finish, or write to another file"
                ) from None
            # The holder we waited on may have removed the file as it
            # finished: our lock is then on a name nobody else sees.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:  # pragma: no cover - the name kept being replaced
            raise OutputFileError(f"cannot take the lock '{self.path}'")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        remove_quietly(self.path)  # while still holding it: see acquire
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """`` (process PID on HOST)`` from a lock file held by another run. The
    holder writes it just after taking the lock, so wait a moment for it."""
    import time

    for _ in range(50):
        try:
            text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        except OSError:
            return ""
        if len(text) >= 2 and text[0].isdigit():
            return f" (process {text[0]} on {text[1]})"
        time.sleep(0.01)
    return ""
