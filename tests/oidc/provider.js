// A real OpenID Connect provider for the tests: panva's oidc-provider, configured from
// the environment by tests/oidc_provider.py, with its built-in login and consent pages
// (devInteractions: any password is accepted for a login listed in OIDC_ACCOUNTS).
//
//   OIDC_PORT       the port on 127.0.0.1 to listen on
//   OIDC_CLIENT     JSON: the one client (client_id, client_secret, redirect_uris)
//   OIDC_JWKS       JSON: {"keys": [private JWKs]}; the first signs ID tokens
//   OIDC_ACCOUNTS   JSON: {login: claims}; sub defaults to the login
//
// It prints "listening <issuer>" once it accepts connections.
import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_PORT);
const issuer = `http://127.0.0.1:${port}`;
const accounts = JSON.parse(process.env.OIDC_ACCOUNTS);

const provider = new Provider(issuer, {
  clients: [
    {
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      ...JSON.parse(process.env.OIDC_CLIENT),
    },
  ],
  jwks: JSON.parse(process.env.OIDC_JWKS),
  cookies: { keys: ['test-cookie-key-not-a-secret'] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  // The ID token carries the scopes' claims, as Google's and Entra ID's do.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  async findAccount(ctx, id) {
    const claims = accounts[id];
    if (!claims) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...claims }; } };
  },
});
provider.proxy = false;

provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${issuer}\n`);
});
