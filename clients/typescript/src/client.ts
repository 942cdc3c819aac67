/**
 * A small client for the Users API: openapi-fetch typed by schema.d.ts (generated
 * from the API's OpenAPI document), plus what every front end needs on top of it:
 * logging in, a bearer token on each request, one refresh when it expires, list totals
 * from the paging headers, and problem+json errors as a typed ApiError.
 */
import createClient, { type Client, type Middleware } from "openapi-fetch";
import type { components, paths } from "./schema.js";

export type { components, paths };
export type User = components["schemas"]["UserPublic"];
export type LoginResponse = components["schemas"]["LoginResponse"];
export type Problem = components["schemas"]["Problem"];
export type FieldError = components["schemas"]["FieldError"];
/** Every `code` a problem can carry: switch on it, not on the English of `detail`. */
export type ProblemCode = components["schemas"]["ProblemCode"];
/** How a login's second step may be proven: "totp", "recovery_code". */
export type MfaMethod = components["schemas"]["MfaMethod"];

/** What a login answered with `mfa_required`: send `token` and a code to verifyMfa(). */
export interface MfaChallenge {
  token: string;
  /** Seconds until the token expires. */
  expiresIn: number;
  methods: MfaMethod[];
}

/** The pair a login hands out. Keep it in memory: the refresh token lasts 14 days. */
export interface Tokens {
  accessToken: string;
  refreshToken: string;
}

// `satisfies`: a path the API renames or drops stops this file compiling.
const LOGIN = "/api/v1/auth/login" satisfies keyof paths;
const REGISTER = "/api/v1/auth/register" satisfies keyof paths;
const REFRESH = "/api/v1/auth/refresh" satisfies keyof paths;
const LOGOUT = "/api/v1/auth/logout" satisfies keyof paths;
const LOGOUT_ALL = "/api/v1/auth/logout-all" satisfies keyof paths;
const CHANGE_PASSWORD = "/api/v1/users/me/password" satisfies keyof paths;
const VERIFY_MFA = "/api/v1/auth/mfa/verify" satisfies keyof paths;

/** Answer a LoginResponse: a new pair to keep (a password change ends the old one). */
const ISSUING = new Set<string>([LOGIN, REGISTER, REFRESH, CHANGE_PASSWORD, VERIFY_MFA]);
/** End the session the tokens belong to. */
const ENDING = new Set<string>([LOGOUT, LOGOUT_ALL]);
/** Take no access token: a 401 from them is about the credentials or the refresh token
 * sent, which a refresh cannot fix (and logout retried would replay a rotated token). */
const NO_BEARER = new Set<string>([LOGIN, REGISTER, REFRESH, LOGOUT, VERIFY_MFA]);

/** An error response, from its problem+json body (RFC 9457). */
export class ApiError extends Error {
  readonly status: number;
  readonly title: string;
  /** A sentence for a person. */
  readonly detail: string;
  /** Stable, for programs ("email_taken", "session_expired"...); null when the answer
   * was not problem+json (a proxy's 502, say). */
  readonly code: ProblemCode | null;
  readonly type: string;
  /** For a 422: which fields were refused, and why. */
  readonly errors: FieldError[];
  /** Quote it when reporting a 500. */
  readonly requestId: string | null;
  /** The whole response, for its headers (`Retry-After` on a 429 or 503). */
  readonly response: Response;
  /** With the code `mfa_required` (a login whose password passed): the second step's
   * token and methods, for verifyMfa(); null otherwise. */
  readonly mfa: MfaChallenge | null;

