"""The modelling layer: ragged grouped data, parameter constraints, the two-level model interface, built-in models and structured draws."""
