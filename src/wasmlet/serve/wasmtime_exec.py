"""Becomes ``wasmtime serve`` for one container, inside namespaces of its own.

:mod:`wasmlet.serve.wasi_http` starts this file as ``python -I -S wasmtime_exec.py`` with an empty
environment, so that nothing of the pod's reaches a program that runs as the node's user before the
sandbox exists. Its descriptors: 0-2 stdio, 3 the listening socket, 4 its description (below),
5... the pod's mounts. It

1. dies with the thread that started it (``PR_SET_PDEATHSIG``), gains no privilege by exec
   (``PR_SET_NO_NEW_PRIVS``) and caps its open files;
2. enters new network and mount namespaces (and a user namespace when not root): the only way out
   of the process is the socket it was given;
3. clones the mount behind each mount descriptor (read-only where asked) and attaches it at
   ``<mount_root>/<i>`` on a tmpfs of the new namespace; the descriptors are closed;
4. ``execve``s wasmtime with the pod's environment and systemd's socket handover variables.

Only the standard library: it runs without the site directory, outside wasmlet's package, and
imports little, because its start is in every such pod's start (``json`` and ``signal`` cost
~20 ms of the ~50 it took; the interpreter alone ~20 ms). The description, written by the node
with :mod:`marshal` (same interpreter): ``{"argv": [...], "env": {...}, "mount_root": "...",
"read_only": [bool, ...], "max_open_files": n, "parent": pid}``.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import resource
import sys

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
SIGKILL = 9  # the same number on every Linux architecture (the signal module costs ~10 ms to import)
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_NOSUID = 2
MS_NODEV = 4
MS_REC = 16384
MS_PRIVATE = 1 << 18
# The new mount API (Linux 5.12): a mount cloned from a descriptor, changed while detached, and
# attached in the new namespace (mount(2) cannot bind a mount of another namespace).
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
SOCKET_FD = 3
SPEC_FD = 4
FIRST_MOUNT_FD = 5

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    result = _libc.mount(_bytes(source), target.encode(), _bytes(fstype), flags, _bytes(data))
    _check(result, f"mount {target}")


def _bytes(text: str | None) -> bytes | None:
    return text.encode() if text is not None else None


def _detach(fd: int, read_only: bool) -> int:
    """A detached copy of the mount behind directory ``fd`` (which is closed), read-only if asked."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH | AT_RECURSIVE
    tree = _check(_libc.syscall(SYS_OPEN_TREE, fd, b"", flags), f"open_tree of descriptor {fd}")
    os.close(fd)
    attr = _MountAttr(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (MOUNT_ATTR_RDONLY if read_only else 0), 0, 0, 0)
    setattr_flags = AT_EMPTY_PATH | AT_RECURSIVE
    call = _libc.syscall(SYS_MOUNT_SETATTR, tree, b"", setattr_flags, ctypes.byref(attr), ctypes.sizeof(attr))
    _check(call, "mount_setattr")
    return tree


def _enter_namespaces() -> None:
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWNET | CLONE_NEWNS | (CLONE_NEWUSER if uid != 0 else 0)
    _check(_libc.unshare(flags), "unshare")
    if uid != 0:  # root inside the user namespace is this user outside it
        with open("/proc/self/setgroups", "w") as setgroups:
            setgroups.write("deny")
        with open("/proc/self/uid_map", "w") as uid_map:
            uid_map.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as gid_map:
            gid_map.write(f"0 {gid} 1")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here is seen outside


def _attach(root: str, trees: list[int]) -> None:
    if not trees:
        return
    _mount("wasmlet", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
    for index, tree in enumerate(trees):
        target = f"{root}/{index}"
        os.mkdir(target)
        call = _libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH)
        _check(call, f"move_mount {target}")
        os.close(tree)


def main() -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0), "prctl")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl")  # no set-uid program gains anything
    with os.fdopen(SPEC_FD, "rb") as spec_file:
        spec = marshal.loads(spec_file.read())  # noqa: S302 (the node wrote it: a memfd only it had)
    if os.getppid() != int(spec["parent"]):  # wasmlet ended before the signal was asked for
        sys.exit(127)
    files = int(spec["max_open_files"])
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
    read_only = [bool(ro) for ro in spec["read_only"]]
    trees = [_detach(FIRST_MOUNT_FD + index, ro) for index, ro in enumerate(read_only)]
    _enter_namespaces()
    _attach(str(spec["mount_root"]), trees)
    env = {str(k): str(v) for k, v in spec["env"].items()}
    env.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
    argv = [str(arg) for arg in spec["argv"]]
    os.closerange(SPEC_FD, 2**31 - 1)  # wasmtime gets stdio and the socket, nothing wasmlet inherited
    os.execve(argv[0], argv, env)  # noqa: S606 (argv is wasmlet's, never a shell's)


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # the container's log says why it never served
        sys.stderr.write(f"wasmlet: cannot start wasmtime serve: {exc}\n")
        sys.exit(127)
