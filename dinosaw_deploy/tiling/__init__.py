"""Layer 3 — the tiled core: tile grid, pipeline (tiles -> engine -> merger -> sink), sinks and stores, token samples, previews, seams."""
