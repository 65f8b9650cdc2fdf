"""HTTP and command-line surface of TokenVault: translates requests into vault/ calls."""
