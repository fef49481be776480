"""Fitting the same models with Stan: programs and back-ends."""
