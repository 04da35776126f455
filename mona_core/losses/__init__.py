"""losses stage of mona_core."""
