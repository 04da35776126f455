"""data stage of mona_core."""
