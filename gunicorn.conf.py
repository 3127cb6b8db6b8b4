"""gunicorn settings read from the working directory: only what /metrics needs under several processes.

With PROMETHEUS_MULTIPROC_DIR set, every web process writes its HTTP metrics there and /metrics sums
them (prometheus_client multiprocess mode): the directory is emptied when gunicorn starts, and a web
process that exits is marked dead so its live gauges drop out.
"""

import os
import shutil


def on_starting(server):
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
