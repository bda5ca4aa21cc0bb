"""Store and forward's store: the buffer (memory first, then SQLite; the bound), its database's
format and migrations (formats), reading it beside a running agent (inspect), ids that never
repeat (ids), the crash journal in RAM (journal), and salvage of damaged files (salvage)."""
