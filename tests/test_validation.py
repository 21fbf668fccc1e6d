"""Validation: every refusal is a 422 problem naming the field; money is exact; credit codes."""

from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import credit_code
from tests.helpers import API, make_chain, make_park, make_project, post, problem

VALID_CODE = "91350100M000100Y43"
ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # GB 32100: 31 characters, no I, O, S, V, Z
MAX_AMOUNT = Decimal("9999999999999999.99")


def refused(client: TestClient, method: str, url: str, body: Any, field: str) -> dict[str, Any]:
    response = client.request(method, url, json=body)
    result = problem(response, 422)
    assert result["field"] == field, (body, result)
    assert field in [e["field"] for e in result["errors"]]
    return result


def count(client: TestClient, resource: str) -> int:
    return len(client.get(f"{API}/{resource}", params={"limit": 500}).json()["items"])


@pytest.fixture
def park(client: TestClient) -> dict[str, Any]:
    return make_park(client)


@pytest.fixture
def project(client: TestClient, park: dict[str, Any]) -> dict[str, Any]:
    return make_project(client, park["id"])


def new_project(park: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"park_id": park["id"], "name": "鲁南大数据中心", "stage": "signed", **extra}


def investment(project: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"project_id": project["id"], "kind": "planned_total", **extra}


# ---------------------------------------------------------------- fields clients may not send


NOT_CLIENTS = {
    "colour": "red",
    "id": 99,
    "version": 7,
    "created_at": "2021-03-25T00:00:00+08:00",
    "updated_at": "2021-03-25T00:00:00+08:00",
    "deleted_at": None,
    "total_investment": "3000000000.00",
    "total_investment_display": "30亿元",
    "investment_conflict": True,
}


def test_unknown_and_read_only_fields_are_refused(client: TestClient, park: dict[str, Any]) -> None:
    created = make_project(client, park["id"])
    url = f"{API}/projects/{created['id']}"
    for field, value in NOT_CLIENTS.items():
        refused(client, "POST", f"{API}/projects", new_project(park, **{field: value}), field)
        refused(client, "PATCH", url, {"name": "改名", field: value}, field)
    assert count(client, "projects") == 1
    after = client.get(url).json()
    assert (after["name"], after["version"], after["id"]) == (created["name"], 1, created["id"])
    for field in ("id", "version", "amount_display"):
        body = {"project_id": created["id"], "kind": "reported", "amount": "1", field: 5}
        refused(client, "POST", f"{API}/investments", body, field)
    body = {"name": "某园区", "level": "national", "version": 1}
    refused(client, "POST", f"{API}/parks", body, "version")


# ---------------------------------------------------------------- values out of their domain


def test_blank_names_are_refused(client: TestClient, park: dict[str, Any]) -> None:
    for name in ("", "   ", "\t\n", "\u3000", None):
        refused(client, "POST", f"{API}/projects", new_project(park, name=name), "name")
        refused(client, "POST", f"{API}/parks", {"name": name, "level": "national"}, "name")
        refused(client, "PATCH", f"{API}/parks/{park['id']}", {"name": name}, "name")
    assert client.get(f"{API}/parks/{park['id']}").json()["name"] == park["name"]
    assert count(client, "projects") == 0 and count(client, "parks") == 1
    created = post(client, "projects", new_project(park, name="  鲁南大数据中心 "))
    assert created["name"] == "鲁南大数据中心"


