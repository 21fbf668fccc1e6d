"""Spreadsheets in and out: the column layouts staff see in Excel, streamed exports (CSV and
XLSX) and an all-or-nothing import that writes through the same record mechanics as the API.

Layout rules, shared by export and import:
- Row 1 holds Chinese headers; data starts on row 2, and errors name rows as Excel shows them.
- Enumerations are written as their Chinese label (阶段 `签约`, 类型 `计划总投资`); an import
  also takes the API code (`signed`) or both (`签约 signed`). Flags are `是` / `否`.
- Amounts: 元 exact (CSV: the decimal text; XLSX: a number wherever a double holds the figure
  to the fen, which is every amount under 10^13 元, else the exact text), plus 万元 and 亿元.
- Columns such as names of related records, amounts, versions and times are derived: an import
  ignores them, bar 编号 (which record) and 版本 (the version the row was exported at).
- CSV is UTF-8 with a BOM; a text cell starting with = + - @ (or a tab / carriage return) gets
  an apostrophe in front so Excel never runs it as a formula, and the import takes it off.
"""

import codecs
import contextlib
import csv
import io
import re
import types
import typing
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from tempfile import SpooledTemporaryFile
from typing import IO, Any, Literal
from zipfile import BadZipFile

import anyio
from openpyxl import Workbook, load_workbook  # type: ignore[import-untyped]
from openpyxl.cell import WriteOnlyCell  # type: ignore[import-untyped]
from openpyxl.styles import Font  # type: ignore[import-untyped]
from openpyxl.utils import get_column_letter  # type: ignore[import-untyped]
from openpyxl.utils.exceptions import InvalidFileException  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import SQLModel

from app.db import Database
from app.errors import AppError, Conflict, FieldError, Invalid
from app.models.chain import Chain
from app.models.common import ListParams
from app.models.enterprise import Enterprise
from app.models.investment import InvestmentKind
from app.models.park import Park
from app.models.project import Project, Stage
from app.resources import ENTERPRISES, INVESTMENTS, PROJECTS
from app.services import records
from app.services.records import ResourceSpec

BATCH_SIZE = 1000  # rows per keyset page while exporting
XLSX_MEDIA = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV_MEDIA = "text/csv; charset=utf-8"
SPOOL_BYTES = 8 * 1024 * 1024  # an XLSX stays in memory up to this size, then goes to disk
CHUNK = 64 * 1024
EXPUNGE_EVERY = 500  # rows between clearing the import's session of records already written

STAGE_LABELS: dict[str, str] = {
    Stage.planning: "谋划",
    Stage.negotiating: "在谈",
    Stage.signed: "签约",
    Stage.under_construction: "在建",
    Stage.completed: "竣工",
    Stage.operating: "投产",
    Stage.cancelled: "终止",
}
KIND_LABELS: dict[str, str] = {
    InvestmentKind.planned_total: "计划总投资",
    InvestmentKind.annual_plan: "年度计划",
    InvestmentKind.completed: "已完成",
    InvestmentKind.reported: "报道",
}
YES, NO = "是", "否"
_TRUE = {"是", "true", "t", "yes", "y", "1", "√", "✓"}
_FALSE = {"否", "false", "f", "no", "n", "0", "×", "✗"}


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
        names |= {c.field: c for c in self.columns if c.role != Role.DERIVED}
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
        Column("金额(元)", "amount", Kind.YUAN, Role.DATA, width=18),
        Column("金额(万元)", "amount", Kind.WAN, width=14),
        Column("金额(亿元)", "amount", Kind.YI, width=12),
        Column("币种", "currency", Kind.TEXT, Role.DATA, width=6),
        Column("截至日期", "as_of_date", Kind.DATE, Role.DATA, width=12),
        *_record_columns(),
    ),
)

LAYOUTS = {
    layout.spec.name: layout for layout in (PROJECT_LAYOUT, ENTERPRISE_LAYOUT, INVESTMENT_LAYOUT)
}


# ---------------------------------------------------------------- values


def _plain(amount: Decimal) -> Decimal:
    """`3E+1` → `30`: the same number, written without an exponent."""
    return Decimal(format(amount.normalize(), "f"))


