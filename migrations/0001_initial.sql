-- sessionstore schema, version 1. Applied under BEGIN IMMEDIATE by sessionstore._migrate;
-- PRAGMA user_version records the number of the last migration applied.

CREATE TABLE sessions (
    id                TEXT PRIMARY KEY,            -- uuid7-style: sorts by creation time
    name              TEXT NOT NULL,
    objective         TEXT,
    status            TEXT NOT NULL
                      CHECK (status IN ('active', 'paused', 'stopped', 'completed', 'crashed')),
    metadata          TEXT NOT NULL DEFAULT '{}',  -- JSON object
    owner_pid         INTEGER,
    owner_start_ticks INTEGER,
    owner_boot_id     TEXT,
    owner_host        TEXT,
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL,
    status_at         REAL NOT NULL,               -- time of the op that set status (last writer wins)
    paused_at         REAL,
    resumed_at        REAL,
    stopped_at        REAL,
    heartbeat_at      REAL
);
CREATE INDEX sessions_by_status ON sessions (status, id);

CREATE TABLE checkpoints (
    id         TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    data       TEXT NOT NULL,                      -- JSON
    created_at REAL NOT NULL
);
CREATE INDEX checkpoints_by_session ON checkpoints (session_id, created_at, id);
CREATE INDEX checkpoints_by_session_name ON checkpoints (session_id, name, created_at, id);

CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- monotonic, never reused
    op_id      TEXT NOT NULL UNIQUE,               -- makes replay idempotent
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    level      TEXT NOT NULL CHECK (level IN ('debug', 'info', 'warning', 'error', 'critical')),
    message    TEXT NOT NULL,
    data       TEXT,                               -- JSON or NULL
    created_at REAL NOT NULL
);
CREATE INDEX events_by_session ON events (session_id, id);

CREATE TABLE child_processes (
    session_id    TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    pid           INTEGER NOT NULL,
    start_ticks   INTEGER NOT NULL,                -- /proc/<pid>/stat field 22
    boot_id       TEXT NOT NULL,
    pgid          INTEGER,
    argv          TEXT NOT NULL DEFAULT '[]',      -- JSON list
    registered_at REAL NOT NULL,
    exited_at     REAL,
    exit_code     INTEGER,
    state         TEXT NOT NULL DEFAULT 'running'
                  CHECK (state IN ('running', 'exited', 'killed', 'unkillable', 'gone')),
    UNIQUE (session_id, pid, start_ticks, boot_id)
);
CREATE INDEX child_processes_by_session ON child_processes (session_id, state, pid);
CREATE INDEX child_processes_running ON child_processes (state) WHERE state IN ('running', 'unkillable');
