"""``capa serve``: the status page, its JSON and the slot/build metrics, in one process.

capa serve [--port N]
    Serves http://<observe.host>:<observe.serve_port>/ until Ctrl-C: per source table the
    replica rows, last change applied, freshness against its SLO, p99 latency, dead
    letters by reason and slot WAL retained; per consumption model its last build.
"""

from __future__ import annotations

import argparse

from capa import console
from capa.config import load_settings


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("serve", help="status page + metrics of the running stack")
    parser.add_argument("--port", type=int, help="port (default observe.serve_port)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from capa_app.observe.server import StatusServer

    server = StatusServer(load_settings(), args.port)
    console.step(
        f"capa status page: {server.url}/  (metrics: {server.url}/metrics); Ctrl-C to stop"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
