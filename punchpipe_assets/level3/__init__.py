"""Level 3: F-corona models ``PF{n}``/``CF{n}`` and the F-corona-subtracted mosaics ``PIM``/``CIM``."""
