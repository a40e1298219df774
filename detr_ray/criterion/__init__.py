"""What training minimises: the batched Hungarian matcher (``matcher.py``), DETR's
set loss (``set_loss.py``) and the dense auxiliary head's loss (``dense_loss.py``).
Pure torch and scipy. Import from the module that owns a name."""
