"""One module per CLI command; cli.py assembles them into the ``star-deploy`` app."""
