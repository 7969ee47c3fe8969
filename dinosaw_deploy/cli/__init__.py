"""The ``dinosaw-deploy`` command line (entry point :func:`main`)."""
from dinosaw_deploy.cli.main import main

__all__ = ["main"]
