"""Mail leaving the server: next hop, the SMTP client, the queue runner, typed
results, DSNs."""
