//! JWT bearer identity (`serve.jwt`): platform-injected tokens verified against a JWKS.
