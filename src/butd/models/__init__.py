"""butd.models."""
