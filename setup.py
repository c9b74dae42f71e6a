"""The package list: pyproject.toml cannot add a mapped package (``edgekit.profiles`` = the top-level ``targets/``
folder, see its ``[tool.setuptools.package-dir]``) to an automatic package search, so the search is here."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["edgekit", "edgekit.*"]), "edgekit.profiles"])
