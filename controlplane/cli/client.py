"""The CLI's client of the admin API: one call, with TURNOUT_API_KEY, whose
failures become messages that say what to fix."""

from __future__ import annotations

from typing import Any

import httpx

from controlplane.cli.errors import CliError
from controlplane.settings import get_settings

__all__ = ["call_api"]

NO_KEY = (
    "no admin API key is set: export TURNOUT_API_KEY=tk_... "
    "(`turnout keys create --role {role} --name NAME` makes one)"
)


def call_api(
    method: str,
    path: str,
    *,
    api: str | None = None,
    params: dict[str, str] | None = None,
    json: Any = None,
    permission: str = "read",
    accept: tuple[int, ...] = (),
) -> httpx.Response:
    """Send one request to the admin API and return its response: a 2xx, or a
    status in ``accept``; raise CliError naming the fix for anything else.

    ``permission`` ("read" or "write") is what the call needs, for the messages.
    """
    settings = get_settings()
    role = "viewer" if permission == "read" else "operator"
    if settings.api_key is None or not settings.api_key.get_secret_value():
        raise CliError(NO_KEY.format(role=role))
    base = api or f"http://{settings.api_host}:{settings.api_port}"
    headers = {"authorization": f"Bearer {settings.api_key.get_secret_value()}"}
    try:
        response = httpx.request(
            method, f"{base}{path}", headers=headers, params=params, json=json, timeout=30
        )
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach {base}{path} ({exc}); is `turnout serve` running?") from exc
    if response.status_code in accept:
        return response
    if response.status_code in (401, 403):
        raise CliError(
            f"the admin API refused the key in TURNOUT_API_KEY ({response.status_code}): "
            f"set it to a live key with the {permission} permission "
            f"(a {role} key or better; `turnout keys list` shows them)"
        )
    if response.is_error:
        raise CliError(f"{method} {path} answered {response.status_code}: {_detail(response)}")
    return response


def _detail(response: httpx.Response) -> str:
    """The error body's message, or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, dict) and "message" in detail:
        return str(detail["message"])
    if isinstance(detail, list):  # validation errors: where and what
        return "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', [])[1:])}: {item.get('msg')}"
            for item in detail[:5]
            if isinstance(item, dict)
        )
    return str(detail if detail is not None else body)[:300]
