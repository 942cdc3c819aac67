"""HEAD is GET without the body, on every GET route: what read-only API keys may send."""

import httpx

from tests.helpers import API, bearer
from tests.test_api_keys import make_key


async def test_head_answers_as_get_without_the_body(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    read_key = bearer((await make_key(client, admin_headers, scope="read"))["secret"])
    for path in (f"{API}/users/me", f"{API}/users?per_page=2", "/health"):
        got = await client.get(path, headers=read_key)
        head = await client.head(path, headers=read_key)
        assert (path, head.status_code, head.content) == (path, 200, b"")
        same = ("content-type", "content-length", "x-total-count", "etag", "cache-control")
        assert {name: head.headers.get(name) for name in same} == {
            name: got.headers.get(name) for name in same
        }, path
    # Not a way around the read scope, nor a route of its own where GET is none.
    assert (await client.head(f"{API}/auth/logout-all", headers=read_key)).status_code == 405
