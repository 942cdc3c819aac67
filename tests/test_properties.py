"""Property tests: whatever a client sends to the list-query parser (all three dialects),
the If-Match parser or token decoding, the answer is the value or a documented 4xx,
never another exception; and what gets through is something the database can take."""

import base64
import hmac
import json
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest
from fastapi.exceptions import RequestValidationError
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from starlette.datastructures import QueryParams

from backend.auth.jwt import ACCESS, REFRESH, decode_token
from backend.auth.models import TokenType
from backend.config import DEFAULT_MAX_PER_PAGE, Settings
from backend.errors import UnauthorizedError
from backend.http.deps import get_expected_versions
from backend.http.listing import (
    JSON_SERVER_KEYS,
    MAX_OFFSET,
    NATIVE_KEYS,
    SIMPLE_REST_KEYS,
    SUFFIXES,
    ListQuery,
    Resource,
    parse_list_query,
)
from backend.http.parsing import INT32_MAX, MAX_JSON_CHARS, load_json, parse_int
from backend.routers.audit import AUDIT_EVENTS
from backend.routers.users import USERS
from tests.helpers import API, TEST_SECRET_KEY, make_settings

# --- strategies -----------------------------------------------------------------------

FIELDS = sorted({*USERS.fields, *AUDIT_EVENTS.fields})
KEYS = st.one_of(
    st.sampled_from(sorted(NATIVE_KEYS | JSON_SERVER_KEYS | SIMPLE_REST_KEYS | {"sort", "q"})),
    st.sampled_from(FIELDS),
    st.builds(
        lambda name, suffix: name + suffix, st.sampled_from(FIELDS), st.sampled_from([*SUFFIXES])
    ),
    st.text(max_size=12),
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["1" * 5000, "0" * 5000 + "7", str(INT32_MAX + 1), str(MAX_OFFSET + 1)]),
    st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=6),  # ², ١٢
)
OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
DATES = st.one_of(
    st.builds(
        lambda moment, zone: moment.replace(tzinfo=zone).isoformat(),
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
        st.none() | OFFSETS,
    ),
    st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "²０２６-01-01"]),
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from([*FIELDS, "q", "x"]) | st.text(max_size=5), children)
    ),
    max_leaves=12,
)
JSON_TEXT = st.one_of(
    JSON_VALUES.map(json.dumps),  # escapes lone surrogates: "\ud800" reaches the parser
    st.integers(min_value=1, max_value=3000).map(lambda depth: "[" * depth + "]" * depth),
    st.sampled_from(["[0,NaN]", "[0,1e400]", '["name","ASC"]', '{"id":[1,2]}', "[0,24]"]),
)
VALUES = st.one_of(st.text(max_size=30), NUMBERS, DATES, JSON_TEXT)
QUERIES = st.lists(st.tuples(KEYS, VALUES), max_size=5)


