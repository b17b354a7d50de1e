"""Small apps the framework and server tests drive (they are test fixtures, not examples)."""
