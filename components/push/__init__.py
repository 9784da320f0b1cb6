"""Pushers of one blessed model's exports, all under one serving version."""
