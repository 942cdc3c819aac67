"""The bare reference server: the app's work with no framework, ORM or validation layer.

A raw ASGI callable for uvicorn (`uvicorn bench.bare:app`), configured from the same
environment variables as the app. Per request it does what the app does: decode the
HS256 access token, load the caller's row by id and check is_active and token_version,
run the same SELECTs (whole rows, like the ORM; the list also counts all users) on one
pooled asyncpg connection, and answer with the same JSON and the same headers (request
id, security headers, ETag, X-Total-Count, Content-Range, Link), which the harness
checks against the app before it measures. Login verifies bcrypt in
at most HASH_CONCURRENCY threads, shedding load with 503 past HASH_QUEUE_LIMIT waiting
checks, and starts a session and records the refresh token (hash of its jti) in it as
the app does; every token names its session (`sid`), which the caller's look-up joins;
refresh retires the presented token with the same conditional UPDATE and records the new
one. Not copied: rate limiting (the bench turns it off), session lifetimes beyond the
absolute expiry, the session row lock and the refresh reuse grace window (a reused token
here always ends its session).
"""

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlencode

import asyncpg  # type: ignore[import-untyped]  # ships no type information
import bcrypt
import jwt
import orjson

Header = tuple[bytes, bytes]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

API = "/api/v1"
USERS = f"{API}/users"
MAX_BODY_BYTES = 64 * 1024
MAX_PER_PAGE = 100
MAX_PAGE = 1_000_000
MAX_ID = 2**31 - 1
PASSWORD_MAX_BYTES = 72

ALL_COLUMNS = (
    "id, email, name, hashed_password, role, is_active, is_verified, token_version, version,"
    " created_at, updated_at, last_login_at, user_metadata, app_metadata,"
    " deletion_scheduled_at, banned_at, banned_until, ban_reason"
)
BY_ID = f"SELECT {ALL_COLUMNS} FROM users WHERE id = $1"
BY_EMAIL = f"SELECT {ALL_COLUMNS} FROM users WHERE email = $1"
PAGE = f"SELECT {ALL_COLUMNS} FROM users ORDER BY id LIMIT $1 OFFSET $2"
COUNT = "SELECT count(*) FROM users"
# How the listed users sign in, for an admin's list: two queries, as the app's
# sso.sign_in_methods makes them.
WITH_PASSWORD = "SELECT id, hashed_password <> '' FROM users WHERE id = ANY($1)"  # noqa: S105  (a query)
IDENTITIES = "SELECT user_id, provider FROM identities WHERE user_id = ANY($1) ORDER BY id"
# The caller's row and whether the token's session is live, in one query, as the app does.
CALLER = (
    f"SELECT {', '.join(f'users.{column.strip()}' for column in ALL_COLUMNS.split(','))},"
    " (sessions.revoked_at IS NULL AND sessions.expires_at > $3) AS session_live"
    " FROM users LEFT JOIN sessions ON sessions.id = $2 AND sessions.user_id = users.id"
    " WHERE users.id = $1"
)
# A login records itself at most once a minute, through the UPDATE that locks the row
# (the app's sessions._lock_user_noting_login); within the minute a plain lock instead.
NOTE_LOGIN = (
    f"UPDATE users SET last_login_at = $2 WHERE id = $1"
    f" AND (last_login_at IS NULL OR last_login_at <= $3) RETURNING {ALL_COLUMNS}"
)
LOCK_USER = f"SELECT {ALL_COLUMNS} FROM users WHERE id = $1 FOR UPDATE"
LAST_LOGIN_RESOLUTION = timedelta(minutes=1)
PRUNE_EXPIRED = "DELETE FROM sessions WHERE user_id = $1 AND expires_at <= $2"
START_SESSION = (
    "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at)"
    " VALUES ($1, $2, $3, $3, $4)"
)
RECORD = (
    "INSERT INTO refresh_tokens (jti_hash, session_id, created_at, expires_at)"
    " VALUES ($1, $2, $3, $4)"
)
RECORD_BY_JTI = "SELECT id, session_id, used_at FROM refresh_tokens WHERE jti_hash = $1"
RETIRE = "UPDATE refresh_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL"
TOUCH_SESSION = "UPDATE sessions SET last_used_at = $2 WHERE id = $1"
END_SESSION = (
    "UPDATE sessions SET revoked_at = $2, revoked_reason = 'reuse'"
    " WHERE id = $1 AND revoked_at IS NULL"
)
SESSION_SECONDS = 30 * 24 * 3600  # SESSION_MAX_DAYS' default
PUBLIC_FIELDS = (
    "email",
    "name",
    "role",
    "is_active",
    "is_verified",
    "id",
    "created_at",
    "updated_at",
    "last_login_at",
    "user_metadata",
    "app_metadata",
    "deletion_scheduled_at",
    "banned_at",
    "banned_until",
    "ban_reason",
)
# What the app's ResponseHeadersMiddleware adds to every response (plus a request id).
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
NO_STORE = [(b"cache-control", b"no-store")]


