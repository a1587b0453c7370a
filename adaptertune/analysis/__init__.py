"""Pure analyses on arrays and tables (no torch); plotting is confined to plots.py."""
