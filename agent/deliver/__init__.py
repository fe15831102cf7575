"""Messages on disk until a server has taken them (`outbox`), and the SMTP transport and
doctor (`smtp`).
"""
