"""``python -m star_deploy``: the same command line as ``star-deploy``."""

from .cli import entry

entry()
