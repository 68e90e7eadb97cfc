"""The web server around the deepshield engine: settings, REST API, Gradio UI, observability.

Nothing here touches tensors: every protection goes through `deepshield.engine.Engine`.
"""
