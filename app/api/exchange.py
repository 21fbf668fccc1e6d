"""Excel and CSV: exports of projects, enterprises and investments with the list's own filters,
and all-or-nothing imports of projects and investments in the same layout."""

from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import StreamingResponse

from app.api.crud import tag
from app.api.deps import CanRead, CanWrite, WriteSession, deleted_for_staff
from app.config import Settings
from app.db import Database
from app.errors import responses
from app.services import tabular
from app.services.tabular import ImportReport, Layout

router = APIRouter()

LAYOUT_DOC = (
    "列与导出文件相同：第 1 行为中文表头；阶段写中文（签约），也接受代码（signed），留空为阶段未知；"
    "标志写 是 / 否，留空（或写 未知）为未知——改已有记录时，清空一格即把它改回未知；"
    "推断说明每行一个字段，写“列名：依据”（列名为表头或接口字段名，依据的续行以空格开头）；"
    "金额为元（精确）、万元、亿元三列。"
)


def _disposition(layout: Layout, extension: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    ascii_name = f"{layout.spec.name}-{stamp}.{extension}"
    utf8_name = quote(f"{layout.sheet}-{stamp}.{extension}")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{utf8_name}"


def _add_export(layout: Layout) -> None:
    spec = layout.spec
    Params: Any = tabular.export_params(spec)
    headers = "、".join(c.header for c in layout.columns)

    @router.get(
        f"/{spec.name}/export",
        tags=[tag(spec)],
        summary=f"导出{spec.title_zh}为 Excel / CSV",
        description=(
            f"按与列表相同的筛选条件导出全部{spec.title_zh}（不分页；`sort` 决定行序）。"
            "`format=xlsx`（默认）或 `format=csv`（UTF-8 带 BOM，Excel 可直接打开；以 = + - @ 开头的文本"
            f"前加 ' 防止被当作公式）。列: {headers}。"
            " Streams every matching row, in keyset pages, with the list's filters."
        ),
        operation_id=f"export_{spec.name}",
        dependencies=[CanRead],
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "文件 (the file)",
                "content": {tabular.XLSX_MEDIA: {}, "text/csv": {}},
            },
            **responses(422),
        },
    )
    async def export(request: Request, params: Annotated[Params, Query()]) -> StreamingResponse:
        await deleted_for_staff(request, params)
        db: Database = request.app.state.db
        pages = tabular.pages(db, layout, tabular.list_params(spec, params))
        # The first page is read before answering, so a bad sort or filter is still a 422.
        first = await anext(pages)
        if params.format == "csv":
            return StreamingResponse(
                tabular.csv_stream(layout, first, pages),
                media_type=tabular.CSV_MEDIA,
                headers={"Content-Disposition": _disposition(layout, "csv")},
            )
        file, size = await tabular.xlsx_file(layout, first, pages)
        return StreamingResponse(
            tabular.file_chunks(file),
            media_type=tabular.XLSX_MEDIA,
            headers={
                "Content-Disposition": _disposition(layout, "xlsx"),
                "Content-Length": str(size),
            },
        )


for _layout in tabular.LAYOUTS.values():
    _add_export(_layout)


MATCHING = {
    "projects": "按 外部编号，其次 项目代码，其次 编号 匹配已有项目并更新；都匹配不到则新建。",
    "investments": (
        "按 外部编号，其次 编号 匹配已有投资额记录并更新；都匹配不到则新建。金额可填 金额(元)、金额(万元)、"
        "金额(亿元) 任一列（如只填 金额(亿元) 为 30），几列都填时须一致，否则该行报错；项目的总投资随之重算。"
    ),
}


def _add_import(layout: tabular.Layout) -> None:
    spec = layout.spec

    @router.post(
        f"/{spec.name}/import",
        response_model=ImportReport,
        tags=[tag(spec)],
        summary=f"从 Excel / CSV 导入{spec.title_zh}（全部成功或全部不写）",
        description=(
            LAYOUT_DOC + MATCHING[spec.name] + "外部编号留空不会清除已有的外部编号。"
            "若某行会修改记录而其 版本 与当前版本不同（导出后被别人改过），该行报错。"
            "`dry_run=true` 只检查并返回逐行报告，不写入；正式导入在一个事务中执行，任一行出错返回 422 并列出每个错误，"
            "什么都不写。原样导入刚导出的文件不产生任何改动。规则与单条写入相同（上级记录、同一园区、唯一值、金额单位）。"
            "上传文件受 IMPORT_MAX_BODY_BYTES（默认 64 MiB，约 25 万行 CSV）限制，超过返回 413；"
            "更大的文件请用命令行 `python -m app import FILE`。"
            "文件内容另有上限，超过返回 422（type /problems/import-limit，指明上限与调高它的设置）："
            "IMPORT_MAX_ROWS 行（默认 200000，空行也计入）、IMPORT_MAX_COLUMNS 列（默认 64）、"
            "每格 IMPORT_MAX_CELL_CHARS 个字符（默认 32767）、XLSX 解压后 IMPORT_MAX_DECOMPRESSED_BYTES"
            " 字节（默认 256 MiB）。报告按行序列出前 100 个错误，并给出错误总数与各列的错误数。"
            " Rows match by external_id, else code, else id; all or nothing, by the same rules as"
            " single writes. The upload may be up to IMPORT_MAX_BODY_BYTES (64 MiB by default),"
            " not the 1 MiB other requests are held to; its rows, columns, cell length and"
            " unzipped size are bounded by the IMPORT_MAX_* settings named in each refusal."
        ),
        operation_id=f"import_{spec.name}",
        dependencies=[CanWrite],
        responses=responses(400, 413, 422),
    )
    async def import_file(
        request: Request,
        session: WriteSession,
        file: Annotated[UploadFile, File(description="导出格式的 .xlsx 或 .csv 文件")],
        dry_run: Annotated[bool, Query(description="试运行：只检查，不写入 (report only)")] = False,
    ) -> ImportReport:
        settings: Settings = request.app.state.settings
        with tabular.reading(file.file, file.filename, settings) as table:
            return await tabular.import_rows(session, layout, table, dry_run=dry_run)


for _layout in tabular.IMPORTABLE:
    _add_import(_layout)
