"""export stage of mona_core."""
