from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from annotator import observability, views_pages

urlpatterns = [
    # Probes and metrics (annotator/observability.py); no trailing slash, as probes are usually written.
    path("healthz", observability.healthz, name="healthz"),
    path("readyz", observability.readyz, name="readyz"),
    path("metrics", observability.metrics, name="metrics"),
    path("", RedirectView.as_view(url="/app/", permanent=False)),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", include("annotator.api.urls")),
    path("manage/", include("annotator.views_manage")),  # manager screens (projects, import, assignment...)
    re_path(r"^app(?:/.*)?$", views_pages.app_shell, name="app"),
]
