"""What an artefact folder holds and how it is read: the manifest, its schema and digests, graph checks.

Below both the exporter (``star_deploy.export`` writes such folders) and every runtime (backends,
engines, the pipeline and the API read them), so no runtime module imports the exporter.
"""
