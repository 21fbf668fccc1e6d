"""Spreadsheets in and out: the column layouts staff see in Excel, streamed exports (CSV and
XLSX) and an all-or-nothing import that writes what the API's record mechanics write, a chunk
of rows at a time (see `bulk`).

Layout rules, shared by export and import:
- Row 1 holds Chinese headers; data starts on row 2, and errors name rows as Excel shows them.
- Enumerations are written as their Chinese label (阶段 `签约`, 类型 `计划总投资`); an import
  also takes the API code (`signed`) or both (`签约 signed`). Flags are `是` / `否`, and an
  empty cell (or `未知`) is unknown, never `否`; an empty 阶段 is an unknown stage.
- 推断说明 holds the record's `inferred`: one line per field, `列名：依据` (the column's header,
  or the API's field name), and an import reads it back the same way.
- A project's 总投资 columns stand with their own provenance: the investment record the headline
  takes and its source (总投资取自投资额编号 / 总投资来源编号), and, where the records disagree,
  every figure with its source and the range (总投资各记录); the 来源编号 / 原文引述 at the end of
  the row are the project record's own.
- Amounts: 元 exact (CSV: the decimal text; XLSX: a number wherever a double holds the figure
  to the fen, which is every amount under 10^13 元, else the exact text), plus 万元 and 亿元.
- Columns such as names of related records, amounts, versions and times are derived: an import
  ignores them, bar 编号 (which record) and 版本 (the version the row was exported at).
- CSV is UTF-8 with a BOM; a text cell starting with = + - @ (or a tab / carriage return) gets
  an apostrophe in front so Excel never runs it as a formula, and the import takes it off.
"""

import asyncio
import codecs
import contextlib
import csv
import functools
import io
import json
import re
import struct
import threading
import types
import typing
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from tempfile import SpooledTemporaryFile
from typing import IO, Any, Literal
from xml.parsers import expat
from zipfile import BadZipFile

import anyio
from openpyxl import Workbook, load_workbook  # type: ignore[import-untyped]
from openpyxl.cell import WriteOnlyCell  # type: ignore[import-untyped]
from openpyxl.styles import Font  # type: ignore[import-untyped]
from openpyxl.utils import get_column_letter  # type: ignore[import-untyped]
from openpyxl.utils.exceptions import InvalidFileException  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from sqlalchemy import ARRAY, any_, bindparam, null, select
from sqlalchemy import text as sql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import SQLModel, col

from app import context, errors
from app.config import Settings
from app.db import Database, Record
from app.db_types import utcnow
from app.errors import AppError, Conflict, FieldError, Invalid
from app.models.chain import Chain
from app.models.common import NOT_INFERABLE, ListParams
from app.models.enterprise import Enterprise
from app.models.investment import Investment, InvestmentKind
from app.models.park import Park
from app.models.project import STAGE_ZH, Project, range_display
from app.money import MoneyUnit, to_yuan
from app.resources import ENTERPRISES, INVESTMENTS, PROJECTS
from app.services import bulk, records
from app.services import project as project_service
from app.services.records import ResourceSpec

BATCH_SIZE = 1000  # rows per keyset page while exporting
XLSX_MEDIA = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV_MEDIA = "text/csv; charset=utf-8"
SPOOL_BYTES = 8 * 1024 * 1024  # an XLSX stays in memory up to this size, then goes to disk
CHUNK = 64 * 1024
IMPORT_CHUNK = 1000  # rows checked against the registry, and written, together
REPORTED_ERRORS = 100  # problems an import report lists (all are counted)

KIND_LABELS: dict[str, str] = {
    InvestmentKind.planned_total: "计划总投资",
    InvestmentKind.annual_plan: "年度计划",
    InvestmentKind.completed: "已完成",
    InvestmentKind.reported: "报道",
}
YES, NO = "是", "否"
_TRUE = {"是", "true", "t", "yes", "y", "1", "√", "✓"}
_FALSE = {"否", "false", "f", "no", "n", "0", "×", "✗"}
_UNKNOWN = {"未知", "不详", "unknown", "?", "？"}


class Kind(StrEnum):
    INT = "int"
    TEXT = "text"
    BOOL = "bool"
    STAGE = "stage"
    INVESTMENT_KIND = "investment_kind"
    YUAN = "yuan"  # exact yuan
    WAN = "wan"  # the same amount in 万元
    YI = "yi"  # the same amount in 亿元
    DATE = "date"
    TIME = "time"
    NAME = "name"  # the name of the record that `field` (a foreign key) points to
    INFERRED = "inferred"  # `列名：依据` per line
    HEADLINE_RECORD = "headline_record"  # the investment record a project's total takes
    HEADLINE_SOURCE = "headline_source"  # and that record's source
    FIGURES = "figures"  # a project's disagreeing figures, each with its source


class Role(StrEnum):
    DERIVED = "derived"  # exported, ignored on import
    DATA = "data"  # exported and written by an import
    ID = "id"  # which record: matched, never written
    VERSION = "version"  # the version the row was exported at: a precondition for changing it


@dataclass(frozen=True)
class Column:
    header: str
    field: str
    kind: Kind
    role: Role = Role.DERIVED
    related: type[SQLModel] | None = None
    width: int = 12


@dataclass(frozen=True)
class Layout:
    spec: ResourceSpec
    sheet: str
    columns: tuple[Column, ...]
    by_header: dict[str, Column] = field(init=False)

    def __post_init__(self) -> None:
        # Headers as shown, and the API's field names for the editable columns.
        names = {_header_key(c.header): c for c in self.columns}
        for column in self.columns:  # a field's name stands for its first column (元, not 亿元)
            if column.role != Role.DERIVED:
                names.setdefault(column.field, column)
        object.__setattr__(self, "by_header", names)

    def header_of(self, name: str) -> str | None:
        for column in self.columns:
            if column.field == name and column.role != Role.DERIVED:
                return column.header
        return None


def _header_key(text: str) -> str:
    return re.sub(r"\s+", "", text).replace("（", "(").replace("）", ")").lower()


def _record_columns() -> tuple[Column, ...]:
    return (
        Column("来源编号", "source_id", Kind.INT, Role.DATA, width=10),
        Column("原文引述", "quote", Kind.TEXT, Role.DATA, width=40),
        Column("推断说明", "inferred", Kind.INFERRED, Role.DATA, width=40),
        Column("备注", "note", Kind.TEXT, Role.DATA, width=30),
        Column("版本", "version", Kind.INT, Role.VERSION, width=6),
        Column("创建时间", "created_at", Kind.TIME, width=26),
        Column("更新时间", "updated_at", Kind.TIME, width=26),
        Column("删除时间", "deleted_at", Kind.TIME, width=26),
    )


PROJECT_LAYOUT = Layout(
    PROJECTS,
    "项目",
    (
        Column("编号", "id", Kind.INT, Role.ID, width=8),
        Column("外部编号", "external_id", Kind.TEXT, Role.DATA, width=16),
        Column("项目代码", "code", Kind.TEXT, Role.DATA, width=16),
        Column("项目名称", "name", Kind.TEXT, Role.DATA, width=30),
        Column("园区编号", "park_id", Kind.INT, Role.DATA, width=10),
        Column("园区名称", "park_id", Kind.NAME, related=Park, width=16),
        Column("产业链编号", "chain_id", Kind.INT, Role.DATA, width=10),
        Column("产业链", "chain_id", Kind.NAME, related=Chain, width=12),
        Column("企业编号", "enterprise_id", Kind.INT, Role.DATA, width=10),
        Column("企业名称", "enterprise_id", Kind.NAME, related=Enterprise, width=30),
        Column("阶段", "stage", Kind.STAGE, Role.DATA, width=8),
        Column("重点项目", "is_key", Kind.BOOL, Role.DATA, width=8),
        Column("年度", "year", Kind.INT, Role.DATA, width=8),
        Column("总投资(元)", "total_investment", Kind.YUAN, width=18),
        Column("总投资(万元)", "total_investment", Kind.WAN, width=14),
        Column("总投资(亿元)", "total_investment", Kind.YI, width=12),
        Column("投资额冲突", "investment_conflict", Kind.BOOL, width=10),
        Column("总投资取自投资额编号", "id", Kind.HEADLINE_RECORD, width=12),
        Column("总投资来源编号", "id", Kind.HEADLINE_SOURCE, width=10),
        Column("总投资各记录（不一致时）", "investment_figures", Kind.FIGURES, width=50),
        *_record_columns(),
    ),
)

