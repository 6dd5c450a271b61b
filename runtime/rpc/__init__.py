"""gRPC plumbing shared by every service: servers, channels, the cluster-token check.

``server.create_server`` binds and returns the port; ``channel.connect`` opens a channel
whose calls carry the token via ``channel.token_metadata``; ``interceptors`` rejects calls
without the right token. Nothing here knows about tasks or tables.
"""
