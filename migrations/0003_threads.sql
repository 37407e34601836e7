-- What agent frameworks need from a session store (additive only: every existing row and
-- query keeps working).
--
-- Sessions by a caller's key: a thread id, a conversation id. A keyed session's id is derived
-- from its key, so every process asking for the same key names the same row.
ALTER TABLE sessions ADD COLUMN app_key TEXT;
CREATE UNIQUE INDEX sessions_by_app_key ON sessions (app_key) WHERE app_key IS NOT NULL;

-- Richer checkpoints: a namespace, the caller's checkpoint id, a parent, filterable metadata,
-- a binary payload, the run that made it, and the time of the op that wrote the row last
-- (upserts are last-writer-wins on it; deletions only touch rows written before them).
ALTER TABLE checkpoints ADD COLUMN namespace TEXT NOT NULL DEFAULT '';
ALTER TABLE checkpoints ADD COLUMN checkpoint_id TEXT;
ALTER TABLE checkpoints ADD COLUMN parent_id TEXT;
ALTER TABLE checkpoints ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';
ALTER TABLE checkpoints ADD COLUMN blob BLOB;
ALTER TABLE checkpoints ADD COLUMN run_id TEXT;
ALTER TABLE checkpoints ADD COLUMN written_at REAL;
UPDATE checkpoints SET checkpoint_id = id, written_at = created_at;
CREATE UNIQUE INDEX checkpoints_by_key ON checkpoints (session_id, namespace, checkpoint_id);
CREATE INDEX checkpoints_by_run ON checkpoints (run_id) WHERE run_id IS NOT NULL;

-- Writes attached to a checkpoint (a framework's pending writes), one row per
-- (task, index): writing the same (task_id, idx) again changes nothing unless replacing.
CREATE TABLE checkpoint_writes (
    session_id    TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    namespace     TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    task_id       TEXT NOT NULL,
    idx           INTEGER NOT NULL,
    channel       TEXT NOT NULL,
    type          TEXT,
    blob          BLOB,
    task_path     TEXT NOT NULL DEFAULT '',
    written_at    REAL NOT NULL,
    PRIMARY KEY (session_id, namespace, checkpoint_id, task_id, idx)
);

-- What was deleted, and when (the deleting op's time). An op made before a deletion and
-- applied after it (a journal replayed late) finds its tombstone and changes nothing, so a
-- deleted session, run or checkpoint is never resurrected by an older write.
CREATE TABLE tombstones (
    scope      TEXT NOT NULL CHECK (scope IN ('session', 'run', 'checkpoint')),
    key        TEXT NOT NULL,
    deleted_at REAL NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
