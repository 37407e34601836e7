-- Stamp the file as a sessionstore database: open() identifies a file by this id before it
-- touches it, and refuses (byte-identical) a SQLite file that carries another id.
-- 0x53534442 is "SSDB".
PRAGMA application_id = 1397965890;
