"""JWTs as authorization grants: the RFC 7523 JWT-bearer grant and the ID-JAG profile of it.

The token endpoint parses a JWT-bearer request into the same ``ExchangeRequest`` as a token
exchange (``sts.protocol.parse_jwt_bearer_params``) and runs the same pipeline
(``sts.exchange``); this package holds only what the grant's own documents add: the checks of
an assertion as a grant (``grant.admit_assertion``) and the error code they answer with
(``grant.as_invalid_grant``). See docs/jwt-bearer.md.
"""
