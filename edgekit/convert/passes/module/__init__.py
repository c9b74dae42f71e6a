"""Module passes: torch ``nn.Module`` rewrites applied before export, one pass per module.

Each pass recognises its pattern by structure (what a module's forward does with its children,
or a documented attribute layout), not by edgekit class names, so third-party models with the same
pattern are rewritten too. The stages that run them, in order: :mod:`edgekit.convert.passes.pipeline`.
"""
