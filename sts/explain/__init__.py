"""``sts explain``: the exchange pipeline run with a recorder and side-effect-free twins.

Explaining a decision must never disagree with the server, so nothing here decides anything:
:func:`sts.explain.run.explain_exchange` builds the runtime from the configuration exactly as
``sts serve`` does (``sts.runtime.build_runtime``), wraps its parts in recording twins
(:mod:`sts.explain.twins`) and runs ``sts.exchange.TokenExchanger.exchange``, the server's own
pipeline, with twins of the writer (no one-time ``jti`` is spent), the audit sink (nothing is
written), the signer (nothing is signed) and the status-list allocator (no index is reserved).
The report is what the twins observed, plus the per-rule and per-grant traces of
``sts.trust.explain``, which tests pin equal to the decisions they describe.
"""
