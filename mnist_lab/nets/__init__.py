"""Networks as lists of typed blocks: the block types, the presets, the one builder and the per-layer summary."""
