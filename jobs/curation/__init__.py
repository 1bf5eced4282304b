"""Curation: clean, dedup and split, silver written in one commit."""
