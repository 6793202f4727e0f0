"""Views of the test project: enqueue a task, inside a transaction that may roll back."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse

from .tasks import add


class _RolledBack(Exception):
    pass


def enqueue_add(request: HttpRequest) -> HttpResponse:
    """Enqueue add(a, b) in the request's transaction; ?fail=1 rolls it back."""
    a, b = int(request.GET["a"]), int(request.GET["b"])
    try:
        with transaction.atomic():
            result = add.enqueue(a, b)
            if request.GET.get("fail"):
                raise _RolledBack
    except _RolledBack:
        return JsonResponse({"id": result.id, "rolled_back": True}, status=409)
    return JsonResponse({"id": result.id, "status": result.status}, status=202)


def show_result(request: HttpRequest, result_id: str) -> HttpResponse:
    """What get_result says of a result."""
    result = add.get_result(result_id)
    body = {"status": result.status, "attempts": result.attempts}
    if result.is_finished and result.status == "SUCCESSFUL":
        body["return_value"] = result.return_value
    return JsonResponse(body)
