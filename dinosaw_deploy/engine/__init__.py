"""Layer 2 — the engine: ONNX contract, ALiBi bias, preprocessing, manifests, FeatureExtractor, backends."""
