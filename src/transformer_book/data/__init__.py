"""Data sets the book makes itself, from installed packages only: no downloads."""
