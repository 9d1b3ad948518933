"""Build script. The compiled hot path is added here (see issue 3); until then the
package is pure Python and setup.py only exists so `pip install -e .` works everywhere."""

from setuptools import setup

setup()
