-- One broker dump into the registry (keyshift registry import), in the
-- caller's transaction. Input: pg_temp.import_rows (one row per line of the
-- file, already validated) and pg_temp.import_params (broker, as_of,
-- first_valid_from). Output: the last statement's one row of counts.

-- Instruments: new ones inserted, known ones get the dump's metadata merged in.
CREATE TEMP TABLE import_instruments ON COMMIT DROP AS
WITH upserted AS (
    INSERT INTO instrument_registry.instruments AS i
           (instrument_key, symbol, exchange, instrument_type, metadata)
    SELECT r.instrument_key, r.symbol, r.exchange, r.instrument_type, r.metadata
      FROM pg_temp.import_rows r
    ON CONFLICT (instrument_key) DO UPDATE
       SET metadata = i.metadata || excluded.metadata, updated_at = pg_catalog.now()
     WHERE i.metadata IS DISTINCT FROM i.metadata || excluded.metadata
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted) AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS updated
  FROM upserted;

-- Each line against the mapping its token has at as_of, and the one its key has.
CREATE TEMP TABLE import_plan ON COMMIT DROP AS
SELECT r.line, r.instrument_token, r.instrument_key,
       tok.instrument_key AS token_now_key, tok.valid_from AS token_now_from,
       keyed.instrument_token AS key_now_token, keyed.valid_from AS key_now_from,
       EXISTS (SELECT 1 FROM instrument_registry.broker_instrument_tokens h
                WHERE h.broker = p.broker
                  AND (h.instrument_token = r.instrument_token OR h.instrument_key = r.instrument_key)) AS has_history
  FROM pg_temp.import_rows r
 CROSS JOIN pg_temp.import_params p
  LEFT JOIN instrument_registry.broker_instrument_tokens tok
         ON tok.broker = p.broker AND tok.instrument_token = r.instrument_token
        AND tok.valid_from <= p.as_of AND (tok.valid_to IS NULL OR tok.valid_to > p.as_of)
  LEFT JOIN instrument_registry.broker_instrument_tokens keyed
         ON keyed.broker = p.broker AND keyed.instrument_key = r.instrument_key
        AND keyed.valid_from <= p.as_of AND (keyed.valid_to IS NULL OR keyed.valid_to > p.as_of);

-- A period can only be closed after it starts.
DO $too_early$
DECLARE
    bad record;
BEGIN
    SELECT pl.line, pl.instrument_token, pl.token_now_key, pl.token_now_from, p.as_of INTO bad
      FROM pg_temp.import_plan pl CROSS JOIN pg_temp.import_params p
     WHERE (pl.token_now_key IS DISTINCT FROM pl.instrument_key AND pl.token_now_from >= p.as_of)
        OR (pl.key_now_token IS DISTINCT FROM pl.instrument_token AND pl.key_now_from >= p.as_of)
     ORDER BY pl.line LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'line %: token % would move at %, but its current mapping (%) starts at %',
                        bad.line, bad.instrument_token, bad.as_of, bad.token_now_key, bad.token_now_from
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'give an --as-of after the current period starts';
    END IF;
END
$too_early$;

-- Close the periods the dump contradicts: a token that now means another
-- instrument, and an instrument that now has another token.
CREATE TEMP TABLE import_closed ON COMMIT DROP AS
WITH closed AS (
    UPDATE instrument_registry.broker_instrument_tokens m
       SET valid_to = p.as_of
      FROM pg_temp.import_params p
     WHERE m.broker = p.broker
       AND m.valid_from <= p.as_of AND (m.valid_to IS NULL OR m.valid_to > p.as_of)
       AND (EXISTS (SELECT 1 FROM pg_temp.import_plan pl
                     WHERE pl.instrument_token = m.instrument_token AND pl.instrument_key <> m.instrument_key)
            OR EXISTS (SELECT 1 FROM pg_temp.import_plan pl
                        WHERE pl.instrument_key = m.instrument_key AND pl.instrument_token <> m.instrument_token))
    RETURNING 1
)
SELECT count(*) AS closed FROM closed;

-- Open the new periods: from -infinity (or --valid-from) for a token and an
-- instrument never seen before, from as_of otherwise.
CREATE TEMP TABLE import_opened ON COMMIT DROP AS
WITH opened AS (
    INSERT INTO instrument_registry.broker_instrument_tokens
           (broker, instrument_token, instrument_key, valid_from)
    SELECT p.broker, pl.instrument_token, pl.instrument_key,
           CASE WHEN pl.has_history THEN p.as_of ELSE p.first_valid_from END
      FROM pg_temp.import_plan pl CROSS JOIN pg_temp.import_params p
     WHERE pl.token_now_key IS DISTINCT FROM pl.instrument_key
    RETURNING 1
)
SELECT count(*) AS opened FROM opened;

SELECT (SELECT count(*) FROM pg_temp.import_rows) AS lines,
       i.inserted AS instruments_new,
       i.updated AS instruments_updated,
       o.opened AS mappings_opened,
       c.closed AS mappings_closed,
       (SELECT count(*) FROM pg_temp.import_plan pl
         WHERE pl.token_now_key IS NOT DISTINCT FROM pl.instrument_key) AS mappings_unchanged,
       (SELECT count(*) FROM instrument_registry.broker_instrument_tokens m, pg_temp.import_params p
         WHERE m.broker = p.broker AND m.valid_to IS NULL
           AND NOT EXISTS (SELECT 1 FROM pg_temp.import_rows r WHERE r.instrument_token = m.instrument_token))
           AS open_mappings_not_in_file
  FROM import_instruments i, import_opened o, import_closed c;
