"""Policies that emit distributions over discretised action tokens."""