def value_of(column: Column, record: Any, names: dict[tuple[type, int], str]) -> Any:
    """A cell as a Python value (int, str, Decimal, bool or None), before any file format."""
    raw = getattr(record, column.field)
    if raw is None:
        return None
    if column.kind == Kind.NAME:
        assert column.related is not None
        return names.get((column.related, raw))
    if column.kind == Kind.STAGE:
        return STAGE_LABELS.get(raw, str(raw))
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
    return text[1:] if _ESCAPED.match(text) else text


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
) -> dict[tuple[type, int], str]:
    names: dict[tuple[type, int], str] = {}
    for column in layout.columns:
        model: Any = column.related
        if model is None:
            continue
        ids = {getattr(r, column.field) for r in rows} - {None}
        if not ids:
            continue
        result = await session.execute(select(model.id, model.name).where(model.id.in_(ids)))
        names |= {(model, rid): name for rid, name in result.all()}
    return names


async def pages(db: Database, layout: Layout, params: ListParams) -> AsyncIterator[list[list[Any]]]:
    """The rows of the export, one keyset page at a time: never all rows at once, and no
    connection held between pages (a slow download does not pin the pool)."""
    cursor: str | None = None
    while True:
        async with db.reader() as session:
            page = params.model_copy(update={"limit": BATCH_SIZE, "cursor": cursor})
            rows, cursor = await records.list_page(session, layout.spec, page)
            names = await _related_names(session, layout, rows)
        yield [[value_of(c, r, names) for c in layout.columns] for r in rows]
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


# ---------------------------------------------------------------- reading a file


class Table:
    """The rows of an uploaded sheet: header, then (row number, cells) as Excel numbers rows."""

    def __init__(
        self,
        kind: Literal["csv", "xlsx"],
        rows: Callable[[], Generator[Any, None, None]],
        close: Callable[[], None] = lambda: None,
    ) -> None:
        self.kind = kind
        self._rows = rows
        self._close = close
        with contextlib.closing(rows()) as iterator:
            self.header = [("" if h is None else str(h)) for h in next(iterator, [])]
        self._count: int | None = None

    def rows(self) -> Iterator[tuple[int, list[Any]]]:
        with contextlib.closing(self._rows()) as iterator:
            next(iterator, None)
            for number, row in enumerate(iterator, start=2):
                yield number, list(row)

    def count(self) -> int:
        """Data rows (blank ones included): one extra pass over the file, for progress."""
        if self._count is None:
            self._count = sum(1 for _ in self.rows())
        return self._count

    def close(self) -> None:
        self._close()


def _csv_encoding(file: IO[bytes]) -> str:
    """UTF-8 (with or without BOM) when the whole file decodes as such; otherwise GB18030,
    which is what Excel on a Chinese Windows writes for "CSV"."""
    file.seek(0)
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        while chunk := file.read(CHUNK):
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
        encoding = "utf-8-sig"
    except UnicodeDecodeError:
        encoding = "gb18030"
    file.seek(0)
    return encoding


