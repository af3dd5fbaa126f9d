from django.contrib import admin

from annotator import models


@admin.register(models.Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "created_at")
    search_fields = ("name",)


@admin.register(models.Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("project", "user", "role")
    list_filter = ("role",)


@admin.register(models.LabelClass)
class LabelClassAdmin(admin.ModelAdmin):
    list_display = ("project", "value", "name", "color")


@admin.register(models.Case)
class CaseAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "name", "status", "assignee", "reviewer")
    list_filter = ("status", "project")
    search_fields = ("name",)


@admin.register(models.ImportJob)
class ImportJobAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "status", "progress", "created_at")
    list_filter = ("status",)


@admin.register(models.PropagationJob)
class PropagationJobAdmin(admin.ModelAdmin):
    list_display = ("id", "case", "kind", "label_value", "status", "created_at")
    list_filter = ("status", "kind")


@admin.register(models.ExportJob)
class ExportJobAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "format", "status", "created_at")


@admin.register(models.AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "actor", "verb", "project", "case", "object_type", "object_id")
    list_filter = ("verb",)

    # The audit trail is append-only, also for administrators.
    def has_change_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False
