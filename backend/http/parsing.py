"""Bounded parsers for text a client sends: numbers and JSON found in paths, query strings
and headers. Python's own parsers are not safe on such text: `str.isdigit()` is true for
'²', which `int()` then refuses; `int()` raises on more than 4,300 digits; `json.loads`
recurses once per nesting level and overflows the stack. These bound the input first and
answer None or ValueError, which callers turn into a 4xx naming the field.
"""

import json
from typing import Any

INT32_MAX = 2**31 - 1  # every integer column (ids, versions) is a 32-bit INTEGER
MAX_JSON_CHARS = 4096  # a simple-rest filter of 100 ids, with room to spare
MAX_JSON_DEPTH = 8  # the dialects need 2: {"id": [1, 2]}


def parse_int(raw: str, *, low: int, high: int) -> int | None:
    """The integer that `raw` spells in ASCII digits and nothing else, when it lies within
    [low, high] (both non-negative); otherwise None."""
    if not (raw.isascii() and raw.isdigit()):
        return None
    digits = raw.lstrip("0") or "0"
    if len(digits) > len(str(high)):
        return None
    value = int(digits)
    return value if low <= value <= high else None


def load_json(raw: str) -> Any:
    """JSON of at most MAX_JSON_CHARS characters and MAX_JSON_DEPTH levels of nesting,
    without NaN or Infinity (not JSON: Python's parser accepts them). Raises ValueError
    with a message for the client."""
    if len(raw) > MAX_JSON_CHARS:
        raise ValueError(f"must be at most {MAX_JSON_CHARS} characters of JSON")
    if _nesting_depth(raw) > MAX_JSON_DEPTH:
        raise ValueError(f"must nest at most {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except ValueError as error:
        raise ValueError("must be valid JSON") from error


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _nesting_depth(raw: str) -> int:
    """The deepest bracket nesting outside strings; malformed text is left to json.loads."""
    depth = deepest = 0
    in_string = escaped = False
    for char in raw:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest
