"""Access ends when access ends (issue 16): a staff token is honoured only while its account
exists, is active and has the password it was issued under, at the account's current role;
logins are not replayed from the idempotency cache; unknown accounts cost a login its time.
Written as an attacker's requests, on both engines."""

import statistics
import time
from datetime import UTC, datetime, timedelta

import jwt
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.security import ALGORITHM
from tests.helpers import API, make_park, staff_claims


def login(client: TestClient, username: str, password: str) -> str:
    answer = client.post(f"{API}/auth/token", data={"username": username, "password": password})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def user_id(client: TestClient, username: str) -> int:
    users = client.get(f"{API}/users").json()
    return int(next(u["id"] for u in users if u["username"] == username))


def test_a_disabled_account_s_token_stops_at_once(client: TestClient) -> None:
    token = login(client, "editor", "editor-password")
    assert client.get(f"{API}/parks", headers=as_(token)).status_code == 200
    editor = user_id(client, "editor")
    assert client.patch(f"{API}/users/{editor}", json={"is_active": False}).status_code == 200
    assert client.get(f"{API}/parks", headers=as_(token)).status_code == 401
    made = client.post(f"{API}/parks", json={"name": "偷建", "level": "other"}, headers=as_(token))
    assert made.status_code == 401
    assert client.patch(f"{API}/users/{editor}", json={"is_active": True}).status_code == 200
    assert client.get(f"{API}/parks", headers=as_(token)).status_code == 200  # enabled again


def test_a_demoted_editor_writes_no_more_with_the_old_token(client: TestClient) -> None:
    token = login(client, "editor", "editor-password")
    park = make_park(client)
    renamed = client.patch(f"{API}/parks/{park['id']}", json={"city": "枣庄市"}, headers=as_(token))
    assert renamed.status_code == 200
    editor = user_id(client, "editor")
    assert client.patch(f"{API}/users/{editor}", json={"role": "viewer"}).status_code == 200
    refused = client.patch(f"{API}/parks/{park['id']}", json={"city": "别处"}, headers=as_(token))
    assert refused.status_code == 403
    assert client.get(f"{API}/parks/{park['id']}", headers=as_(token)).status_code == 200
    assert client.get(f"{API}/auth/me", headers=as_(token)).json()["role"] == "viewer"


def test_a_new_password_ends_the_tokens_issued_before_it(client: TestClient) -> None:
    token = login(client, "viewer", "viewer-password")
    viewer = user_id(client, "viewer")
    changed = client.patch(f"{API}/users/{viewer}", json={"password": "another-password"})
    assert changed.status_code == 200
    assert client.get(f"{API}/parks", headers=as_(token)).status_code == 401
    fresh = login(client, "viewer", "another-password")
    assert client.get(f"{API}/parks", headers=as_(fresh)).status_code == 200


def test_a_well_signed_token_for_no_account_or_a_claimed_role_gets_nothing(
    anon: TestClient, settings: Settings
) -> None:
    """Even with the signing key, a token must name a real account with its password stamp;
    the role it claims is ignored for the account's own."""
    now = datetime.now(UTC)
    viewer = staff_claims(settings, "viewer")

    def forge(**claims: object) -> dict[str, str]:
        body = {"iat": now, "exp": now + timedelta(minutes=5), "typ": "access", **claims}
        return as_(jwt.encode(body, settings.secret_key, algorithm=ALGORITHM))

    ghost = forge(sub="ghost", uid=999_999, cred="0" * 32, role="admin")
    assert anon.get(f"{API}/parks", headers=ghost).status_code == 401
    renamed = forge(sub="admin", uid=viewer["uid"], cred=viewer["cred"], role="admin")
    assert anon.get(f"{API}/parks", headers=renamed).status_code == 401
    wrong_stamp = forge(sub="viewer", uid=viewer["uid"], cred="f" * 32, role="viewer")
    assert anon.get(f"{API}/parks", headers=wrong_stamp).status_code == 401
    claims_admin = forge(sub="viewer", **viewer, role="admin")
    assert anon.get(f"{API}/parks", headers=claims_admin).status_code == 200
    assert anon.get(f"{API}/users", headers=claims_admin).status_code == 403
    created = anon.post(f"{API}/parks", json={"name": "x", "level": "other"}, headers=claims_admin)
    assert created.status_code == 403


def test_logins_are_never_replayed_and_every_guess_counts(anon: TestClient) -> None:
    """An Idempotency-Key on /auth/token is ignored: a right password is answered afresh, not
    from a cache (which would also keep the JWT at rest), and each wrong guess is counted."""
    for _ in range(2):
        right = anon.post(
            f"{API}/auth/token",
            data={"username": "viewer", "password": "viewer-password"},
            headers={"Idempotency-Key": "right-1"},
        )
        assert right.status_code == 200
        assert "idempotent-replayed" not in right.headers
    key = {"Idempotency-Key": "guess-1"}
    answers = [
        anon.post(
            f"{API}/auth/token", data={"username": "editor", "password": f"no-{i}"}, headers=key
        ).status_code
        for i in range(12)
    ]
    assert answers[:10] == [401] * 10 and answers[10:] == [429, 429]


def test_an_unknown_account_takes_as_long_to_refuse_as_a_wrong_password(
    settings: Settings,
) -> None:
    """The issue's bound: the two within 50% of each other (medians of several attempts; the
    password hash dominates both; with the decoy removed this test measured 3.5 ms against
    88 ms and failed)."""
    roomy = settings.model_copy(update={"login_failures_per_minute": 100})
    with TestClient(create_app(roomy)) as anon:

        def median_seconds(username: str) -> float:
            times = []
            for i in range(5):
                started = time.perf_counter()
                answer = anon.post(
                    f"{API}/auth/token", data={"username": username, "password": f"wrong-{i}"}
                )
                times.append(time.perf_counter() - started)
                assert answer.status_code == 401
            return statistics.median(times)

        median_seconds("nobody-warming-up")  # the decoy hash is made on first use
        known, unknown = median_seconds("editor"), median_seconds("nobody-at-all")
    assert 0.5 <= unknown / known <= 1.5, (known, unknown)
