"""Everything on disk: Maildirs, the outbound queue, the intake that commits a
message to both, and data_dir's own files (lock, reload status)."""
