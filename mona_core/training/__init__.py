"""training stage of mona_core."""
