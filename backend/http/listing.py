"""List queries from the query string, in three dialects, into one ListQuery.

- ours: `page`, `per_page`, `sort=name,-created_at`, `role=...`, `id=1&id=2`,
  `created_after`, `created_before`, `q`;
- json-server / Refine: `_start`, `_end` (exclusive), `_sort`, `_order`, `field=...`,
  `field_like`, `field_ne`, `field_gte`, `field_lte`, `q`;
- react-admin simple-rest: `range=[0,24]` (inclusive), `sort=["name","ASC"]`,
  `filter={"q":"bob","id":[1,2]}`.

One request speaks one dialect; mixing them is a 422, as is any unknown field.
"""

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BeforeValidator, StrictBool, TypeAdapter, ValidationError
from starlette.datastructures import QueryParams

from backend.config import DEFAULT_MAX_PER_PAGE
from backend.http.parsing import INT32_MAX, load_json, parse_int

Dialect = Literal["native", "json-server", "simple-rest"]
# key_eq: a top-level key of a JSON object column equal to a JSON scalar; the value is
# a JsonKey.
Operator = Literal["eq", "in", "ne", "gt", "gte", "lt", "lte", "like", "key_eq"]

DEFAULT_PER_PAGE = 10
MAX_PAGE = 1_000_000
# Within 32 bits, as every number a client sends us is.
MAX_OFFSET = MAX_PAGE * DEFAULT_MAX_PER_PAGE
# Ranges on dates in our own dialect: query key -> (field, operator).
DATE_RANGES: dict[str, tuple[str, Operator]] = {
    "created_after": ("created_at", "gt"),
    "created_before": ("created_at", "lt"),
    "last_login_after": ("last_login_at", "gt"),
    "last_login_before": ("last_login_at", "lt"),
    "deletion_scheduled_after": ("deletion_scheduled_at", "gt"),
    "deletion_scheduled_before": ("deletion_scheduled_at", "lt"),
}


def _iso_8601_only(value: Any) -> Any:
    # pydantic would also read numbers as Unix times: 0.5 is not a date a client means.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value[:4].isdigit() or "-" not in value:
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-01-31T12:00:00Z")
    return value


def _in_utc(value: datetime) -> datetime:
    """The instant in UTC (no offset given: UTC, like every stored time). Refused when
    it falls outside the years 1 to 9999 in UTC, as 0001-01-01T00:00:00+14:00 does:
    Python cannot represent it, and the database is queried in UTC."""
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:
        raise ValueError("must lie between years 1 and 9999 once converted to UTC") from None


ISODateTime = TypeAdapter(
    Annotated[datetime, BeforeValidator(_iso_8601_only), AfterValidator(_in_utc)]
)
# JSON filters (simple-rest) carry real booleans; query strings carry "true"/"false".
STRICT_JSON_BOOL: TypeAdapter[bool] = TypeAdapter(StrictBool)
BOOL: TypeAdapter[bool] = TypeAdapter(bool)
MAX_SEARCH_CHARS = 200
# The keys a JSON filter may name (`user_metadata.<key>`): plain ones, which need no
# quoting in SQLite's JSON paths.
JSON_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
JSON_KEY_HINT = "letters, digits, '_' or '-', at most 64"
# A number a filter compares must fit SQLite's 64-bit integers.
JSON_INT_MIN, JSON_INT_MAX = -(2**63), 2**63 - 1
MAX_JSON_FILTER_CHARS = 1000

JsonScalar = str | bool | int | float


@dataclass(frozen=True)
class JsonKey:
    """The value of a key_eq filter: `key` of the object equals `value` as JSON (a
    string, a number or a boolean; 1 and 1.0 are equal)."""

    key: str
    value: JsonScalar


@dataclass(frozen=True)
class Resource:
    """What a list endpoint lets clients filter, sort and search: each router declares
    its own, and tests/test_listing.py checks the fields against the model's columns."""

    name: str  # as in Content-Range: users 0-9/42
    fields: dict[str, TypeAdapter[Any]]
    text_fields: tuple[str, ...] = ()  # the ones field_like works on
    searchable: bool = False  # whether q is accepted
    repeatable: tuple[str, ...] = ("id",)  # documented as id=1&id=2
    # Yes-or-no states that are no column (users' `banned`, which the clock decides):
    # filterable by plain equality, not sortable; the router's crud turns each into SQL.
    flags: tuple[str, ...] = ()
    # JSON object columns filtered by a top-level key: `user_metadata.team=blue`.
    json_fields: tuple[str, ...] = ()


