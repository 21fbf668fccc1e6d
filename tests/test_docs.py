"""The documentation works offline and describes the API well enough to generate a client from."""

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.conftest import DatabaseFactory

API_PREFIX = "/api/v1"
OPS_PATHS = {"/healthz", "/readyz"}  # the spec puts these at the root, for load balancers
PROBLEM_JSON = "application/problem+json"
CJK = re.compile(r"[\u3400-\u9fff]")
METHODS = {"get", "post", "put", "patch", "delete", "head", "options", "trace"}


class Assets(HTMLParser):
    """Every URL a page makes the browser fetch: <script src>, <link href>, <img src>, …"""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: int = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self.scripts += 1
        for attr in ("src", "href"):
            if tag in ("script", "link", "img", "iframe") and values.get(attr):
                self.urls.append(str(values[attr]))


@pytest.fixture(scope="module")
def browser(db_factory: DatabaseFactory) -> Iterator[TestClient]:
    """A browser on the intranet: no token, nothing but this server. The documents do not
    change with the data, so one app per engine serves the whole module."""
    url = db_factory.fresh()
    try:
        settings = Settings(database_url=url, cors_origins=["http://front.example"])
        with TestClient(create_app(settings), base_url="http://testserver") as client:
            yield client
    finally:
        db_factory.drop(url)


def check_offline_page(client: TestClient, path: str) -> list[str]:
    page = client.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "cdn" not in html.lower()
    for url in re.findall(r"(?:https?:)?//[^\s\"'<>)]+", html):
        host = urlsplit(url if url.startswith("http") else "http:" + url).hostname
        assert host in (None, "testserver"), f"{path} refers to another host: {url}"
    parser = Assets()
    parser.feed(html)
    assert parser.urls, f"{path} loads no assets at all"
    for url in parser.urls:
        parts = urlsplit(url)
        assert parts.scheme in ("", "http") and parts.hostname in (None, "testserver"), url
        asset = client.get(url)
        assert asset.status_code == 200, f"{path}: {url} answers {asset.status_code}"
        assert asset.content, url
    return parser.urls


def test_swagger_ui_is_served_from_this_server(browser: TestClient) -> None:
    urls = check_offline_page(browser, "/docs")
    assert any(u.endswith(".js") for u in urls) and any(u.endswith(".css") for u in urls)
    html = browser.get("/docs").text
    assert "/openapi.json" in html
    # The standalone layout shows a badge that asks validator.swagger.io about the spec.
    assert "StandaloneLayout" not in html or re.search(
        r"validatorUrl\"?\s*:\s*(null|\"none\")", html
    )
    redirect = browser.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200 and "cdn" not in redirect.text.lower()


def test_redoc_is_served_from_this_server(browser: TestClient) -> None:
    urls = check_offline_page(browser, "/redoc")
    assert any(u.endswith(".js") for u in urls)
    assert "fonts.googleapis" not in browser.get("/redoc").text


@pytest.fixture(scope="module")
def spec(browser: TestClient) -> dict[str, Any]:
    response = browser.get("/openapi.json")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = spec["components"]["schemas"][name]
    return schema


def test_openapi_document_is_3_1_with_chinese_summaries_and_ids(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    ops = operations(spec)
    assert len(ops) >= 35  # seven resources × five operations, and more
    op_ids = [op.get("operationId") for _, _, op in ops]
    assert all(op_ids), "every operation needs an operationId"
    duplicates = sorted({i for i in op_ids if op_ids.count(i) > 1})
    assert duplicates == []
    for op_id in op_ids:
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(op_id)), op_id
    untranslated = [
        f"{method.upper()} {path}"
        for path, method, op in ops
        if not CJK.search(op.get("summary", ""))
    ]
    assert untranslated == []
    outside = [p for p in spec["paths"] if not p.startswith(API_PREFIX + "/")]
    assert set(outside) <= OPS_PATHS, outside
    for resource in ("parks", "chains", "enterprises", "projects", "investments", "targets"):
        item = spec["paths"][f"{API_PREFIX}/{resource}/{{id}}"]
        assert {"get", "patch", "delete"} <= set(item), resource
        assert {"get", "post"} <= set(spec["paths"][f"{API_PREFIX}/{resource}"]), resource
    assert any(CJK.search(tag["name"]) for tag in spec.get("tags", [])) or any(
        CJK.search(t) for _, _, op in ops for t in op.get("tags", [])
    )


