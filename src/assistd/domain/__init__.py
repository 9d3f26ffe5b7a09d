"""Domain: objects, ids, the run state machine and stream events. No I/O here."""
