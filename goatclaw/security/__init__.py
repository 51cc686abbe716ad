"""Zero-trust runs: permissions, secrets, taint, the audit chain, threat scoring and side-effect rate limits."""
