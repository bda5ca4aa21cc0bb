"""Store and forward's store: the buffer (memory and SQLite), ids that never repeat, the crash
journal in RAM, and salvage of damaged files."""
