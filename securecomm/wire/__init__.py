"""Sans-I/O protocol: bytes in, events out. Imports no asyncio, ssl, socket or sqlite3."""
