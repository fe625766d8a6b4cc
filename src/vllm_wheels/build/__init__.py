"""Build stage."""
