"""Level 0: packets from the catalog to images with L0 metadata and a preliminary WCS."""