def printable(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """What a URL can carry: query strings are UTF-8, which has no lone surrogates."""
    return [
        (key.encode(errors="replace").decode(), value.encode(errors="replace").decode())
        for key, value in pairs
    ]


# --- list queries -----------------------------------------------------------------------


def assert_storable(value: Any) -> None:
    if isinstance(value, list):
        for item in value:
            assert_storable(item)
    elif isinstance(value, bool | None):
        pass
    elif isinstance(value, int):
        assert 0 <= value <= INT32_MAX
    elif isinstance(value, datetime):
        assert value.utcoffset() == timedelta(0)
    elif isinstance(value, str):
        assert "\x00" not in value
        value.encode()  # no lone surrogates


def parse_or_refuse(params: QueryParams, resource: Resource) -> ListQuery | RequestValidationError:
    try:
        return parse_list_query(params, resource, max_per_page=DEFAULT_MAX_PER_PAGE)
    except RequestValidationError as error:
        return error


def assert_documented_answer(params: QueryParams, resource: Resource) -> ListQuery | None:
    query = parse_or_refuse(params, resource)
    if isinstance(query, RequestValidationError):
        assert query.errors()
        for item in query.errors():
            assert item["loc"][0] == "query"
            assert isinstance(item["loc"][1], str)
            assert item["msg"]
        return None
    assert 0 <= query.offset <= MAX_OFFSET
    assert 1 <= query.limit <= DEFAULT_MAX_PER_PAGE
    for condition in query.filters:
        assert condition.field in resource.fields
        assert_storable(condition.value)
    if query.search is not None:
        assert_storable(query.search)
    return query


@settings(max_examples=400)
@given(pairs=QUERIES, resource=st.sampled_from([USERS, AUDIT_EVENTS]))
def test_any_query_string_parses_or_is_a_422_naming_a_parameter(
    pairs: list[tuple[str, str]], resource: Resource
) -> None:
    assert_documented_answer(QueryParams(pairs), resource)


@settings(max_examples=200)
@given(
    dialect=st.sampled_from(["native", "json-server", "simple-rest"]),
    values=st.lists(VALUES, min_size=3, max_size=3),
)
def test_each_dialects_paging_and_sorting_parameters(dialect: str, values: list[str]) -> None:
    names = {
        "native": ["page", "per_page", "sort"],
        "json-server": ["_start", "_end", "_sort"],
        "simple-rest": ["range", "sort", "filter"],
    }[dialect]
    query = assert_documented_answer(QueryParams(list(zip(names, values, strict=True))), USERS)
    if query is not None:
        assert query.dialect == dialect


# Through HTTP on SQLite and PostgreSQL: what the parser lets through, the database takes.
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(pairs=QUERIES, path=st.sampled_from(["users", "audit"]))
async def test_any_list_request_is_answered_200_or_422(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    pairs: list[tuple[str, str]],
    path: str,
) -> None:
    query = urlencode(printable(pairs))
    assume(len(query) < 60_000)  # httpx refuses longer URLs
    response = await client.get(f"{API}/{path}?{query}", headers=admin_headers)
    assert response.status_code in {200, 422}, response.text
    if response.status_code == 422:
        assert response.headers["content-type"] == "application/problem+json"
        assert all(error["field"] for error in response.json()["errors"])


# --- the bounded parsers ---------------------------------------------------------------


@given(raw=st.text() | NUMBERS, high=st.integers(min_value=0, max_value=2**64))
def test_parse_int_gives_a_number_within_bounds_or_none(raw: str, high: int) -> None:
    value = parse_int(raw, low=0, high=high)
    assert value is None or 0 <= value <= high
    if value is not None:
        assert raw.isascii()
        assert raw.isdigit()


@given(number=st.integers(min_value=0, max_value=INT32_MAX), zeros=st.integers(0, 5000))
def test_parse_int_reads_every_number_in_range(number: int, zeros: int) -> None:
    assert parse_int("0" * zeros + str(number), low=0, high=INT32_MAX) == number


@given(raw=st.text() | JSON_TEXT)
def test_load_json_gives_a_value_or_a_value_error(raw: str) -> None:
    try:
        load_json(raw)
    except ValueError as error:
        refusal = str(error)
    else:
        refusal = "must "
    assert refusal.startswith("must ")


@given(value=JSON_VALUES)
def test_load_json_reads_small_shallow_json(value: Any) -> None:
    text = json.dumps(value)
    if len(text) <= MAX_JSON_CHARS:
        assert load_json(text) == value


# --- If-Match -----------------------------------------------------------------------------


@given(header=st.text() | st.lists(NUMBERS).map(lambda tags: ", ".join(f'"{t}"' for t in tags)))
async def test_any_if_match_gives_versions_within_the_column_or_none(header: str) -> None:
    versions = await get_expected_versions(header)
    if header.strip() == "*":
        assert versions is None
    else:
        assert versions is not None
        assert all(0 <= version <= INT32_MAX for version in versions)


@given(
    strong=st.lists(st.integers(min_value=0, max_value=INT32_MAX), max_size=5),
    weak=st.lists(st.integers(min_value=0, max_value=2**40), max_size=3),
)
async def test_if_match_keeps_exactly_the_strong_tags(strong: list[int], weak: list[int]) -> None:
    tags = [f'"{version}"' for version in strong] + [f'W/"{version}"' for version in weak]
    assert await get_expected_versions(" , ".join(tags)) == frozenset(strong)


# --- tokens -------------------------------------------------------------------------------

TOKEN_SETTINGS: Settings = make_settings("sqlite://")
BASE64URL = st.text(string.ascii_letters + string.digits + "-_=", max_size=40)
CLAIMS = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.integers().map(str) | st.integers() | st.text(max_size=8),
        "type": st.sampled_from([ACCESS, REFRESH]) | st.text(max_size=8),
        "jti": st.text(max_size=8) | st.integers(),
        "ver": st.integers() | st.text(max_size=4),
        "exp": st.integers(min_value=-(2**40), max_value=2**40) | st.floats() | st.text(max_size=4),
        "iat": st.integers(min_value=-(2**40), max_value=2**40) | st.text(max_size=4),
        "fam": st.none() | st.text(max_size=8) | st.integers(),
        "acc": st.text(string.hexdigits, min_size=32, max_size=32) | st.text(max_size=40),
    },
)


