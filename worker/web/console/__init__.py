"""The operators' web console at ``/console``: patient activity, dead letters, provider health, campaigns."""

from worker.web.console.routes import install_console

__all__ = ["install_console"]