SUFFIXES: dict[str, Operator] = {"_like": "like", "_ne": "ne", "_gte": "gte", "_lte": "lte"}
JSON_SERVER_KEYS = {"_start", "_end", "_sort", "_order"}
SIMPLE_REST_KEYS = {"range", "filter"}
NATIVE_KEYS = {"page", "per_page", *DATE_RANGES}


@dataclass(frozen=True)
class Filter:
    field: str
    operator: Operator
    value: Any


@dataclass(frozen=True)
class ListQuery:
    dialect: Dialect = "native"
    offset: int = 0
    limit: int = DEFAULT_PER_PAGE
    sort: tuple[tuple[str, bool], ...] = ()  # (field, descending)
    filters: tuple[Filter, ...] = ()
    search: str | None = None
    # The query string without its paging keys, to build the Link header from.
    other_params: tuple[tuple[str, str], ...] = field(default=())


class _Context:
    """The resource being listed, the page size allowed, and the errors found so far
    (all reported at once)."""

    def __init__(self, resource: Resource, max_per_page: int) -> None:
        self.resource = resource
        self.max_per_page = max_per_page
        self.items: list[dict[str, Any]] = []

    def add(self, name: str, message: str) -> None:
        self.items.append({"type": "value_error", "loc": ("query", name), "msg": message})

    def raise_if_any(self) -> None:
        if self.items:
            raise RequestValidationError(self.items)


def parse_list_query(params: QueryParams, resource: Resource, *, max_per_page: int) -> ListQuery:
    ctx = _Context(resource, max_per_page)
    dialect = _dialect(params, ctx)
    ctx.raise_if_any()
    parse = {"native": _parse_native, "json-server": _parse_json_server}.get(
        dialect, _parse_simple_rest
    )
    query = parse(params, ctx)
    if query.search is not None and not resource.searchable:
        ctx.add("q", f"searching is not supported on {resource.name}")
    elif query.search is not None and (
        len(query.search) > MAX_SEARCH_CHARS or _unstorable(query.search)
    ):
        ctx.add(
            "q", f"must be at most {MAX_SEARCH_CHARS} characters, without NUL or lone surrogates"
        )
    ctx.raise_if_any()
    return query


def _dialect(params: QueryParams, ctx: _Context) -> Dialect:
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
        ctx.add("query", f"mixes {' and '.join(used)} conventions; use one per request")
    if simple_rest:
        plain = sorted(keys - SIMPLE_REST_KEYS - {"sort"})
        if plain:
            ctx.add(plain[0], "with range/sort/filter, put filters inside filter={...}")
        return "simple-rest"
    return "json-server" if json_server else "native"


def _parse_native(params: QueryParams, ctx: _Context) -> ListQuery:
    page = _int_param(params, "page", ctx, default=1, low=1, high=MAX_PAGE)
    per_page = _int_param(
        params, "per_page", ctx, default=DEFAULT_PER_PAGE, low=1, high=ctx.max_per_page
    )
    if (page - 1) * per_page > MAX_OFFSET:
        ctx.add("page", f"must be at most {MAX_OFFSET // per_page + 1} with per_page={per_page}")
    sort: list[tuple[str, bool]] = []
    for item in _comma_list(params.get("sort", "")):
        sort.append((_sortable(item.lstrip("-"), "sort", ctx), item.startswith("-")))
    if "sort" in params and not sort:
        ctx.add("sort", "must name at least one field, e.g. sort=-created_at")
    filters = []
    for name, (field_name, operator) in DATE_RANGES.items():
        if name not in params:
            continue
        if field_name not in ctx.resource.fields:
            ctx.add(name, f"{ctx.resource.name} have no {field_name}")
            continue
        filters.append(Filter(field_name, operator, _typed(field_name, params[name], name, ctx)))
    filters += _equality_filters(params, NATIVE_KEYS | {"sort", "q"}, ctx)
    if "per_page" not in params:
        # id=1&id=2&... is how json-server clients fetch the records a page refers to:
        # answer all of them (up to the maximum), not the first default-sized page.
        wanted = max((len(f.value) for f in filters if f.operator == "in"), default=0)
        per_page = max(per_page, min(wanted, ctx.max_per_page))
    return ListQuery(
        dialect="native",
        offset=(page - 1) * per_page,
        limit=per_page,
        sort=tuple(sort),
        filters=tuple(filters),
        search=params.get("q") or None,
        other_params=_without(params, {"page", "per_page"}),
    )


