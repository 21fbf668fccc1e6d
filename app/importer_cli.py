"""`python -m app import FILE [--dry-run] [--resource investments]`: the API's import, run against DATABASE_URL
with a progress bar on stderr. Exit code 0 when every row is fine, 1 otherwise."""

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import TextIO

from app import context
from app.config import get_settings
from app.db import Database, make_engine
from app.errors import AppError
from app.services import tabular

ACTOR = "import"


class ProgressBar:
    """`import [##########----------] 1200/2400  50%`, redrawn in place with a carriage return."""

    WIDTH = 30

    def __init__(self, total: int, out: TextIO = sys.stderr, label: str = "import") -> None:
        self.total = total
        self.out = out
        self.label = label
        self.shown: tuple[int, int] | None = None
        self.last_draw = 0.0

    def update(self, done: int) -> None:
        percent = 100 if self.total == 0 else done * 100 // self.total
        now = time.monotonic()
        if self.shown is not None and (
            self.shown[1] == percent and now - self.last_draw < 0.2 and done != self.total
        ):
            return
        filled = self.WIDTH * percent // 100
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.out.write(f"\r{self.label} [{bar}] {done}/{self.total} {percent:3d}%")
        self.out.flush()
        self.shown = (done, percent)
        self.last_draw = now

    def finish(self) -> None:
        if self.shown is None or self.shown[0] != self.total:
            self.update(self.total)
        self.out.write("\n")
        self.out.flush()


def print_report(report: tabular.ImportReport, out: TextIO = sys.stdout) -> None:
    mode = "试运行 dry run" if report.dry_run else "导入 import"
    outcome = (
        "未写入任何数据 (nothing written)"
        if report.errors or report.dry_run
        else "已写入 (committed)"
    )
    print(
        f"{mode}: {report.rows} rows, {report.created} created, {report.updated} updated, "
        f"{report.unchanged} unchanged, {report.error_count} errors — {outcome}",
        file=out,
    )
    for error in report.errors:
        column = error.column or "-"
        print(f"  row {error.row}  column {column}: {error.message}", file=out)
    if report.error_count > len(report.errors):
        by_column = ", ".join(f"{c} {n}" for c, n in report.error_columns.items())
        print(
            f"  … {report.error_count - len(report.errors)} more (by column: {by_column})", file=out
        )


async def _run(path: Path, dry_run: bool, resource: str = "projects") -> int:
    settings = get_settings()
    db = Database(make_engine(settings.database_url, pool_size=2, max_overflow=0))
    token = context.actor.set(ACTOR)
    try:
        with path.open("rb") as handle, tabular.reading(handle, path.name, settings) as table:
            bar = ProgressBar(table.count())
            async with db.writer() as session:
                try:
                    report = await tabular.import_rows(
                        session,
                        tabular.LAYOUTS[resource],
                        table,
                        dry_run=dry_run,
                        progress=bar.update,
                    )
                except tabular.ImportFailed as exc:
                    report = exc.report
            bar.finish()
    except AppError as exc:  # an unreadable file, or a conflict at commit
        print(f"import failed: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        context.actor.reset(token)
        await db.dispose()
    print_report(report)
    return 1 if report.errors else 0


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        print(f"import: no such file: {path}", file=sys.stderr)
        return 1
    return asyncio.run(_run(path, bool(args.dry_run), args.resource))