ENTERPRISE_LAYOUT = Layout(
    ENTERPRISES,
    "企业",
    (
        Column("编号", "id", Kind.INT, Role.ID, width=8),
        Column("外部编号", "external_id", Kind.TEXT, Role.DATA, width=16),
        Column("企业名称", "name", Kind.TEXT, Role.DATA, width=30),
        Column("统一社会信用代码", "credit_code", Kind.TEXT, Role.DATA, width=22),
        Column("园区编号", "park_id", Kind.INT, Role.DATA, width=10),
        Column("园区名称", "park_id", Kind.NAME, related=Park, width=16),
        Column("产业链编号", "chain_id", Kind.INT, Role.DATA, width=10),
        Column("产业链", "chain_id", Kind.NAME, related=Chain, width=12),
        Column("高新技术企业", "is_high_tech", Kind.BOOL, Role.DATA, width=10),
        Column("规上企业", "is_above_scale", Kind.BOOL, Role.DATA, width=10),
        Column("头部企业", "is_leading", Kind.BOOL, Role.DATA, width=10),
        Column("落地年份", "landed_year", Kind.INT, Role.DATA, width=10),
        *_record_columns(),
    ),
)

INVESTMENT_LAYOUT = Layout(
    INVESTMENTS,
    "投资额",
    (
        Column("编号", "id", Kind.INT, Role.ID, width=8),
        Column("外部编号", "external_id", Kind.TEXT, Role.DATA, width=16),
        Column("项目编号", "project_id", Kind.INT, Role.DATA, width=10),
        Column("项目名称", "project_id", Kind.NAME, related=Project, width=30),
        Column("类型", "kind", Kind.INVESTMENT_KIND, Role.DATA, width=12),
        # Any one of the three sets the amount; two that disagree are an error, not a guess.
        Column("金额(元)", "amount", Kind.YUAN, Role.DATA, width=18),
        Column("金额(万元)", "amount", Kind.WAN, Role.DATA, width=14),
        Column("金额(亿元)", "amount", Kind.YI, Role.DATA, width=12),
        Column("币种", "currency", Kind.TEXT, Role.DATA, width=6),
        Column("截至日期", "as_of_date", Kind.DATE, Role.DATA, width=12),
        *_record_columns(),
    ),
)

LAYOUTS = {
    layout.spec.name: layout for layout in (PROJECT_LAYOUT, ENTERPRISE_LAYOUT, INVESTMENT_LAYOUT)
}
# The layouts a spreadsheet can be imported in (`POST /{resource}/import`).
IMPORTABLE = (PROJECT_LAYOUT, INVESTMENT_LAYOUT)
# Amount columns: the unit each one is written in.
AMOUNT_UNITS = {Kind.YUAN: MoneyUnit.YUAN, Kind.WAN: MoneyUnit.WAN, Kind.YI: MoneyUnit.YI}


# ---------------------------------------------------------------- values


def _plain(amount: Decimal) -> Decimal:
    """`3E+1` → `30`: the same number, written without an exponent."""
    return Decimal(format(amount.normalize(), "f"))


def _inferred_text(layout: "Layout", inferred: dict[str, str]) -> str | None:
    """`列名：依据`, one field a line; a reason's own further lines are indented, so the import
    reads them as its continuation whatever they hold."""
    return (
        "\n".join(
            f"{layout.header_of(k) or k}：" + v.replace("\n", "\n  ") for k, v in inferred.items()
        )
        or None
    )


def _figures_text(figures: list[dict[str, Any]]) -> str:
    each = "；".join(
        f"{f['amount_display']} {KIND_LABELS.get(f['kind'], f['kind'])}"
        f"（投资额编号 {f['investment_id']}，来源编号 {f['source_id'] if f['source_id'] else '未知'}"
        + (f"，截至 {f['as_of_date']}" if f["as_of_date"] else "")
        + ("，总投资取此条" if f["headline"] else "")
        + "）"
        for f in figures
    )
    return f"{range_display(figures)}：{each}"


def value_of(
    layout: "Layout", column: Column, record: Any, names: dict[tuple[Any, int], Any]
) -> Any:
    """A cell as a Python value (int, str, Decimal, bool or None), before any file format."""
    raw = getattr(record, column.field)
    if raw is None:
        return None
    if column.kind == Kind.NAME:
        assert column.related is not None
        return names.get((column.related, raw))
    if column.kind == Kind.INFERRED:
        return _inferred_text(layout, raw)
    if column.kind in (Kind.HEADLINE_RECORD, Kind.HEADLINE_SOURCE):
        headline = names.get((Kind.HEADLINE_RECORD, raw))
        return None if headline is None else headline[column.kind == Kind.HEADLINE_SOURCE]
    if column.kind == Kind.FIGURES:
        return _figures_text(raw)
    if column.kind == Kind.STAGE:
        return STAGE_ZH.get(raw, str(raw))
    if column.kind == Kind.INVESTMENT_KIND:
        return KIND_LABELS.get(raw, str(raw))
    if column.kind == Kind.WAN:
        return _plain(raw.scaleb(-4))
    if column.kind == Kind.YI:
        return _plain(raw.scaleb(-8))
    if column.kind in (Kind.TIME, Kind.DATE):
        return raw.isoformat()
    if isinstance(raw, StrEnum):
        return raw.value
    return raw


_FORMULA = re.compile(r"^'*[=+\-@\t\r]")
_ESCAPED = re.compile(r"^'+[=+\-@\t\r]")


def csv_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return YES if value else NO
    if isinstance(value, Decimal):
        return format(value, "f")
    text = str(value)
    # A leading apostrophe makes Excel show the text instead of evaluating it. Quotes already
    # in front get one more, so the import can always take exactly one off.
    return "'" + text if isinstance(value, str) and _FORMULA.match(text) else text


def csv_untext(text: str) -> str:
    return text[1:] if text.startswith("'") and _ESCAPED.match(text) else text


_ILLEGAL_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _xlsx_value(value: Any, sheet: Any) -> Any:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, bool):
        return YES if value else NO
    if isinstance(value, Decimal):
        as_float = float(value)
        # A number where a double holds it exactly; the exact text where it cannot.
        return as_float if Decimal(repr(as_float)) == value else format(value, "f")
    text = _ILLEGAL_XML.sub("", str(value))
    if text.startswith("="):  # openpyxl would store it as a formula: keep it a string
        cell = WriteOnlyCell(sheet, value=text)
        cell.data_type = "s"
        return cell
    return text


# ---------------------------------------------------------------- export


def export_params(spec: ResourceSpec) -> type[BaseModel]:
    """The list's own filters (less paging), plus the file format."""
    fields: dict[str, Any] = {
        name: (info.annotation, info)
        for name, info in spec.filters.model_fields.items()
        if name not in ("limit", "cursor")
    }
    fields["format"] = (
        Literal["xlsx", "csv"],
        Field(default="xlsx", description="文件格式: xlsx (Excel) / csv (UTF-8 BOM)"),
    )
    return create_model(
        f"{spec.filters.__name__}Export",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )


def list_params(spec: ResourceSpec, params: BaseModel) -> ListParams:
    """Export parameters → the list's filter model, keeping which filters were given."""
    given = params.model_dump(exclude={"format"}, exclude_unset=True)
    filters = spec.filters.model_validate(given)
    return filters.model_copy(update={"limit": BATCH_SIZE, "cursor": None})


async def _related_names(
    session: AsyncSession, layout: Layout, rows: list[Any]
) -> dict[tuple[Any, int], Any]:
    """What the derived cells of these rows show: names of related records, and for projects
    the investment record (and its source) each headline total takes."""
    names: dict[tuple[Any, int], Any] = {}
    if layout.spec is PROJECTS and rows:
        names |= await _headlines(session, [r.id for r in rows])
    for column in layout.columns:
        model: Any = column.related
        if model is None:
            continue
        ids = {getattr(r, column.field) for r in rows} - {None}
        if not ids:
            continue
        query = select(model.id, model.name).where(model.id.in_(ids))
        parks = context.parks.get()
        park: Any = model.id if model is Park else getattr(model, "park_id", None)
        if parks is not None and park is not None:  # names of its parks' records only
            query = query.where(park.in_(sorted(parks)))
        result = await session.execute(query)
        names |= {(model, rid): name for rid, name in result.all()}
    return names


async def _headlines(session: AsyncSession, project_ids: list[int]) -> dict[tuple[Any, int], Any]:
    """(investment id, source id) of the record each project's total takes, by the rule that
    sets it (`project_service.derived`)."""
    stmt = select(Investment).where(
        col(Investment.project_id).in_(project_ids),
        col(Investment.deleted_at).is_(None),
        col(Investment.kind).in_(project_service.TOTAL_KINDS),
    )
    by_project: dict[int, list[Investment]] = defaultdict(list)
    for investment in (await session.scalars(stmt)).all():
        by_project[investment.project_id].append(investment)
    found: dict[tuple[Any, int], Any] = {}
    for project_id, investments in by_project.items():
        best = project_service.headline_record(investments)
        if best is not None:
            found[(Kind.HEADLINE_RECORD, project_id)] = (best.id, best.source_id)
    return found


