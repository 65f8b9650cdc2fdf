"""Attack and failure campaign (issue #10): fuzzing, input abuse, insider tampering, enumeration."""
