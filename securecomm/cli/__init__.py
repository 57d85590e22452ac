"""Click only: parse options, call the layers below, print results.

Each command module imports click and nothing heavy at module level, so that
`securecomm --help` and tab completion stay fast; cryptography, asyncio and
sqlite3 are imported inside the command functions that need them.
"""
