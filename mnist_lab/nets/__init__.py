"""Networks as lists of typed blocks: the block types (blocks/, one module each, in one registry),
the config and its one builder and per-layer summary (model.py), and the named presets (presets.py)."""
