"""bench/run.py's sections, one module each (see run.py's docstring); common: what they share."""
