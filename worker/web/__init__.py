"""HTTP ingress (FastAPI)."""
