"""Layer 4 — segmentation from scribbles: labels, filter bank, ViT channels, classifier, Segmenter, bundles, file jobs."""