  constructor(response: Response, body: unknown) {
    const problem = isProblem(body) ? body : null;
    const title = problem?.title ?? (response.statusText || `HTTP ${response.status}`);
    const detail = problem?.detail ?? (typeof body === "string" && body ? body : title);
    super(`${response.status} ${title}: ${detail}`);
    this.name = "ApiError";
    this.status = response.status;
    this.title = title;
    this.detail = detail;
    this.code = problem?.code ?? null;
    this.type = problem?.type ?? "about:blank";
    this.errors = problem?.errors ?? [];
    this.requestId = problem?.request_id ?? response.headers.get("X-Request-ID");
    this.response = response;
    this.mfa = null;
    if (problem?.code === "mfa_required") {
      const login = problem as LoginProblem;
      if (login.mfa_token && login.expires_in != null && login.methods) {
        this.mfa = { token: login.mfa_token, expiresIn: login.expires_in, methods: login.methods };
      }
    }
  }

  /** The message for one field of a 422, to show next to its input. */
  fieldError(field: string): string | undefined {
    return this.errors.find((error) => error.field === field)?.message;
  }
}

type LoginProblem = components["schemas"]["LoginProblem"];

function isProblem(body: unknown): body is Problem {
  return (
    typeof body === "object" &&
    body !== null &&
    typeof (body as Problem).status === "number" &&
    typeof (body as Problem).title === "string"
  );
}

/** What openapi-fetch resolves to: data on success, error (the parsed body) otherwise. */
interface Result<T> {
  data?: T;
  error?: unknown;
  response: Response;
}

/** The data of a successful call; an ApiError for any other status. */
export function ok<T>(result: Result<T>): T {
  if (!result.response.ok) {
    throw new ApiError(result.response, result.error);
  }
  return result.data as T;
}

export type PageLink = "first" | "prev" | "next" | "last";

export interface Page<T> {
  items: T[];
  /** Every record matching the filters (X-Total-Count), not just this page's. */
  total: number;
  /** Where this page lies among them (Content-Range, offsets from 0); null when empty. */
  range: { start: number; end: number } | null;
  /** RFC 8288 links (Link), each an absolute URL with the same filters and sort. */
  links: Partial<Record<PageLink, URL>>;
}

/** A list call's items with its paging headers; an ApiError for an error status. */
export function page<T>(result: Result<T[]>): Page<T> {
  const items = ok(result);
  const { headers, url } = result.response;
  const total = Number(headers.get("X-Total-Count"));
  if (headers.get("X-Total-Count") === null || !Number.isInteger(total)) {
    throw new Error(`${url} answered no X-Total-Count: not a list`);
  }
  const span = /^\S+ (\d+)-(\d+)\/\d+$/.exec(headers.get("Content-Range") ?? "");
  const range = span ? { start: Number(span[1]), end: Number(span[2]) } : null;
  const links: Partial<Record<PageLink, URL>> = {};
  for (const [, target = "", rel] of (headers.get("Link") ?? "").matchAll(
    /<([^>]*)>\s*;\s*rel="?(first|prev|next|last)"?/g,
  )) {
    links[rel as PageLink] = new URL(target, url);
  }
  return { items, total, range, links };
}

export interface ApiClientOptions {
  /** The server's origin, e.g. http://127.0.0.1:8000 (the paths carry /api/v1). */
  baseUrl: string;
  /** Tokens of a session to resume. */
  tokens?: Tokens | null;
  /** Called whenever the tokens change: a login, a refresh, a password change; null once
   * logged out (a logout, or a refresh the server refused). */
  onTokens?: (tokens: Tokens | null) => void;
  /** Another fetch (to log requests, or send credentials through a proxy). */
  fetch?: typeof globalThis.fetch;
}

export interface ApiClient {
  /** The typed client: `api.GET("/api/v1/users/me")`; bearer and refresh included. */
  readonly api: Client<paths>;
  readonly tokens: Tokens | null;
  /** Log in with JSON credentials; the tokens are kept by the client. For an account
   * with a second factor it throws an ApiError whose `mfa` is set: pass its token and
   * the user's code to verifyMfa(). */
  login(email: string, password: string): Promise<LoginResponse>;
  /** The second step of a login that answered `mfa_required`: its token and a code
   * from the authenticator app (or a recovery code); the tokens are kept, as login's. */
  verifyMfa(mfaToken: string, code: string): Promise<LoginResponse>;
  /** End this session on the server and forget its tokens. */
  logout(): Promise<void>;
  /** Trade the refresh token for a new pair: true if it worked. Calls made while one
   * is in flight share it. Requests call it by themselves on a 401. */
  refresh(): Promise<boolean>;
}

