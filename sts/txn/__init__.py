"""Transaction tokens (draft-ietf-oauth-transaction-tokens-10): the pure decision and claims
(``decision``) and the check of a transaction token this broker issued (``verify``)."""
