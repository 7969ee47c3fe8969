"""Build side of dinosaw-deploy (needs the ``export`` extra: torch, onnx, huggingface_hub).

Installed as :mod:`dinosaw_deploy.export`; the runtime never imports it.
"""
