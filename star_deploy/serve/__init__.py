"""Serving STAR on Ray Serve: HTTP API, dynamic batching, progressive previews and a web page."""
