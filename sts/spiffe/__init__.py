"""SPIFFE workload identity: SPIFFE IDs, trust bundles, JWT-SVIDs and X.509-SVIDs over mTLS.

Modules (each names the specification sections it implements): ``id`` (SPIFFE-ID.md §2),
``bundle`` (Trust Domain and Bundle §4), ``bundle_source`` (Federation §4-§6), ``jwtsvid``
(JWT-SVID.md), ``x509svid`` (X509-SVID.md §5), ``mtls`` (the ``mtls`` token type and
forwarded client certificates), ``tls`` (TLS termination under uvicorn), ``mapping`` and
``verifier`` (the pipeline's view). Nothing is imported here, so that light modules (``id``,
``mtls``) can be used without loading the rest.
"""
