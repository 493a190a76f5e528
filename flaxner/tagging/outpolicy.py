"""The output policy of every tagging engine (local, `--processes`, Ray): which paths a run may write and how it
creates them.

- Never a path that is, or resolves to, an input (`refuse_inputs`, `check_output`).
- Never through a symlink flaxner did not make: the final output being a symlink is refused, with or without
  --overwrite (`refuse_link`), and every lock, part, sidecar, log and temporary file is created with
  O_CREAT|O_EXCL|O_NOFOLLOW (`create_new`), so whatever else is at such a path is refused with one line naming it.
  A stale file of flaxner's own is replaced (unlink, then a new exclusive create; never opened for writing) only where
  its content proves it is one (`stale`).
- One writer per output: `OutputLock`.

It imports no JAX (only `reading`): the `--processes` parent and the Ray driver use it."""

from __future__ import annotations

import fcntl
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from flaxner.tagging.reading import TagInputError

_NEW = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
AUX = (".part", ".part.json", ".part.tmp", ".part.lock")  # the files a writer of OUTPUT makes beside it


def is_regular(path: str | Path) -> bool:
    """A regular file at `path` itself (a symlink is not, whatever it points to)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _what(path: str | Path) -> str:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "something"
    return "a symlink" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode) else \
        "a file flaxner cannot prove it wrote" if stat.S_ISREG(mode) else "a special file"


def refuse_link(path: str | Path, flag: str = "-o") -> None:
    """Refuse a path that is a symlink: writing there would write through it (or replace the user's link)."""
    if os.path.islink(path):
        raise TagInputError(f"{flag} {path}: is a symlink; flaxner writes through no link it did not make: remove "
                            f"the link (its target is kept) or choose another path")


def same_file(a: str | Path, b: str | Path) -> bool:
    """`a` is `b`: the same path once resolved, or the same file (a hard link)."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_inputs(path: str | Path, inputs: Iterable[str], flag: str = "-o",
                  shown: str | Path | None = None) -> None:
    """Refuse a path flaxner would write that is (or resolves to) one of `inputs` ('-' and URIs skipped)."""
    for src in inputs:
        if src != "-" and "://" not in src and same_file(path, src):
            raise TagInputError(f"{flag} {shown or path}: {path} is the input file {src}; choose another output")


def check_output(path: str, input_path: str | Iterable[str], fresh: bool = False) -> None:
    """Refuse, before any work, an output that is (or whose part, sidecar or lock file is) an input, that is a
    symlink or a folder, or (`fresh`: neither --resume nor --overwrite) that exists."""
    if path == "-":
        return
    inputs = [input_path] if isinstance(input_path, str) else list(input_path)
    for p in (path, *(path + s for s in AUX)):
        refuse_inputs(p, inputs, shown=path)
    for p in (path, *(path + s for s in AUX)):
        refuse_link(p)
    if Path(path).is_dir():
        raise TagInputError(f"-o {path}: is a folder; give the path of the file to write")
    if fresh and os.path.lexists(path):
        raise TagInputError(f"{path} exists; pass --overwrite to replace it")


def create_new(path: str | Path, stale: Callable[[Path], bool] | None = None, flags: int = os.O_WRONLY) -> int:
    """A new file at `path` (O_CREAT|O_EXCL|O_NOFOLLOW), as a file descriptor. Something already there is refused
    unless it is a regular file that `stale` proves flaxner's own leftover: that one is unlinked and created anew."""
    try:
        return os.open(path, flags | _NEW, 0o644)
    except FileExistsError:
        pass
    if stale is None or not is_regular(path) or not stale(Path(path)):
        raise TagInputError(f"{path}: {_what(path)} is there where flaxner creates its own file; remove it (or "
                            f"choose another output) and run again")
    os.unlink(path)
    return os.open(path, flags | _NEW, 0o644)


def open_new(path: str | Path, stale: Callable[[Path], bool] | None = None):
    """`create_new` as a binary file object to write."""
    return os.fdopen(create_new(path, stale), "wb")


def open_own(path: str | Path, mode: str = "rb"):
    """An existing file of flaxner's, never through a symlink ('rb' to read, 'r+b' to append after a truncate)."""
    flags = (os.O_RDWR if "+" in mode else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.fdopen(os.open(path, flags), mode)
    except OSError as e:
        if os.path.islink(path):
            raise TagInputError(f"{path}: is a symlink, not a file flaxner wrote; remove it (its target is kept) "
                                f"and run again") from None
        raise e


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """An exclusive flock on PATH.part.lock (created O_EXCL, holding the owner's PID) for as long as one writer owns
    PATH: a second one is refused. A lock left by a killed writer (flock free, its PID dead) is replaced."""

    def __init__(self, path: str):
        self.path = Path(path + ".part.lock")
        self.output = path
        for _ in range(100):
            try:
                fd = create_new(self.path, flags=os.O_RDWR)
            except TagInputError:
                if not os.path.lexists(self.path):
                    continue  # its holder just released it
                self._remove_stale()
                continue
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
                for _ in range(50):  # one checking whether it is stale may hold the flock for an instant
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        time.sleep(0.01)
                else:
                    raise self._busy()
            except BaseException:
                os.close(fd)
                os.unlink(self.path)
                raise
            self.fd: int | None = fd
            return
        raise self._busy()

    def _busy(self) -> TagInputError:
        return TagInputError(f"{self.output}: another flaxner tag is writing it (it holds {self.path}); wait for it "
                             f"to end or stop it first")

    def _remove_stale(self) -> None:
        """Unlink the lock file if it is a killed writer's (a PID line, flock free, the PID dead); refuse it else."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError:  # ELOOP: a symlink
            raise TagInputError(f"{self.path}: {_what(self.path)} is there, not a lock of flaxner's; remove it (its "
                                f"target is kept) and run again") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise TagInputError(f"{self.path}: {_what(self.path)} is there, not a lock of flaxner's; remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._busy() from None
            content = os.read(fd, 64).decode("ascii", "replace")
            if not content:
                raise self._busy()  # being created this instant: its creator writes the PID next
            if not re.fullmatch(r"\d+\n", content):
                raise TagInputError(f"{self.path}: a file that is not a lock of flaxner's is there; remove it if no "
                                    f"flaxner tag writes {self.output}, and run again")
            if int(content) != os.getpid() and _pid_alive(int(content)):  # our own PID: an earlier, closed lock
                raise self._busy()
            if os.lstat(self.path).st_ino == st.st_ino:  # still the file checked, not a new holder's
                os.unlink(self.path)
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None
