"""Who a client is and what it may do: trust, logins and their throttle,
connection caps, inbound back-pressure, the content filter."""