def test_client_errors_are_documented_as_problem_json(spec: dict[str, Any]) -> None:
    wrong: list[str] = []
    for path, method, op in operations(spec):
        for status, response in op["responses"].items():
            if not status.startswith("4"):
                continue
            where = f"{method.upper()} {path} {status}"
            content = response.get("content", {})
            schema = content.get(PROBLEM_JSON, {}).get("schema")
            if not schema or "status" not in resolve(spec, schema).get("properties", {}):
                wrong.append(f"{where}: no problem+json schema")
            if "application/json" in content:
                wrong.append(f"{where}: also claims application/json, which is never sent")
    assert wrong == [], "\n".join(wrong[:10]) + f"\n… {len(wrong)} in all"
    # Writes and lists can answer 422; the document says so.
    for path, method, op in operations(spec):
        if path.startswith(API_PREFIX) and method in ("post", "patch"):
            assert "422" in op["responses"], f"{method.upper()} {path}"


def test_money_fields_are_strings_in_responses(spec: dict[str, Any]) -> None:
    def response_schema(path: str, method: str = "get") -> dict[str, Any]:
        op = spec["paths"][path][method]
        status = "201" if method == "post" else "200"
        return resolve(spec, op["responses"][status]["content"]["application/json"]["schema"])

    def types_of(prop: dict[str, Any]) -> set[str]:
        options = prop.get("anyOf", [prop])
        return {o.get("type", "?") for o in options}

    project = response_schema(f"{API_PREFIX}/projects/{{id}}")
    investment = response_schema(f"{API_PREFIX}/investments/{{id}}")
    created = response_schema(f"{API_PREFIX}/investments", "post")
    target = response_schema(f"{API_PREFIX}/targets/{{id}}")
    assert types_of(project["properties"]["total_investment"]) == {"string", "null"}
    assert types_of(investment["properties"]["amount"]) == {"string"}
    assert types_of(created["properties"]["amount"]) == {"string"}
    assert types_of(target["properties"]["value"]) == {"string"}
    page = response_schema(f"{API_PREFIX}/projects")
    items = resolve(spec, page["properties"]["items"]["items"])
    assert types_of(items["properties"]["total_investment"]) == {"string", "null"}
    assert "next_cursor" in page["properties"]
    # An example taken from the seed data, as staff will see it in Swagger.
    assert "3000000000.00" in str(project["properties"]["total_investment"].get("examples"))


def test_openapi_document_validates(spec: dict[str, Any]) -> None:
    import openapi_spec_validator as validator

    validator.validate(spec)


def test_every_edit_example_is_a_small_valid_patch_that_changes_only_itself(
    client: TestClient, database_url: str
) -> None:
    """Swagger's Try it out on PATCH starts from each resource's `edit_example`: one or two
    fields, accepted as they are, and a PATCH with it changes those fields and nothing else."""
    from app.resources import ALL
    from tests.helpers import API, run_seed

    spec = client.get("/openapi.json").json()
    run_seed(database_url)
    for resource in ALL:
        example = resource.edit_example
        assert 1 <= len(example) <= 2, resource.name
        body = spec["paths"][f"{API}/{resource.name}/{{id}}"]["patch"]["requestBody"]
        assert body["content"]["application/json"]["examples"]["one"]["value"] == example
        resource.update.model_validate(example)
        record = client.get(f"{API}/{resource.name}", params={"limit": 1}).json()["items"][0]
        answer = client.patch(f"{API}/{resource.name}/{record['id']}", json=example)
        assert answer.status_code == 200, (resource.name, answer.text)
        after = answer.json()
        for name, value in example.items():
            assert str(after[name]).startswith(str(value)), (resource.name, name, after[name])
        derived = {"version", "updated_at", "total_investment", "total_investment_display"}
        unchanged = {k for k in record if k not in example and k not in derived | {"inferred"}}
        assert {k: after[k] for k in unchanged} == {k: record[k] for k in unchanged}, resource.name
        # A field given a new value loses its inference mark; the others keep theirs.
        if "inferred" in record:
            changed = {k for k in example if record[k] != after[k]}
            kept = {k: v for k, v in record["inferred"].items() if k not in changed}
            assert after["inferred"] == kept, resource.name
