"""metrics stage of mona_core."""