def open_table(file: IO[bytes], filename: str | None = None) -> Table:
    """An XLSX (by its zip signature) or a CSV; refuses anything else with a 422."""
    file.seek(0)
    magic = file.read(8)
    file.seek(0)
    if magic.startswith(b"\xd0\xcf\x11\xe0"):
        raise Invalid.field(
            "file", "旧版 .xls 文件不受支持，请另存为 .xlsx 或 .csv (.xls is not supported)"
        )
    if magic.startswith(b"PK\x03\x04"):
        try:
            workbook = load_workbook(file, read_only=True, data_only=True)
        except (InvalidFileException, BadZipFile, KeyError, OSError, ValueError) as exc:
            raise Invalid.field("file", "不是有效的 XLSX 文件 (not a readable XLSX file)") from exc
        sheets = workbook.worksheets
        preferred = [s for s in sheets if s.title in {layout.sheet for layout in LAYOUTS.values()}]
        sheet: Any = (preferred or sheets)[0]
        return Table("xlsx", lambda: sheet.iter_rows(values_only=True), workbook.close)
    if filename and filename.lower().endswith(".xlsx"):
        raise Invalid.field("file", "不是有效的 XLSX 文件 (not a readable XLSX file)")
    encoding = _csv_encoding(file)

    def rows() -> Generator[list[str], None, None]:
        file.seek(0)
        text = io.TextIOWrapper(file, encoding=encoding, newline="")
        try:
            yield from csv.reader(text)
        except csv.Error as exc:
            raise Invalid.field("file", f"CSV 格式有误 (malformed CSV): {exc}") from exc
        finally:
            text.detach()  # the caller owns the file

    return Table("csv", rows)


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
    text = str(value).strip()
    if re.fullmatch(r"[+-]?\d+(\.0*)?", text):
        return int(Decimal(text))
    raise CellError(f"应为整数，而不是“{text}” (expected a whole number)")


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _as_text(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise CellError(f"应为“是”或“否”，而不是“{text}” (expected 是 or 否)")


def _as_label(value: Any, labels: dict[str, str], what: str) -> str:
    """`签约`, `signed`, `签约 signed` or `签约(signed)` → `signed`."""
    text = _as_text(value).strip()
    by_label = {label: code for code, label in labels.items()}
    tokens = [t for t in re.split(r"[\s()（）/、,，]+", text) if t]
    found = {by_label.get(t) or (t.lower() if t.lower() in labels else None) for t in tokens}
    if tokens and len(found) == 1 and None not in found:
        return str(found.pop())
    choices = "、".join(f"{label} {code}" for code, label in labels.items())
    raise CellError(f"未知的{what}“{text}”；可选: {choices}")


def parse_cell(column: Column, value: Any, *, from_csv: bool) -> Any:
    if isinstance(value, str) and from_csv:
        value = csv_untext(value)
    if _blank(value):
        return False if column.kind == Kind.BOOL else None
    if column.kind == Kind.INT:
        return _as_int(value)
    if column.kind == Kind.BOOL:
        return _as_bool(value)
    if column.kind == Kind.STAGE:
        return _as_label(value, STAGE_LABELS, "阶段")
    if column.kind == Kind.INVESTMENT_KIND:
        return _as_label(value, KIND_LABELS, "类型")
    return _as_text(value)


# ---------------------------------------------------------------- importing


class RowError(BaseModel):
    row: int = Field(description="行号，与 Excel 显示一致（第 1 行为表头）", examples=[2])
    column: str | None = Field(description="列名；整行的问题为空", examples=["阶段"])
    message: str = Field(examples=["未知的阶段“挖坑”"])


class ImportReport(BaseModel):
    dry_run: bool = Field(description="试运行：只检查，不写入")
    rows: int = Field(description="数据行数（不含表头与空行）")
    created: int = Field(description="新建的记录数（试运行时为将要新建的数）")
    updated: int = Field(description="有改动的记录数")
    unchanged: int = Field(description="与登记内容完全一致、未写入的行数")
    errors: list[RowError] = Field(description="逐行逐列的错误；有任何错误时，正式导入什么都不写")


class ImportFailed(Invalid):
    def __init__(self, report: ImportReport) -> None:
        bad_rows = sorted({e.row for e in report.errors})
        shown = "、".join(map(str, bad_rows[:20])) + ("…" if len(bad_rows) > 20 else "")
        super().__init__(
            f"{len(bad_rows)} 行有错误（第 {shown} 行），未写入任何数据 — "
            f"{len(report.errors)} error(s) in {len(bad_rows)} row(s); nothing was written",
            errors=[
                FieldError(
                    field=e.column or "file", location="file", message=e.message, index=e.row
                )
                for e in report.errors
            ],
            extra={"report": report.model_dump(mode="json")},
        )
        self.report = report


_PYDANTIC_ZH: dict[str, Callable[[dict[str, Any]], str]] = {
    "missing": lambda c: "必填",
    "greater_than_equal": lambda c: f"不能小于 {c.get('ge')}",
    "less_than_equal": lambda c: f"不能大于 {c.get('le')}",
    "string_too_short": lambda c: "不能为空",
    "string_too_long": lambda c: f"最多 {c.get('max_length')} 个字符",
    "string_pattern_mismatch": lambda c: "格式不符（不能含空白或 /）",
    "int_parsing": lambda c: "应为整数",
    "int_from_float": lambda c: "应为整数",
}


def _pydantic_message(error: Any) -> str:
    english = str(error["msg"]).removeprefix("Value error, ")
    zh = _PYDANTIC_ZH.get(error["type"])
    return f"{zh(error.get('ctx') or {})} ({english})" if zh else english


def _nullable(model: type[BaseModel], name: str) -> bool:
    annotation = model.model_fields[name].annotation
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(
        None
    ) in typing.get_args(annotation)


@dataclass
class _Importer:
    session: AsyncSession
    layout: Layout
    dry_run: bool
    errors: list[RowError] = field(default_factory=list)
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rows: int = 0
    # Keys already used by an earlier row of this file: (field, value) → row.
    seen: dict[tuple[str, Any], int] = field(default_factory=dict)
    matched: dict[int, int] = field(default_factory=dict)  # record id → row
    aborted: bool = False

    @property
    def spec(self) -> ResourceSpec:
        return self.layout.spec

    def header_of(self, name: str | None) -> str | None:
        if name is None:
            return None
        head = name.split(".")[0]
        return self.layout.header_of(head) or head

    def fail(self, row: int, column: str | None, message: str) -> None:
        self.errors.append(RowError(row=row, column=column, message=message))

    def read_header(self, header: list[str]) -> dict[int, Column]:
        columns: dict[int, Column] = {}
        used: dict[str, str] = {}
        for index, text in enumerate(header):
            if not text.strip():
                continue
            column = self.layout.by_header.get(_header_key(text))
            if column is None:
                known = "、".join(c.header for c in self.layout.columns)
                self.fail(1, text, f"未知的列“{text}”；可用的列: {known}")
                continue
            if column.header in used:
                self.fail(1, text, f"与列“{used[column.header]}”重复 (duplicate column)")
                continue
            used[column.header] = text
            if column.role != Role.DERIVED:
                columns[index] = column
        if not columns and not self.errors:
            self.fail(1, None, "没有可导入的列：第 1 行应为导出文件的表头 (no importable columns)")
        return columns

    def check_repeats(self, row: int, keys: dict[str, Any]) -> bool:
        ok = True
        for name, value in keys.items():
            if value is None:
                continue
            normal = value.strip() if isinstance(value, str) else value
            earlier = self.seen.setdefault((name, normal), row)
            if earlier != row:
                self.fail(row, self.layout.header_of(name), f"与第 {earlier} 行重复")
                ok = False
        return ok

    async def find(self, row: int, keys: dict[str, Any]) -> tuple[Any, bool]:
        """The record this row stands for, by 外部编号, else 项目代码, else 编号: (record or
        None, usable). Keys that point at different records, or at a deleted one, are errors."""
        spec = self.spec
        external_id, code, record_id = keys.get("external_id"), keys.get("code"), keys.get("id")
        conditions = []
        if external_id is not None:
            conditions.append(spec.column("external_id") == external_id.strip())
        if code is not None and "code" in spec.model.model_fields:
            conditions.append(spec.column("code") == code.strip())
        if record_id is not None:
            conditions.append(spec.column("id") == record_id)
        if not conditions:
            return None, True
        found: list[Any] = list(
            await self.session.scalars(select(spec.model).where(or_(*conditions)))
        )
        by_external = next(
            (r for r in found if external_id and r.external_id == external_id.strip()), None
        )
        by_code = next(
            (r for r in found if code and getattr(r, "code", None) == code.strip()), None
        )
        by_id = next((r for r in found if record_id is not None and r.id == record_id), None)
        target: Any = by_external or by_code or by_id
        ok = True
        if record_id is not None and target is None:
            self.fail(
                row,
                self.layout.header_of("id"),
                f"编号 {record_id} 的{spec.title_zh}不存在；新建时请清空编号",
            )
            ok = False
        elif record_id is not None and target.id != record_id:
            self.fail(
                row,
                self.layout.header_of("id"),
                f"编号 {record_id} 与按外部编号/项目代码找到的{spec.title_zh} {target.id} 不是同一条",
            )
            ok = False
        if target is None:
            return None, ok
        if target.deleted_at is not None:
            self.fail(row, None, f"{spec.title_zh} {target.id} 已删除，不能通过导入修改")
            ok = False
        if external_id is not None and target.external_id not in (None, external_id.strip()):
            self.fail(
                row,
                self.layout.header_of("external_id"),
                f"{spec.title_zh} {target.id} 的外部编号是“{target.external_id}”，不能改为“{external_id.strip()}”",
            )
            ok = False
        earlier = self.matched.setdefault(target.id, row)
        if earlier != row:
            self.fail(row, None, f"与第 {earlier} 行是同一条{spec.title_zh}（{target.id}）")
            ok = False
        return target, ok

    def model_errors(self, row: int, exc: ValidationError, skip: set[str]) -> None:
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else None
            if name in skip:
                continue
            self.fail(row, self.header_of(name), _pydantic_message(error))

    def app_errors(self, row: int, exc: AppError) -> None:
        if not exc.errors:
            self.fail(row, None, exc.detail)
            return
        for error in exc.errors:
            message = exc.detail if isinstance(exc, Conflict) else error.message
            self.fail(row, self.header_of(error.field), message)

    async def write(self, row: int, target: Any, data: dict[str, Any]) -> None:
        """One row through `records.insert` / `records.apply_update`. Their checks (parents,
        uniqueness, the resource's rules) read before anything is written, so a refused row
        leaves the transaction clean and the next rows are still checked. Resources whose hooks
        write before they can refuse get a savepoint per row, as batch writes do."""
        spec = self.spec
        savepoint = await self.session.begin_nested() if spec.prepare or spec.after_write else None
        try:
            if target is None:
                await records.insert(self.session, spec, data)
                self.created += 1
            elif await records.apply_update(self.session, spec, target, data):
                self.updated += 1
            else:
                self.unchanged += 1
            if savepoint is not None:
                await savepoint.commit()
            return
        except AppError as exc:
            self.app_errors(row, exc)
        except ValidationError as exc:
            self.model_errors(row, exc, set())
        except IntegrityError:
            # Only a concurrent writer gets past the checks; PostgreSQL then aborts the whole
            # transaction, so the import stops here (and writes nothing).
            self.fail(
                row, None, "与同时写入的记录冲突，导入已中止 (conflicts with a concurrent write)"
            )
            self.aborted = savepoint is None
        if savepoint is not None:
            await savepoint.rollback()

    async def row(
        self, number: int, cells: list[Any], columns: dict[int, Column], from_csv: bool
    ) -> None:
        spec = self.spec
        values: dict[str, Any] = {}
        failed: set[str] = set()
        before = len(self.errors)
        for index, column in columns.items():
            raw = cells[index] if index < len(cells) else None
            try:
                values[column.field] = parse_cell(column, raw, from_csv=from_csv)
            except CellError as exc:
                self.fail(number, column.header, str(exc))
                failed.add(column.field)
        record_id = values.pop("id", None)
        version = values.pop("version", None)
        if values.get("external_id") is None:
            values.pop("external_id", None)  # an empty 外部编号 never clears a sync key
        keys = {
            "external_id": values.get("external_id"),
            "code": values.get("code"),
            "id": record_id,
        }
        if not self.check_repeats(number, keys) or failed & {"external_id", "code", "id"}:
            return
        target, usable = await self.find(number, keys)
        if not usable:
            return
        model = spec.create if target is None else spec.update
        for name, value in values.items():
            if value is None and name not in failed and not _nullable(spec.create, name):
                self.fail(number, self.header_of(name), "必填，不能为空 (required)")
                failed.add(name)
        if target is None:
            for name, info in spec.create.model_fields.items():
                if info.is_required() and name not in values and name not in failed:
                    self.fail(number, self.header_of(name), "必填 (required): 文件缺少这一列")
                    failed.add(name)
        given = {k: v for k, v in values.items() if k not in failed}
        try:
            data = model.model_validate(given).model_dump(exclude_unset=True)
        except ValidationError as exc:
            self.model_errors(number, exc, failed)
            return
        if len(self.errors) > before:
            return
        if target is not None and spec.prepare is None:
            changed = {k: v for k, v in data.items() if getattr(target, k) != v}
            if not changed:
                self.unchanged += 1
                return
            if version is not None and version != target.version:
                self.fail(
                    number,
                    self.layout.header_of("version"),
                    f"{spec.title_zh} {target.id} 在导出后已被修改（文件中为版本 {version}，当前为版本 "
                    f"{target.version}）；请重新导出后再改",
                )
                return
        await self.write(number, target, data)

    def report(self) -> ImportReport:
        return ImportReport(
            dry_run=self.dry_run,
            rows=self.rows,
            created=self.created,
            updated=self.updated,
            unchanged=self.unchanged,
            errors=self.errors,
        )


async def import_rows(
    session: AsyncSession,
    layout: Layout,
    table: Table,
    *,
    dry_run: bool,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Applies every row in one transaction through `records.insert` / `records.apply_update`
    (validation, versions and the change feed as for any write). Any error, or a dry run,
    rolls all of it back; errors raise `ImportFailed` unless this is a dry run."""
    importer = _Importer(session, layout, dry_run)
    columns = importer.read_header(table.header)
    done = 0
    try:
        if columns:
            for number, cells in table.rows():
                if importer.aborted:
                    break
                done += 1
                if not all(_blank(c) for c in cells):
                    importer.rows += 1
                    await importer.row(number, cells, columns, table.kind == "csv")
                if done % EXPUNGE_EVERY == 0:
                    # Written rows are flushed; dropping them from the session keeps memory
                    # flat and savepoints cheap (each one copies the session's pending state).
                    await session.flush()
                    session.expunge_all()
                if progress is not None:
                    progress(done)
    except BaseException:
        await session.rollback()
        raise
    report = importer.report()
    if dry_run or report.errors:
        await session.rollback()
    else:
        await records._commit(session, layout.spec)
    if report.errors and not dry_run:
        raise ImportFailed(report)
    return report


@contextlib.contextmanager
def reading(file: IO[bytes], filename: str | None) -> Iterator[Table]:
    table = open_table(file, filename)
    try:
        yield table
    finally:
        table.close()