def test_unknown_enums_and_years_out_of_range_are_refused(
    client: TestClient, park: dict[str, Any], project: dict[str, Any]
) -> None:
    refused(client, "POST", f"{API}/projects", new_project(park, stage="dreaming"), "stage")
    refused(client, "POST", f"{API}/parks", {"name": "某园区", "level": "galactic"}, "level")
    body = {"park_id": park["id"], "code": "x", "name": "某链", "role": "boss"}
    refused(client, "POST", f"{API}/chains", body, "role")
    body = investment(project, kind="rumour", amount="1")
    refused(client, "POST", f"{API}/investments", body, "kind")
    body = investment(project, amount="1", unit="美元")
    refused(client, "POST", f"{API}/investments", body, "unit")
    body = investment(project, amount="1", currency="USD")
    refused(client, "POST", f"{API}/investments", body, "currency")
    refused(client, "PATCH", f"{API}/projects/{project['id']}", {"stage": "签约"}, "stage")
    assert client.get(f"{API}/projects/{project['id']}").json()["stage"] == "signed"
    assert count(client, "investments") == 0

    # Years run from 1949 to 2100.
    for year in (1948, 2101, -1, 0):
        refused(client, "POST", f"{API}/projects", new_project(park, year=year), "year")
        refused(client, "PATCH", f"{API}/projects/{project['id']}", {"year": year}, "year")
    body = {"park_id": park["id"], "name": "某企业", "landed_year": 1948}
    refused(client, "POST", f"{API}/enterprises", body, "landed_year")
    target = {
        "park_id": park["id"],
        "metric": "key_projects",
        "value": "100",
        "unit": "个",
        "recurrence": "annual",
    }
    refused(
        client, "POST", f"{API}/targets", {**target, "period_start_year": 1948}, "period_start_year"
    )
    refused(
        client, "POST", f"{API}/targets", {**target, "period_end_year": 2101}, "period_end_year"
    )
    post(client, "targets", {**target, "period_start_year": 1949, "period_end_year": 2100})
    assert client.get(f"{API}/projects/{project['id']}").json()["year"] is None
    for year in (1949, 2100):
        created = post(client, "projects", new_project(park, name=f"项目{year}", year=year))
        assert created["year"] == year
        patched = client.patch(f"{API}/projects/{project['id']}", json={"year": year})
        assert patched.status_code == 200 and patched.json()["year"] == year


# ---------------------------------------------------------------- money


BAD_AMOUNTS = [
    ("-1", "元"),
    ("-0.01", "亿元"),
    ("1.234", "元"),
    ("0.001", "元"),
    ("0.0000001", "万元"),
    ("0.00000000001", "亿元"),
    ("10000000000000000", "元"),
    ("100000000.01", "亿元"),
    ("NaN", "元"),
    ("Infinity", "元"),
    ("abc", "元"),
]


def test_bad_amounts_are_refused(client: TestClient, project: dict[str, Any]) -> None:
    for amount, unit in BAD_AMOUNTS:
        body = investment(project, amount=amount, unit=unit)
        refused(client, "POST", f"{API}/investments", body, "amount")
    # The same refusals when the amount is a JSON number rather than a string.
    for raw in ("1.234", "-5", "0.005", "1e-3"):
        body = f'{{"project_id": {project["id"]}, "kind": "reported", "amount": {raw}}}'
        response = client.post(
            f"{API}/investments", content=body, headers={"content-type": "application/json"}
        )
        assert problem(response, 422)["field"] == "amount", raw
    assert count(client, "investments") == 0


EXACT = [
    ('"30"', "亿元", "3000000000.00", "30亿元"),
    ("30", "亿元", "3000000000.00", "30亿元"),
    ("0.1", "元", "0.10", "0.1元"),
    ('"0.1"', "元", "0.10", "0.1元"),
    ("1.23", "万元", "12300.00", "1.23万元"),
    ('"1.2345"', "万元", "12345.00", "1.2345万元"),
    ('"1.23456789"', "亿元", "123456789.00", "1.23456789亿元"),
    ("0.07", "元", "0.07", "0.07元"),
    ('"9999999999999999.99"', "元", "9999999999999999.99", None),
    ("0", "元", "0.00", "0元"),
]


def test_money_is_exact(client: TestClient, project: dict[str, Any]) -> None:
    for raw, unit, stored, shown in EXACT:
        body = (
            f'{{"project_id": {project["id"]}, "kind": "planned_total", '
            f'"amount": {raw}, "unit": "{unit}"}}'
        )
        created = client.post(
            f"{API}/investments",
            content=body.encode(),
            headers={"content-type": "application/json"},
        )
        assert created.status_code == 201, created.text
        assert created.json()["amount"] == stored, (raw, unit)
        got = client.get(created.headers["location"]).json()
        assert got["amount"] == stored, (raw, unit)
        if shown is not None:
            assert got["amount_display"] == shown, (raw, unit)
        headline = client.get(f"{API}/projects/{project['id']}").json()
        assert headline["total_investment"] == stored, (raw, unit)


