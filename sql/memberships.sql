-- Index memberships in the registry (revision index_memberships_dual_write):
-- the live table the screener's memberships are dual-written into, its
-- archive, the flags that drive the dual-write, and retention.

CREATE TABLE instrument_registry.index_memberships (
    index_name     text NOT NULL,
    instrument_key text NOT NULL REFERENCES instrument_registry.instruments (instrument_key),
    weight         numeric NOT NULL,
    effective_from date NOT NULL,
    effective_to   date,
    source_token   bigint,
    updated_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT index_memberships_pkey PRIMARY KEY (index_name, instrument_key, effective_from),
    CONSTRAINT index_memberships_period_check CHECK (effective_to IS NULL OR effective_to >= effective_from)
);
-- The legacy identity, for the dual-write's deletes and the catch-up.
CREATE INDEX index_memberships_source_idx
    ON instrument_registry.index_memberships (index_name, source_token, effective_from);
-- The foreign key's side: removing or re-keying an instrument finds its memberships by index.
CREATE INDEX index_memberships_instrument_key_idx
    ON instrument_registry.index_memberships (instrument_key);
COMMENT ON TABLE instrument_registry.index_memberships IS 'Which instruments an index holds, by instrument_key, and when';
COMMENT ON COLUMN instrument_registry.index_memberships.index_name IS 'Index (NIFTY50, SP500, ...)';
COMMENT ON COLUMN instrument_registry.index_memberships.instrument_key IS 'Member instrument';
COMMENT ON COLUMN instrument_registry.index_memberships.weight IS 'Weight in the index';
COMMENT ON COLUMN instrument_registry.index_memberships.effective_from IS 'First day of membership';
COMMENT ON COLUMN instrument_registry.index_memberships.effective_to IS 'Last day of membership; NULL while it lasts';
COMMENT ON COLUMN instrument_registry.index_memberships.source_token IS 'Legacy instrument_token the row was written with (screener.index_memberships); NULL for rows written here first';
COMMENT ON COLUMN instrument_registry.index_memberships.updated_at IS 'Last change';

CREATE TABLE instrument_registry.index_memberships_archive (
    index_name     text NOT NULL,
    instrument_key text NOT NULL,
    weight         numeric NOT NULL,
    effective_from date NOT NULL,
    effective_to   date,
    source_token   bigint,
    updated_at     timestamptz NOT NULL,
    archived_at    timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    archive_reason text NOT NULL,
    CONSTRAINT index_memberships_archive_pkey
        PRIMARY KEY (index_name, instrument_key, effective_from, archived_at)
);
COMMENT ON TABLE instrument_registry.index_memberships_archive IS 'Memberships moved out of the live table (retention, catch-up), kept with when and why';
COMMENT ON COLUMN instrument_registry.index_memberships_archive.index_name IS 'As in index_memberships';
COMMENT ON COLUMN instrument_registry.index_memberships_archive.instrument_key IS 'As in index_memberships';
COMMENT ON COLUMN instrument_registry.index_memberships_archive.weight IS 'As in index_memberships';
COMMENT ON COLUMN instrument_registry.index_memberships_archive.effective_from IS 'As in index_memberships';
COMMENT ON COLUMN instrument_registry.index_memberships_archive.effective_to IS 'As in index_memberships';
COMMENT ON COLUMN instrument_registry.index_memberships_archive.source_token IS 'As in index_memberships';
COMMENT ON COLUMN instrument_registry.index_memberships_archive.updated_at IS 'Last change while live';
COMMENT ON COLUMN instrument_registry.index_memberships_archive.archived_at IS 'When it left the live table';
COMMENT ON COLUMN instrument_registry.index_memberships_archive.archive_reason IS 'Why it left (retention, catch-up)';

-- Every membership the registry knows: the live rows, and the archived ones
-- that are not live again (the latest archived version of each). This is what
-- the legacy table reconciles against once retention has run.
CREATE VIEW instrument_registry.index_memberships_with_archive AS
SELECT l.index_name, l.instrument_key, l.weight, l.effective_from, l.effective_to, l.source_token
  FROM instrument_registry.index_memberships l
UNION ALL
SELECT a.index_name, a.instrument_key, a.weight, a.effective_from, a.effective_to, a.source_token
  FROM (SELECT DISTINCT ON (index_name, instrument_key, effective_from) *
          FROM instrument_registry.index_memberships_archive
         ORDER BY index_name, instrument_key, effective_from, archived_at DESC) a
 WHERE NOT EXISTS (SELECT 1 FROM instrument_registry.index_memberships l
                    WHERE l.index_name = a.index_name AND l.instrument_key = a.instrument_key
                      AND l.effective_from = a.effective_from);
COMMENT ON VIEW instrument_registry.index_memberships_with_archive IS 'Live memberships and the archived ones not live again';

SELECT keyshift.define_setting('memberships.dual_write_enabled', 'bool', 'true',
    'Writes to screener.index_memberships are applied to instrument_registry.index_memberships in the same transaction; false is single-write (the rollback)');
SELECT keyshift.define_setting('memberships.batch_size', 'int', '1000',
    'Rows per batch of keyshift memberships sync and keyshift retention run memberships');
SELECT keyshift.define_setting('memberships.retry_attempts', 'int', '3',
    'Retries a memberships dead letter gets before it stays dead');
SELECT keyshift.define_setting('memberships.validation_mode', 'enum', 'lenient',
    'strict: a legacy write whose token has no mapping fails; lenient: it succeeds and a dead letter records it',
    ARRAY['strict', 'lenient']);
SELECT keyshift.define_setting('memberships.retention_days', 'int', '730',
    'Memberships that ended more than this many days ago move to the archive (keyshift retention run memberships)');

-- One retention batch: move up to p_limit memberships that ended before the
-- cutoff into the archive and out of the live table, in one statement, so
-- the archive insert and the delete both happen or neither does.
CREATE FUNCTION keyshift.memberships_retention_batch(p_limit integer, p_dry_run boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = keyshift, pg_catalog, pg_temp
AS $fn$
DECLARE
    v_days integer := keyshift.setting('memberships.retention_days')::integer;
    v_cutoff date := CURRENT_DATE - v_days;
    moved bigint;
BEGIN
    IF p_dry_run THEN
        SELECT count(*) INTO moved FROM instrument_registry.index_memberships l WHERE l.effective_to < v_cutoff;
        RETURN moved;
    END IF;
    WITH expired AS (
        SELECT l.index_name, l.instrument_key, l.effective_from
          FROM instrument_registry.index_memberships l
         WHERE l.effective_to < v_cutoff
         ORDER BY l.effective_to, l.index_name, l.instrument_key
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM instrument_registry.index_memberships l
         USING expired e
         WHERE l.index_name = e.index_name AND l.instrument_key = e.instrument_key
           AND l.effective_from = e.effective_from
        RETURNING l.*
    ), kept AS (
        INSERT INTO instrument_registry.index_memberships_archive
               (index_name, instrument_key, weight, effective_from, effective_to, source_token,
                updated_at, archive_reason)
        SELECT g.index_name, g.instrument_key, g.weight, g.effective_from, g.effective_to, g.source_token,
               g.updated_at, 'retention: ended ' || g.effective_to || ', more than ' || v_days || ' days before ' || CURRENT_DATE
          FROM gone g
        RETURNING 1
    )
    SELECT count(*) INTO moved FROM kept;
    RETURN moved;
END
$fn$;
COMMENT ON FUNCTION keyshift.memberships_retention_batch(integer, boolean) IS 'Archive then delete up to p_limit expired memberships, atomically; returns how many moved';
