"""``capa demo``: the main job on the embedded default (see :mod:`capa_app.demo.run`)."""

from __future__ import annotations

import argparse

from capa.config import load_settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("demo", help="run the whole pipeline on the embedded default")
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="duration of the live F2 workload"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="F2 row changes per second")
    parser.add_argument("--crm-accounts", type=int, default=300, help="accounts in the CRM extract")
    parser.add_argument("--keep-running", action="store_true", help="leave the stack up at the end")
    parser.add_argument(
        "--skip-spark", action="store_true", help="do not build the consumption layer"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from capa_app.demo.run import Demo, DemoOptions

    options = DemoOptions(
        seconds=args.seconds,
        rate=args.rate,
        crm_accounts=args.crm_accounts,
        keep_running=args.keep_running,
        skip_spark=args.skip_spark,
    )
    return Demo(load_settings(), options).run()