class HTTPError(Exception):
    def __init__(self, status: int, detail: str, headers: list[Header] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or []


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


async def _decode_jsonb(connection: asyncpg.Connection) -> None:
    # jsonb as the objects it holds (asyncpg hands over its text), as the app's JSONB
    # columns are read.
    await connection.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda value: orjson.dumps(value).decode(),
        decoder=orjson.loads,
        format="text",
    )


async def sign_in_methods(connection: asyncpg.Connection, ids: list[int]) -> dict[int, list[str]]:
    methods = {
        user_id: ["password"] if has_password else []
        for user_id, has_password in await connection.fetch(WITH_PASSWORD, ids)
    }
    for user_id, provider in await connection.fetch(IDENTITIES, ids):
        if provider not in methods.setdefault(user_id, []):
            methods[user_id].append(provider)
    return methods


def public(row: asyncpg.Record) -> dict[str, Any]:
    return {name: row[name] for name in PUBLIC_FIELDS}


def dumps(content: Any) -> bytes:
    # OPT_UTC_Z: pydantic writes UTC datetimes with "Z", not "+00:00".
    return orjson.dumps(content, option=orjson.OPT_UTC_Z)


class BareApp:
    def __init__(self) -> None:
        self.secret = os.environ["SECRET_KEY"]
        self.database_url = os.environ["DATABASE_URL"]
        self.pool_size = _env_int("DB_POOL_SIZE", 10)
        self.max_overflow = _env_int("DB_MAX_OVERFLOW", 10)
        self.access_seconds = _env_int("ACCESS_TOKEN_EXPIRE_MINUTES", 30) * 60
        self.refresh_seconds = _env_int("REFRESH_TOKEN_EXPIRE_DAYS", 14) * 86400
        self.hash_concurrency = _env_int("HASH_CONCURRENCY", max(1, (os.cpu_count() or 1) // 2))
        self.hash_queue_limit = _env_int("HASH_QUEUE_LIMIT", 32)
        self.bcrypt_rounds = _env_int("BCRYPT_ROUNDS", 12)
        self.hashes_in_flight = 0
        self.dummy_hash = b""
        self._pool: asyncpg.Pool | None = None
        self._hash_threads: ThreadPoolExecutor | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "used before lifespan start-up"
        return self._pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        headers = [(b"x-request-id", uuid.uuid4().hex.encode()), *SECURITY_HEADERS]
        if scope["path"].startswith(f"{API}/"):
            headers += NO_STORE
        try:
            status, content, route_headers = await self.route(scope, receive)
            headers += [*route_headers, (b"content-type", b"application/json")]
        except HTTPError as error:
            status = error.status
            content = {
                "type": "about:blank",
                "title": HTTPStatus(status).phrase,
                "status": status,
                "detail": error.detail,
            }
            headers += [(b"content-type", b"application/problem+json"), *error.headers]
        body = dumps(content)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # min_size opens the connections up front; the app's SQLAlchemy pool opens
                # them on demand, which the harness's warm-up runs take care of.
                self._pool = await asyncpg.create_pool(
                    self.database_url,
                    min_size=self.pool_size,
                    max_size=self.pool_size + self.max_overflow,
                    init=_decode_jsonb,
                )
                self._hash_threads = ThreadPoolExecutor(self.hash_concurrency)
                self.dummy_hash = bcrypt.hashpw(
                    b"dummy password", bcrypt.gensalt(self.bcrypt_rounds)
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.pool.close()
                if self._hash_threads is not None:
                    self._hash_threads.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def route(self, scope: Scope, receive: Receive) -> tuple[int, Any, list[Header]]:
        method: str = scope["method"]
        path: str = scope["path"]
        if path == "/health" and method == "GET":
            return 200, {"status": "ok"}, []
        if path.startswith(USERS) and method == "GET":
            return 200, *await self.users(scope, path.removeprefix(USERS))
        if path == f"{API}/auth/login" and method == "POST":
            return 200, await self.login(scope, await read_body(receive)), []
        if path == f"{API}/auth/refresh" and method == "POST":
            return 200, await self.refresh(await read_body(receive)), []
        raise HTTPError(404, f"No route matches {path}.")

    async def users(self, scope: Scope, rest: str) -> tuple[Any, list[Header]]:
        token = bearer_token(scope)
        async with self.pool.acquire() as connection:
            caller, _ = await self.authenticate(connection, token, "access")
            if rest in ("", "/"):
                page, per_page = page_params(scope["query_string"])
                offset = (page - 1) * per_page
                rows = await connection.fetch(PAGE, per_page, offset)
                total = await connection.fetchval(COUNT)
                headers = list_headers(scope, offset, per_page, len(rows), total)
                listed = [public(row) for row in rows]
                methods = await sign_in_methods(connection, [row["id"] for row in rows])
                for user in listed:
                    user["sign_in_methods"] = (
                        methods.get(user["id"], []) if caller["role"] == "admin" else None
                    )
                return listed, headers
            if rest == "/me":
                return {**public(caller), "impersonated_by": None}, []
            user_id = int_in_range(rest.removeprefix("/"), MAX_ID)
            row = await connection.fetchrow(BY_ID, user_id)
        if row is None:
            raise HTTPError(404, f"User {user_id} does not exist.")
        return public(row), [(b"etag", f'"{row["version"]}"'.encode())]

    async def authenticate(
        self, connection: asyncpg.Connection, token: str, token_type: str
    ) -> tuple[asyncpg.Record, dict[str, Any]]:
        """The token's user row and claims, or the app's 401/403."""
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                options={"require": ["exp", "iat", "sub", "jti"]},
            )
            user_id, version = int(claims["sub"]), int(claims["ver"])
        except (jwt.InvalidTokenError, KeyError, TypeError, ValueError) as error:
            raise unauthorized("The token is invalid or has expired.") from error
        if claims.get("type") != token_type:
            raise unauthorized(f"A token of type '{token_type}' is required here.")
        row = await connection.fetchrow(CALLER, user_id, claims.get("sid"), datetime.now(UTC))
        if row is not None and not row["is_active"]:
            raise HTTPError(403, "This account is deactivated.")
        if row is None or row["token_version"] != version or not row["session_live"]:
            raise unauthorized("The token is invalid or has been revoked.")
        return row, claims

    async def login(self, scope: Scope, body: bytes) -> dict[str, Any]:
        email, password = login_credentials(scope, body)
        async with self.pool.acquire() as connection:
            row = await connection.fetchrow(BY_EMAIL, email.lower())
        stored = row["hashed_password"].encode() if row is not None else self.dummy_hash
        secret = password.encode()
        if len(secret) > PASSWORD_MAX_BYTES:
            secret, stored = secret[:PASSWORD_MAX_BYTES], self.dummy_hash
        if self.hashes_in_flight >= self.hash_concurrency + self.hash_queue_limit:
            raise HTTPError(
                503,
                "Too many password checks in progress; retry shortly.",
                [(b"retry-after", b"1")],
            )
        self.hashes_in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            matched = await loop.run_in_executor(self._hash_threads, bcrypt.checkpw, secret, stored)
        finally:
            self.hashes_in_flight -= 1
        if row is None or stored is self.dummy_hash or not matched:
            raise unauthorized("Incorrect email or password.")
        if not row["is_active"]:
            raise HTTPError(403, "This account is deactivated.")
        async with self.pool.acquire() as connection, connection.transaction():
            now = datetime.now(UTC)
            noted = await connection.fetchrow(
                NOTE_LOGIN, row["id"], now, now - LAST_LOGIN_RESOLUTION
            )
            row = noted or await connection.fetchrow(LOCK_USER, row["id"])
            await connection.execute(PRUNE_EXPIRED, row["id"], now)
            session_id = uuid.uuid4().hex
            expires = now + timedelta(seconds=SESSION_SECONDS)
            await connection.execute(START_SESSION, session_id, row["id"], now, expires)
            return await self.issue_tokens(connection, row, session_id)

    async def refresh(self, body: bytes) -> dict[str, Any]:
        try:
            token = orjson.loads(body)["refresh_token"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as error:
            raise HTTPError(422, "Invalid input: refresh_token.") from error
        if not isinstance(token, str):
            raise HTTPError(422, "Invalid input: refresh_token.")
        async with self.pool.acquire() as connection:
            async with connection.transaction():
                row, claims = await self.authenticate(connection, token, "refresh")
                record = await connection.fetchrow(RECORD_BY_JTI, token_id_hash(claims["jti"]))
                if record is None or record["session_id"] != claims.get("sid"):
                    raise unauthorized("The refresh token is unknown or has been revoked.")
                now = datetime.now(UTC)
                # The same conditional UPDATE as the app: only one refresh can retire it.
                if await connection.execute(RETIRE, record["id"], now) == "UPDATE 1":
                    await connection.execute(TOUCH_SESSION, record["session_id"], now)
                    return await self.issue_tokens(connection, row, record["session_id"])
                await connection.execute(END_SESSION, record["session_id"], now)
            # Raised after the commit, so the revocation stays.
            raise unauthorized("Refresh token reuse detected: this session has been revoked.")

    async def issue_tokens(
        self, connection: asyncpg.Connection, row: asyncpg.Record, session_id: str
    ) -> dict[str, Any]:
        """A new pair of the session, the refresh token recorded."""
        now = int(time.time())
        refresh_jti = uuid.uuid4().hex
        refresh_expires = now + self.refresh_seconds
        await connection.execute(
            RECORD,
            token_id_hash(refresh_jti),
            session_id,
            datetime.fromtimestamp(now, UTC),
            datetime.fromtimestamp(refresh_expires, UTC),
        )
        refresh_claims = {"jti": refresh_jti, "exp": refresh_expires, "sid": session_id}
        access_claims = {"exp": now + self.access_seconds, "sid": session_id}
        return {
            "access_token": self.token(row, "access", now, access_claims),
            "refresh_token": self.token(row, "refresh", now, refresh_claims),
            "token_type": "bearer",
            "expires_in": self.access_seconds,
            "user": public(row),
            "deletion_cancelled": False,
        }

    def token(self, row: asyncpg.Record, token_type: str, now: int, claims: dict[str, Any]) -> str:
        payload = {
            "sub": str(row["id"]),
            "type": token_type,
            "jti": uuid.uuid4().hex,
            "ver": row["token_version"],
            "iat": now,
            **claims,
        }
        return jwt.encode(payload, self.secret, algorithm="HS256")


def token_id_hash(jti: str) -> str:
    return hashlib.sha256(jti.encode()).hexdigest()


def unauthorized(detail: str) -> HTTPError:
    return HTTPError(401, detail, [(b"www-authenticate", b"Bearer")])


def bearer_token(scope: Scope) -> str:
    headers: list[Header] = scope["headers"]
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token:
                return token
    raise unauthorized("Not authenticated: send an access token as 'Bearer <token>'.")


def int_in_range(text: str, maximum: int) -> int:
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        raise HTTPError(422, f"Invalid input: {text!r} is not an integer in 1..{maximum}.")
    return int(text)


def page_params(query_string: bytes) -> tuple[int, int]:
    query = dict(parse_qsl(query_string.decode("latin-1")))
    page = int_in_range(query.get("page", "1"), MAX_PAGE)
    per_page = int_in_range(query.get("per_page", "10"), MAX_PER_PAGE)
    return page, per_page


def list_headers(scope: Scope, offset: int, limit: int, count: int, total: int) -> list[Header]:
    """The app's X-Total-Count, Content-Range and Link (first, last, prev, next)."""
    host = next((value for name, value in scope["headers"] if name == b"host"), b"").decode()
    url = f"http://{host}{scope['path']}"
    targets = {"first": 0, "last": max(0, (total - 1) // limit * limit) if total else 0}
    if offset > 0:
        targets["prev"] = max(0, offset - limit)
    if offset + limit < total:
        targets["next"] = offset + limit
    links = ", ".join(
        f'<{url}?{urlencode({"page": target // limit + 1, "per_page": limit})}>; rel="{rel}"'
        for rel, target in targets.items()
    )
    content_range = f"users {offset}-{offset + count - 1}/{total}" if count else f"users */{total}"
    return [
        (b"x-total-count", str(total).encode()),
        (b"content-range", content_range.encode()),
        (b"link", links.encode()),
    ]


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        chunk: bytes = message.get("body", b"")
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPError(413, "The request body is too large.")
        if not message.get("more_body", False):
            return body


def login_credentials(scope: Scope, body: bytes) -> tuple[str, str]:
    content_type = b""
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value.split(b";")[0].strip().lower()
    try:
        if content_type == b"application/json":
            data = orjson.loads(body)
            email, password = data["email"], data["password"]
        else:
            form = dict(parse_qsl(body.decode()))
            email, password = form["username"], form["password"]
    except (orjson.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise HTTPError(422, "Invalid input: email, password.") from error
    if not isinstance(email, str) or not isinstance(password, str) or not password:
        raise HTTPError(422, "Invalid input: email, password.")
    return email, password


app = BareApp()
