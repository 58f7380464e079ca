"""``capa crm``: CRM batch ingestion.

    capa crm generate --out DIR [--accounts 10000] [--seed 7] [--dirt 0.01]
    capa crm pull --api URL --out DIR [--state FILE]     # incremental extract from the HTTP API
    capa crm load --extract DIR|gs://B/P --warehouse local:DIR [--full] [--max-reject-share 0.05]
    capa crm status --load-id ID [--warehouse local:DIR]   # exit 0 iff the ledger says completed

``load`` runs the Beam batch pipeline (``beam_jobs.crm_batch``) in this process on the
FnApiRunner; exit 1 with the top reject reasons when the reject share is above the limit.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from urllib.parse import urlparse

from capa import console

EXIT_FAILURE, EXIT_USAGE = 1, 2


def cmd_generate(args: argparse.Namespace) -> int:
    from connectors.crm.filestore import open_filestore
    from connectors.crm.generator import GeneratorConfig, generate_extract

    cfg = GeneratorConfig(
        accounts=args.accounts, seed=args.seed, dirt=args.dirt, load_id=args.load_id
    )
    try:
        manifest = generate_extract(open_filestore(args.out), cfg)
    except OSError as exc:
        console.error(f"cannot write the CRM extract to {args.out!r}: {exc}; pick a writable --out")
        return EXIT_FAILURE
    console.step(
        f"wrote CRM extract {manifest.load_id} ({len(manifest.files)} files) to {args.out}"
    )
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from connectors.crm.contract import load_contract
    from connectors.crm.filestore import open_filestore
    from connectors.crm.http_api import (
        CrmApiConfig,
        CrmApiExtractor,
        load_watermarks,
        save_watermarks,
    )

    if urlparse(args.api).scheme not in ("http", "https"):
        console.error(f"--api {args.api!r} is not an http(s) URL, e.g. http://127.0.0.1:8080")
        return EXIT_USAGE
    contract = load_contract(args.contract)
    config = CrmApiConfig(
        base_url=args.api, objects=tuple(args.objects or sorted(contract.objects))
    )
    state = Path(args.state)
    try:
        manifest, marks = CrmApiExtractor(config, contract).extract(
            open_filestore(args.out), load_watermarks(state)
        )
        save_watermarks(state, marks)
    except OSError as exc:
        console.error(f"cannot write {exc.filename or args.out!r}: {exc.strerror or exc}")
        return EXIT_FAILURE
    console.step(f"wrote CRM extract {manifest.load_id} to {args.out}; watermarks in {state}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from beam_jobs import crm_batch

    argv = ["--extract", args.extract]
    argv += ["--warehouse", args.warehouse] if args.warehouse else []
    argv += (
        ["--max_reject_share", str(args.max_reject_share)]
        if args.max_reject_share is not None
        else []
    )
    argv += ["--full"] if args.full else []
    argv += ["--contract", args.contract] if args.contract else []
    code = crm_batch.main(argv)
    return code


def cmd_status(args: argparse.Namespace) -> int:
    from capa.config import load_settings
    from capa.warehouse import open_warehouse
    from connectors.crm.contract import load_contract
    from connectors.crm.replica import load_completed

    warehouse = open_warehouse(args.warehouse or load_settings().warehouse)
    try:
        done = load_completed(warehouse, load_contract(args.contract), args.load_id)
    finally:
        warehouse.close()
    if not done:
        console.error(f"CRM load {args.load_id!r} is not recorded as completed in the ledger")
        return EXIT_FAILURE
    console.info(f"CRM load {args.load_id!r} completed")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    crm = subparsers.add_parser("crm", help="CRM batch ingestion (generate, pull, load)")
    sub = crm.add_subparsers(dest="crm_command", metavar="ACTION", required=True)
    gen = sub.add_parser("generate", help="write a sample CRM extract (deterministic by seed)")
    gen.add_argument("--out", required=True, help="extract folder (or gs://bucket/prefix)")
    gen.add_argument("--accounts", type=int, default=1000, help="number of accounts (others scale)")
    gen.add_argument("--seed", type=int, default=7, help="random seed")
    gen.add_argument("--dirt", type=float, default=0.01, help="share of spoiled rows")
    gen.add_argument("--load-id", default="crm-sample-0001", help="load id in the manifest")
    gen.set_defaults(func=cmd_generate)
    pull = sub.add_parser("pull", help="incremental extract from the CRM HTTP API")
    pull.add_argument("--api", required=True, help="API base URL")
    pull.add_argument("--out", required=True, help="extract folder to write")
    pull.add_argument(
        "--state", default=".state/crm/api-watermarks.json", help="watermark JSON file"
    )
    pull.add_argument("--objects", nargs="*", help="objects to pull (default: all in the contract)")
    pull.add_argument("--contract", default=None, help="contract YAML")
    pull.set_defaults(func=cmd_pull)
    load = sub.add_parser("load", help="load an extract into the raw layer (Beam batch pipeline)")
    load.add_argument("--extract", required=True, help="extract folder or gs://bucket/prefix")
    load.add_argument(
        "--warehouse", default=None, help="local:DIR or bigquery:PROJECT (default: config)"
    )
    load.add_argument(
        "--full", action="store_true", help="full snapshot: missing rows become deletes"
    )
    load.add_argument(
        "--max-reject-share",
        type=float,
        default=None,
        help="fail above this share (default: config crm.max_reject_share)",
    )
    load.add_argument("--contract", default=None, help="contract YAML")
    load.set_defaults(func=cmd_load)
    status = sub.add_parser("status", help="exit 0 iff the load ledger records LOAD_ID completed")
    status.add_argument(
        "--load-id", required=True, help="load id (the extract's _SUCCESS names it)"
    )
    status.add_argument(
        "--warehouse", default=None, help="local:DIR or bigquery:PROJECT (default: config)"
    )
    status.add_argument("--contract", default=None, help="contract YAML")
    status.set_defaults(func=cmd_status)
