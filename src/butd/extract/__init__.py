"""butd.extract."""
