"""Level 2: trefoil mosaics (PTM, CTM) and the per-camera layers Level 3 consumes."""
