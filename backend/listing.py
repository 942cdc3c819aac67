"""List queries from the query string, in three dialects, into one ListQuery.

- ours: `page`, `per_page`, `sort=name,-created_at`, `role=...`, `id=1&id=2`,
  `created_after`, `created_before`, `q`;
- json-server / Refine: `_start`, `_end` (exclusive), `_sort`, `_order`, `field=...`,
  `field_like`, `field_ne`, `field_gte`, `field_lte`, `q`;
- react-admin simple-rest: `range=[0,24]` (inclusive), `sort=["name","ASC"]`,
  `filter={"q":"bob","id":[1,2]}`.

One request speaks one dialect; mixing them is a 422, as is any unknown field.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode

from fastapi.exceptions import RequestValidationError
from pydantic import StrictBool, TypeAdapter, ValidationError
from starlette.datastructures import QueryParams

from backend.models import UserRole

Dialect = Literal["native", "json-server", "simple-rest"]
Operator = Literal["eq", "in", "ne", "gt", "gte", "lt", "lte", "like"]

MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 10
MAX_PAGE = 1_000_000
MAX_OFFSET = MAX_PAGE * MAX_PER_PAGE

FIELD_TYPES: dict[str, TypeAdapter[Any]] = {
    "id": TypeAdapter(int),
    "email": TypeAdapter(str),
    "name": TypeAdapter(str),
    "role": TypeAdapter(UserRole),
    "is_active": TypeAdapter(bool),
    "created_at": TypeAdapter(datetime),
    "updated_at": TypeAdapter(datetime),
}
# JSON filters (simple-rest) carry real booleans; query strings carry "true"/"false".
STRICT_JSON_BOOL: TypeAdapter[bool] = TypeAdapter(StrictBool)
MAX_SEARCH_CHARS = 200
SORTABLE = tuple(FIELD_TYPES)
TEXT_FIELDS = ("email", "name")
SUFFIXES: dict[str, Operator] = {"_like": "like", "_ne": "ne", "_gte": "gte", "_lte": "lte"}
JSON_SERVER_KEYS = {"_start", "_end", "_sort", "_order"}
SIMPLE_REST_KEYS = {"range", "filter"}
NATIVE_KEYS = {"page", "per_page", "created_after", "created_before"}


@dataclass(frozen=True)
class Filter:
    field: str
    operator: Operator
    value: Any


@dataclass(frozen=True)
class ListQuery:
    dialect: Dialect
    offset: int = 0
    limit: int = DEFAULT_PER_PAGE
    sort: tuple[tuple[str, bool], ...] = ()  # (field, descending)
    filters: tuple[Filter, ...] = ()
    search: str | None = None
    # The query string without its paging keys, to build the Link header from.
    other_params: tuple[tuple[str, str], ...] = field(default=())


class _Errors:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, name: str, message: str) -> None:
        self.items.append({"type": "value_error", "loc": ("query", name), "msg": message})

    def raise_if_any(self) -> None:
        if self.items:
            raise RequestValidationError(self.items)


def parse_list_query(params: QueryParams) -> ListQuery:
    errors = _Errors()
    dialect = _dialect(params, errors)
    errors.raise_if_any()
    parse = {"native": _parse_native, "json-server": _parse_json_server}.get(
        dialect, _parse_simple_rest
    )
    query = parse(params, errors)
    if query.search is not None and (
        len(query.search) > MAX_SEARCH_CHARS or "\x00" in query.search
    ):
        errors.add("q", f"must be at most {MAX_SEARCH_CHARS} characters, without NUL")
    errors.raise_if_any()
    return query


def _dialect(params: QueryParams, errors: _Errors) -> Dialect:
    keys = set(params.keys())
    sort = params.get("sort", "")
    simple_rest = keys & SIMPLE_REST_KEYS or sort.lstrip().startswith("[")
    json_server = keys & JSON_SERVER_KEYS or any(_split_suffix(key)[1] for key in keys)
    native = keys & NATIVE_KEYS or ("sort" in keys and not sort.lstrip().startswith("["))
    used = [
        name
        for name, present in (
            ("ours (page/per_page/sort)", native),
            ("json-server (_start/_end/_sort/_order/field_op)", json_server),
            ("react-admin simple-rest (range/sort/filter)", simple_rest),
        )
        if present
    ]
    if len(used) > 1:
        errors.add("query", f"mixes {' and '.join(used)} conventions; use one per request")
    if simple_rest:
        plain = sorted(keys - SIMPLE_REST_KEYS - {"sort"})
        if plain:
            errors.add(plain[0], "with range/sort/filter, put filters inside filter={...}")
        return "simple-rest"
    return "json-server" if json_server else "native"


def _parse_native(params: QueryParams, errors: _Errors) -> ListQuery:
    page = _int_param(params, "page", errors, default=1, low=1, high=MAX_PAGE)
    per_page = _int_param(
        params, "per_page", errors, default=DEFAULT_PER_PAGE, low=1, high=MAX_PER_PAGE
    )
    sort: list[tuple[str, bool]] = []
    for item in _comma_list(params.get("sort", "")):
        sort.append((_sortable(item.lstrip("-"), "sort", errors), item.startswith("-")))
    filters = []
    for name, operator in (("created_after", "gt"), ("created_before", "lt")):
        if name in params:
            value = _typed("created_at", params[name], name, errors)
            filters.append(Filter("created_at", operator, value))  # type: ignore[arg-type]
    filters += _equality_filters(params, NATIVE_KEYS | {"sort", "q"}, errors)
    return ListQuery(
        dialect="native",
        offset=(page - 1) * per_page,
        limit=per_page,
        sort=tuple(sort),
        filters=tuple(filters),
        search=params.get("q") or None,
        other_params=_without(params, {"page", "per_page"}),
    )


def _parse_json_server(params: QueryParams, errors: _Errors) -> ListQuery:
    start = _int_param(params, "_start", errors, default=0, low=0, high=MAX_OFFSET)
    end = _int_param(
        params, "_end", errors, default=start + MAX_PER_PAGE, low=0, high=MAX_OFFSET + 1
    )
    if end <= start and "_end" in params:
        errors.add("_end", "must be greater than _start")
    elif end - start > MAX_PER_PAGE:
        errors.add("_end", f"at most {MAX_PER_PAGE} records per request (_end - _start)")
    fields = _comma_list(params.get("_sort", ""))
    orders = _comma_list(params.get("_order", ""))
    if len(orders) > len(fields):
        errors.add("_order", "has more entries than _sort")
    sort = []
    for index, name in enumerate(fields):
        order = orders[index].lower() if index < len(orders) else "asc"
        if order not in {"asc", "desc"}:
            errors.add("_order", "entries must be asc or desc")
        sort.append((_sortable(name, "_sort", errors), order == "desc"))
    filters = _equality_filters(params, JSON_SERVER_KEYS | {"q"}, errors)
    return ListQuery(
        dialect="json-server",
        offset=start,
        limit=max(1, end - start),
        sort=tuple(sort),
        filters=tuple(filters),
        search=params.get("q") or None,
        other_params=_without(params, {"_start", "_end"}),
    )


def _parse_simple_rest(params: QueryParams, errors: _Errors) -> ListQuery:
    offset, limit = 0, MAX_PER_PAGE
    if "range" in params:
        bounds = _json_param(params, "range", errors)
        if not _is_pair(bounds, int) or not 0 <= bounds[0] <= bounds[1] <= MAX_OFFSET:
            errors.add("range", "must be [start, end] with 0 <= start <= end, e.g. [0,24]")
        elif bounds[1] - bounds[0] + 1 > MAX_PER_PAGE:
            errors.add("range", f"at most {MAX_PER_PAGE} records per request")
        else:
            offset, limit = bounds[0], bounds[1] - bounds[0] + 1
    sort: tuple[tuple[str, bool], ...] = ()
    if "sort" in params:
        pair = _json_param(params, "sort", errors)
        if not _is_pair(pair, str) or pair[1].upper() not in {"ASC", "DESC"}:
            errors.add("sort", 'must be ["field","ASC"] or ["field","DESC"]')
        else:
            sort = ((_sortable(pair[0], "sort", errors), pair[1].upper() == "DESC"),)
    conditions = _json_param(params, "filter", errors) if "filter" in params else {}
    if not isinstance(conditions, dict):
        errors.add("filter", 'must be a JSON object, e.g. {"q":"bob","role":"user"}')
        conditions = {}
    search = conditions.pop("q", None)
    if search is not None and not isinstance(search, str):
        errors.add("filter.q", "must be a string")
        search = None
    filters = [
        condition
        for key, value in conditions.items()
        if (condition := _filter(key, value, f"filter.{key}", errors)) is not None
    ]
    return ListQuery(
        dialect="simple-rest",
        offset=offset,
        limit=limit,
        sort=sort,
        filters=tuple(filters),
        search=search or None,
        other_params=_without(params, {"range"}),
    )


def _equality_filters(params: QueryParams, skip: set[str], errors: _Errors) -> list[Filter]:
    filters = []
    for key in dict.fromkeys(params.keys()):
        if key in skip:
            continue
        values = params.getlist(key)
        value: Any = values if len(values) > 1 else values[0]
        if (condition := _filter(key, value, key, errors)) is not None:
            filters.append(condition)
    return filters


def _filter(key: str, value: Any, location: str, errors: _Errors) -> Filter | None:
    name, suffix_operator = _split_suffix(key)
    operator = suffix_operator or "eq"
    if name not in FIELD_TYPES:
        errors.add(location, f"unknown filter field; filterable: {', '.join(FIELD_TYPES)}, q")
        return None
    if operator == "like" and name not in TEXT_FIELDS:
        errors.add(location, f"_like works on {' and '.join(TEXT_FIELDS)} only")
        return None
    if isinstance(value, list):
        if operator != "eq" or not value or len(value) > MAX_PER_PAGE:
            errors.add(location, f"a list needs plain equality and 1..{MAX_PER_PAGE} values")
            return None
        return Filter(name, "in", [_typed(name, item, location, errors) for item in value])
    return Filter(name, operator, _typed(name, value, location, errors))


def _split_suffix(key: str) -> tuple[str, Operator | None]:
    for suffix, operator in SUFFIXES.items():
        if key.endswith(suffix) and key != suffix:
            return key.removesuffix(suffix), operator
    return key, None


def _typed(name: str, value: Any, location: str, errors: _Errors) -> Any:
    adapter = STRICT_JSON_BOOL if name == "is_active" and not isinstance(value, str) else None
    try:
        typed = (adapter or FIELD_TYPES[name]).validate_python(value)
    except ValidationError as error:
        errors.add(location, str(error.errors()[0]["msg"]))
        return None
    if isinstance(typed, str) and "\x00" in typed:
        errors.add(location, "must not contain NUL characters")
    if isinstance(typed, int) and not isinstance(typed, bool) and not 0 <= typed < 2**31:
        errors.add(location, "is out of range")
    if isinstance(typed, datetime) and typed.tzinfo is None:
        typed = typed.replace(tzinfo=UTC)  # no offset given: UTC, like every stored time
    return typed


def _sortable(name: str, location: str, errors: _Errors) -> str:
    if name not in SORTABLE:
        errors.add(location, f"cannot sort by {name!r}; sortable: {', '.join(SORTABLE)}")
    return name


def _int_param(
    params: QueryParams, name: str, errors: _Errors, *, default: int, low: int, high: int
) -> int:
    if name not in params:
        return default
    raw = params[name]
    if not raw.strip().isdigit() or not low <= int(raw) <= high:
        errors.add(name, f"must be an integer from {low} to {high}")
        return default
    return int(raw)


def _json_param(params: QueryParams, name: str, errors: _Errors) -> Any:
    try:
        return json.loads(params[name])
    except ValueError:
        errors.add(name, "must be valid JSON")
        return None


def _is_pair(value: Any, kind: type) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(item, kind) and not isinstance(item, bool) for item in value)
    )


def _comma_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def _without(params: QueryParams, keys: set[str]) -> tuple[tuple[str, str], ...]:
    return tuple((key, value) for key, value in params.multi_items() if key not in keys)


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


def content_range(resource: str, query: ListQuery, count: int, total: int) -> str:
    if count == 0:
        return f"{resource} */{total}"
    return f"{resource} {query.offset}-{query.offset + count - 1}/{total}"


_SORT_FIELD = f"-?({'|'.join(SORTABLE)})"
# Documents our own dialect; the dashboard dialects are described in the operation text.
LIST_PARAMETERS: list[dict[str, Any]] = [
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
            "maximum": MAX_PER_PAGE,
            "default": DEFAULT_PER_PAGE,
        },
    },
    {
        "name": "sort",
        "in": "query",
        "description": "Comma list of fields, '-' for descending: name,-created_at. "
        "Ties are broken by id.",
        "schema": {"type": "string", "pattern": f"^{_SORT_FIELD}(,{_SORT_FIELD})*$"},
    },
    {
        "name": "q",
        "in": "query",
        "description": "Case-insensitive substring of the email or the name.",
        "schema": {"type": "string", "maxLength": MAX_SEARCH_CHARS, "pattern": "^[^\\u0000]*$"},
    },
    {"name": "role", "in": "query", "schema": {"type": "string", "enum": list(UserRole)}},
    {"name": "is_active", "in": "query", "schema": {"type": "boolean"}},
    {
        "name": "id",
        "in": "query",
        "description": "Repeat for several: id=1&id=2.",
        "schema": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
            "maxItems": MAX_PER_PAGE,
        },
        "style": "form",
        "explode": True,
    },
    {"name": "created_after", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {"name": "created_before", "in": "query", "schema": {"type": "string", "format": "date-time"}},
]

LIST_DESCRIPTION = """A page of users, with the total in `X-Total-Count`, a `Content-Range`
(`users 0-9/42`) and a `Link` header (first, prev, next, last).

Besides the parameters below, the stock data providers of react-admin and Refine work
unchanged, one convention per request:

- json-server / Refine: `_start`, `_end` (exclusive), `_sort`, `_order` (comma lists),
  `field=value`, `field_like`, `field_ne`, `field_gte`, `field_lte`, `q`;
- react-admin simple-rest: `range=[0,24]` (inclusive), `sort=["name","ASC"]`,
  `filter={"q":"bob","role":"user","id":[1,2]}`.

Filterable fields: id, email, name, role, is_active, created_at, updated_at. Without
paging parameters, the dashboard conventions return up to 100 records."""
