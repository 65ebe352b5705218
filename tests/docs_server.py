"""A fork server for the documentation's ``pyrovae`` commands (tests/test_docs.py).

Importing pyrovae and its dependencies costs a few CPU-seconds, the work of a budgeted command a
fraction of that. The server imports them once; each ``pyrovae ...`` of a docs block connects
(``python -S tests/docs_server.py --client SOCKET ARGS...``), hands over its working directory,
environment and standard streams, and the server forks a child that runs
``pyrovae.cli.main(ARGS)`` exactly as ``python -m pyrovae ARGS`` would, and reports its exit
status. The child is a fresh copy of a process that has imported but not run anything.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def client(path: str, argv: list[str]) -> int:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    msg = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(sock, [len(msg).to_bytes(8, "big") + msg], [0, 1, 2])
    status = sock.recv(16)
    return int(status) if status else 1


def _recv(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    size = int.from_bytes(data[:8], "big")
    data = data[8:]
    while len(data) < size:
        data += conn.recv(size - len(data))
    return json.loads(data), fds


def _child(listener: socket.socket, conn: socket.socket) -> None:
    listener.close()
    try:
        req, fds = _recv(conn)
        for fd, target in zip(fds, (0, 1, 2), strict=True):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = ["pyrovae", *req["argv"]]
        from pyrovae.cli import main

        try:
            code = main(req["argv"])
        except SystemExit as e:  # argparse: --help, usage errors
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # `pyrovae ... | head`
        pass
    conn.sendall(str(code or 0).encode())
    os._exit(0)


def serve(path: str) -> None:
    import signal

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401

    import pyrovae.cli  # noqa: F401
    import pyrovae.inspect_run  # noqa: F401
    import pyrovae.plots  # noqa: F401
    import pyrovae.score  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reap themselves
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            _child(listener, conn)
        conn.close()


if __name__ == "__main__":
    if sys.argv[1] == "--client":
        sys.exit(client(sys.argv[2], sys.argv[3:]))
    serve(sys.argv[1])
