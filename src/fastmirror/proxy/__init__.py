"""The data plane: a client's bytes in, the primary's answer out, a copy to each shadow.

listener (accept, connection cap) -> downstream (one client connection: codec, router,
the primary exchange, the mirror tee) -> pool -> the primary; mirror (bounded queues that
drop) -> shadow -> pool -> the shadows. context holds what every connection of a worker
shares: the settings built from one config, and the live state.
"""
