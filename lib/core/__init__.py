"""The bottom layer: replies, typed errors, wire codecs, addresses, passwords,
durable writes. Imports nothing else of lib."""
