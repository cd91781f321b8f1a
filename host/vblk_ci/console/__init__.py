"""Serial console: background drain, failure pattern table and classifier."""
