"""The INI file parsed once into a frozen Config, and what is derived from it:
the address router and the TLS contexts."""
