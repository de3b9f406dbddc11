"""Level Q (QuickPUNCH): near-real-time mosaics for space-weather forecasters, CQM, CFM, CTM and QAM."""
