"""What a run leaves behind: the results store (SQLite) and its kept weights."""
