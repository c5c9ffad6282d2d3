"""What every protocol engine takes and returns (the Engine protocol, ClientInfo,
Step) and the Runtime and Services a session is given."""
