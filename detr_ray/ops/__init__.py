"""Operations the math is built from: box formats and overlaps (``boxes.py``) and
the few collectives the core needs, no-ops without a process group (``dist.py``).
Import from the module that owns a name."""
