"""The conformance kit's own tests: it passes a correct target and catches broken ones."""
