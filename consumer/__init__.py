"""core-plays-consumer: follows the OpenAudio Core chain into the plays table."""

import os

# gRPC's fork handlers run on every fork() of this process, and a fork while other
# threads are inside gRPC can crash the child. This process only ever forks to exec
# (the demo's and the tests' pg_ctl run as another user, which rules out vfork), so
# the handlers protect nothing here. The variable is read when grpc is imported,
# which every module that uses it does after this package's __init__.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

__version__ = "0.1.0"
