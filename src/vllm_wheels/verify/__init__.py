"""Verification stage: ABI checks of built wheels against a runtime environment
(verify_abi) and, in its own modules, the throughput A/B (verify_throughput)."""
