"""asyncio + ssl adapters that move bytes through securecomm.wire."""