def _parse_json_server(params: QueryParams, ctx: _Context) -> ListQuery:
    start = _int_param(params, "_start", ctx, default=0, low=0, high=MAX_OFFSET)
    end = _int_param(
        params, "_end", ctx, default=start + ctx.max_per_page, low=0, high=MAX_OFFSET + 1
    )
    if end <= start and "_end" in params:
        ctx.add("_end", "must be greater than _start")
    elif end - start > ctx.max_per_page:
        ctx.add("_end", f"at most {ctx.max_per_page} records per request (_end - _start)")
    fields = _comma_list(params.get("_sort", ""))
    orders = _comma_list(params.get("_order", ""))
    if len(orders) > len(fields):
        ctx.add("_order", "has more entries than _sort")
    sort = []
    for index, name in enumerate(fields):
        order = orders[index].lower() if index < len(orders) else "asc"
        if order not in {"asc", "desc"}:
            ctx.add("_order", "entries must be asc or desc")
        sort.append((_sortable(name, "_sort", ctx), order == "desc"))
    filters = _equality_filters(params, JSON_SERVER_KEYS | {"q"}, ctx)
    return ListQuery(
        dialect="json-server",
        offset=start,
        limit=max(1, end - start),
        sort=tuple(sort),
        filters=tuple(filters),
        search=params.get("q") or None,
        other_params=_without(params, {"_start", "_end"}),
    )