def test_unit_needs_an_amount_and_required_fields_refuse_null_on_patch(
    client: TestClient, project: dict[str, Any]
) -> None:
    inv = post(client, "investments", investment(project, amount="30", unit="亿元"))
    url = f"{API}/investments/{inv['id']}"
    refused(client, "PATCH", url, {"unit": "万元"}, "unit")
    refused(client, "POST", f"{API}/investments", investment(project, unit="亿元"), "amount")
    for field in ("amount", "kind", "project_id", "currency"):
        refused(client, "PATCH", url, {field: None}, field)
    after = client.get(url).json()
    assert (after["amount"], after["kind"], after["version"]) == (
        "3000000000.00",
        "planned_total",
        1,
    )

    purl = f"{API}/projects/{project['id']}"
    version = client.get(purl).json()["version"]  # the investment moved the headline
    for field in ("name", "park_id", "inferred"):
        refused(client, "PATCH", purl, {field: None}, field)
    assert client.get(purl).json()["version"] == version
    # An optional field may be cleared with null; a stage or key flag cleared is unknown.
    for field, value in (("year", 2021), ("stage", "signed"), ("is_key", False)):
        set_ = client.patch(purl, json={field: value})
        assert set_.status_code == 200 and set_.json()[field] == value
        cleared = client.patch(purl, json={field: None})
        assert cleared.status_code == 200 and cleared.json()[field] is None


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    amount=st.decimals(min_value=0, max_value=MAX_AMOUNT, places=2),
    as_number=st.booleans(),
)
def test_any_amount_survives_a_round_trip(
    client: TestClient, project: dict[str, Any], amount: Decimal, as_number: bool
) -> None:
    text = f"{amount:f}"
    value = text if as_number else f'"{text}"'
    body = f'{{"project_id": {project["id"]}, "kind": "planned_total", "amount": {value}}}'
    created = client.post(
        f"{API}/investments", content=body, headers={"content-type": "application/json"}
    )
    assert created.status_code == 201, created.text
    expected = f"{amount.quantize(Decimal('0.01')):f}"
    assert created.json()["amount"] == expected
    assert client.get(created.headers["location"]).json()["amount"] == expected
    assert client.get(f"{API}/projects/{project['id']}").json()["total_investment"] == expected


# ---------------------------------------------------------------- 统一社会信用代码


def gb32100_check(first17: str) -> str:
    total = sum(ALPHABET.index(ch) * pow(3, i, 31) for i, ch in enumerate(first17))
    return ALPHABET[(31 - total % 31) % 31]


def test_credit_codes_are_checked(client: TestClient, park: dict[str, Any]) -> None:
    def enterprise(code: Any, name: str = "交大智邦") -> Any:
        return client.post(
            f"{API}/enterprises", json={"park_id": park["id"], "name": name, "credit_code": code}
        )

    bad = [
        VALID_CODE[:-1] + "4",  # wrong check character
        VALID_CODE[:-1],  # 17 characters
        VALID_CODE + "0",  # 19 characters
    ]
    bad += [VALID_CODE[:8] + letter + VALID_CODE[9:] for letter in "IOSVZ"]
    bad += [VALID_CODE[:8] + "#" + VALID_CODE[9:]]
    for code in bad:
        body = problem(enterprise(code), 422)
        assert body["field"] == "credit_code", code
    assert "I" in problem(enterprise(VALID_CODE[:8] + "I" + VALID_CODE[9:]), 422)["detail"]
    assert count(client, "enterprises") == 0
    # An empty code (a blank form field or spreadsheet cell) is no code, not a bad one.
    for blank in ("", "   "):
        none = enterprise(blank, f"未知代码{len(blank)}")
        assert none.status_code == 201 and none.json()["credit_code"] is None, none.text
        client.delete(none.headers["location"])

    created = enterprise(VALID_CODE.lower())
    assert created.status_code == 201, created.text
    assert created.json()["credit_code"] == VALID_CODE
    assert client.get(created.headers["location"]).json()["credit_code"] == VALID_CODE
    # Stored upper-cased, so the same code in lower case is a duplicate.
    assert problem(enterprise(VALID_CODE, "另一家"), 409)["field"] == "credit_code"
    url = created.headers["location"]
    refused(client, "PATCH", url, {"credit_code": VALID_CODE[:-1] + "0"}, "credit_code")
    assert client.get(url).json()["credit_code"] == VALID_CODE
    other = VALID_CODE[:-2] + "0"
    other += gb32100_check(other)
    patched = client.patch(url, json={"credit_code": other.lower()})
    assert patched.status_code == 200 and patched.json()["credit_code"] == other


