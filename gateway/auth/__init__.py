"""Identity and access: RS256 JWTs, refresh tokens, API keys, call tokens, roles."""
