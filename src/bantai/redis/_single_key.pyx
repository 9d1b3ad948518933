# cython: language_level=3, annotation_typing=False
# The compiled twin of `single_key.py`: the same source, compiled (see that module).
include "single_key.py"
