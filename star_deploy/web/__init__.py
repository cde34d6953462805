"""STAR in a web browser: a static site that runs the exported graphs with onnxruntime-web.

``static/`` holds the page and its ES modules (the CLIP tokenizer, the portable sampler, the
scale loop); ``site.py`` writes a site folder from an artefact folder.
"""