export function createApiClient(options: ApiClientOptions): ApiClient {
  let tokens = options.tokens ?? null;
  let refreshing: Promise<boolean> | null = null;
  // Per request: the access token it carried, and a copy to send again after a refresh
  // (the original's body is consumed by then).
  const sent = new Map<string, { token: string; copy: Request }>();

  const api = createClient<paths>({ baseUrl: options.baseUrl, fetch: options.fetch });

  function setTokens(next: Tokens | null): void {
    if (next === null && tokens === null) {
      return;
    }
    tokens = next;
    options.onTokens?.(next);
  }

  function refresh(): Promise<boolean> {
    refreshing ??= (async () => {
      try {
        if (!tokens) {
          return false;
        }
        const { response } = await api.POST(REFRESH, {
          body: { refresh_token: tokens.refreshToken },
        });
        // 401: expired, revoked or reused; 403: the account was deactivated. Anything
        // else (429, 503) may pass, so the session is kept for the next try.
        if (response.status === 401 || response.status === 403) {
          setTokens(null);
        }
        return response.ok; // the new pair was kept on its way through the middleware
      } finally {
        refreshing = null;
      }
    })();
    return refreshing;
  }

  /** The token to retry a refused request with, or null when logged out. */
  async function tokenAfter(refused: string): Promise<string | null> {
    if (!tokens) {
      return null;
    }
    if (tokens.accessToken !== refused) {
      return tokens.accessToken; // a refresh that finished after this request was sent
    }
    return (await refresh()) ? (tokens?.accessToken ?? null) : null;
  }

  async function follow(schemaPath: string, response: Response): Promise<void> {
    if (ISSUING.has(schemaPath)) {
      const body = (await response.clone().json()) as LoginResponse;
      // Null with cookie transport, which this client does not use.
      if (body.refresh_token) {
        setTokens({ accessToken: body.access_token, refreshToken: body.refresh_token });
      }
    } else if (ENDING.has(schemaPath)) {
      setTokens(null);
    }
  }

  const auth: Middleware = {
    onRequest({ request, schemaPath, id }) {
      if (!tokens || NO_BEARER.has(schemaPath) || request.headers.has("Authorization")) {
        return;
      }
      request.headers.set("Authorization", `Bearer ${tokens.accessToken}`);
      sent.set(id, { token: tokens.accessToken, copy: request.clone() });
      return request;
    },
    async onResponse({ response, schemaPath, id, options: { fetch } }) {
      const attempt = sent.get(id);
      sent.delete(id);
      let final = response;
      if (response.status === 401 && attempt) {
        const token = await tokenAfter(attempt.token);
        if (token) {
          attempt.copy.headers.set("Authorization", `Bearer ${token}`);
          final = await fetch(attempt.copy);
        }
      }
      if (final.ok) {
        await follow(schemaPath, final);
      }
      return final;
    },
    onError({ id }) {
      sent.delete(id);
    },
  };
  api.use(auth);

  return {
    api,
    get tokens() {
      return tokens;
    },
    async login(email, password) {
      return ok(await api.POST(LOGIN, { body: { email, password } }));
    },
    async verifyMfa(mfaToken, code) {
      return ok(await api.POST(VERIFY_MFA, { body: { mfa_token: mfaToken, code } }));
    },
    async logout() {
      if (!tokens) {
        return;
      }
      try {
        // 401 when the session already ended: logged out either way.
        await api.POST(LOGOUT, { body: { refresh_token: tokens.refreshToken } });
      } finally {
        setTokens(null);
      }
    },
    refresh,
  };
}