def assert_claims_or_401(token: str, expected_type: TokenType) -> None:
    try:
        claims = decode_token(token, expected_type, TOKEN_SETTINGS)
    except UnauthorizedError as error:
        status: int = error.status_code
    else:
        # Accepted claims are ones a query can take: an id within a table's, no text.
        assert claims.type == expected_type
        assert 1 <= claims.sub <= INT32_MAX
        assert 0 <= claims.ver <= INT32_MAX
        assert type(claims.exp) is int
        status = 200
    assert status in {200, 401}


@given(
    # Any code point, lone surrogates included (the default leaves them out).
    token=st.text(st.characters(exclude_categories=()))
    | st.lists(BASE64URL, min_size=1, max_size=4).map(".".join)
    | st.binary(max_size=60).map(lambda data: data.decode("latin-1")),
    expected_type=st.sampled_from([ACCESS, REFRESH]),
)
def test_any_text_as_a_token_is_refused_with_401(token: str, expected_type: TokenType) -> None:
    assert_claims_or_401(token, expected_type)


def signed(header: dict[str, Any], payload: dict[str, Any]) -> str:
    """A JWT signed with the server's key, whatever its header says: PyJWT's encoder
    would refuse some of the headers an attacker can write."""
    parts = [
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=")
        for part in (header, payload)
    ]
    signing_input = b".".join(parts)
    signature = hmac.digest(TEST_SECRET_KEY.encode(), signing_input, "sha256")
    return b".".join([signing_input, base64.urlsafe_b64encode(signature).rstrip(b"=")]).decode()


@given(
    claims=CLAIMS,
    extra=st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=2),
    header=st.fixed_dictionaries(
        {"alg": st.sampled_from(["HS256", "none", "RS256"]) | JSON_VALUES},
        optional=dict.fromkeys(("typ", "kid", "crit", "b64", "cty"), JSON_VALUES),
    ),
    expected_type=st.sampled_from([ACCESS, REFRESH]),
)
def test_signed_tokens_with_any_claims_decode_or_are_refused_with_401(
    claims: dict[str, Any],
    extra: dict[str, Any],
    header: dict[str, Any],
    expected_type: TokenType,
) -> None:
    assert_claims_or_401(signed(header, {**extra, **claims}), expected_type)


def test_a_valid_token_still_decodes() -> None:
    now = int(datetime.now(UTC).timestamp())
    claims = {
        "sub": "7",
        "type": ACCESS,
        "jti": "j",
        "ver": 0,
        "acc": "a" * 32,
        "iat": now,
        "exp": now + 60,
    }
    token = jwt.encode(claims, TEST_SECRET_KEY, algorithm="HS256")
    assert decode_token(token, ACCESS, TOKEN_SETTINGS).sub == 7
    with pytest.raises(UnauthorizedError):
        decode_token(token, REFRESH, TOKEN_SETTINGS)
