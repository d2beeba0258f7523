"""The HTTP surface: one route table (which routes are open and which need a token), the bearer
token middleware, JSON errors, the OpenAPI document built from the same table, and the handlers:
metrics and health (open), the live preview, /v1/detect and /v1/cameras (protected)."""
