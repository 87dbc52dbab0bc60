"""Godwit console: the Qt user interface. Reaches the engine only through :mod:`app.bridge`."""
