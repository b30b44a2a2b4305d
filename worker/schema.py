"""Every table module, imported once, so ``SQLModel.metadata`` is complete for Alembic and tests.

Table modules are ``worker/models.py`` and ``worker/models_<feature>.py``; adding one needs no edit here.
"""

from __future__ import annotations

import importlib
import pkgutil

from sqlalchemy import MetaData
from sqlmodel import SQLModel

import worker


def load_all_models() -> MetaData:
    for module in pkgutil.iter_modules(worker.__path__):
        if module.name == "models" or module.name.startswith("models_"):
            importlib.import_module(f"worker.{module.name}")
    return SQLModel.metadata