def _parse_simple_rest(params: QueryParams, ctx: _Context) -> ListQuery:
    offset, limit = 0, ctx.max_per_page
    if "range" in params:
        bounds = _json_param(params, "range", ctx)
        if not _is_pair(bounds, int) or not 0 <= bounds[0] <= bounds[1] <= MAX_OFFSET:
            ctx.add("range", "must be [start, end] with 0 <= start <= end, e.g. [0,24]")
        elif bounds[1] - bounds[0] + 1 > ctx.max_per_page:
            ctx.add("range", f"at most {ctx.max_per_page} records per request")
        else:
            offset, limit = bounds[0], bounds[1] - bounds[0] + 1
    sort: tuple[tuple[str, bool], ...] = ()
    if "sort" in params:
        pair = _json_param(params, "sort", ctx)
        if not _is_pair(pair, str) or pair[1].upper() not in {"ASC", "DESC"}:
            ctx.add("sort", 'must be ["field","ASC"] or ["field","DESC"]')
        else:
            sort = ((_sortable(pair[0], "sort", ctx), pair[1].upper() == "DESC"),)
    conditions = _json_param(params, "filter", ctx) if "filter" in params else {}
    if not isinstance(conditions, dict):
        ctx.add("filter", 'must be a JSON object, e.g. {"q":"bob","role":"user"}')
        conditions = {}
    search = conditions.pop("q", None)
    if search is not None and not isinstance(search, str):
        ctx.add("filter.q", "must be a string")
        search = None
    filters = [
        condition
        for key, value in conditions.items()
        if (condition := _filter(key, value, f"filter.{key}", ctx, from_text=False)) is not None
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


def _equality_filters(params: QueryParams, skip: set[str], ctx: _Context) -> list[Filter]:
    filters = []
    for key in dict.fromkeys(params.keys()):
        if key in skip:
            continue
        values = params.getlist(key)
        value: Any = values if len(values) > 1 else values[0]
        if (condition := _filter(key, value, key, ctx)) is not None:
            filters.append(condition)
    return filters


def _filter(
    key: str, value: Any, location: str, ctx: _Context, *, from_text: bool = True
) -> Filter | None:
    """A filter on `key`; `value` is query-string text, or (from_text False) JSON's."""
    resource = ctx.resource
    column, dot, json_key = key.partition(".")
    if dot and column in resource.json_fields:
        return _json_key_filter(column, json_key, value, location, ctx, from_text=from_text)
    name, suffix_operator = _split_suffix(key)
    operator = suffix_operator or "eq"
    if key in resource.flags:
        if isinstance(value, list):
            ctx.add(location, "must be one value, true or false")
            return None
        adapter = STRICT_JSON_BOOL if not isinstance(value, str) else BOOL
        try:
            return Filter(key, "eq", adapter.validate_python(value))
        except ValidationError:
            ctx.add(location, "must be true or false")
            return None
    if name not in resource.fields:
        filterable = ", ".join(
            [
                *resource.fields,
                *resource.flags,
                *(f"{name}.<key>" for name in resource.json_fields),
                *(["q"] if resource.searchable else []),
            ]
        )
        ctx.add(location, f"unknown filter field; filterable: {filterable}")
        return None
    if operator == "like" and name not in resource.text_fields:
        works_on = " and ".join(resource.text_fields) or "no field here"
        ctx.add(location, f"_like works on {works_on} only")
        return None
    if isinstance(value, list):
        if operator != "eq" or not value or len(value) > ctx.max_per_page:
            ctx.add(location, f"a list needs plain equality and 1..{ctx.max_per_page} values")
            return None
        return Filter(name, "in", [_typed(name, item, location, ctx) for item in value])
    return Filter(name, operator, _typed(name, value, location, ctx))


def _json_key_filter(
    column: str, key: str, value: Any, location: str, ctx: _Context, *, from_text: bool
) -> Filter | None:
    if not JSON_KEY.fullmatch(key):
        ctx.add(location, f"the key after {column}. must be {JSON_KEY_HINT} characters")
        return None
    if from_text and isinstance(value, str):
        value = _json_scalar_from_text(value)
    if (
        isinstance(value, bool)
        or (isinstance(value, int) and JSON_INT_MIN <= value <= JSON_INT_MAX)
        or (isinstance(value, float) and math.isfinite(value))
    ):
        return Filter(column, "key_eq", JsonKey(key, value))
    if isinstance(value, str) and len(value) <= MAX_JSON_FILTER_CHARS and not _unstorable(value):
        return Filter(column, "key_eq", JsonKey(key, value))
    ctx.add(
        location,
        "must be one string (at most 1000 characters, no NUL), number (within 64-bit "
        "integers) or boolean, compared by plain equality",
    )
    return None


def _json_scalar_from_text(text: str) -> Any:
    """Query-string text as the JSON scalar it spells (`3`, `true`, `"3"`), else as the
    string itself (`blue`): a string that spells a number or boolean is sent quoted."""
    try:
        return load_json(text)  # null, a list or an object: refused by the caller
    except ValueError:
        return text


def _split_suffix(key: str) -> tuple[str, Operator | None]:
    for suffix, operator in SUFFIXES.items():
        if key.endswith(suffix) and key != suffix:
            return key.removesuffix(suffix), operator
    return key, None


def _typed(name: str, value: Any, location: str, ctx: _Context) -> Any:
    adapter = STRICT_JSON_BOOL if name == "is_active" and not isinstance(value, str) else None
    try:
        typed = (adapter or ctx.resource.fields[name]).validate_python(value)
    except ValidationError as error:
        ctx.add(location, str(error.errors()[0]["msg"]))
        return None
    if isinstance(typed, str) and _unstorable(typed):
        ctx.add(location, "must not contain NUL characters or lone surrogates")
    if isinstance(typed, int) and not isinstance(typed, bool) and not 0 <= typed <= INT32_MAX:
        ctx.add(location, f"is out of range (0 to {INT32_MAX})")
    return typed


def _unstorable(text: str) -> bool:
    # NUL, which PostgreSQL's text cannot hold, and lone surrogates, which JSON can spell
    # ("\ud800") but UTF-8, and so the database driver, cannot encode.
    return "\x00" in text or any("\ud800" <= char <= "\udfff" for char in text)


def _sortable(name: str, location: str, ctx: _Context) -> str:
    if name not in ctx.resource.fields:
        sortable = ", ".join(ctx.resource.fields)
        ctx.add(location, f"cannot sort by {name!r}; sortable: {sortable}")
    return name


def _int_param(
    params: QueryParams, name: str, ctx: _Context, *, default: int, low: int, high: int
) -> int:
    if name not in params:
        return default
    value = parse_int(params[name].strip(), low=low, high=high)
    if value is None:
        ctx.add(name, f"must be an integer from {low} to {high}")
        return default
    return value


def _json_param(params: QueryParams, name: str, ctx: _Context) -> Any:
    try:
        return load_json(params[name])
    except ValueError as error:
        ctx.add(name, str(error))
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