codes17 = st.text(alphabet=ALPHABET, min_size=17, max_size=17)


@settings(max_examples=200, deadline=None)
@given(first17=codes17)
def test_any_code_with_its_check_character_is_accepted(first17: str) -> None:
    code = first17 + gb32100_check(first17)
    assert credit_code.validate(code) == code
    assert credit_code.validate(code.lower()) == code


@settings(max_examples=200, deadline=None)
@given(first17=codes17, position=st.integers(0, 17), replacement=st.sampled_from(ALPHABET))
def test_changing_any_one_character_is_rejected(
    first17: str, position: int, replacement: str
) -> None:
    code = first17 + gb32100_check(first17)
    if code[position] == replacement:
        replacement = ALPHABET[(ALPHABET.index(replacement) + 1) % len(ALPHABET)]
    changed = code[:position] + replacement + code[position + 1 :]
    with pytest.raises(ValueError):
        credit_code.validate(changed)


# ---------------------------------------------------------------- bodies and datetimes


def test_a_body_that_is_not_a_json_object_is_a_422_problem(client: TestClient) -> None:
    for content in (
        b'{"name": "x", ',
        b"not json",
        b"",
        b"\xff\xfe",
        b"[1, 2]",
        b'"just a string"',
        b"null",
    ):
        response = client.post(
            f"{API}/parks", content=content, headers={"content-type": "application/json"}
        )
        problem(response, 422)
    assert count(client, "parks") == 0


def test_datetimes_need_an_offset(client: TestClient, park: dict[str, Any]) -> None:
    for naive in ("2026-01-01T00:00:00", "2026-01-01"):
        body = problem(client.get(f"{API}/projects", params={"updated_after": naive}), 422)
        assert body["field"] == "updated_after", naive
    for aware in ("2026-01-01T00:00:00Z", "2026-01-01T08:00:00+08:00"):
        assert client.get(f"{API}/projects", params={"updated_after": aware}).status_code == 200
    chain = make_chain(client, park["id"])
    assert chain["created_at"].endswith(("+00:00", "Z"))


@pytest.mark.parametrize(
    "key", ["abc\u00a0", " abc", "a b", "a\u0085b", "a\ufeffb", "a/b", "a\u0001"]
)
def test_external_ids_with_whitespace_control_characters_or_slashes_are_refused(
    client: TestClient, key: str
) -> None:
    """Nothing is stripped: what the document's pattern refuses (in any regex engine's idea of
    whitespace), the API refuses, naming the field. Found by the contract fuzzing."""
    response = client.post(f"{API}/sources", json={"title": "来源", "external_id": key})
    assert problem(response, 422)["field"] == "external_id"


def test_an_external_id_of_any_other_characters_is_kept_exactly(client: TestClient) -> None:
    made = client.post(f"{API}/sources", json={"title": "来源", "external_id": "枣庄-2021_A.1"})
    assert made.status_code == 201, made.text
    assert made.json()["external_id"] == "枣庄-2021_A.1"


def test_refusals_speak_chinese_first(client: TestClient, park: dict[str, Any]) -> None:
    """Pydantic's refusals come in Chinese, its English after; the API's codes stay as they are."""
    answer = problem(
        client.post(
            f"{API}/projects",
            json={"park_id": park["id"], "stage": "挖坑", "total_investment": "1.5亿元"},
        ),
        422,
    )
    said = {e["field"]: e["message"] for e in answer["errors"]}
    assert said["name"].startswith("必填 (")
    assert said["stage"].startswith("应为以下之一：'planning'") and "cancelled" in said["stage"]
    assert said["total_investment"].startswith("没有这个字段，不接受 (")
    assert "必填" in answer["detail"]
    # The same words for a batch's item, and in a spreadsheet's row errors.
    batch = problem(
        client.post(f"{API}/projects/batch", json={"items": [{"op": "create", "data": {}}]}),
        422,
    )
    assert {e["message"][:2] for e in batch["errors"]} == {"必填"}
