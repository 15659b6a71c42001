"""butd.evaluate."""
