"""The OAuth 2.1 authorization server in front of /mcp: discovery, registration, login/consent pages, tokens."""

from interfaces.oauth.routes import oauth_audience, oauth_routes

__all__ = ["oauth_audience", "oauth_routes"]
