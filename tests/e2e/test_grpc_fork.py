"""gRPC's fork handlers are off in any process that imports the package.

The demo and the suite's embedded PostgreSQL run pg_ctl as another user, which
makes Python fork() rather than vfork(); with gRPC's handlers on, a fork while
other threads are inside gRPC can crash the child (a pg_ctl restart died with
SIGSEGV in CI this way).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# Threads keep calling into gRPC while the main thread forks, as the suite's
# devnet and consumer do while a test restarts the database.
_FORK_WHILE_GRPC_IS_BUSY = textwrap.dedent(
    """
    import os, threading
    import consumer, grpc
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(4))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    done = threading.Event()

    def busy() -> None:
        while not done.is_set():
            try:
                grpc.channel_ready_future(channel).result(timeout=0.01)
            except grpc.FutureTimeoutError:
                pass

    threads = [threading.Thread(target=busy) for _ in range(3)]
    for thread in threads:
        thread.start()
    for _ in range(200):
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)
    done.set()
    for thread in threads:
        thread.join()
    print("forked 200 times")
    """
)


@pytest.mark.timeout(120)
def test_importing_the_package_turns_grpc_fork_handlers_off() -> None:
    # This process imported the package already: the child must not inherit its setting.
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    result = subprocess.run(
        [sys.executable, "-c", _FORK_WHILE_GRPC_IS_BUSY],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "forked 200 times" in result.stdout
    assert "fork() handlers" not in result.stderr, result.stderr
