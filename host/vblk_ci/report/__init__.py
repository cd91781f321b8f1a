"""Reporters: JSON, JUnit, Markdown step summary, terminal progress."""
