"""Which Ray cluster a command talks to (``address.py``). Import from the module
that owns a name."""
