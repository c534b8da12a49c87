"""Supervised background loops, started and stopped with the application."""
