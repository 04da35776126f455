"""inference stage of mona_core."""
