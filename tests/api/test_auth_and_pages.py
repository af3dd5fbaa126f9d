"""Signing in (browser session, script token), the app shell behind login, the API docs."""

from __future__ import annotations

import re

import pytest
from rest_framework.test import APIClient


def test_a_script_gets_a_token_and_uses_it(team):
    client = APIClient()

    response = client.post("/api/auth/token/", {"username": "annotator", "password": "annotator-password"})

    assert response.status_code == 200
    client.credentials(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
    me = client.get("/api/me/").json()
    assert me["username"] == "annotator"
    assert me["projects"] == [{"id": team.project.pk, "name": "Liver study", "role": "annotator"}]


def test_a_wrong_password_gets_no_token(team):
    response = APIClient().post("/api/auth/token/", {"username": "annotator", "password": "nope"})

    assert response.status_code == 400


def test_anonymous_api_requests_are_told_to_authenticate(db):
    response = APIClient().get("/api/cases/")

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Token")


def test_the_login_page_signs_the_user_in_and_opens_the_app(team, client):
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert b"Sign in" in page.content

    response = client.post("/accounts/login/", {"username": "annotator", "password": "annotator-password"})

    assert response.status_code == 302 and response["Location"] == "/app/"


def test_the_app_requires_login(db, client):
    response = client.get("/app/cases/12")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/app/cases/12")


def test_the_root_redirects_to_the_app(db, client):
    assert client.get("/")["Location"] == "/app/"


def test_every_app_url_serves_the_built_viewer(team, client, settings, tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html><title>viewer</title>")
    settings.FRONTEND_DIST_DIR = tmp_path
    client.force_login(team.annotator)

    for url in ("/app/", "/app/cases/3", "/app/projects/1/import"):
        response = client.get(url)
        assert response.status_code == 200
        assert b"<title>viewer</title>" in response.content


def test_a_missing_viewer_build_says_how_to_build_it(team, client, settings, tmp_path):
    settings.FRONTEND_DIST_DIR = tmp_path / "nothing-here"
    client.force_login(team.annotator)

    response = client.get("/app/")

    assert response.status_code == 503
    assert b"npm run build" in response.content


def test_browser_writes_need_the_csrf_token(team):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(team.manager)

    response = client.post("/api/projects/", {"name": "no csrf"}, format="json")

    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


@pytest.mark.parametrize("url", ["/api/schema/", "/api/docs/"])
def test_the_api_is_documented(team, api_client, url):
    response = api_client(team.annotator).get(url)

    assert response.status_code == 200


def test_the_api_docs_page_loads_its_assets_from_this_server_so_it_works_offline(team, client):
    client.force_login(team.annotator)
    html = client.get("/api/docs/").content.decode()

    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    assert any(url.endswith("swagger-ui-bundle.js") for url in assets), assets
    outside = [url for url in assets if not url.startswith("/") or url.startswith("//")]
    assert outside == [], outside
    # The page embeds a random CSRF token, which can spell "cdn" by chance: blank such tokens first.
    text = re.sub(r"[A-Za-z0-9]{32,}", "", html)
    assert "cdn" not in text.lower() and "https://" not in text and "http://" not in text
    for url in assets:
        response = client.get(url)
        assert response.status_code == 200, url
        if hasattr(response, "streaming_content"):
            b"".join(response.streaming_content)


def test_the_schema_generates_without_warnings(db):
    from drf_spectacular.drainage import GENERATOR_STATS
    from drf_spectacular.generators import SchemaGenerator

    GENERATOR_STATS.reset()
    schema = SchemaGenerator().get_schema(request=None, public=True)

    assert "/api/cases/{case_id}/volume/voxels/" in schema["paths"]
    assert not GENERATOR_STATS._warn_cache and not GENERATOR_STATS._error_cache
