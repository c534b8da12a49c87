"""Pydantic models of OSCAR's objects and the pure rules on them; no I/O, no framework."""
