"""Schemathesis hooks for .ci/fuzz, which loads them through SCHEMATHESIS_HOOKS.

The fuzzing account must keep its credentials: see before_call.

Schema-driven negative data breaks the schema's rules (a string for an integer, one
past the maximum) but never reaches the inputs that break Python's own parsers, which
is where the 500s of issue 10 came from. So some negative cases also get one such value
in a path parameter, a header, a query parameter, or a dashboard-dialect parameter the
schema does not list (filter, range, _start...). They stay negative: any 4xx will do,
and not_a_server_error fails the run on a 5xx.
"""

import os
from typing import Any

import schemathesis
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

HOSTILE_NUMBERS = [
    "9" * 5000,  # int() refuses more than 4,300 digits
    "²",  # str.isdigit() is true, int() refuses it
    "١٢",  # Arabic-Indic digits: int() accepts them
    "2147483648",  # one past the 32-bit columns
    "-2147483649",
    "9223372036854775808",
    "1e400",
    "NaN",
]
HOSTILE_JSON = [
    "[" * 3000 + "]" * 3000,  # past the interpreter's recursion limit
    "[" + '{"a":' * 50 + "1" + "}" * 50 + "]",
    '{"q":"\\ud800"}',  # a lone surrogate: no UTF-8 encoding
    '{"\\udfff":1}',
    '{"name_like":"\\u0000"}',
    "[0,1e400]",
    '["name","ASC",' + "9" * 5000 + "]",
]
HOSTILE_DATES = [
    "0001-01-01T00:00:00+14:00",  # before year 1 in UTC
    "9999-12-31T23:59:59-14:00",  # after year 9999 in UTC
    "0000-00-00T00:00:00Z",
    "2026-02-30T25:61:61Z",
]
HOSTILE = HOSTILE_NUMBERS + HOSTILE_JSON + HOSTILE_DATES + ["a" * 10_000, "\x00", "../.."]
# Header values are latin-1 text without control characters.
HOSTILE_HEADERS = [
    value
    for value in HOSTILE + [f'"{number}"' for number in HOSTILE_NUMBERS]
    if value.isprintable() and all(ord(char) < 256 for char in value)
]
LIST_DIALECT_KEYS = [
    *("page", "per_page", "sort", "created_after", "created_before", "id"),
    *("_start", "_end", "_sort", "_order", "id_gte", "created_at_lte", "name_like"),
    *("range", "filter"),
]


def _targets(case: Any) -> list[tuple[str, str]]:
    targets = [("path_parameters", name) for name in case.path_parameters]
    targets += [("query", name) for name in case.query or {}]
    if case.method == "GET" and case.path.endswith(("/users", "/audit")):
        targets += [("query", name) for name in LIST_DIALECT_KEYS]
    if case.method in {"PATCH", "PUT", "DELETE"}:
        targets.append(("headers", "If-Match"))
    targets.append(("headers", "X-Request-ID"))
    return targets


def _with(case: Any, target: tuple[str, str], value: str) -> Any:
    # Each example draws its case afresh, so changing this one changes no other.
    container, name = target
    setattr(case, container, {**(getattr(case, container) or {}), name: value})
    return case


@schemathesis.hook
def flatmap_case(context: Any, case: Any) -> st.SearchStrategy[Any]:
    meta = case.meta
    if meta is None or meta.generation.mode != GenerationMode.NEGATIVE:
        return st.just(case)
    targets = _targets(case)
    hostile = st.sampled_from(targets).flatmap(
        lambda target: st.sampled_from(HOSTILE_HEADERS if target[0] == "headers" else HOSTILE).map(
            lambda value: _with(case, target, value)
        )
    )
    return st.one_of(st.just(case), hostile)


FUZZ_USER_ID = os.environ["FUZZ_USER_ID"]  # the account the run is logged in as
SELF_LOCKING_FIELDS = ("email", "password", "role", "is_active")


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Through /users/{its own id} the fuzzing account changes only its name: a new email
    or password, a demotion or a deactivation would lock it out for the rest of the run
    (links from GET /users/me lead the stateful phase straight there)."""
    target = str(case.path_parameters.get("user_id", ""))
    if case.method in {"PATCH", "PUT"} and target == FUZZ_USER_ID and isinstance(case.body, dict):
        case.body = {
            name: value for name, value in case.body.items() if name not in SELF_LOCKING_FIELDS
        }
