// The built package (imported by its name: run `npm run build` first, as `npm test`
// does) against a live server (run.sh starts one): logging in (with a second factor
// too), the paging headers, a refresh when the access token has expired, and errors as
// ApiError.
import assert from "node:assert/strict";
import { createHmac, randomUUID } from "node:crypto";
import { test } from "node:test";

import { ApiError, createApiClient, ok, page, type Tokens } from "users-api-client";

function setting(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run the tests with clients/typescript/run.sh`);
  }
  return value;
}

const BASE_URL = setting("API_BASE_URL");
const ADMIN_EMAIL = setting("ADMIN_EMAIL");
const ADMIN_PASSWORD = setting("ADMIN_PASSWORD");
const SECRET_KEY = setting("SERVER_SECRET_KEY");
const PASSWORD = "Client-Test-Pass-7";
// The server's defaults, which the generated types ask for anyway: openapi-typescript
// reads a property with a default as always present, which is true of responses only.
const PLAIN = { role: "user", is_active: true } as const;

/** A fetch that records the path of every request it sends. */
function recording(): { fetch: typeof fetch; paths: string[]; refreshes: () => number } {
  const paths: string[] = [];
  const recorder: typeof fetch = (input, init) => {
    const url = input instanceof Request ? input.url : String(input);
    paths.push(new URL(url).pathname);
    return fetch(input, init);
  };
  return {
    fetch: recorder,
    paths,
    refreshes: () => paths.filter((path) => path === "/api/v1/auth/refresh").length,
  };
}

/** A copy of an access token with other times, signed with the server's key. */
function resigned(accessToken: string, expiresIn: number): string {
  const [header, payload] = accessToken.split(".") as [string, string];
  const claims = JSON.parse(Buffer.from(payload, "base64url").toString());
  const now = Math.floor(Date.now() / 1000);
  const times = { iat: now - 1900, exp: now + expiresIn };
  const unsigned = `${header}.${Buffer.from(JSON.stringify({ ...claims, ...times })).toString("base64url")}`;
  const signature = createHmac("sha256", SECRET_KEY).update(unsigned).digest("base64url");
  return `${unsigned}.${signature}`;
}

/**
 * The access token as the server sees it once its 30 minutes are up: the same claims
 * (user, session, token version) with `exp` in the past. The refresh token that came
 * with it still works.
 */
function expired(accessToken: string): string {
  return resigned(accessToken, -100);
}

/** A user of this test's own, logged in by a client of its own: its tokens. */
async function newSession(): Promise<{ email: string; tokens: Tokens }> {
  const email = `client-${randomUUID()}@example.com`;
  const client = createApiClient({ baseUrl: BASE_URL });
  ok(
    await client.api.POST("/api/v1/auth/register", {
      body: { email, password: PASSWORD, name: "Client Test" },
    }),
  );
  assert.ok(client.tokens, "registering kept the tokens");
  return { email, tokens: client.tokens };
}

async function status(path: string, accessToken: string): Promise<number> {
  const response = await fetch(`${BASE_URL}${path}`, {
    headers: { Authorization: `Bearer ${accessToken}` },
  });
  return response.status;
}

test("login keeps the tokens, and requests carry them", async () => {
  const seen: (Tokens | null)[] = [];
  const client = createApiClient({ baseUrl: BASE_URL, onTokens: (tokens) => seen.push(tokens) });
  const login = await client.login(ADMIN_EMAIL, ADMIN_PASSWORD);
  assert.equal(login.user.email, ADMIN_EMAIL);
  assert.equal(login.user.role, "admin");
  assert.deepEqual(client.tokens, {
    accessToken: login.access_token,
    refreshToken: login.refresh_token,
  });
  assert.deepEqual(seen, [client.tokens]);

  const me = ok(await client.api.GET("/api/v1/users/me"));
  assert.equal(me.id, login.user.id);
  assert.equal(me.email, ADMIN_EMAIL);
});

test("a wrong password is an ApiError 401, and no tokens are kept", async () => {
  const client = createApiClient({ baseUrl: BASE_URL });
  const refused = await client.login(ADMIN_EMAIL, "Not-The-Password-1").then(
    () => assert.fail("logged in with a wrong password"),
    (error: unknown) => error,
  );
  assert.ok(refused instanceof ApiError, String(refused));
  assert.equal(refused.status, 401);
  assert.equal(refused.code, "credentials_invalid");
  assert.equal(refused.title, "Unauthorized");
  assert.match(refused.detail, /email or password/i);
  assert.ok(refused.requestId);
  assert.equal(client.tokens, null);
});

/** An authenticator app's code (RFC 6238: HMAC-SHA1, 30-second steps, 6 digits). */
function totp(secret: string, at: number = Date.now()): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  const bits = [...secret].map((char) => alphabet.indexOf(char).toString(2).padStart(5, "0"));
  const bytes = (bits.join("").match(/.{8}/g) ?? []).map((byte) => parseInt(byte, 2));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(at / 30_000)));
  const digest = createHmac("sha1", Buffer.from(bytes)).update(counter).digest();
  const offset = (digest[digest.length - 1] ?? 0) & 0xf;
  return ((digest.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).toString().padStart(6, "0");
}

test("a login with a second factor is an ApiError with mfa, and verifyMfa finishes it", async () => {
  const { email, tokens } = await newSession();
  const owner = createApiClient({ baseUrl: BASE_URL, tokens });
  const { secret } = ok(await owner.api.POST("/api/v1/users/me/mfa/totp"));
  ok(await owner.api.POST("/api/v1/users/me/mfa/totp/confirm", { body: { code: totp(secret) } }));

  const client = createApiClient({ baseUrl: BASE_URL });
  const refused = await client.login(email, PASSWORD).then(
    () => assert.fail("logged in without the second factor"),
    (error: unknown) => error,
  );
  assert.ok(refused instanceof ApiError, String(refused));
  assert.equal(refused.status, 401);
  assert.equal(refused.code, "mfa_required");
  assert.ok(refused.mfa, "the challenge is read from the problem");
  assert.deepEqual(refused.mfa.methods, ["totp", "recovery_code"]);
  assert.equal(refused.mfa.expiresIn, 300);
  const kept = client.tokens; // a copy: asserting on the getter would narrow it to null
  assert.equal(kept, null);
  // The next step's code: the confirmation used this one's, and each works once.
  const login = await client.verifyMfa(refused.mfa.token, totp(secret, Date.now() + 30_000));
  assert.equal(login.user.email, email);
  assert.equal(client.tokens?.accessToken, login.access_token);
  assert.equal(ok(await client.api.GET("/api/v1/users/me")).email, email);
  const wrongPassword = await client.login(email, "Not-The-Password-1").then(
    () => assert.fail("logged in with a wrong password"),
    (error: unknown) => error,
  );
  assert.ok(wrongPassword instanceof ApiError);
  assert.equal(wrongPassword.mfa, null);
});

test("without a login a request is an ApiError 401, and no refresh is tried", async () => {
  const network = recording();
  const client = createApiClient({ baseUrl: BASE_URL, fetch: network.fetch });
  const result = await client.api.GET("/api/v1/users/me");
  assert.throws(() => ok(result), { name: "ApiError", status: 401 });
  assert.deepEqual(network.paths, ["/api/v1/users/me"]);
});

test("a list page comes with its total, range and links from the paging headers", async () => {
  const client = createApiClient({ baseUrl: BASE_URL });
  await client.login(ADMIN_EMAIL, ADMIN_PASSWORD);
  const tag = randomUUID().slice(0, 8);
  for (const name of ["Ada", "Bea", "Cy"]) {
    ok(
      await client.api.POST("/api/v1/users", {
        body: {
          email: `${name}-${tag}@example.com`,
          name: `${name} ${tag}`,
          password: PASSWORD,
          ...PLAIN,
        },
      }),
    );
  }

  const query = { q: tag, per_page: 2, sort: "name" };
  const first = page(await client.api.GET("/api/v1/users", { params: { query } }));
  assert.deepEqual(
    first.items.map((user) => user.name),
    [`Ada ${tag}`, `Bea ${tag}`],
  );
  assert.equal(first.total, 3);
  assert.deepEqual(first.range, { start: 0, end: 1 });
  assert.equal(first.links.prev, undefined);
  assert.equal(first.links.next?.searchParams.get("page"), "2");
  assert.equal(first.links.next?.searchParams.get("q"), tag);
  assert.equal(first.links.last?.origin, BASE_URL);

  const second = page(
    await client.api.GET("/api/v1/users", { params: { query: { ...query, page: 2 } } }),
  );
  assert.deepEqual(
    second.items.map((user) => user.name),
    [`Cy ${tag}`],
  );
  assert.equal(second.total, 3);
  assert.deepEqual(second.range, { start: 2, end: 2 });
  assert.equal(second.links.next, undefined);

  const none = page(await client.api.GET("/api/v1/users", { params: { query: { q: "@@" } } }));
  assert.deepEqual(none.items, []);
  assert.equal(none.total, 0);
  assert.equal(none.range, null);
});

test("an expired access token is refreshed once and the request sent again", async () => {
  const { email, tokens } = await newSession();
  const stale = expired(tokens.accessToken);
  assert.equal(await status("/api/v1/users/me", stale), 401, "the server refuses it");
  // And only for its time: the same copy, still current, is accepted.
  assert.equal(await status("/api/v1/users/me", resigned(tokens.accessToken, 100)), 200);

  const network = recording();
  const seen: (Tokens | null)[] = [];
  const client = createApiClient({
    baseUrl: BASE_URL,
    fetch: network.fetch,
    tokens: { ...tokens, accessToken: stale },
    onTokens: (next) => seen.push(next),
  });
  const me = ok(await client.api.GET("/api/v1/users/me"));
  assert.equal(me.email, email);
  assert.deepEqual(network.paths, [
    "/api/v1/users/me",
    "/api/v1/auth/refresh",
    "/api/v1/users/me",
  ]);
  const renewed = client.tokens;
  assert.ok(renewed);
  assert.notEqual(renewed.accessToken, stale);
  assert.notEqual(renewed.refreshToken, tokens.refreshToken, "the refresh token was rotated");
  assert.deepEqual(seen, [renewed]);
  assert.equal(await status("/api/v1/users/me", renewed.accessToken), 200);
});

test("concurrent 401s wait for one refresh, then each is sent again, bodies included", async () => {
  const { email, tokens } = await newSession();
  const network = recording();
  const client = createApiClient({
    baseUrl: BASE_URL,
    fetch: network.fetch,
    tokens: { ...tokens, accessToken: expired(tokens.accessToken) },
  });
  const [me, renamed, users, sessions] = await Promise.all([
    client.api.GET("/api/v1/users/me"),
    client.api.PATCH("/api/v1/users/me", { body: { name: "Renamed Meanwhile" } }),
    client.api.GET("/api/v1/users", { params: { query: { q: email } } }),
    client.api.GET("/api/v1/users/me/sessions"),
  ]);
  assert.equal(network.refreshes(), 1, network.paths.join(", "));
  assert.equal(ok(me).email, email);
  assert.equal(ok(renamed).name, "Renamed Meanwhile");
  assert.equal(page(users).total, 1);
  assert.equal(ok(sessions).length, 1, "the one session lives on: no reuse was detected");
});

test("a 401 that comes back after the refresh is sent again without another", async () => {
  const { email, tokens } = await newSession();
  const network = recording();
  // The sessions call's 401 is held back until the other call has refreshed and retried.
  let release = (): void => {};
  const released = new Promise<void>((resolve) => (release = resolve));
  const slow: typeof fetch = async (input, init) => {
    const response = await network.fetch(input, init);
    const url = input instanceof Request ? input.url : String(input);
    if (response.status === 401 && url.endsWith("/me/sessions")) {
      await released;
    }
    return response;
  };
  const client = createApiClient({
    baseUrl: BASE_URL,
    fetch: slow,
    tokens: { ...tokens, accessToken: expired(tokens.accessToken) },
  });
  const sessions = client.api.GET("/api/v1/users/me/sessions");
  const me = ok(await client.api.GET("/api/v1/users/me"));
  assert.equal(me.email, email);
  assert.equal(network.refreshes(), 1);
  release();
  assert.equal(ok(await sessions).length, 1);
  assert.equal(network.refreshes(), 1, network.paths.join(", "));
  assert.equal(network.paths.filter((path) => path.endsWith("/me/sessions")).length, 2);
});

test("a refresh the server refuses logs out, and every waiting request gets its 401", async () => {
  const { tokens } = await newSession();
  // The session ends on the server (as from another tab, or an admin ending it).
  const ended = await fetch(`${BASE_URL}/api/v1/auth/logout`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token: tokens.refreshToken }),
  });
  assert.equal(ended.status, 204);

  const network = recording();
  const seen: (Tokens | null)[] = [];
  const client = createApiClient({
    baseUrl: BASE_URL,
    fetch: network.fetch,
    tokens: { ...tokens, accessToken: expired(tokens.accessToken) },
    onTokens: (next) => seen.push(next),
  });
  const results = await Promise.all([
    client.api.GET("/api/v1/users/me"),
    client.api.GET("/api/v1/users/me/sessions"),
    client.api.GET("/api/v1/users"),
  ]);
  for (const result of results) {
    assert.throws(() => ok<unknown>(result), { name: "ApiError", status: 401 });
  }
  assert.equal(network.refreshes(), 1, network.paths.join(", "));
  assert.equal(client.tokens, null);
  assert.deepEqual(seen, [null]);

  // Logged out: the next request goes out without a token and tries no refresh.
  network.paths.length = 0;
  const after = await client.api.GET("/api/v1/users/me");
  assert.equal(after.response.status, 401);
  assert.deepEqual(network.paths, ["/api/v1/users/me"]);
});

test("logout ends the session on the server and forgets the tokens", async () => {
  const { tokens } = await newSession();
  const seen: (Tokens | null)[] = [];
  const client = createApiClient({ baseUrl: BASE_URL, tokens, onTokens: (t) => seen.push(t) });
  await client.logout();
  assert.equal(client.tokens, null);
  assert.deepEqual(seen, [null]);
  assert.equal(await status("/api/v1/users/me", tokens.accessToken), 401);
});

test("a 409 and a 422 are ApiErrors carrying the problem's fields", async () => {
  const client = createApiClient({ baseUrl: BASE_URL });
  await client.login(ADMIN_EMAIL, ADMIN_PASSWORD);

  const taken = await client.api.POST("/api/v1/users", {
    body: { email: ADMIN_EMAIL, name: "Again", password: PASSWORD, ...PLAIN },
  });
  const conflict = catchApiError(() => ok(taken));
  assert.equal(conflict.status, 409);
  assert.equal(conflict.code, "email_taken");
  assert.equal(conflict.type, "urn:problem-type:users-api:email_taken");
  assert.equal(conflict.title, "Conflict");
  assert.match(conflict.detail, /already/i);
  assert.deepEqual(conflict.errors, []);
  assert.equal(conflict.response.headers.get("Content-Type"), "application/problem+json");

  const short = await client.api.POST("/api/v1/users", {
    body: { email: `short-${randomUUID()}@example.com`, name: "Short", password: "short", ...PLAIN },
  });
  const invalid = catchApiError(() => ok(short));
  assert.equal(invalid.status, 422);
  assert.equal(invalid.code, "validation_failed");
  assert.equal(invalid.errors.find((error) => error.field === "password")?.code, "password_too_short");
  assert.match(invalid.detail, /password/);
  assert.match(invalid.fieldError("password") ?? "", /at least 12 characters/);
  assert.equal(invalid.fieldError("email"), undefined);
  assert.equal(invalid.message, `422 ${invalid.title}: ${invalid.detail}`);
});

function catchApiError(call: () => unknown): ApiError {
  try {
    call();
  } catch (error) {
    assert.ok(error instanceof ApiError, String(error));
    return error;
  }
  return assert.fail("no error was thrown");
}
