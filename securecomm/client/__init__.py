"""The user wing: connection, trust, login, directory, messenger, rooms, events, chat.

Imports net/, wire/, crypto/ and errors; never server/ and never cli/.
"""
