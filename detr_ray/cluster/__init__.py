"""The Ray cluster a command talks to: its address (``address.py``), the one
``ray.init()`` would find on this machine (``local.py``), joining or starting
it (``session.py``), what a run needs of it (``resources.py``) and the bounded
wait for that (``waiting.py``). Import from the module that owns a name."""
