"""Identity providers for the sign-in tests: a real OpenID Connect provider (panva's
oidc-provider, tests/oidc/provider.js) run with node on a free port, a browser that
signs in through its own login and consent pages, and a stand-in of GitHub's three
endpoints (authorize, token, /user and /user/emails) made for the tests, which speaks
the same JSON as GitHub but is not GitHub."""

import json
import re
import secrets
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html import unescape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from joserfc.jwk import RSAKey

from tests.helpers import API, free_port
from tests.services import OIDC_PROVIDER, require

OIDC_DIR = Path(__file__).parent / "oidc"
CLIENT_ID = "backend-tests"
CLIENT_SECRET = "backend-tests-client-secret-0123456789"
APP = "https://testserver"  # the app, behind the test browser's ASGI mount
CALLBACK_PATH = f"{API}/auth/sso/{{slug}}/callback"
START_SECONDS = 20


def new_keys(kid: str = "k1") -> dict[str, Any]:
    """A private JWKS of one RSA key, as the provider signs with."""
    key = RSAKey.generate_key(2048, {"kid": kid, "use": "sig", "alg": "RS256"}, private=True)
    return {"keys": [key.as_dict(private=True)]}


@dataclass
class OidcProvider:
    """oidc-provider in a node process; restart() swaps its keys on the same issuer."""

    accounts: dict[str, dict[str, Any]]
    slugs: tuple[str, ...] = ("corp",)
    app: str = APP  # the app's origin, for the callback URLs registered with it
    port: int = field(default_factory=free_port)
    keys: dict[str, Any] = field(default_factory=new_keys)
    process: subprocess.Popen[str] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
            require(OIDC_PROVIDER, f"{OIDC_DIR}/node_modules has no oidc-provider")
        client = {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [self.app + CALLBACK_PATH.format(slug=slug) for slug in self.slugs],
        }
        environment = {
            "PATH": "/usr/bin:/bin:/usr/local/bin",
            "OIDC_PORT": str(self.port),
            "OIDC_CLIENT": json.dumps(client),
            "OIDC_JWKS": json.dumps(self.keys),
            "OIDC_ACCOUNTS": json.dumps(self.accounts),
        }
        self.process = subprocess.Popen(
            ["node", "provider.js"],
            cwd=OIDC_DIR,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "listening <issuer>", or "" if it died
        assert line.startswith("listening"), f"oidc-provider did not start: {line!r}"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=START_SECONDS)
            self.process = None

    def restart(self, keys: dict[str, Any]) -> None:
        self.stop()
        self.keys = keys
        self.start()

    def settings(self, slug: str = "corp", **extra: Any) -> dict[str, Any]:
        """An OIDC_PROVIDERS entry for it."""
        return {
            "slug": slug,
            "name": "Corp SSO",
            "issuer": self.issuer,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scopes": ["openid", "email", "profile", "groups"],
            **extra,
        }


@contextmanager
def oidc_provider(accounts: dict[str, dict[str, Any]], **kwargs: Any) -> Iterator[OidcProvider]:
    provider = OidcProvider(accounts=accounts, **kwargs)
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()


FORM = re.compile(r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', re.S)
INPUT = re.compile(r"<input([^>]*)>")
ATTRIBUTE = re.compile(r'(\w+)="([^"]*)"')


def _form(page: httpx.Response) -> tuple[str, dict[str, str]]:
    """The first form of a page: its action and its inputs' values."""
    match = FORM.search(page.text)
    assert match is not None, f"no form at {page.url}: {page.text[:300]}"
    fields = {}
    for tag in INPUT.findall(match.group(2)):
        attributes = dict(ATTRIBUTE.findall(tag))
        if "name" in attributes:
            fields[attributes["name"]] = unescape(attributes.get("value", ""))
    return unescape(match.group(1)), fields


async def through_provider(
    browser: httpx.AsyncClient, response: httpx.Response, login: str
) -> httpx.Response:
    """Follow the redirects from `response` like a browser, signing in as `login` at the
    provider's pages (login, then consent), until the app answers something other than a
    redirect to the provider: the callback's answer (or a refusal) is returned."""
    for _ in range(20):
        if response.is_redirect:
            location = response.headers["location"]
            url = response.url.join(location)
            if url.host == "testserver" and not url.path.startswith(f"{API}/auth/sso/"):
                return response  # the app sends the browser on to return_to
            response = await browser.get(url)
            continue
        if response.url.host == "testserver":
            return response
        action, fields = _form(response)
        if "login" in fields:
            fields.update(login=login, password="any-password")
        response = await browser.post(response.url.join(action), data=fields)
    raise AssertionError("too many redirects")


def forget_providers(browser: httpx.AsyncClient) -> None:
    """Drop the providers' cookies (their sessions from an earlier sign-in), so that the
    next trip signs in anew; the app's own cookies stay."""
    for cookie in list(browser.cookies.jar):
        if not cookie.domain.startswith("testserver"):
            browser.cookies.jar.clear(cookie.domain, cookie.path, cookie.name)


def sso_code(response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    query = parse_qs(urlsplit(response.headers["location"]).query)
    return query["sso_code"][0]


# --- a stand-in of GitHub's OAuth endpoints and API ---------------------------------
@dataclass
class GitHubUser:
    id: int
    login: str
    name: str | None
    emails: list[dict[str, Any]]


class GitHubStandIn:
    """GitHub's authorize page (which signs in `next_user` at once), token endpoint, and
    /user and /user/emails, with the JSON shapes GitHub documents."""

    def __init__(self) -> None:
        self.next_user: GitHubUser | None = None
        self.codes: dict[str, GitHubUser] = {}
        self.tokens: dict[str, GitHubUser] = {}
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path == "/login/oauth/authorize":
                    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                    code = secrets.token_hex(10)
                    assert stand_in.next_user is not None
                    stand_in.codes[code] = stand_in.next_user
                    target = (
                        query["redirect_uri"]
                        + "?"
                        + urlencode({"code": code, "state": query["state"]})
                    )
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.end_headers()
                    return
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                user = stand_in.tokens.get(token)
                if user is None:
                    self._json(401, {"message": "Bad credentials"})
                elif parts.path == "/api/user":
                    self._json(200, {"id": user.id, "login": user.login, "name": user.name})
                elif parts.path == "/api/user/emails":
                    self._json(200, user.emails)
                else:
                    self._json(404, {"message": "Not Found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                user = stand_in.codes.pop(form.get("code", ""), None)
                if user is None:
                    self._json(200, {"error": "bad_verification_code"})
                    return
                token = "gho_" + secrets.token_hex(16)
                stand_in.tokens[token] = user
                self._json(200, {"access_token": token, "token_type": "bearer", "scope": ""})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def settings(self, slug: str = "github") -> dict[str, Any]:
        return {
            "slug": slug,
            "name": "GitHub",
            "preset": "github",
            "client_id": "github-client",
            "client_secret": "github-secret",
            "authorize_url": f"{self.url}/login/oauth/authorize",
            "token_url": f"{self.url}/login/oauth/access_token",
            "api_url": f"{self.url}/api",
        }


@contextmanager
def github_stand_in() -> Iterator[GitHubStandIn]:
    stand_in = GitHubStandIn()
    stand_in.thread.start()
    try:
        yield stand_in
    finally:
        stand_in.server.shutdown()
        stand_in.server.server_close()
