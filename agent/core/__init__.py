"""Below everything: errors, files the agent writes, report periods, period figures, text.

Standard library only, and pure apart from `fs`: data in, data out, no clock not passed in.
"""
