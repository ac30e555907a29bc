"""Serve one of asgi_apps' apps the way `vmbackup serve` does: ``python bench/api/fleet_server.py KIND PROCESSES``.

The socket from serving.listen_socket, uvicorn configured by serving.uvicorn_config (the GuardedProtocol with its
deadlines and connection cap, keep-alive, no access log) and serving.serve_processes, from VMBACKUP_* settings
(VMBACKUP_LISTEN gives the port). The real app and the bare ones run through exactly this, so they differ only in
the application. With several processes the real app is built once first (migrations, seed), as `serve` does.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asgi_apps  # noqa: E402

from vmbackup.api import serving  # noqa: E402
from vmbackup.config import load_settings  # noqa: E402


def main() -> int:
    kind, processes = sys.argv[1], int(sys.argv[2])
    settings = load_settings()
    sock = serving.listen_socket(settings.host, settings.port)
    factory = getattr(asgi_apps, kind)
    if kind == "real" and processes > 1:
        factory().state.engine.dispose()  # migrate and seed once, before the processes start
    return serving.serve_processes(lambda _i: factory(), settings, sock, processes)


if __name__ == "__main__":
    sys.exit(main())
