"""butd.train."""
