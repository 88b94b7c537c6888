"""metalora's built-in plugins.

Each sub-package is one plugin, registered through the ``metalora``
entry-point group in ``pyproject.toml`` exactly as a third-party package
would register its own.
"""
