"""The event store: the store port, its PostgreSQL and in-memory implementations, connections,
table definitions, the embedded server and the event schemas. The only wing that reads or writes
the `events` table."""
