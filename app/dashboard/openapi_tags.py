"""Swagger tag groups, in order, named in Chinese with English beside (for app/main.py)."""

# Swagger groups operations by tag, in this order; each tag says in Chinese (and English)
# what its resource is and what its enum values mean.
OPENAPI_TAGS: list[dict[str, str]] = [
    {
        "name": "认证 Auth",
        "description": "登录：点右上方 **Authorize**，填写用户名和密码即可试用各接口；"
        "令牌 30 分钟内有效。 Staff sign-in (OAuth2 password flow).",
    },
    {
        "name": "园区 Parks",
        "description": "园区（开发区 / 高新区），如 枣庄高新区。level 级别: national 国家级 / "
        "provincial 省级 / municipal 市级 / other 其他。 Industrial parks.",
    },
    {
        "name": "产业链 Chains",
        "description": "园区的产业链与产业板块，如 锂电、大数据。role 定位: leading 首位产业 / "
        "pillar 主导产业 / sector 产业板块 / other 其他。记分卡 scorecard 列出该链各目标的完成进度。"
        " Industry chains and sectors, with their scorecards.",
    },
    {
        "name": "企业 Enterprises",
        "description": "招引或入驻的企业：统一社会信用代码（可空，按 GB 32100 校验）、"
        "高新技术企业、规上企业、头部企业（链主）标志、落地年份。 Enterprises.",
    },
    {
        "name": "项目 Projects",
        "description": "招商项目。stage 阶段: planning 谋划 → negotiating 在谈 → signed 签约 → "
        "under_construction 在建 → completed 竣工 → operating 投产，或 cancelled 终止；"
        "自签约起视为落地。总投资由投资额记录推得，记录相互矛盾时标出冲突。 Investment projects.",
    },
    {
        "name": "投资额 Investments",
        "description": "项目的投资额记录。kind 类型: planned_total 计划总投资 / annual_plan 年度计划 / "
        "completed 已完成 / reported 报道。金额以元精确保存，输入可用 unit 元 / 万元 / 亿元。"
        " Investment amounts, exact to the fen.",
    },
    {
        "name": "目标 Targets",
        "description": "园区或产业链的目标，如「每年谋划实施100个重点项目」「每年均招引落地头部企业2家、"
        "过亿元项目10个」。recurrence 周期: annual 每年 / by_end 期末达到。完成进度由登记册计算，"
        "从不手工填写。 Targets, and progress computed from the registry.",
    },
    {
        "name": "统计 Statistics",
        "description": "按产业链、阶段或年份汇总项目数与总投资；图表见看板 /dashboard。"
        " Investment statistics (charts on /dashboard).",
    },
    {
        "name": "来源 Sources",
        "description": "每条事实的出处：报道标题、发布者、作者、日期；记录以 source_id 指向来源，"
        "并以 quote 引述原文。 Where each fact comes from.",
    },
    {
        "name": "同步 Sync",
        "description": "供其他系统同步：变更流 /changes（不漏、不重、删除留墓碑）；各资源另有按 "
        "external_id 幂等写入与批量写入，POST 可带 Idempotency-Key。 For syncing systems.",
    },
    {
        "name": "用户与令牌 Users & tokens",
        "description": "仅管理员：工作人员账号（role 角色: viewer 只读 / editor 编辑 / admin 管理员）"
        "与供其他系统使用的服务令牌。 Staff accounts and service tokens (admin only).",
    },
    {
        "name": "运维 Operations",
        "description": "存活与就绪检查，供负载均衡器使用。 Liveness and readiness.",
    },
]
