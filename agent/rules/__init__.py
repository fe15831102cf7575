"""The rules in `rules_dir`: conditions and `when` windows compiled once (`match`), the index
that finds the candidate rules of an event (`routes`), rule files and reloads (`load`).
"""
