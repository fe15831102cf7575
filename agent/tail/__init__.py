"""Files to lines to events: which files a source means (`files`), their bytes split into
lines (`lines`), an event's time (`eventtime`), and the file-system events that wake the
reader (`watch`).
"""
