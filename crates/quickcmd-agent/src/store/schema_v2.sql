-- Protocol v1.1. Columns are added, never rewritten: rows stored before keep working.
-- The payload's `requested_by`; NULL for jobs whose payload had none (and older rows).
ALTER TABLE jobs ADD COLUMN requested_by TEXT;
-- The exact bytes of a frame. NULL in rows stored before v2, whose `data` holds the text
-- (what a reader then gets in either encoding); v2 rows keep `data` empty.
ALTER TABLE frames ADD COLUMN bytes BLOB;
