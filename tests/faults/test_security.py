"""What a running asynchronous run exposes: no network socket at all, and its one control
socket in an owner-only folder of the run directory. (Checkpoints refusing pickle
payloads: test_bad_checkpoints.py.)"""

import os
import signal
import socket
import stat
from pathlib import Path

import pytest

from .helpers import ASYNC_CARTPOLE, Launch, group_members

TCP_LISTEN = "0A"


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds open (its /proc/<pid>/fd links)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def inet_sockets() -> dict[int, tuple[str, str, str]]:
    """Every TCP and UDP socket of this network namespace: inode -> (table, local address, state)."""
    found = {}
    for table in ("tcp", "tcp6", "udp", "udp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            found[int(fields[9])] = (table, fields[1], fields[3])
    return found


def unix_socket_paths() -> dict[int, str]:
    """Bound Unix sockets of this namespace: inode -> path."""
    found = {}
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8:
            found[int(fields[6])] = fields[7]
    return found


def network_exposure(pids: list[int]) -> list[str]:
    """The TCP/UDP sockets the processes hold, listeners marked."""
    inet = inet_sockets()
    held = set().union(*(socket_inodes(p) for p in pids))
    return [f"{table} {address} {'LISTEN' if table.startswith('tcp') and state == TCP_LISTEN else state}"
            for inode, (table, address, state) in inet.items() if inode in held]


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """One asynchronous run, alive while the tests look at it, then stopped and checked."""
    run = Launch(tmp_path_factory.mktemp("security") / "run", *ASYNC_CARTPOLE)
    actors = run.wait_for_actors(2)
    yield run, [run.proc.pid, *actors]
    run.signal(signal.SIGINT)
    code, err, _ = run.wait(timeout=30)
    assert code == 130, err
    run.assert_nothing_left(actors)


def test_the_exposure_check_sees_a_tcp_listener():
    """The check below can fail: a listener opened here is found and marked."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert any("LISTEN" in entry for entry in network_exposure([os.getpid()]))


def test_no_process_of_a_run_holds_a_network_socket(live_run):
    run, pids = live_run
    members = group_members(run.proc.pid)  # the runner, its actors and any helper process
    assert set(pids) <= set(members)
    assert network_exposure(members) == []
    # the runner's control socket is found the same way, so the inode scan sees its sockets
    bound = unix_socket_paths()
    assert str((run.run_dir / "ipc" / "control.sock").resolve()) in {bound.get(i) for i in socket_inodes(run.proc.pid)}


def test_control_socket_folder_is_owner_only(live_run):
    run, _ = live_run
    folder = run.run_dir / "ipc"
    info = folder.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700, oct(info.st_mode)
    assert info.st_uid == os.getuid()
    assert stat.S_ISSOCK((folder / "control.sock").stat().st_mode)
