"""Authentication: passwords, tokens, sessions — and the one token-validation path."""
