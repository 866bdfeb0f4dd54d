"""Built-in model plugins, one package per model family (installed as `byzer_like_models`).

Each package exposes `plugin`, registered in the `byzer_like.models` entry-point group.
"""
