"""The relay wing: listener, session, auth, relay, commit queue. Never imports securecomm.client."""
