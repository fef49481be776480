"""Summary networks and conditional flows."""
