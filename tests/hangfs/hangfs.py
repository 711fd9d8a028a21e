"""A read-only FUSE passthrough of a directory, to be made to stop
answering like a hung NFS or Lustre mount seen from a login node.

    hangfs.py BACKING MOUNTPOINT

Mounts BACKING at MOUNTPOINT (in the foreground, one thread). Writers write
to BACKING directly (another node's writes). To make the mount hang, stop
this process (SIGSTOP): requests then wait in the kernel's queue unread, and
whoever asked blocks there, as with a file server that stopped answering (a
process waiting so can still be killed, as on a modern hard NFS mount).
SIGCONT and it answers again.

Needs Debian's python3-fusepy (and /dev/fuse); run with /usr/bin/python3.
"""
import errno
import os
import sys

from fusepy import FUSE, FuseOSError, Operations


class HangFS(Operations):
    def __init__(self, backing):
        self.backing = backing

    def _path(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._path(path))
        except OSError as e:
            raise FuseOSError(e.errno)
        keys = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size",
                "st_atime", "st_mtime", "st_ctime")
        attrs = {k: getattr(st, k) for k in keys}
        # Nanosecond times, so that size-and-mtime checks see every append.
        for k in ("st_atime", "st_mtime", "st_ctime"):
            attrs[k] = getattr(st, k + "_ns") / 1e9
        return attrs

    def readdir(self, path, fh):
        try:
            return [".", ".."] + os.listdir(self._path(path))
        except OSError as e:
            raise FuseOSError(e.errno)

    def readlink(self, path):
        return os.readlink(self._path(path))

    def access(self, path, mode):
        if not os.access(self._path(path), mode):
            raise FuseOSError(errno.EACCES)

    def open(self, path, flags):
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise FuseOSError(errno.EROFS)
        try:
            return os.open(self._path(path), os.O_RDONLY)
        except OSError as e:
            raise FuseOSError(e.errno)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def release(self, path, fh):
        os.close(fh)

    def statfs(self, path):
        st = os.statvfs(self._path(path))
        return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize",
                                             "f_favail", "f_ffree", "f_files", "f_flag",
                                             "f_frsize", "f_namemax")}


if __name__ == "__main__":
    backing, mountpoint = sys.argv[1:3]
    FUSE(HangFS(os.path.abspath(backing)), mountpoint,
         foreground=True, nothreads=True, ro=True, allow_other=False)
