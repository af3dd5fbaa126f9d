"""Server-rendered pages: the viewer app shell (the built frontend) behind login."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache


@never_cache
@login_required
def app_shell(request: HttpRequest) -> HttpResponse:
    """Every /app/... URL returns the viewer's index.html; the viewer routes on the client."""
    index = settings.FRONTEND_DIST_DIR / "index.html"
    if not index.is_file():
        return render(
            request, "annotator/app_missing.html", {"dist_dir": settings.FRONTEND_DIST_DIR}, status=503
        )
    return HttpResponse(index.read_text(encoding="utf-8"), content_type="text/html; charset=utf-8")
