"""Provider adapters: one module per provider behind the :class:`integrations.base.Provider` port."""
