"""Importers for the checkpoints users bring: Ultralytics / classic YOLOv5 pickles and YOLOX ``.pth`` files.

Each importer maps the upstream's layer names and class names onto edgekit's own module implementations,
written here from the architecture; no upstream package is ever imported.
"""
