"""Command line: `python -m app serve|migrate|seed`."""

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="Park Investment Registry")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--no-access-log", action="store_true", help="log no line per request")
    migrate_p = sub.add_parser(
        "migrate",
        help="upgrade the database schema to REVISION (default: head); never downgrades",
    )
    migrate_p.add_argument("revision", nargs="?", default="head")
    seed = sub.add_parser("seed", help="load the seed data (idempotent)")
    seed.add_argument("--check", action="store_true", help="report differences, write nothing")
    seed.add_argument("--if-empty", action="store_true", help="load only into an empty database")
    seed.add_argument(
        "--force",
        action="store_true",
        help="also overwrite seeded records that staff have changed since (kept otherwise)",
    )
    user = sub.add_parser("create-user", help="add a staff account")
    user.add_argument("--username", required=True)
    user.add_argument("--password", required=True)
    user.add_argument("--role", choices=["viewer", "editor", "admin"], required=True)
    parks_help = "comma-separated park ids it is limited to (default: every park)"
    user.add_argument("--parks", default=None, help=parks_help)
    token = sub.add_parser("create-token", help="create a service token (printed once)")
    token.add_argument("--name", required=True)
    token.add_argument("--scopes", required=True, help="comma-separated: read,write,admin")
    token.add_argument("--expires-days", type=int, default=None)
    token.add_argument("--parks", default=None, help=parks_help)
    mirror = sub.add_parser(
        "mirror", help="follow another registry's change feed into this database"
    )
    mirror.add_argument("--source", required=True, help="base URL of the source registry")
    mirror.add_argument("--token", default=os.environ.get("MIRROR_TOKEN"), help="or MIRROR_TOKEN")
    mirror.add_argument(
        "--interval", type=float, default=1.0, help="seconds between polls when idle"
    )
    mirror.add_argument("--once", action="store_true", help="stop when caught up")
    importer = sub.add_parser("import", help="import projects or investments from XLSX or CSV")
    importer.add_argument("file", help="an .xlsx or .csv file in the export layout")
    importer.add_argument("--dry-run", action="store_true", help="report problems, write nothing")
    importer.add_argument(
        "--resource",
        choices=["projects", "investments"],  # tabular.IMPORTABLE, not imported for every command
        default="projects",
        help="what the file holds (default: projects)",
    )
    args = parser.parse_args(argv)

    if args.command == "serve":
        from app import shutdown

        return shutdown.serve(
            host=args.host, port=args.port, workers=args.workers, access_log=not args.no_access_log
        )
    if args.command == "migrate":
        from app import migrate

        return migrate.cli(args.revision)
    if args.command == "seed":
        from app import seed as seed_module

        return seed_module.main(check=args.check, if_empty=args.if_empty, force=args.force)
    if args.command == "import":
        from app import importer_cli

        return importer_cli.run(args)
    if args.command == "mirror":
        from app import mirror as mirror_module

        return mirror_module.main(args.source, args.token, args.interval, args.once)
    if args.command in ("create-user", "create-token"):
        from app import accounts_cli

        return accounts_cli.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