async def pages(db: Database, layout: Layout, params: ListParams) -> AsyncIterator[list[list[Any]]]:
    """The rows of the export, one keyset page at a time: never all rows at once, and no
    connection held between pages (a slow download does not pin the pool)."""
    cursor: str | None = None
    while True:
        async with db.reader() as session:
            page = params.model_copy(update={"limit": BATCH_SIZE, "cursor": cursor})
            rows, cursor = await records.list_page(session, layout.spec, page)
            names = await _related_names(session, layout, rows)
        yield [[value_of(layout, c, r, names) for c in layout.columns] for r in rows]
        if cursor is None:
            return


async def csv_stream(
    layout: Layout, first: list[list[Any]], rest: AsyncIterator[list[list[Any]]]
) -> AsyncIterator[bytes]:
    def encode(rows: list[list[Any]], prefix: str = "") -> bytes:
        buffer = io.StringIO()
        buffer.write(prefix)
        writer = csv.writer(buffer)
        writer.writerows([csv_text(v) for v in row] for row in rows)
        return buffer.getvalue().encode("utf-8")

    yield encode([[c.header for c in layout.columns], *first], prefix="\ufeff")
    async for page in rest:
        yield encode(page)


async def xlsx_file(
    layout: Layout, first: list[list[Any]], rest: AsyncIterator[list[list[Any]]]
) -> tuple[IO[bytes], int]:
    """A write-only workbook (rows go to a temporary file as they come), saved to a spooled
    file; the openpyxl work runs in a thread so the event loop keeps serving."""
    workbook = Workbook(write_only=True)
    sheet: Any = workbook.create_sheet(layout.sheet)
    sheet.freeze_panes = "A2"
    for index, column in enumerate(layout.columns, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = column.width
    bold = Font(bold=True)
    header = []
    for column in layout.columns:
        cell = WriteOnlyCell(sheet, value=column.header)
        cell.font = bold
        header.append(cell)
    sheet.append(header)

    def append(rows: list[list[Any]]) -> None:
        for row in rows:
            sheet.append([_xlsx_value(v, sheet) for v in row])

    await anyio.to_thread.run_sync(append, first)
    async for page in rest:
        await anyio.to_thread.run_sync(append, page)
    out: Any = SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (file_chunks closes it)
    try:
        await anyio.to_thread.run_sync(workbook.save, out)
        size = out.tell()
        out.seek(0)
    except BaseException:
        out.close()
        raise
    return out, size


async def file_chunks(file: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while chunk := await anyio.to_thread.run_sync(file.read, CHUNK):
            yield chunk
    finally:
        file.close()


# ---------------------------------------------------------------- reading a file, within bounds

# What an import reads is bounded by the IMPORT_MAX_* settings; each refusal names the one it
# met. The guards below are not settings: they sit far above any real workbook and stop XML
# shapes that would cost openpyxl memory out of proportion to the data (it builds each row, each
# shared string and every other part as a tree, and each text whole, before we see it).
ZIP_MAX_DIRECTORY_BYTES = 1024 * 1024  # an XLSX's list of parts: ~100 bytes a part
XML_MAX_TOKEN_BYTES = 1024 * 1024  # one tag, comment or attribute value
XML_MAX_RECORD_ELEMENTS = 65_536  # in one row of a sheet, or one shared string
XML_MAX_OTHER_ELEMENTS = 250_000  # in a part, outside its rows or shared strings (styles…)
QUOTED_CHARS = 50  # of a cell quoted in a message
MESSAGE_CHARS = 500  # of a message in a report, whatever it quotes
_ZIP_END = b"PK\x05\x06"  # the end-of-central-directory record
_ZIP64_LOCATOR, _ZIP64_END = b"PK\x06\x07", b"PK\x06\x06"


class ImportLimit(Invalid):
    """A file beyond one of the import's bounds."""

    slug, title = "import-limit", "Import limit exceeded"


def _beyond(zh: str, en: str, *limits: tuple[str, int]) -> ImportLimit:
    """`zh — en`, naming each bound met and the setting that raises it."""
    names = "、".join(f"{name.upper()}={value}" for name, value in limits)
    raise_ = " / ".join(name.upper() for name, _ in limits)
    message = f"{zh}（上限 {names}）— {en}; raise {raise_} to allow more"
    return ImportLimit(
        message,
        errors=[FieldError(field="file", location="body", message=message)],
        extra={"limits": [{"setting": name.upper(), "max": value} for name, value in limits]},
    )


def _guard(zh: str, en: str) -> Invalid:
    """A refusal by one of the fixed guards above (no setting raises them)."""
    return Invalid.field("file", f"{zh} — {en}")


def _quoted(text: Any, limit: int = QUOTED_CHARS) -> str:
    """A cell or name as a message may quote it: at most `limit` characters."""
    shown = str(text)
    return shown if len(shown) <= limit else shown[:limit] + "…"


def _too_many_rows(settings: Settings) -> ImportLimit:
    limit = settings.import_max_rows
    return _beyond(
        f"表头以下超过 {limit} 行（空行也计入）",
        f"the file has more than {limit} rows below its header (blank ones included)",
        ("import_max_rows", limit),
    )


def _too_many_columns(settings: Settings, row: int) -> ImportLimit:
    limit = settings.import_max_columns
    return _beyond(
        f"第 {row} 行超过 {limit} 列",
        f"row {row} has more than {limit} columns",
        ("import_max_columns", limit),
    )


def _too_long(settings: Settings, where_zh: str, where_en: str) -> ImportLimit:
    limit = settings.import_max_cell_chars
    return _beyond(
        f"{where_zh}超过 {limit} 个字符",
        f"{where_en} is longer than {limit} characters",
        ("import_max_cell_chars", limit),
    )


def _too_big(settings: Settings) -> ImportLimit:
    limit = settings.import_max_decompressed_bytes
    return _beyond(
        f"XLSX 解压后超过 {limit} 字节",
        f"the XLSX unzips to more than {limit} bytes",
        ("import_max_decompressed_bytes", limit),
    )


def _check_cells(settings: Settings, number: int, cells: Sequence[Any]) -> None:
    """A row within the column and cell bounds (an XLSX's rows are cut to its header's width)."""
    if len(cells) > settings.import_max_columns:
        raise _too_many_columns(settings, number)
    limit = settings.import_max_cell_chars
    for index, cell in enumerate(cells, start=1):
        if isinstance(cell, str) and len(cell) > limit:
            raise _too_long(
                settings, f"第 {number} 行第 {index} 列", f"row {number}, column {index}"
            )


class Table:
    """The rows of an uploaded sheet: header, then (row number, cells) as Excel numbers rows.
    Opened on first use, by `import_rows` in a worker thread: reading and checking a file is
    CPU work the event loop must not wait for."""

    def __init__(self, file: IO[bytes], filename: str | None, settings: Settings) -> None:
        self.file = file
        self.filename = filename
        self.settings = settings
        self.kind: Literal["csv", "xlsx"] = "csv"
        self.header: list[str] = []
        self._data: Callable[[], Generator[Sequence[Any], None, None]] = _no_rows
        self._close: Callable[[], None] = lambda: None
        self._opened = False
        self._count: int | None = None

    def open(self) -> None:
        """Reads the format and the header, refusing (422) what is not a table we read."""
        if self._opened:
            return
        self.file.seek(0)
        magic = self.file.read(8)
        self.file.seek(0)
        if magic.startswith(b"\xd0\xcf\x11\xe0"):
            raise Invalid.field(
                "file", "旧版 .xls 文件不受支持，请另存为 .xlsx 或 .csv (.xls is not supported)"
            )
        if magic.startswith(b"PK\x03\x04"):
            self._open_xlsx()
        elif self.filename and self.filename.lower().endswith(".xlsx"):
            raise Invalid.field("file", "不是有效的 XLSX 文件 (not a readable XLSX file)")
        else:
            self._open_csv()
        self._opened = True

    def _open_csv(self) -> None:
        file, settings = self.file, self.settings
        encoding = _csv_encoding(file)
        with contextlib.closing(_csv_records(file, encoding, settings)) as records:
            header = next(records, [])
        _check_cells(settings, 1, header)

        def data() -> Generator[list[str], None, None]:
            with contextlib.closing(_csv_records(file, encoding, settings)) as records:
                next(records, None)
                yield from records

        self.kind, self.header, self._data = "csv", header, data

    def _open_xlsx(self) -> None:
        settings = self.settings
        _check_xlsx(self.file, settings)
        try:
            workbook = load_workbook(self.file, read_only=True, data_only=True)
        except _UNREADABLE as exc:
            raise _unreadable_xlsx(exc) from exc
        self._close = workbook.close
        sheets = workbook.worksheets
        if not sheets:
            raise Invalid.field("file", "XLSX 中没有工作表 (the XLSX holds no worksheet)")
        preferred = [s for s in sheets if s.title in {layout.sheet for layout in LAYOUTS.values()}]
        sheet: Any = (preferred or sheets)[0]
        # The sheet's own `dimension` may claim a million rows and columns: rows are read as
        # they come (all of them within bounds, see `_XmlScan`), as wide as the header.
        sheet.reset_dimensions()
        first = sheet.iter_rows(
            min_row=1, max_row=1, max_col=settings.import_max_columns + 1, values_only=True
        )
        header = list(next(_xlsx_rows(first), ()))
        while header and _blank(header[-1]):
            header.pop()
        _check_cells(settings, 1, header)
        width = len(header)

        def data() -> Generator[Sequence[Any], None, None]:
            if width:
                yield from _xlsx_rows(sheet.iter_rows(min_row=2, max_col=width, values_only=True))

        self.kind = "xlsx"
        self.header = [("" if h is None else str(h)) for h in header]
        self._data = data

    def rows(self) -> Generator[tuple[int, list[Any]], None, None]:
        self.open()
        settings = self.settings
        last = settings.import_max_rows + 1
        with contextlib.closing(self._data()) as data:
            for number, cells in enumerate(data, start=2):
                if number > last:
                    raise _too_many_rows(settings)
                _check_cells(settings, number, cells)
                yield number, list(cells)

    def count(self) -> int:
        """Data rows (blank ones included): one extra pass over the file, for progress."""
        if self._count is None:
            self._count = sum(1 for _ in self.rows())
        return self._count

    def close(self) -> None:
        self._close()


def _no_rows() -> Generator[Sequence[Any], None, None]:
    yield from ()


# ------------------------------------------------ CSV


def _csv_encoding(file: IO[bytes]) -> str:
    """UTF-8 (with or without BOM) when the whole file decodes as such; otherwise GB18030,
    which is what Excel on a Chinese Windows writes for "CSV". Anything else is refused, and
    so is a NUL byte, which no text file holds (UTF-16 text does, and binary files)."""
    undecodable = 0
    for encoding in ("utf-8", "gb18030"):
        file.seek(0)
        decoder = codecs.getincrementaldecoder(encoding)()
        offset = 0
        try:
            while chunk := file.read(CHUNK):
                if (nul := chunk.find(b"\0")) >= 0:
                    raise Invalid.field(
                        "file",
                        f"CSV 在第 {offset + nul} 字节处有 NUL 字节：不是文本，或是 UTF-16 文本；"
                        "请另存为 UTF-8 的 CSV — the CSV holds a NUL byte at offset "
                        f"{offset + nul} (binary, or UTF-16 text); save it as UTF-8 CSV",
                    )
                decoder.decode(chunk)
                offset += len(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            undecodable = undecodable or offset + exc.start
            continue
        file.seek(0)
        return "utf-8-sig" if encoding == "utf-8" else encoding
    raise Invalid.field(
        "file",
        f"CSV 不是 UTF-8 或 GB18030 文本（约第 {undecodable} 字节处无法解码）；请另存为 UTF-8 的 CSV"
        f" — the CSV is neither UTF-8 nor GB18030 text (undecodable near byte {undecodable})",
    )


def _csv_records(
    file: IO[bytes], encoding: str, settings: Settings
) -> Generator[list[str], None, None]:
    """The CSV's records, each read within bounds before the csv module sees it. A record
    (one line, or several when a quoted cell holds line breaks) may be at most as long as its
    widest legal form, columns × (cell + quotes and comma); and one that starts unquoted with
    more commas than columns is refused before it is split. The csv module's own field limit
    (131072 characters) is process-global, so it is left as it is: a cell beyond it is refused
    like any cell beyond IMPORT_MAX_CELL_CHARS."""
    columns = settings.import_max_columns
    cap = columns * (settings.import_max_cell_chars + 3)
    number = 1  # the record being read, as Excel numbers rows
    taken = 0  # its characters so far

    def lines() -> Iterator[str]:
        nonlocal taken
        while line := text.readline(cap + 1 - taken):
            if not taken and '"' not in line and line.count(",") >= columns:
                raise _too_many_columns(settings, number)
            taken += len(line)
            if taken > cap:
                raise _beyond(
                    f"第 {number} 行超过 {cap} 个字符（列数 × 每格字符数）",
                    f"row {number} is longer than {cap} characters (columns × cell characters)",
                    ("import_max_columns", columns),
                    ("import_max_cell_chars", settings.import_max_cell_chars),
                )
            yield line

    file.seek(0)
    text = io.TextIOWrapper(file, encoding=encoding, newline="")
    try:
        for record in csv.reader(lines()):
            yield record
            number, taken = number + 1, 0
    except csv.Error as exc:
        if taken > csv.field_size_limit():  # a field is at most as long as its record
            raise _too_long(settings, f"第 {number} 行的单元格", f"a cell in row {number}") from exc
        raise Invalid.field("file", f"CSV 格式有误 (malformed CSV): {_quoted(exc, 200)}") from exc
    finally:
        text.detach()  # the caller owns the file


# ------------------------------------------------ XLSX


# What openpyxl raises on a damaged or hand-made XLSX: caught only around its own calls.
_UNREADABLE = (
    InvalidFileException,
    BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    SyntaxError,  # xml.etree.ElementTree.ParseError
    KeyError,
    IndexError,
    ValueError,
    TypeError,
    AttributeError,
    ArithmeticError,
    NotImplementedError,
    RuntimeError,
)


def _unreadable_xlsx(exc: BaseException) -> Invalid:
    what = "XML 有误 (malformed XML)" if isinstance(exc, SyntaxError) else "无法读取 (unreadable)"
    return Invalid.field(
        "file", f"不是有效的 XLSX 文件：{what} — not a readable XLSX file: {_quoted(exc, 200)}"
    )


def _xlsx_rows(rows: Iterator[Sequence[Any]]) -> Generator[Sequence[Any], None, None]:
    """openpyxl's rows, its errors on a malformed sheet turned into a 422."""
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except _UNREADABLE as exc:
            raise _unreadable_xlsx(exc) from exc
        yield row


def _zip_directory_bytes(file: IO[bytes]) -> int | None:
    """The size of a zip's central directory, as `zipfile` will find it, before zipfile reads
    it (into an object per part, ~7 times its size in memory); None when there is none."""
    file.seek(0, io.SEEK_END)
    size = file.tell()
    start = max(0, size - 22 - 0xFFFF)  # the record, and a comment of up to 64 KiB after it
    file.seek(start)
    tail = file.read()
    at = len(tail) - 22 if tail[-22:-18] == _ZIP_END else tail.rfind(_ZIP_END)
    if at < 0 or at + 22 > len(tail):
        return None
    (directory,) = struct.unpack_from("<I", tail, at + 12)
    # A ZIP64 record just before it overrides the sizes, as zipfile reads them.
    zip64 = at >= 76 and tail[at - 20 : at - 16] == _ZIP64_LOCATOR
    if zip64 and tail[at - 76 : at - 72] == _ZIP64_END:
        (directory,) = struct.unpack_from("<Q", tail, at - 76 + 40)
    return int(directory)


def _check_xlsx(file: IO[bytes], settings: Settings) -> None:
    """The XLSX read once through `_XmlScan` before openpyxl reads it: within the unzipped size
    its parts declare, and reading no more than they declare, both within the bound."""
    limit = settings.import_max_decompressed_bytes
    directory = _zip_directory_bytes(file)
    if directory is not None and directory > ZIP_MAX_DIRECTORY_BYTES:
        raise _guard(
            f"XLSX 的部件目录超过 {ZIP_MAX_DIRECTORY_BYTES} 字节",
            f"the XLSX's list of parts is larger than {ZIP_MAX_DIRECTORY_BYTES} bytes",
        )
    try:
        archive = zipfile.ZipFile(file)
    except (BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise _unreadable_xlsx(exc) from exc
    with archive:
        parts = archive.infolist()
        if sum(part.file_size for part in parts) > limit:
            raise _too_big(settings)
        read = 0
        for part in parts:
            if part.is_dir():
                continue
            scan: _XmlScan | None = None
            try:
                with archive.open(part) as member:
                    while chunk := member.read(CHUNK):
                        # zipfile stops at the declared size (and checks the CRC there); this
                        # holds the bound even if it did not.
                        read += len(chunk)
                        if read > limit:
                            raise _too_big(settings)
                        if scan is None:
                            if not _looks_like_xml(chunk):
                                break
                            scan = _XmlScan(part.filename, settings)
                        scan.feed(chunk)
                if scan is not None:
                    scan.close()
            except expat.ExpatError:
                # Not well-formed: openpyxl, if it reads this part, stops where expat did
                # (it parses with expat too) and is refused then (`_unreadable_xlsx`).
                continue
            except (
                BadZipFile,
                zlib.error,
                EOFError,
                OSError,
                NotImplementedError,
                RuntimeError,
            ) as exc:
                raise _unreadable_xlsx(exc) from exc
    file.seek(0)


def _looks_like_xml(head: bytes) -> bool:
    return head.lstrip(b" \t\r\n").startswith(
        (b"<", codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
    )


# Elements inside a cell (or a shared string): a row's or a string's own budget, one text.
_CELL_PARTS = frozenset({
    "c", "v", "f", "is", "r", "t", "rPr", "rPh", "phoneticPr", "rFont", "charset", "family", "b",
    "i", "strike", "outline", "shadow", "condense", "extend", "color", "sz", "u", "vertAlign",
    "scheme",
})  # fmt: skip
_RECORDS = {"worksheet": "row", "sst": "si"}  # a part's repeated element, by its root


class _XmlScan:
    """One XML part of an XLSX read through expat (which is what openpyxl parses with, so it
    stops where this does): rows and cells of a sheet within the settings' bounds, each text
    (a cell, a shared string, an element) within IMPORT_MAX_CELL_CHARS, no DTD (no entity
    expansion), and the guards above. Each refusal comes before openpyxl has read the part."""

    def __init__(self, part: str, settings: Settings) -> None:
        self.part = _quoted(part)
        self.settings = settings
        self.record: str | None = None  # by the root: `row` in a sheet, `si` in shared strings
        self.records = 0
        self.row = 0  # a sheet's row number, as Excel numbers it
        self.cells = 0  # in this row
        self.cell: dict[str, str] = {}  # its attributes
        self.inside = 0  # elements in this record
        self.outside = 0  # elements outside any record
        self.text = 0  # characters of this cell, shared string or element
        self.fed = 0
        self.parser = expat.ParserCreate(namespace_separator=" ")
        self.parser.buffer_text = True
        self.parser.StartElementHandler = self.root
        self.parser.CharacterDataHandler = self.characters
        self.parser.StartDoctypeDeclHandler = self.doctype

    def feed(self, chunk: bytes) -> None:
        self.fed += len(chunk)
        self.parser.Parse(chunk, False)
        # Bytes expat holds without an event yet: one token (tag, comment, attribute) so far.
        if self.fed - self.parser.CurrentByteIndex > XML_MAX_TOKEN_BYTES:
            raise _guard(
                f"XLSX 部件 {self.part} 中有超过 {XML_MAX_TOKEN_BYTES} 字节的标签",
                f"part {self.part} of the XLSX holds a tag longer than {XML_MAX_TOKEN_BYTES} bytes",
            )

    def close(self) -> None:
        self.parser.Parse(b"", True)

    def doctype(self, *_: Any) -> None:
        raise _guard(
            f"XLSX 部件 {self.part} 含 DOCTYPE（XLSX 不用 DTD）",
            f"part {self.part} of the XLSX has a DOCTYPE, which no XLSX needs",
        )

    def root(self, name: str, attrs: dict[str, str]) -> None:
        self.record = _RECORDS.get(name.rpartition(" ")[2])
        self.parser.StartElementHandler = self.start

    def start(self, name: str, attrs: dict[str, str]) -> None:
        local = name.rpartition(" ")[2]
        if local == self.record:
            self.records += 1
            self.inside = self.cells = self.text = 0
            self.cell = {}
            if local == "row":
                self.next_row(attrs.get("r"))
        elif self.record is not None and local in _CELL_PARTS:
            self.inside += 1
            if self.inside > XML_MAX_RECORD_ELEMENTS:
                if self.record == "row":
                    where = (f"第 {self.row} 行", f"row {self.row}")
                else:
                    where = (f"第 {self.records} 个共享字符串", f"shared string {self.records}")
                raise self.too_many_elements(XML_MAX_RECORD_ELEMENTS, *where)
            if local == "c" and self.record == "row":
                self.cells += 1
                self.text = 0
                self.cell = attrs
                if self.cells > self.settings.import_max_columns:
                    raise _too_many_columns(self.settings, self.row)
        else:
            self.outside += 1
            self.text = 0
            if self.outside > XML_MAX_OTHER_ELEMENTS:
                raise self.too_many_elements(XML_MAX_OTHER_ELEMENTS, "行外", "outside its rows")

    def next_row(self, number: str | None) -> None:
        self.row = int(number) if number and number.isascii() and number.isdigit() else self.row + 1
        if max(self.row, self.records) > self.settings.import_max_rows + 1:
            raise _too_many_rows(self.settings)

    def characters(self, data: str) -> None:
        self.text += len(data)
        if self.text > self.settings.import_max_cell_chars:
            if self.record == "row" and self.cell:
                cell = _quoted(self.cell.get("r", "?"))
                raise _too_long(self.settings, f"第 {self.row} 行的单元格 {cell}", f"cell {cell}")
            if self.record == "si":
                raise _too_long(
                    self.settings,
                    f"第 {self.records} 个共享字符串",
                    f"shared string {self.records}",
                )
            raise _too_long(
                self.settings, f"XLSX 部件 {self.part} 中的文本", f"a text in part {self.part}"
            )

    def too_many_elements(self, limit: int, where_zh: str, where_en: str) -> Invalid:
        return _guard(
            f"XLSX 部件 {self.part} 的 XML 元素超过 {limit} 个（{where_zh}）",
            f"part {self.part} of the XLSX has more than {limit} XML elements ({where_en})",
        )


# ---------------------------------------------------------------- parsing cells


class CellError(ValueError):
    pass


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _as_text(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bool):
        return YES if value else NO
    return str(value)


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise CellError("应为整数 (expected a whole number)")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)  # the common case, without the pattern below
    text = str(value).strip()
    if re.fullmatch(r"[+-]?\d+(\.0*)?", text):
        return int(Decimal(text))
    raise CellError(f"应为整数，而不是“{_quoted(text)}” (expected a whole number)")


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = (value if isinstance(value, str) else _as_text(value)).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if text in _UNKNOWN:
        return None
    raise CellError(
        f"应为“是”、“否”或留空（未知），而不是“{_quoted(text)}” (expected 是, 否, or empty for unknown)"
    )


_INFERRED_LINE = re.compile(r"^([^:：\s][^:：\n]{0,63}?)\s*[:：]\s*(.*)$")


_BY_LABEL = {id(labels): {v: k for k, v in labels.items()} for labels in (STAGE_ZH, KIND_LABELS)}


def _as_label(value: Any, labels: Mapping[Any, str], what: str) -> str:
    """`签约`, `signed`, `签约 signed` or `签约(signed)` → `signed`."""
    text = (value if isinstance(value, str) else _as_text(value)).strip()
    by_label = _BY_LABEL[id(labels)]
    # A label or a code alone (the common case) has no separator, so is its own single token.
    alone = by_label.get(text) or (text.lower() if text.lower() in labels else None)
    if alone is not None:
        return str(alone)
    tokens = [t for t in re.split(r"[\s()（）/、,，]+", text) if t]
    found = {by_label.get(t) or (t.lower() if t.lower() in labels else None) for t in tokens}
    if tokens and len(found) == 1 and None not in found:
        return str(found.pop())
    choices = "、".join(f"{label} {code}" for code, label in labels.items())
    raise CellError(f"未知的{what}“{_quoted(text)}”；可选: {choices}")


def parse_cell(column: Column, value: Any, *, from_csv: bool) -> Any:
    return cell_parser(column, from_csv=from_csv)(value)


@functools.cache
def cell_parser(column: Column, *, from_csv: bool) -> Callable[[Any], Any]:
    """`parse_cell` for one column, its choices made once (an import calls it per cell)."""
    kind = column.kind
    empty: Any = {} if kind == Kind.INFERRED else None  # an empty flag is unknown, not 否
    convert: Callable[[Any], Any] = {
        Kind.INT: _as_int,
        Kind.BOOL: _as_bool,
        Kind.STAGE: lambda v: _as_label(v, STAGE_ZH, "阶段"),
        Kind.INVESTMENT_KIND: lambda v: _as_label(v, KIND_LABELS, "类型"),
    }.get(kind, _as_text)

    plain = convert is _as_text

    def parse(value: Any) -> Any:
        if isinstance(value, str):
            if from_csv:
                value = csv_untext(value)
            if not value.strip():
                return empty
            if plain:
                return value  # what _as_text makes of a str
        elif value is None:
            return empty
        return convert(value)

    return parse


def _yuan(value: Any, unit: MoneyUnit) -> Decimal:
    """An amount cell in `unit` as exact yuan, by the API's own rule (`money.to_yuan`)."""
    try:
        amount = Decimal(str(value).strip().replace(",", ""))
        return to_yuan(amount, unit)
    except (ArithmeticError, ValueError) as exc:
        raise CellError(f"不是有效的金额（{unit}）: {_quoted(value)} — {_quoted(exc)}") from exc


# ---------------------------------------------------------------- importing


class RowError(BaseModel):
    """导入文件中一处错误：哪一行、哪一列、错在哪里 (one problem in an imported file)."""

    row: int = Field(description="行号，与 Excel 显示一致（第 1 行为表头）", examples=[2])
    column: str | None = Field(description="列名；整行的问题为空", examples=["阶段"])
    message: str = Field(description="错误说明 (what is wrong)", examples=["未知的阶段“挖坑”"])


class ImportReport(BaseModel):
    dry_run: bool = Field(description="试运行：只检查，不写入")
    rows: int = Field(description="数据行数（不含表头与空行）")
    created: int = Field(
        description="新建的记录数（试运行时为将要新建的数；正式导入因错误被拒时为 0，什么都没写）"
    )
    updated: int = Field(
        description="有改动的记录数（试运行时为将要修改的数；正式导入因错误被拒时为 0）"
    )
    unchanged: int = Field(description="与登记内容完全一致、未写入的行数")
    errors: list[RowError] = Field(
        description=f"逐行逐列的错误，按行序列出前 {REPORTED_ERRORS} 个；有任何错误时，正式导入什么都不写"
    )
    # Left out of the answer when there are no errors (as before they were counted).
    error_count: int = Field(
        default=0,
        exclude_if=lambda count: count == 0,
        description="错误总数，无错误时不出现 (all problems, listed or not; absent when none)",
    )
    error_columns: dict[str, int] = Field(
        default_factory=dict,
        exclude_if=lambda counts: not counts,
        description="各列的错误数；整行的问题记在 “-” 下；无错误时不出现 (problems per column)",
    )


class ImportFailed(Invalid):
    def __init__(self, report: ImportReport) -> None:
        bad_rows = sorted({e.row for e in report.errors})
        more = len(bad_rows) > 20 or report.error_count > len(report.errors)
        shown = "、".join(map(str, bad_rows[:20])) + ("…" if more else "")
        super().__init__(
            f"{report.error_count} 个错误（第 {shown} 行），未写入任何数据 — "
            f"{report.error_count} error(s), in row(s) {shown}; nothing was written",
            errors=[
                FieldError(
                    field=e.column or "file", location="file", message=e.message, index=e.row
                )
                for e in report.errors
            ],
            extra={"report": report.model_dump(mode="json")},
        )
        self.report = report


def _pydantic_message(error: Any) -> str:
    if error["type"] == "string_pattern_mismatch":  # the sheet's only patterned column: 外部编号
        return f"格式不符（不能含空白或 /） ({error['msg']})"
    return errors.message(error)


def _nullable(model: type[BaseModel], name: str) -> bool:
    annotation = model.model_fields[name].annotation
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(
        None
    ) in typing.get_args(annotation)


KEY_FIELDS = ("external_id", "code", "id")  # what a row names its record by, in that order
YIELD_EVERY = 100  # rows checked between giving the event loop back to other requests


@dataclass
class _Row:
    """A data row whose cells parsed far enough to say which record it stands for."""

    number: int
    values: dict[str, Any]  # by field; 编号 and 版本 taken out
    failed: set[str]  # fields whose cell did not parse (already reported)
    record_id: int | None
    version: int | None
    external_id: str | None
    code: str | None


@dataclass
class _Plan:
    """What a chunk of rows writes, in file order."""

    first: int  # the chunk's first row
    # ("create" | "update", the row written, the record before an update)
    writes: list[tuple[str, bulk.Row, Any]] = field(default_factory=list)
    fields: set[str] = field(default_factory=set)  # the fields the updates change


async def _is_postgres(session: AsyncSession) -> bool:
    return (await session.connection()).dialect.name == "postgresql"


async def _among(session: AsyncSession, column: Any, values: Collection[Any]) -> Any:
    """`column IN (values)`; on PostgreSQL `= ANY(array)`: one parameter, not one per value
    (SQLAlchemy expanding a thousand of them per query showed up in the import's profile)."""
    if await _is_postgres(session):
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


async def _matching(session: AsyncSession, table: Any, name: str, values: Collection[Any]) -> Any:
    """The rows of `table` whose column `name` holds one of `values`, by that column's index."""
    if await _is_postgres(session):
        return select(table).where(await _among(session, table.c[name], values))
    # SQLite: the values drive the join (a CROSS JOIN fixes that order), one index probe each.
    # With IN, or joined to whole rows, its statistics can make it scan the table instead: an
    # index on a mostly empty column such as external_id looks useless to it (bench/README.md).
    # So the index gives the ids, and the rows come by id.
    probe = (
        f"SELECT t.id FROM json_each(:keys) AS k CROSS JOIN {table.name} AS t ON t.{name} = k.value"
    )
    ids = sql(probe).bindparams(keys=json.dumps(list(values))).columns(table.c.id)
    return select(table).where(table.c.id.in_(ids))


@dataclass
class _Parents:
    """The parents a chunk of rows names (and those of the records they change), read in one
    query per table and kept for the rest of the import."""

    session: AsyncSession
    live: dict[tuple[str, int], bool] = field(default_factory=dict)  # (table, id) → live
    # (table, id) → park_id, in the form `records` leaves it in session.info for a `validate`
    # hook (see `records.PARKS_OF`), so that the hook has no need to ask the database.
    parks: dict[tuple[str, int], Any] = field(default_factory=dict)

    async def load(self, wanted: dict[type[SQLModel], set[int]]) -> None:
        for model, ids in wanted.items():
            table: Any = model.__table__  # type: ignore[attr-defined]
            missing = sorted(i for i in ids if (table.name, i) not in self.live)
            park = table.c.park_id if "park_id" in table.c else null()
            for start in range(0, len(missing), IMPORT_CHUNK):
                some = missing[start : start + IMPORT_CHUNK]
                query = select(table.c.id, table.c.deleted_at, park).where(
                    await _among(self.session, table.c.id, some)
                )
                for record_id, deleted_at, park_id in await self.session.execute(query):
                    self.live[(table.name, record_id)] = deleted_at is None
                    if "park_id" in table.c:
                        self.parks[(table.name, record_id)] = park_id
                for record_id in some:
                    self.live.setdefault((table.name, record_id), False)
                    if "park_id" in table.c:
                        self.parks.setdefault((table.name, record_id), None)


@dataclass
class _Known:
    """What the import has read of the registry for a chunk of rows, as `records.check_rules`
    asks it (`records.Known`): live parents and their parks, and the holders of unique keys as
    the rows before leave them."""

    importer: "_Importer"
    found: dict[str, dict[Any, Any]]

    @property
    def parks(self) -> dict[tuple[str, int], Any]:
        return self.importer.parents.parks

    def live(self, table: str, record_id: int) -> bool:
        return self.importer.parents.live[(table, record_id)]

    def holder(self, name: str, value: Any) -> Any:
        return self.importer.lookup(self.found, name, value)


def _check_importable(spec: ResourceSpec) -> None:
    if any(len(fields) != 1 or fields[0] not in KEY_FIELDS for fields in spec.unique):
        raise TypeError(f"{spec.name}: unique constraints beyond the import's keys")


@dataclass
class _Importer:
    session: AsyncSession
    layout: Layout
    dry_run: bool
    errors: list[RowError] = field(default_factory=list)  # those of the first rows
    error_count: int = 0
    error_columns: Counter[str] = field(default_factory=Counter)
    cutoff: int | None = None  # the last row `errors` keeps problems of, once it has enough
    lock: threading.Lock = field(default_factory=threading.Lock)
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rows: int = 0
    # Keys already used by an earlier row of this file: field → value → row.
    seen: dict[str, dict[Any, int]] = field(default_factory=dict)
    matched: dict[int, int] = field(default_factory=dict)  # record id → row
    # Key values that an earlier row takes away from a record: field → value → record id.
    # Later rows see the registry as those rows leave it, written yet or not.
    vacated: dict[str, dict[Any, int]] = field(
        default_factory=lambda: {name: {} for name in KEY_FIELDS}
    )
    aborted: bool = False
    parents: _Parents = field(init=False)
    feed: bulk.ChangeLog = field(init=False)
    nullable: set[str] = field(init=False)
    required: list[str] = field(init=False)
    audit: tuple[str | None, str | None] = field(init=False)  # who, under which request

    def __post_init__(self) -> None:
        spec = self.spec
        _check_importable(spec)
        self.parents = _Parents(self.session)
        self.feed = bulk.ChangeLog(self.session)
        fields = spec.create.model_fields
        self.nullable = {n for n in fields if _nullable(spec.create, n)}
        self.required = [n for n, info in fields.items() if info.is_required()]
        self.audit = (context.actor.get(), context.request_id.get())

    @property
    def spec(self) -> ResourceSpec:
        return self.layout.spec

    @property
    def writing(self) -> bool:
        return not (self.dry_run or self.error_count or self.aborted)

    def header_of(self, name: str | None) -> str | None:
        if name is None:
            return None
        head = name.split(".")[0]
        return self.layout.header_of(head) or head

    def inferred_fields(self, text: str) -> dict[str, str]:
        """A 推断说明 cell as `inferred`: a line `列名：依据` names a column of this sheet (its
        header, or the API's field name) and starts its reason; an indented line, or one whose
        name is no column, continues the reason above it."""
        found: dict[str, str] = {}
        last: str | None = None
        for line in text.splitlines():
            if not line.strip():
                continue
            match = None if line[:1].isspace() else _INFERRED_LINE.match(line)
            field_name = self.inferable(match.group(1)) if match else None
            if field_name is not None and match is not None and match.group(2).strip():
                if field_name in found:
                    raise CellError(f"“{_quoted(match.group(1))}”写了两次 (a field is named twice)")
                found[field_name] = match.group(2).strip()
                last = field_name
            elif last is not None:
                found[last] += "\n" + line.strip()
            else:
                raise CellError(
                    f"每行应为“列名：依据”，列名为本表可写的列，而不是“{_quoted(line)}” "
                    "(expected `column: reason` per line, naming a column of this sheet)"
                )
        return found

    def inferable(self, name: str) -> str | None:
        """The field a 推断说明 line names (a header of this sheet, or a field name), if any."""
        column = self.layout.by_header.get(_header_key(name))
        field_name = column.field if column is not None and column.role != Role.DERIVED else name
        fields = self.spec.create.model_fields
        return field_name if field_name in fields and field_name not in NOT_INFERABLE else None

    def fail(self, row: int, column: str | None, message: str) -> None:
        """Counts every problem; keeps those of the first rows, enough for the report. Rows
        are parsed in a worker thread while the event loop writes (which can fail too)."""
        with self.lock:
            self.error_count += 1
            self.error_columns[column or "-"] += 1
            if self.cutoff is not None and row > self.cutoff:
                return
            self.errors.append(
                RowError(row=row, column=column, message=_quoted(message, MESSAGE_CHARS))
            )
            if len(self.errors) >= 2 * REPORTED_ERRORS:
                self.errors.sort(key=lambda e: e.row)  # stable: a row's problems stay in order
                del self.errors[REPORTED_ERRORS:]
                self.cutoff = self.errors[-1].row

    def read_header(self, header: list[str]) -> dict[int, Column]:
        columns: dict[int, Column] = {}
        used: dict[str, str] = {}
        for index, text in enumerate(header):
            if not text.strip():
                continue
            column = self.layout.by_header.get(_header_key(text))
            if column is None:
                known = "、".join(c.header for c in self.layout.columns)
                self.fail(1, _quoted(text), f"未知的列“{_quoted(text)}”；可用的列: {known}")
                continue
            if column.header in used:
                self.fail(
                    1, _quoted(text), f"与列“{_quoted(used[column.header])}”重复 (duplicate column)"
                )
                continue
            used[column.header] = text
            if column.role != Role.DERIVED:
                columns[index] = column
        if not columns and not self.error_count:
            self.fail(1, None, "没有可导入的列：第 1 行应为导出文件的表头 (no importable columns)")
        return columns

    # ------------------------------------------------ pass 1: each row on its own

    def parse(
        self, number: int, cells: list[Any], parsers: list[tuple[int, Column, Callable[[Any], Any]]]
    ) -> _Row | None:
        """The row's cells, or None when its keys are unusable (reported)."""
        values: dict[str, Any] = {}
        failed: set[str] = set()
        amounts: dict[str, Column] = {}  # field → the column its amount was read from
        width = len(cells)
        for index, column, parse in parsers:
            try:
                value = parse(cells[index] if index < width else None)
                if column.kind in AMOUNT_UNITS and value is not None:
                    value = _yuan(value, AMOUNT_UNITS[column.kind])
            except CellError as exc:
                self.fail(number, column.header, str(exc))
                failed.add(column.field)
                continue
            if column.kind == Kind.INFERRED and isinstance(value, str):
                try:
                    value = self.inferred_fields(value)
                except CellError as exc:
                    self.fail(number, column.header, str(exc))
                    failed.add(column.field)
                    continue
            if column.kind not in AMOUNT_UNITS:
                values[column.field] = value
            elif value is None:
                values.setdefault(column.field, None)
            elif (first := amounts.setdefault(column.field, column)) is column:
                values[column.field] = value
            elif values[column.field] != value:
                self.fail(
                    number,
                    column.header,
                    f"与“{first.header}”不一致（{values[column.field]} 元 ≠ {value} 元）：改金额时只改一列，"
                    "或清空另外两列 (the amount columns disagree)",
                )
                failed.add(column.field)
        record_id = values.pop("id", None)
        version = values.pop("version", None)
        if values.get("external_id") is None:
            values.pop("external_id", None)  # an empty 外部编号 never clears a sync key
        external_id, code = values.get("external_id"), values.get("code")
        keys = {"external_id": external_id, "code": code, "id": record_id}
        if not self.check_repeats(number, keys) or not failed.isdisjoint(KEY_FIELDS):
            return None
        return _Row(
            number,
            values,
            failed,
            record_id,
            version,
            external_id.strip() if external_id is not None else None,
            code.strip() if code is not None and "code" in self.spec.model.model_fields else None,
        )

    def check_repeats(self, row: int, keys: dict[str, Any]) -> bool:
        ok = True
        for name, value in keys.items():
            if value is None:
                continue
            normal = value.strip() if isinstance(value, str) else value
            earlier = self.seen.setdefault(name, {}).setdefault(normal, row)
            if earlier != row:
                self.fail(row, self.layout.header_of(name), f"与第 {earlier} 行重复")
                ok = False
        return ok

    # ------------------------------------------------ pass 2: a chunk against the registry

    async def load(self, chunk: list[_Row]) -> dict[str, dict[Any, Any]]:
        """What the registry holds for a chunk of rows, in a few queries for all of them: the
        records their keys name, by key (and their parents, in `parents`)."""
        found = await self.load_records(chunk)
        await self.load_parents(chunk, found)
        return found

    async def check(self, chunk: list[_Row], found: dict[str, dict[Any, Any]]) -> _Plan:
        """What a chunk of rows would write, each row checked in file order as if the rows
        before it were written. Reads nothing from the database."""
        plan = _Plan(chunk[0].number)
        for i, row in enumerate(chunk, start=1):
            planned = await self.decide(row, found)
            if planned is not None:
                op, record, changed, before = planned
                plan.writes.append((op, record, before))
                plan.fields |= changed
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        return plan

    async def load_records(self, chunk: list[_Row]) -> dict[str, dict[Any, Any]]:
        """The records the chunk's keys name (deleted ones too), by each key."""
        table: Any = self.spec.model.__table__  # type: ignore[attr-defined]
        wanted: dict[str, set[Any]] = {
            "external_id": {r.external_id for r in chunk if r.external_id is not None},
            "code": {r.code for r in chunk if r.code is not None},
            "id": {r.record_id for r in chunk if r.record_id is not None},
        }
        found: dict[str, dict[Any, Any]] = {name: {} for name in KEY_FIELDS}
        # One query per key, each on its own unique index (SQLite scans the table for an OR).
        for name, values in wanted.items():
            if not values:
                continue
            query = await _matching(self.session, table, name, values)
            for record in await self.session.execute(query):
                for key in KEY_FIELDS:
                    value = getattr(record, key, None)
                    if value is not None:
                        found[key][value] = record
        return found

    async def load_parents(self, chunk: list[_Row], found: dict[str, dict[Any, Any]]) -> None:
        """The parents the rows name, and those of the records they may change."""
        wanted: dict[type[SQLModel], set[int]] = {}
        for fk, model in self.spec.parents.items():
            ids = wanted.setdefault(model, set())
            ids.update(r.values[fk] for r in chunk if isinstance(r.values.get(fk), int))
            ids.update(v for r in found["id"].values() if (v := getattr(r, fk, None)) is not None)
        await self.parents.load(wanted)

    def lookup(self, found: dict[str, dict[Any, Any]], name: str, value: Any) -> Any:
        record = found[name].get(value) if value is not None else None
        if record is not None and self.vacated[name].get(value) == record.id:
            return None  # an earlier row of the file takes this key away from it
        return record

    def find(self, row: _Row, found: dict[str, dict[Any, Any]]) -> tuple[Any, bool]:
        """The record this row stands for, by 外部编号, else 项目代码, else 编号: (record or
        None, usable). Keys that point at different records, or at a deleted one, are errors."""
        spec, number = self.spec, row.number
        external_id, record_id = row.external_id, row.record_id
        target: Any = (
            self.lookup(found, "external_id", external_id)
            or self.lookup(found, "code", row.code)
            or self.lookup(found, "id", record_id)
        )
        if target is None and record_id is None:
            return None, True
        if target is not None and spec.park and not records.sees_park(getattr(target, spec.park)):
            # Another park's record, to a caller confined to its own parks: not there, and its
            # keys taken (the same answers as the API's).
            self.fail(
                number,
                None,
                f"编号 {record_id} 的{spec.title_zh}不存在；新建时请清空编号"
                if record_id is not None
                else f"外部编号或代码已被您的园区之外的{spec.title_zh}使用",
            )
            return None, False
        ok = True
        if record_id is not None and target is None:
            self.fail(
                number,
                self.layout.header_of("id"),
                f"编号 {record_id} 的{spec.title_zh}不存在；新建时请清空编号",
            )
            return None, False
        if record_id is not None and target.id != record_id:
            self.fail(
                number,
                self.layout.header_of("id"),
                f"编号 {record_id} 与按外部编号/项目代码找到的{spec.title_zh} {target.id} 不是同一条",
            )
            ok = False
        if target.deleted_at is not None:
            self.fail(number, None, f"{spec.title_zh} {target.id} 已删除，不能通过导入修改")
            ok = False
        if external_id is not None and target.external_id not in (None, external_id):
            self.fail(
                number,
                self.layout.header_of("external_id"),
                f"{spec.title_zh} {target.id} 的外部编号是“{target.external_id}”，不能改为“{_quoted(external_id)}”",
            )
            ok = False
        earlier = self.matched.setdefault(target.id, number)
        if earlier != number:
            self.fail(number, None, f"与第 {earlier} 行是同一条{spec.title_zh}（{target.id}）")
            ok = False
        return target, ok

    async def decide(
        self, row: _Row, found: dict[str, dict[Any, Any]]
    ) -> tuple[str, bulk.Row, set[str], Any] | None:
        """What the row writes — ("create" | "update", the record's columns, the fields it
        changes, the record before) — or None when it writes nothing or is refused (reported).
        The rules are the API's own: the resource's `prepare`, then `records.check_rules`."""
        spec, number, failed, values = self.spec, row.number, row.failed, row.values
        before = self.error_count
        target, usable = self.find(row, found)
        if not usable:
            return None
        for name, value in list(values.items()):
            if value is None and name not in self.nullable and name not in failed:
                if target is None and name not in self.required:
                    del values[name]  # a new record's empty cell takes the field's default
                    continue
                self.fail(number, self.header_of(name), "必填，不能为空 (required)")
                failed.add(name)
        if target is None:
            for name in self.required:
                if name not in values and name not in failed:
                    self.fail(number, self.header_of(name), "必填 (required): 文件缺少这一列")
                    failed.add(name)
        model = spec.create if target is None else spec.update
        given = {k: v for k, v in values.items() if k not in failed} if failed else values
        try:
            data = model.model_validate(given).model_dump(exclude_unset=True)
        except ValidationError as exc:
            self.model_errors(number, exc, failed)
            return None
        if failed or self.error_count > before:
            return None
        try:
            if spec.prepare is not None:
                await spec.prepare(self.session, target, data)
        except AppError as exc:
            self.app_errors(number, exc)
            return None
        if target is not None:
            data = {k: v for k, v in data.items() if getattr(target, k) != v}
            if not data:
                self.unchanged += 1
                return None
            records.settle_inferences(target, data)
            if spec.park is not None and spec.park in data:
                # A move is one record's change, with its children and their feed entries in
                # order (`PATCH`); an import's entries go into the feed at its end.
                self.fail(
                    number,
                    self.header_of(spec.park),
                    f"导入不能把{spec.title_zh}移到另一个园区；请用 PATCH 修改 {spec.park}"
                    " (moving a record to another park: use the API)",
                )
                return None
            if row.version is not None and row.version != target.version:
                self.fail(
                    number,
                    self.layout.header_of("version"),
                    f"{spec.title_zh} {target.id} 在导出后已被修改（文件中为版本 {row.version}，当前为版本 "
                    f"{target.version}）；请重新导出后再改",
                )
                return None
        try:
            # Every park and key the rules ask for is known, so they run without a query (as
            # they must: the previous chunk may be being written on the session meanwhile).
            await records.check_rules(self.session, spec, target, data, _Known(self, found))
        except AppError as exc:
            self.app_errors(number, exc)
            return None
        now = utcnow()
        if target is None:
            self.created += 1
            return "create", records.new_row(spec, data, now), set(), None
        for name, vacated in self.vacated.items():
            old = getattr(target, name, None)
            if name in data and old is not None:
                vacated[old] = target.id
        self.updated += 1
        return "update", bulk.updated_row(spec, target, data, now), set(data), target

    def app_errors(self, row: int, exc: AppError) -> None:
        if not exc.errors:
            self.fail(row, None, exc.detail)
            return
        for error in exc.errors:
            message = exc.detail if isinstance(exc, Conflict) else error.message
            self.fail(row, self.header_of(error.field), message)

    def model_errors(self, row: int, exc: ValidationError, skip: set[str]) -> None:
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else None
            if name in skip:
                continue
            self.fail(row, self.header_of(name), _pydantic_message(error))

    # ------------------------------------------------ writing

    async def write(self, plan: _Plan) -> None:
        """Updates before inserts, so a key an update gives up is free for a new record."""
        spec, writes = self.spec, plan.writes
        try:
            updates = [r for op, r, _ in writes if op == "update"]
            await bulk.update_rows(self.session, spec, updates, plan.fields)
            await bulk.insert_rows(self.session, spec, [r for op, r, _ in writes if op == "create"])
            park = spec.park
            await self.feed.add(
                [
                    bulk.change_row(
                        spec, r, op, self.audit, getattr(b, park) if b and park else None
                    )
                    for op, r, b in writes
                ]
            )
            if spec.after_write is not None:
                # The API's own hook, per record (an investment moves its project's headline).
                for _, written, before in writes:
                    await spec.after_write(self.session, Record(written), before)
        except IntegrityError:
            # Only a concurrent writer gets past the checks; PostgreSQL then aborts the whole
            # transaction, so the import stops here (and writes nothing).
            self.fail(
                plan.first,
                None,
                "与同时写入的记录冲突，导入已中止 (conflicts with a concurrent write)",
            )
            self.aborted = True

    def report(self) -> ImportReport:
        return ImportReport(
            dry_run=self.dry_run,
            rows=self.rows,
            created=self.created,
            updated=self.updated,
            unchanged=self.unchanged,
            # Rows are checked in two passes; the report lists them as the file orders them.
            errors=sorted(self.errors, key=lambda e: e.row)[:REPORTED_ERRORS],
            error_count=self.error_count,
            error_columns=dict(self.error_columns),
        )


async def import_rows(
    session: AsyncSession,
    layout: Layout,
    table: Table,
    *,
    dry_run: bool,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Applies every row in one transaction, set-based: rows are parsed and validated one by
    one, then checked against the registry and written a chunk at a time, with the versions,
    times and change-feed entries `records.insert` / `records.apply_update` would write. Any
    error, or a dry run, rolls all of it back; errors raise `ImportFailed` unless this is a
    dry run. The file is read and parsed in a worker thread, a chunk of rows at a time; the
    event loop checks them against the registry and writes them."""
    await anyio.to_thread.run_sync(table.open)
    importer = _Importer(session, layout, dry_run)
    columns = importer.read_header(table.header)
    from_csv = table.kind == "csv"
    parsers = [(i, c, cell_parser(c, from_csv=from_csv)) for i, c in columns.items()]
    done = 0

    def next_chunk(rows: Iterator[tuple[int, list[Any]]]) -> list[_Row] | None:
        """The next rows that parse; None at the end."""
        nonlocal done
        chunk: list[_Row] = []
        for number, cells in rows:
            done += 1
            if not all(_blank(c) for c in cells):
                importer.rows += 1
                row = importer.parse(number, cells, parsers)
                if row is not None:
                    chunk.append(row)
            if progress is not None:
                progress(done)
            if len(chunk) == IMPORT_CHUNK:
                return chunk
        return chunk or None

    writing: asyncio.Task[None] | None = None
    try:
        with contextlib.closing(table.rows()) as rows:
            chunk = await anyio.to_thread.run_sync(next_chunk, rows) if columns else None
            previous: _Plan | None = None
            while chunk is not None and not importer.aborted:
                # Chunk k is read from the database before chunk k-1 is written, so that the
                # database writes k-1 while we check k and parse k+1. The rows of k see the
                # same registry either way: none has a key of a row before it (those are
                # repeats), and `vacated` and `matched` hold what the rows before change.
                found = await importer.load(chunk)
                if previous is not None and previous.writes and importer.writing:
                    writing = asyncio.create_task(importer.write(previous))
                previous = await importer.check(chunk, found)
                chunk = await anyio.to_thread.run_sync(next_chunk, rows)
                if writing is not None:
                    await writing
                    writing = None
            if previous is not None and previous.writes and importer.writing:
                await importer.write(previous)
        if importer.writing:
            await importer.feed.close()
    except BaseException:
        if writing is not None:
            # Let it finish rather than cancel it halfway through a statement: the rollback
            # then finds the connection idle.
            with contextlib.suppress(BaseException):
                await writing
        await session.rollback()
        raise
    finally:
        importer.feed.discard()
    report = importer.report()
    if dry_run or report.errors:
        await session.rollback()
    else:
        await records.commit(session, layout.spec)
    if report.errors and not dry_run:
        # Nothing was written: a refused run reports nothing as created or updated.
        raise ImportFailed(report.model_copy(update={"created": 0, "updated": 0}))
    return report


@contextlib.contextmanager
def reading(
    file: IO[bytes], filename: str | None, settings: Settings | None = None
) -> Iterator[Table]:
    """The file as a table, read within `settings`' IMPORT_MAX_* bounds (their defaults when
    none are given), opened when first used."""
    table = Table(file, filename, settings or Settings.model_construct())
    try:
        yield table
    finally:
        table.close()
