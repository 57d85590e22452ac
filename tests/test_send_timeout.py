"""client/sending.py OneRetry: what a send that ran out of time says, by whether its message was written."""

from __future__ import annotations

import pytest


def test_a_send_that_never_wrote_its_message_does_not_blame_the_receipt():
    """The spec client's check (stop 26): a key lookup (prekeys_claim) that never answered ended `send --to`
    with "no receipt from the server ... the server may have stored it", though no DIRECT was ever sent."""
    import asyncio

    from securecomm.client.sending import OneRetry
    from securecomm.errors import NetworkError

    async def stalled(retry: OneRetry, wrote: bool) -> None:
        if wrote:
            retry.copies += 1
        await asyncio.sleep(5)

    for wrote, words in ((False, "nothing was sent"), (True, "no receipt from the server")):
        retry = OneRetry(0.05, lambda _text: None)
        with pytest.raises(NetworkError) as e:
            asyncio.run(retry.run(lambda r=retry, w=wrote: stalled(r, w)))
        assert words in e.value.message, e.value.message
