"""Settings come from the environment and fail loudly; production settings pass Django's deploy check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PRODUCTION_ENV = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "k7Qp2vXw9LmZr4Tn8YbC1sHd6JfG3aUe0RiOqWy5ZxVcBnMlKjHgFdSaPoIuYtRe",
    "DJANGO_ALLOWED_HOSTS": "annotate.example.org",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://annotate.example.org",
    "DJANGO_SECURE_SSL_REDIRECT": "true",
    "DJANGO_SESSION_COOKIE_SECURE": "true",
    "DJANGO_CSRF_COOKIE_SECURE": "true",
    "DJANGO_SECURE_HSTS_SECONDS": "31536000",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "DJANGO_SECURE_HSTS_PRELOAD": "true",
    "DJANGO_BEHIND_TLS_PROXY": "true",
}


def _manage(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "PROPLABEL_"))}
    clean.pop("DATABASE_URL", None)
    clean.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env={**clean, "PROPLABEL_VAR_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_deploy_check_is_clean_with_production_environment(tmp_path):
    result = _manage(["check", "--deploy", "--fail-level", "WARNING"], PRODUCTION_ENV, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_mode_without_a_secret_key_refuses_to_start(tmp_path):
    env = {key: value for key, value in PRODUCTION_ENV.items() if key != "DJANGO_SECRET_KEY"}

    result = _manage(["check"], env, tmp_path)

    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_the_secret_key_can_come_from_a_file(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(PRODUCTION_ENV["DJANGO_SECRET_KEY"] + "\n")
    env = {key: value for key, value in PRODUCTION_ENV.items() if key != "DJANGO_SECRET_KEY"}

    result = _manage(
        ["check", "--deploy", "--fail-level", "WARNING"],
        {**env, "DJANGO_SECRET_KEY_FILE": str(secret_file)},
        tmp_path,
    )

    assert result.returncode == 0, result.stderr


def test_a_misspelt_boolean_is_an_error_not_a_default(tmp_path):
    result = _manage(["check"], {"DJANGO_DEBUG": "flase"}, tmp_path)

    assert result.returncode != 0
    assert "DJANGO_DEBUG='flase' is not a boolean" in result.stderr


def test_redis_url_switches_broker_and_channel_layer(tmp_path):
    code = (
        "from django.conf import settings as s; "
        "print(s.CELERY_BROKER_URL, s.CHANNEL_LAYERS['default']['BACKEND'], s.DATABASES['default']['ENGINE'])"
    )
    env = {"REDIS_URL": "redis://127.0.0.1:6399/0", "DATABASE_URL": "postgres://u:p@127.0.0.1:5432/proplabel"}

    result = _manage(["shell", "-c", code], env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].split() == [
        "redis://127.0.0.1:6399/0",
        "channels_redis.core.RedisChannelLayer",
        "django.db.backends.postgresql",
    ]


def test_embedded_defaults_need_no_service(tmp_path):
    code = (
        "from django.conf import settings as s; "
        "print(s.CELERY_BROKER_URL, s.CHANNEL_LAYERS['default']['BACKEND'], s.DATABASES['default']['NAME'])"
    )

    result = _manage(["shell", "-c", code], {}, tmp_path)

    assert result.returncode == 0, result.stderr
    broker, layer, database = result.stdout.strip().splitlines()[-1].split()
    assert broker == "filesystem://"
    assert layer == "backend.sqlite_channel_layer.SQLiteChannelLayer"
    assert database == str(tmp_path / "proplabel.sqlite3")
