// A real OpenID Provider for the sign-in tests (panva/node-oidc-provider), on loopback.
//
//   PORT=… OIDC_CONFIG='{"clients": [...], "accounts": {...}, "jwks": {...}}' node provider.mjs
//
// clients: [{client_id, client_secret, redirect_uris}]; accounts: login -> claims
// ({sub, email, email_verified, name}); jwks: the signing keys (private JWKs), so a
// test can rotate them by restarting with another set. The development login and
// consent pages of oidc-provider are used: any password is accepted for a known login.
import Provider from "oidc-provider";

const port = Number(process.env.PORT);
const config = JSON.parse(process.env.OIDC_CONFIG);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: config.clients.map((client) => ({
    grant_types: ["authorization_code"],
    response_types: ["code"],
    token_endpoint_auth_method: "client_secret_basic",
    ...client,
  })),
  pkce: { required: () => true }, // every client must send a code challenge (S256)
  claims: { openid: ["sub"], email: ["email", "email_verified"], profile: ["name"] },
  jwks: config.jwks,
  cookies: { keys: ["atoll-tests-only-cookie-key"] },
  features: { devInteractions: { enabled: true } },
  async findAccount(_ctx, id) {
    const account = config.accounts[id];
    if (!account) return undefined;
    return { accountId: id, async claims() { return { ...account, sub: account.sub ?? id }; } };
  },
});
provider.on("server_error", (_ctx, error) => console.error("server_error", error));
provider.listen(port, "127.0.0.1", () => console.log(`ready ${issuer}`));
