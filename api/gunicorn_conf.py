"""gunicorn settings for `tokenvault serve` (read from TOKENVAULT_* variables).

No preload: every worker builds its own app, so key material is never created in
the master and inherited by forks. gunicorn's access log is off: our own JSON log
line records the route pattern, never the raw path (a path may hold a token or, by
mistake, a card number).
"""

import os
import shutil
import tempfile

bind = os.environ.get("TOKENVAULT_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("TOKENVAULT_WORKERS", "2"))
worker_class = os.environ.get("TOKENVAULT_WORKER_CLASS", "sync")
threads = int(os.environ.get("TOKENVAULT_THREADS", "1"))
timeout = 30
graceful_timeout = 30
keepalive = 5
preload_app = False
accesslog = None
errorlog = "-"
loglevel = os.environ.get("TOKENVAULT_LOG_LEVEL", "info")
limit_request_line = 4094
limit_request_fields = 64
limit_request_field_size = 8190
forwarded_allow_ips = os.environ.get("TOKENVAULT_FORWARDED_ALLOW_IPS", "127.0.0.1")
proc_name = "tokenvault"
# gunicorn 27's control socket lives at one path per user: two instances on a host would share it.
control_socket_disable = True
certfile = os.environ.get("TOKENVAULT_TLS_CERT") or None
keyfile = os.environ.get("TOKENVAULT_TLS_KEY") or None
logger_class = "api.http.logs.GunicornLogger"


# Prometheus multiprocess mode: one directory shared by the workers of this master,
# emptied at start, set before any worker imports prometheus_client.
_metrics_dir_given = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="tokenvault-metrics-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
os.makedirs(_metrics_dir, mode=0o700, exist_ok=True)


def on_starting(server):
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, mode=0o700, exist_ok=True)


def on_exit(server):
    """A directory this config made for itself goes with the master; one the operator named stays."""
    if not _metrics_dir_given:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
