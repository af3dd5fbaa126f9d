"""PropLabel settings: every value comes from the environment, with embedded defaults that need no service.

Embedded mode (nothing set): SQLite in ``var/``, media in ``var/media``, a Celery broker on the local file
system (the run command starts the worker as a child process) and an in-process channel layer.
Distributed mode: set ``DATABASE_URL`` (PostgreSQL) and ``REDIS_URL`` (Celery broker + Channels layer).
Production: set ``DJANGO_DEBUG=false`` and ``DJANGO_SECRET_KEY`` (or ``DJANGO_SECRET_KEY_FILE``); the
secure-cookie/HSTS/SSL settings below are then read from the environment (see README.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    # A typo such as DJANGO_DEBUG=flase must not silently turn into either value.
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true/false)")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from exc


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_secret(name: str) -> str:
    """``NAME`` or the contents of the file named by ``NAME_FILE`` (Docker/Kubernetes secrets)."""
    if secret_path := os.environ.get(f"{name}_FILE"):
        path = Path(secret_path)
        if not path.is_file():
            raise ImproperlyConfigured(f"Cannot read {name}_FILE ({secret_path})")
        return path.read_text().strip()
    return os.environ.get(name, "")


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return Path(raw).expanduser().resolve() if raw else default


DEBUG = env_bool("DJANGO_DEBUG", True)

VAR_DIR = env_path("PROPLABEL_VAR_DIR", BASE_DIR / "var")

SECRET_KEY = env_secret("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE) must be set when DJANGO_DEBUG is false"
        )
    SECRET_KEY = "django-insecure-proplabel-embedded-development-key-do-not-use-in-production"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # daphne first so that `manage.py runserver` serves ASGI (HTTP + WebSocket).
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI / Redoc files served locally: /api/docs/ works offline
    "channels",
    "annotator",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "backend.urls"
WSGI_APPLICATION = "backend.wsgi.application"
ASGI_APPLICATION = "backend.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'proplabel.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0))}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the worker are separate processes sharing one SQLite file: WAL lets readers run
    # while a writer commits, IMMEDIATE transactions take the write lock up front (no upgrade deadlocks)
    # and the timeout makes a second writer wait instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": env_int("SQLITE_TIMEOUT_SECONDS", 30),
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("DJANGO_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- Static files (the built viewer is served from /static/app/) and media ------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = env_path("DJANGO_STATIC_ROOT", BASE_DIR / "backend" / "static_build")
FRONTEND_DIST_DIR = BASE_DIR / "frontend" / "dist"
STATICFILES_DIRS: list[tuple[str, Path]] = []
if FRONTEND_DIST_DIR.is_dir():
    STATICFILES_DIRS.append(("app", FRONTEND_DIST_DIR))
# Serve straight from the finders so the embedded mode needs no collectstatic step.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

MEDIA_ROOT = env_path("DJANGO_MEDIA_ROOT", VAR_DIR / "media")
# Media (volumes, labels, uploads) is only ever served through permission-checked API views.
MEDIA_URL = "/media-not-served/"

# --- Uploads ----------------------------------------------------------------------------------------------
# Files above this size are streamed to a temporary file instead of being held in memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = env_int("DJANGO_FILE_UPLOAD_MAX_MEMORY_SIZE", 4 * 1024**2)
DATA_UPLOAD_MAX_NUMBER_FILES = env_int("DJANGO_DATA_UPLOAD_MAX_NUMBER_FILES", 5000)

PROPLABEL_MAX_UPLOAD_BYTES = env_int("PROPLABEL_MAX_UPLOAD_BYTES", 2 * 1024**3)
PROPLABEL_MAX_UNCOMPRESSED_BYTES = env_int("PROPLABEL_MAX_UNCOMPRESSED_BYTES", 8 * 1024**3)
PROPLABEL_MAX_COMPRESSION_RATIO = env_float("PROPLABEL_MAX_COMPRESSION_RATIO", 200.0)
PROPLABEL_MAX_ARCHIVE_FILES = env_int("PROPLABEL_MAX_ARCHIVE_FILES", 20000)
PROPLABEL_MAX_VOXELS = env_int("PROPLABEL_MAX_VOXELS", 1024**3)
# Browsers may reuse voxels/labels for this long without asking; the ETag makes revalidation cheap.
PROPLABEL_BINARY_MAX_AGE = env_int("PROPLABEL_BINARY_MAX_AGE", 3600)
# Decoded volumes kept in memory per process (slice thumbnails, propagation jobs of the same case).
PROPLABEL_VOXEL_CACHE_BYTES = env_int("PROPLABEL_VOXEL_CACHE_BYTES", 512 * 1024**2)
PROPLABEL_DEMO_CACHE_DIR = env_path("PROPLABEL_DEMO_CACHE_DIR", VAR_DIR / "demo-cache")

# --- Auth and API -----------------------------------------------------------------------------------------
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/app/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

REST_FRAMEWORK = {
    # Token first so that an anonymous request gets 401 with a WWW-Authenticate header (not 403).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "annotator.api.exceptions.exception_handler",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
}

SPECTACULAR_SETTINGS = {
    "TITLE": "PropLabel API",
    "DESCRIPTION": "3D medical annotation with slice-by-slice propagation (see docs/ARCHITECTURE.md).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The docs page loads Swagger UI from our own static files (drf-spectacular-sidecar), never a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Several models have a `status` field with different choices: give each enum a stable name.
    "ENUM_NAME_OVERRIDES": {
        "CaseStatusEnum": "annotator.models.CaseStatus",
        "ImportStatusEnum": "annotator.models.ImportStatus",
        "JobStatusEnum": "annotator.models.JobStatus",
        "ExportStatusEnum": "annotator.models.ExportStatus",
        "RoleEnum": "annotator.models.Role",
    },
}

# --- Celery: queues `gpu` (model work) and `io` (import/export) ----------------------------------------------
REDIS_URL = env_str("REDIS_URL", "")
CELERY_DATA_DIR = VAR_DIR / "celery"
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    # A message whose worker died is re-delivered after this long: must exceed the longest job.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600)}
else:
    # kombu's filesystem transport: producer and worker exchange messages through one folder.
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_DATA_DIR / "queue"),
        "data_folder_out": str(CELERY_DATA_DIR / "queue"),
        "control_folder": str(CELERY_DATA_DIR / "control"),
        "processed_folder": str(CELERY_DATA_DIR / "processed"),
        "store_processed": False,
        # kombu polls the folder; the default 1 s would add up to a second before a job starts.
        "polling_interval": env_float("CELERY_FILESYSTEM_POLL_SECONDS", 0.05),
    }
# Job rows hold all state; the result store is never used.
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = "io"
CELERY_TASK_ROUTES = {
    "annotator.tasks.run_import": {"queue": "io"},
    "annotator.tasks.run_export": {"queue": "io"},
    "annotator.live_tasks.run_propagation": {"queue": "gpu"},
}
# Tasks claim their job row with a conditional update, so re-delivery after a lost worker is safe.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A Redis restart must not abort the job in hand: it finishes and writes its row; the message it held comes
# back after the visibility timeout and its duplicate claim is a no-op. Celery 6 flips the default: pinned here.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False

# --- Channels ---------------------------------------------------------------------------------------------
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_URL],
                # A propagation streams a burst of slice events per case; the default of 100 queued messages
                # per channel would drop slices for a browser that lags a moment behind.
                "capacity": env_int("CHANNELS_CAPACITY", 1000),
                "expiry": env_int("CHANNELS_MESSAGE_EXPIRY_SECONDS", 60),
            },
        },
    }
else:
    # The worker is a separate process: its events reach the web process's consumers through a SQLite file.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "backend.sqlite_channel_layer.SQLiteChannelLayer",
            "CONFIG": {"path": str(VAR_DIR / "channels.sqlite3")},
        }
    }

# --- Security (production values come from the environment) -------------------------------------------------
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
SESSION_COOKIE_SECURE = env_bool("DJANGO_SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("DJANGO_CSRF_COOKIE_SECURE", False)
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)
if env_bool("DJANGO_BEHIND_TLS_PROXY", False):
    # Only trust X-Forwarded-Proto when a proxy (nginx) that sets it sits in front.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# --- Logging, health checks and metrics (backend/logging_config.py, annotator/observability.py) ---------------
from backend.logging_config import build_logging  # noqa: E402  (settings helpers above, config below)

LOGGING = build_logging(env_str("LOG_FORMAT", "plain"), env_str("LOG_LEVEL", "INFO"))
# Workers log through the same LOGGING (JSON when asked) instead of Celery's own root-logger set-up.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
PROPLABEL_READYZ_TIMEOUT = env_float("PROPLABEL_READYZ_TIMEOUT", 1.0)
PROPLABEL_READYZ_WORKER_TIMEOUT = env_float("PROPLABEL_READYZ_WORKER_TIMEOUT", 1.0)
PROPLABEL_READYZ_WORKER_CACHE_SECONDS = env_float("PROPLABEL_READYZ_WORKER_CACHE_SECONDS", 2.0)
PROPLABEL_METRICS_TOKEN = env_secret("PROPLABEL_METRICS_TOKEN")
