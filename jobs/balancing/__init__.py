"""Balancing: distributed k nearest neighbours and per-fold oversampling into gold."""
