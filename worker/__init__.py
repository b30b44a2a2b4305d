"""carenotify worker: models, services, actors, broker and the composition root."""
