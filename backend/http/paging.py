"""What a list answer carries besides its records: the total in the three forms the
dashboards read, RFC 8288 links in the request's own dialect, and the OpenAPI
description of a list route's query parameters."""

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from backend.config import DEFAULT_MAX_PER_PAGE
from backend.http.listing import (
    DATE_RANGES,
    DEFAULT_PER_PAGE,
    MAX_PAGE,
    MAX_SEARCH_CHARS,
    ListQuery,
    Resource,
)
from backend.http.parsing import INT32_MAX

LIST_HEADERS = {
    "X-Total-Count": {"description": "Records matching the filters", "schema": {"type": "integer"}},
    "Content-Range": {"description": "RESOURCE START-END/TOTAL", "schema": {"type": "string"}},
    "Link": {
        "description": "RFC 8288 first, prev, next, last; left out when longer than 2 KiB",
        "schema": {"type": "string"},
    },
}
# The Link header repeats the query string four times, so a list asked for by a long id
# list (up to MAX_PER_PAGE ids) made a header line over 100 KB: httpx and h11 refuse a
# line over 64 KiB (the fuzzer's client aborted on one), and nginx answers 502 when a
# response's headers overflow proxy_buffer_size (one page, 4 KiB by default). Past this
# bound the links are left out; X-Total-Count and Content-Range always carry the paging.
MAX_LINK_HEADER_BYTES = 2048


def set_list_headers(
    request: Request,
    response: Response,
    resource: Resource,
    query: ListQuery,
    count: int,
    total: int,
) -> None:
    """The total, in the three forms the dashboards read."""
    links = page_links(query, total, lambda params: str(request.url.replace(query=params)))
    response.headers["X-Total-Count"] = str(total)
    response.headers["Content-Range"] = content_range(resource, query, count, total)
    link = ", ".join(f'<{url}>; rel="{rel}"' for rel, url in links.items())
    if len(link) <= MAX_LINK_HEADER_BYTES:  # ASCII: the URLs are percent-encoded
        response.headers["Link"] = link


def page_links(query: ListQuery, total: int, url: Callable[[str], str]) -> dict[str, str]:
    """RFC 8288 links (first, prev, next, last) in the request's own dialect."""
    last_offset = max(0, (total - 1) // query.limit * query.limit) if total else 0
    targets = {"first": 0, "last": last_offset}
    if query.offset > 0:
        targets["prev"] = max(0, query.offset - query.limit)
    if query.offset + query.limit < total:
        targets["next"] = query.offset + query.limit
    return {
        relation: url(urlencode([*query.other_params, *_paging(query, offset)]))
        for relation, offset in targets.items()
    }


def _paging(query: ListQuery, offset: int) -> list[tuple[str, str]]:
    if query.dialect == "json-server":
        return [("_start", str(offset)), ("_end", str(offset + query.limit))]
    if query.dialect == "simple-rest":
        return [("range", json.dumps([offset, offset + query.limit - 1]))]
    return [("page", str(offset // query.limit + 1)), ("per_page", str(query.limit))]


def content_range(resource: Resource, query: ListQuery, count: int, total: int) -> str:
    if count == 0:
        return f"{resource.name} */{total}"
    return f"{resource.name} {query.offset}-{query.offset + count - 1}/{total}"


def list_parameters(resource: Resource) -> list[dict[str, Any]]:
    """OpenAPI parameters for our own dialect; the dashboard ones are in the text. The
    page-size bounds are the default MAX_PER_PAGE's: the app writes the configured one
    into its schema (main._adapt_openapi)."""
    sort_field = f"-?({'|'.join(resource.fields)})"
    parameters: list[dict[str, Any]] = [
        {
            "name": "page",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
        },
        {
            "name": "per_page",
            "in": "query",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": DEFAULT_MAX_PER_PAGE,
                "default": DEFAULT_PER_PAGE,
            },
        },
        {
            "name": "sort",
            "in": "query",
            "description": "Comma list of fields, '-' for descending: -created_at,id. "
            "Ties are broken by id.",
            "schema": {"type": "string", "pattern": f"^{sort_field}(,{sort_field})*$"},
        },
    ]
    if resource.searchable:
        parameters.append(
            {
                "name": "q",
                "in": "query",
                "description": "Case-insensitive substring of " + " or ".join(resource.text_fields),
                "schema": {
                    "type": "string",
                    "maxLength": MAX_SEARCH_CHARS,
                    "pattern": "^[^\\u0000]*$",
                },
            }
        )
    for name, adapter in resource.fields.items():
        if name in {"created_at", "updated_at", "last_login_at", "email", "name"}:
            continue  # ranges below, text through q
        schema = adapter.json_schema()
        if schema.get("type") == "integer":
            schema.update(minimum=0, maximum=INT32_MAX)
        if name in resource.repeatable:
            parameters.append(
                {
                    "name": name,
                    "in": "query",
                    "description": f"Repeat for several: {name}=a&{name}=b.",
                    "schema": {"type": "array", "items": schema, "maxItems": DEFAULT_MAX_PER_PAGE},
                    "style": "form",
                    "explode": True,
                }
            )
        else:
            parameters.append({"name": name, "in": "query", "schema": schema})
    for name in resource.flags:
        parameters.append({"name": name, "in": "query", "schema": {"type": "boolean"}})
    for name, (field_name, _) in DATE_RANGES.items():
        if field_name in resource.fields:
            date_time = {"type": "string", "format": "date-time"}
            parameters.append({"name": name, "in": "query", "schema": date_time})
    return parameters
