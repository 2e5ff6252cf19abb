-- Control's fleet state: quality caps in force and drained edges, as one
-- JSON document (small; read at start, written on each change).
CREATE TABLE fleet_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
