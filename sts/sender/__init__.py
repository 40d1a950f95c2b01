"""Sender-constrained tokens: DPoP proofs (RFC 9449) and certificate binding (RFC 8705 §3).

``dpop`` validates a proof (pure), ``nonce`` issues and checks stateless server nonces,
``binding`` builds the ``cnf`` claim, ``constraint`` applies the policy's
``sender_constraint``, and ``guard`` ties them to the request: proof checks, the replica-wide
``jti`` replay guard, and the errors sent to the caller.
"""
