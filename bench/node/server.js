// The benchmark's Node peer: panva's oidc-provider 9.x with an RFC 8693 token-exchange grant
// (§2.1 request, §2.2.1 response, §2.2.2 errors) registered through its public
// `registerGrantType`. It is what a user would build instead of the broker, so the benchmark
// compares the broker with it under the same traffic.
//
// Per request (POST /token, form body), in this order:
//   1. oidc-provider's token endpoint: no-cache headers, urlencoded body parsing, parameter
//      allowlist, client lookup by `client_id` (one static public client,
//      token_endpoint_auth_method "none"), duplicate and grant-type checks;
//   2. this grant: subject_token_type must be the JWT type; the subject token is verified with
//      `jose.jwtVerify` against the issuer's JWKS (keys imported once, cached by jose): signature
//      (RS256 or ES256 only), `iss`, `aud`, `exp` (and `nbf`/`iat` when present), `sub` required;
//   3. the requested `audience` must be the one resource server this peer knows (the broker's
//      grants say the same for the measured tokens); `scope` must be within "read write",
//      default "read";
//   4. an AccessToken model (sub = the subject's `sub`, lifetime min(900 s, subject exp)) in
//      oidc-provider's JWT format: signed ES256 with the provider's own key, `typ: at+jwt`;
//      JWT access tokens are not stored (no adapter write);
//   5. the RFC 8693 §2.2.1 JSON answer, Cache-Control: no-store.
// No database, no audit record, no self-check of the issued token, no log line per request.
//
// Environment: BENCH_PEER_PORT, BENCH_PEER_JWKS (the subject issuer's JWKS file),
// BENCH_PEER_SUBJECT_ISSUER, BENCH_PEER_AUDIENCE (expected `aud` of subject tokens),
// BENCH_PEER_TARGET (the resource server), BENCH_PEER_WORKERS (node:cluster workers, default 1).
// GET /readyz answers 200 once a worker listens.

import cluster from 'node:cluster';
import http from 'node:http';
import { readFileSync } from 'node:fs';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

const GRANT_TYPE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const CLIENT_ID = 'bench-peer';
const LIFETIME = 900;
const SCOPES = new Set(['read', 'write']);
const DEFAULT_SCOPE = 'read';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) {
    throw new Error(`${name} is not set`);
  }
  return value;
};

const port = Number(env('BENCH_PEER_PORT'));
const workers = Number(env('BENCH_PEER_WORKERS', '1'));

// The signing key of issued tokens: one P-256 key generated at start (like the floor's),
// shared by all cluster workers as it would be in a deployment.
async function generateSigningJwk() {
  const { privateKey } = await jose.generateKeyPair('ES256', { extractable: true });
  return { ...(await jose.exportJWK(privateKey)), kid: 'peer-1', alg: 'ES256', use: 'sig' };
}

async function startWorker() {
  const subjectIssuer = env('BENCH_PEER_SUBJECT_ISSUER');
  const subjectAudience = env('BENCH_PEER_AUDIENCE');
  const target = env('BENCH_PEER_TARGET');
  const subjectKeys = jose.createLocalJWKSet(JSON.parse(readFileSync(env('BENCH_PEER_JWKS'), 'utf8')));

  const signingJwk = process.env.BENCH_PEER_SIGNING_JWK
    ? JSON.parse(process.env.BENCH_PEER_SIGNING_JWK)
    : await generateSigningJwk();

  // The one resource server, in the shape oidc-provider's JWT format reads from
  // `token.resourceServer` (what features.resourceIndicators.getResourceServerInfo returns).
  const resourceServer = {
    audience: target,
    scope: [...SCOPES].join(' '),
    accessTokenTTL: LIFETIME,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'ES256' } },
    identifier: () => target,
  };

  const provider = new Provider('https://peer.bench.example', {
    clients: [{
      client_id: CLIENT_ID,
      token_endpoint_auth_method: 'none',
      grant_types: [GRANT_TYPE],
      redirect_uris: [],
      response_types: [],
    }],
    jwks: { keys: [signingJwk] },
    clientDefaults: { id_token_signed_response_alg: 'ES256' },
    features: { devInteractions: { enabled: false } },
    ttl: { AccessToken: LIFETIME },
    cookies: { keys: ['bench-peer-cookie-key-not-used-by-the-token-endpoint'] },
  });

  async function tokenExchange(ctx) {
    const { params, client } = ctx.oidc;
    if (params.subject_token_type !== JWT_TYPE) {
      throw new errors.InvalidRequest('unsupported subject_token_type');
    }
    if (!params.subject_token) {
      throw new errors.InvalidRequest('missing subject_token');
    }
    let claims;
    try {
      ({ payload: claims } = await jose.jwtVerify(params.subject_token, subjectKeys, {
        issuer: subjectIssuer,
        audience: subjectAudience,
        algorithms: ['RS256', 'ES256'],
        requiredClaims: ['exp', 'sub'],
      }));
    } catch {
      // RFC 8693 §2.2.2: an invalid subject token is invalid_request.
      throw new errors.InvalidRequest('invalid subject_token');
    }
    if (params.audience !== target) {
      throw new errors.InvalidTarget();
    }
    const scope = params.scope ?? DEFAULT_SCOPE;
    if (!scope.split(' ').every((s) => SCOPES.has(s))) {
      throw new errors.InvalidScope('requested scope is not allowed', scope);
    }
    const now = Math.floor(Date.now() / 1000);
    const token = new provider.AccessToken({
      accountId: claims.sub,
      client,
      gty: GRANT_TYPE,
      scope,
      resourceServer,
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
  ]);

  const callback = provider.callback();
  const server = http.createServer((req, res) => {
    if (req.url === '/readyz') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"status":"ready"}');
      return;
    }
    callback(req, res);
  });
  server.listen(port, '127.0.0.1');
}

if (workers > 1 && cluster.isPrimary) {
  process.env.BENCH_PEER_SIGNING_JWK = JSON.stringify(await generateSigningJwk());
  for (let i = 0; i < workers; i += 1) {
    cluster.fork();
  }
  cluster.on('exit', (worker, code, signal) => {
    if (signal !== 'SIGTERM') {
      console.error(`worker ${worker.process.pid} exited (${signal || code})`);
      process.exit(1);
    }
  });
  const stop = () => {
    for (const worker of Object.values(cluster.workers)) {
      worker.process.kill('SIGTERM');
    }
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  startWorker().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
