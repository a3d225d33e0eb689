"""Package discovery: every package under ``neve_tune/``, plus the study files.

Everything else is declared in pyproject.toml. The study files live at the top, in
``studies/`` (where users read them), and ship as ``neve_tune.studies`` (the mapping is in
pyproject.toml). ``[tool.setuptools.packages.find]`` cannot add a package that lives
outside the tree it searches, hence ``find_packages`` here; tests/test_wheel.py builds the
wheel and imports every subpackage and study from it.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["neve_tune", "neve_tune.*"]), "neve_tune.studies"])
