"""Control plane: small JSON messages over ZeroMQ ``ipc://`` sockets (never bulk data).

The learner binds one ROUTER socket; each actor connects a DEALER whose identity is its
index. Actors send ``hello``, ``ready`` (a filled slot, its policy version and the
episodes that finished), ``beat`` (heartbeat) and ``error`` (a traceback); the learner
sends ``free`` (a slot may be refilled) and ``stop``. The socket lives in an owner-only
folder of the run directory, so no TCP port is ever opened.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import zmq

# sockaddr_un.sun_path holds 108 bytes on Linux, terminator included
MAX_IPC_PATH = 100
SOCKET_NAME = "control.sock"


def temporary_folder(run_dir: Path | None) -> Path:
    """An owner-only folder in the temporary directory. For a run directory it is named after
    it, so that the next launch of that run finds, and removes, the socket a kill -9 of the whole
    process group left there; a folder of that name that is not this user's own private
    directory is not used."""
    if run_dir is not None:
        digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / f"prl-{os.getuid()}-{digest}"
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
        info = os.lstat(folder)
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not stat.S_IMODE(info.st_mode) & 0o077:
            return folder
    return Path(tempfile.mkdtemp(prefix="prl-"))


class Endpoint:
    """Owner-only folder for the socket: ``run_dir/ipc`` or, without a run directory or if
    that path is too long for a Unix socket, a temporary one (:func:`temporary_folder`)
    removed on close."""

    def __init__(self, run_dir: Path | None):
        preferred = Path(run_dir) / "ipc" if run_dir is not None else None
        if preferred is not None and len(str((preferred / SOCKET_NAME).resolve())) <= MAX_IPC_PATH:
            preferred.mkdir(parents=True, exist_ok=True)
            os.chmod(preferred, 0o700)
            self.folder, self._temporary = preferred.resolve(), False
        else:
            self.folder, self._temporary = temporary_folder(run_dir), True
        self.path = self.folder / SOCKET_NAME
        self.address = f"ipc://{self.path}"

    def clean_stale(self) -> list[str]:
        """Remove what a killed run left: a socket file nobody serves."""
        removed = []
        if self.path.exists():
            self.path.unlink()
            removed.append(str(self.path))
        return removed

    def socket_identity(self) -> tuple[int, int] | None:
        """Which socket file is at the path now (inode and creation time: an inode alone may be
        reused); None: none."""
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_ino, stat.st_ctime_ns

    def close_if_still(self, identity: tuple[int, int] | None) -> None:
        """:meth:`close`, unless the socket file there is no longer ``identity``: a new run
        (a resume) may have bound its own socket at the same path since."""
        if identity is not None and self.socket_identity() == identity:
            self.close()

    def close(self) -> None:
        self.path.unlink(missing_ok=True)
        if self._temporary:
            shutil.rmtree(self.folder, ignore_errors=True)
        else:
            try:
                self.folder.rmdir()
            except OSError:
                pass


def send(socket: zmq.Socket, message: dict, identity: bytes | None = None) -> None:
    payload = json.dumps(message).encode()
    if identity is None:
        socket.send(payload, zmq.NOBLOCK)
    else:
        socket.send_multipart([identity, payload], zmq.NOBLOCK)


def decode(payload: bytes) -> dict:
    return json.loads(payload.decode())


def process_identity(actor: int) -> bytes:
    return f"actor-{actor}".encode()
