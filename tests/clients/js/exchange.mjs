// One RFC 8693 token exchange with openid-client, as an application would write it: discovery,
// a DPoP key pair and handle, then a generic grant request. Nothing here patches the library.
// Input (environment): STS_ISSUER, STS_SUBJECT_TOKEN, STS_AUDIENCE, STS_CLIENT_ID,
// STS_CLIENT_SECRET (absent: a public client), STS_DPOP ("1": use DPoP).
// Output: one JSON line {ok, token_type, access_token, dpop_jkt} or {ok: false, error, ...}.
import * as client from 'openid-client'

const env = process.env
try {
  const auth = env.STS_CLIENT_SECRET ? client.ClientSecretBasic(env.STS_CLIENT_SECRET) : client.None()
  const config = await client.discovery(new URL(env.STS_ISSUER), env.STS_CLIENT_ID, undefined, auth, {
    algorithm: 'oauth2',
    execute: [client.allowInsecureRequests], // the test broker listens on http://127.0.0.1
  })
  let DPoP
  let jkt = null
  if (env.STS_DPOP === '1') {
    const keyPair = await client.randomDPoPKeyPair('ES256')
    DPoP = client.getDPoPHandle(config, keyPair)
    const publicJwk = await crypto.subtle.exportKey('jwk', keyPair.publicKey)
    const members = JSON.stringify({ crv: publicJwk.crv, kty: publicJwk.kty, x: publicJwk.x, y: publicJwk.y })
    const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(members)))
    jkt = Buffer.from(digest).toString('base64url')
  }
  const tokens = await client.genericGrantRequest(config, 'urn:ietf:params:oauth:grant-type:token-exchange', {
    subject_token: env.STS_SUBJECT_TOKEN,
    subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
    audience: env.STS_AUDIENCE,
  }, DPoP ? { DPoP } : undefined)
  console.log(JSON.stringify({ ok: true, token_type: tokens.token_type, access_token: tokens.access_token, dpop_jkt: jkt }))
} catch (err) {
  console.log(JSON.stringify({ ok: false, name: err?.name, code: err?.code, error: err?.error, message: String(err?.message ?? err) }))
}
