"""Run a module as `python -m` would, with every file write under one folder failing, for the bad-input suite.

    python tests/failing_writes.py DIR ERRNO MODULE [ARGS...]

ERRNO `ENOSPC`: files open, and their first write fails as on a full disk. ERRNO `EACCES`: creating a file
fails as in a folder without write permission (for a root user, whom chmod does not stop).
"""

import builtins
import errno
import os
import runpy
import sys

folder, code, module = os.path.realpath(sys.argv[1]), getattr(errno, sys.argv[2]), sys.argv[3]


def _inside(path) -> bool:
    return isinstance(path, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(path)).startswith(folder + os.sep)


class _FullDisk:
    """A writable file whose writes fail with ENOSPC."""

    def __init__(self, f) -> None:
        self._f = f

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._f.name)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


real_open, real_os_open = builtins.open, os.open


def failing_open(file, mode="r", *args, **kwargs):
    if _inside(file) and any(m in mode for m in "wax+"):
        if code == errno.EACCES:
            raise PermissionError(code, os.strerror(code), os.fsdecode(file))
        return _FullDisk(real_open(file, mode, *args, **kwargs))
    return real_open(file, mode, *args, **kwargs)


def failing_os_open(path, flags, *args, **kwargs):
    if code == errno.EACCES and _inside(path) and flags & os.O_CREAT:
        raise PermissionError(code, os.strerror(code), os.fsdecode(path))
    return real_os_open(path, flags, *args, **kwargs)


builtins.open, os.open = failing_open, failing_os_open
sys.argv = [module, *sys.argv[4:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
