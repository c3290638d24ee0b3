"""Migration scripts (a package so that a plain ``pip install .`` ships them)."""
