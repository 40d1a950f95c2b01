// panva's oidc-provider 9.x with an RFC 8693 token-exchange grant, as a conformance-kit target.
//
// What a user of oidc-provider would build: the grant is registered with the public
// `registerGrantType`; the subject token is verified with panva's `jose.jwtVerify` against the
// kit's issuer JWKS, fetched with `createRemoteJWKSet` (so key rotation and the key cache can
// be tested). Verification: RS256/ES256 only, `iss`, `aud`, `exp`, `nbf`, `iat` (30 s tolerance),
// `sub` and `iat` required, lifetime at most 3600 s (`maxTokenAge`). The requested `audience`
// must be one of TARGETS; `scope` within "read write" (default "read"). Issued tokens are
// oidc-provider AccessTokens in its JWT format (RFC 9068, ES256), lifetime min(300 s, subject exp).
//
// Environment: PORT (default 18090), SUBJECT_ISSUER (default http://127.0.0.1:18091, the kit's
// issuer), SUBJECT_AUDIENCE (default https://sts.conformance.test), TARGETS (comma-separated,
// default https://api.conformance.test,https://second.conformance.test), CLIENT_SECRET.
// GET /readyz answers 200 once it listens.

import http from 'node:http';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

const GRANT_TYPE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const LIFETIME = 300;
const SCOPES = new Set(['read', 'write']);

const port = Number(process.env.PORT ?? '18090');
const subjectIssuer = process.env.SUBJECT_ISSUER ?? 'http://127.0.0.1:18091';
const subjectAudience = process.env.SUBJECT_AUDIENCE ?? 'https://sts.conformance.test';
const targets = new Set((process.env.TARGETS ?? 'https://api.conformance.test,https://second.conformance.test').split(','));
const issuer = `http://127.0.0.1:${port}`;

// Declared in the profile's [key_cache]: refetch at most once a second for unknown kids, keys
// older than 3 s are refetched, a fetch gives up after 1 s.
const subjectKeys = jose.createRemoteJWKSet(new URL(`${subjectIssuer}/jwks`), {
  cooldownDuration: 1000,
  cacheMaxAge: 3000,
  timeoutDuration: 1000,
});

const { privateKey } = await jose.generateKeyPair('ES256', { extractable: true });
const signingJwk = { ...(await jose.exportJWK(privateKey)), kid: 'oidc-provider-1', alg: 'ES256', use: 'sig' };

const resourceServer = (audience) => ({
  audience,
  scope: [...SCOPES].join(' '),
  accessTokenTTL: LIFETIME,
  accessTokenFormat: 'jwt',
  jwt: { sign: { alg: 'ES256' } },
  identifier: () => audience,
});

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'conformance-client',
    client_secret: process.env.CLIENT_SECRET ?? 'conformance-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: [GRANT_TYPE],
    redirect_uris: [],
    response_types: [],
  }],
  jwks: { keys: [signingJwk] },
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  features: { devInteractions: { enabled: false } },
  ttl: { AccessToken: LIFETIME },
  cookies: { keys: ['conformance-cookie-key-not-used-by-the-token-endpoint'] },
});

async function tokenExchange(ctx) {
  const { params, client } = ctx.oidc;
  if (!params.subject_token || !params.subject_token_type) {
    throw new errors.InvalidRequest('subject_token and subject_token_type are required');
  }
  if (params.subject_token_type !== JWT_TYPE) {
    throw new errors.InvalidRequest('unsupported subject_token_type');
  }
  // Delegation is not supported: an actor token (or half of the pair) is refused, never ignored.
  if (params.actor_token || params.actor_token_type) {
    throw new errors.InvalidRequest('actor tokens are not supported');
  }
  if (params.requested_token_type && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('unsupported requested_token_type');
  }
  let claims;
  try {
    ({ payload: claims } = await jose.jwtVerify(params.subject_token, subjectKeys, {
      issuer: subjectIssuer,
      audience: subjectAudience,
      algorithms: ['RS256', 'ES256'],
      requiredClaims: ['exp', 'sub', 'iat'],
      clockTolerance: 30,
      maxTokenAge: '3600s',
    }));
  } catch {
    // RFC 8693 §2.2.2: an invalid subject token is invalid_request.
    throw new errors.InvalidRequest('invalid subject_token');
  }
  // One audience per token: several are refused as an invalid target (RFC 8693 §2.2.2).
  if (!params.audience || Array.isArray(params.audience) || !targets.has(params.audience)) {
    throw new errors.InvalidTarget();
  }
  const scope = params.scope ?? 'read';
  if (!scope.split(' ').every((s) => SCOPES.has(s))) {
    throw new errors.InvalidScope('requested scope is not allowed', scope);
  }
  const now = Math.floor(Date.now() / 1000);
  const token = new provider.AccessToken({
    accountId: claims.sub,
    client,
    gty: GRANT_TYPE,
    scope,
    resourceServer: resourceServer(params.audience),
    expiresIn: Math.max(1, Math.min(LIFETIME, claims.exp - now)),
  });
  ctx.oidc.entity('AccessToken', token);
  const accessToken = await token.save();
  ctx.body = {
    access_token: accessToken,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope,
  };
}

provider.registerGrantType(GRANT_TYPE, tokenExchange, [
  'subject_token', 'subject_token_type', 'audience', 'scope', 'requested_token_type',
  'actor_token', 'actor_token_type',
], ['audience']);

const callback = provider.callback();
http.createServer((req, res) => {
  if (req.url === '/readyz') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"status":"ready"}');
    return;
  }
  callback(req, res);
}).listen(port, '127.0.0.1');
