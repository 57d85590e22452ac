"""SQLite storage: schema and migrations, users (Argon2id), messages.

The server talks to storage only through `Store` (db.py); a second backend
would implement the same methods.
"""
