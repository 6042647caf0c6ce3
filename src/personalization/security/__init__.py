"""Security and data rights: API keys with scopes, rate limits and the audit log (issue 6)."""
