-- The instrument registry (revision instrument_registry): the single source of
-- truth for instruments. instrument_key (SYMBOL_EXCHANGE_TYPE) identifies an
-- instrument; a broker's numeric token maps to a key for a validity period,
-- because brokers reuse tokens.

-- btree_gist gives the exclusion constraint "=" on text and bigint beside
-- "&&" on ranges. It is a trusted extension (PostgreSQL 13+).
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE SCHEMA instrument_registry;
COMMENT ON SCHEMA instrument_registry IS 'Instruments by instrument_key and the broker tokens that map to them over time';

CREATE TABLE instrument_registry.instruments (
    instrument_key  text PRIMARY KEY,
    symbol          text NOT NULL,
    exchange        text NOT NULL,
    instrument_type text NOT NULL,
    metadata        jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- The rule is in the constraint's name so that the error a malformed key
    -- gets says what the rule is.
    CONSTRAINT "instrument_key must be SYMBOL_EXCHANGE_TYPE in upper case"
        CHECK (instrument_key ~ '^[A-Z0-9][A-Z0-9.&-]*_[A-Z0-9]+_[A-Z]+$'),
    CONSTRAINT "instrument_key must equal symbol_exchange_instrument_type"
        CHECK (instrument_key = symbol || '_' || exchange || '_' || instrument_type),
    CONSTRAINT instruments_metadata_is_object CHECK (pg_catalog.jsonb_typeof(metadata) = 'object')
);
COMMENT ON TABLE instrument_registry.instruments IS 'One row per instrument, identified by instrument_key';
COMMENT ON COLUMN instrument_registry.instruments.instrument_key IS 'SYMBOL_EXCHANGE_TYPE, upper case; the symbol may hold digits, ".", "&" and "-" (AAPL_NASDAQ_EQUITY, M&M_NSE_EQUITY)';
COMMENT ON COLUMN instrument_registry.instruments.symbol IS 'Trading symbol, upper case';
COMMENT ON COLUMN instrument_registry.instruments.exchange IS 'Exchange code, upper case (NSE, NFO, NASDAQ, ICE)';
COMMENT ON COLUMN instrument_registry.instruments.instrument_type IS 'EQUITY, FUTURE, OPTION, INDEX, ...';
COMMENT ON COLUMN instrument_registry.instruments.metadata IS 'Everything else about the instrument (a broker dump''s extra columns; is_synthetic, components ... for synthetic ones)';
COMMENT ON COLUMN instrument_registry.instruments.created_at IS 'When the instrument was first registered';
COMMENT ON COLUMN instrument_registry.instruments.updated_at IS 'When its row last changed';

CREATE TABLE instrument_registry.broker_instrument_tokens (
    broker           text NOT NULL,
    instrument_token bigint NOT NULL,
    instrument_key   text NOT NULL REFERENCES instrument_registry.instruments (instrument_key),
    valid_from       timestamptz NOT NULL DEFAULT '-infinity',
    valid_to         timestamptz,
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- The lookup path: (broker, token) then the newest period starting at or
    -- before the time asked, read from the index alone.
    CONSTRAINT broker_instrument_tokens_pkey PRIMARY KEY (broker, instrument_token, valid_from)
        INCLUDE (valid_to, instrument_key),
    CONSTRAINT broker_instrument_tokens_broker_check CHECK (broker ~ '^[a-z][a-z0-9_]*$'),
    CONSTRAINT "validity period must end after it starts"
        CHECK (valid_to IS NULL OR valid_to > valid_from),
    -- A token means one instrument at a time, and an instrument has one token
    -- per broker at a time: the database refuses overlapping periods.
    CONSTRAINT "token periods must not overlap" EXCLUDE USING gist (
        broker WITH =, instrument_token WITH =,
        pg_catalog.tstzrange(valid_from, valid_to, '[)') WITH &&),
    CONSTRAINT "key periods must not overlap" EXCLUDE USING gist (
        broker WITH =, instrument_key WITH =,
        pg_catalog.tstzrange(valid_from, valid_to, '[)') WITH &&)
);
CREATE INDEX broker_instrument_tokens_key_idx
    ON instrument_registry.broker_instrument_tokens (broker, instrument_key, valid_from)
    INCLUDE (valid_to, instrument_token);
-- The foreign key's side: removing or re-keying an instrument finds its mappings by index.
CREATE INDEX broker_instrument_tokens_instrument_key_idx
    ON instrument_registry.broker_instrument_tokens (instrument_key);
COMMENT ON TABLE instrument_registry.broker_instrument_tokens IS 'Which instrument a broker token meant, and when; the authoritative token -> key mapping';
COMMENT ON COLUMN instrument_registry.broker_instrument_tokens.broker IS 'Broker whose token this is (lower case)';
COMMENT ON COLUMN instrument_registry.broker_instrument_tokens.instrument_token IS 'The broker''s numeric token';
COMMENT ON COLUMN instrument_registry.broker_instrument_tokens.instrument_key IS 'Instrument the token meant during the period';
COMMENT ON COLUMN instrument_registry.broker_instrument_tokens.valid_from IS 'Start of the period (inclusive); -infinity for a token''s first mapping';
COMMENT ON COLUMN instrument_registry.broker_instrument_tokens.valid_to IS 'End of the period (exclusive); NULL while the mapping holds';
COMMENT ON COLUMN instrument_registry.broker_instrument_tokens.created_at IS 'When the mapping was recorded';

-- SQL-standard bodies (BEGIN ATOMIC / RETURN) are parsed when created: the
-- names they use are bound then, so no search_path at call time can redirect
-- them. The planner does not inline them (a body that is a subquery is never
-- inlined): each call runs its own small executor, ~7 us on a quiet machine;
-- set-based callers (backfill, reconcile) join broker_instrument_tokens instead.
CREATE FUNCTION instrument_registry.resolve_key(p_broker text, p_token bigint,
                                                p_at timestamptz DEFAULT pg_catalog.now())
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
-- The period that starts last at or before p_at is the only candidate (periods
-- never overlap). The row comparison is a predecessor search only the btree
-- primary key can serve: one descent, index-only. Written with separate
-- conditions instead, the generic plan picked the GiST exclusion index and
-- read ~60 buffers per call.
RETURN (
    SELECT CASE WHEN t.broker = p_broker AND t.instrument_token = p_token
                 AND (t.valid_to IS NULL OR t.valid_to > p_at)
           THEN t.instrument_key END
      FROM instrument_registry.broker_instrument_tokens t
     WHERE (t.broker, t.instrument_token, t.valid_from) <= (p_broker, p_token, p_at)
     ORDER BY t.broker DESC, t.instrument_token DESC, t.valid_from DESC
     LIMIT 1
);
COMMENT ON FUNCTION instrument_registry.resolve_key(text, bigint, timestamptz) IS 'instrument_key a broker token meant at a time (NULL: no mapping then)';

CREATE FUNCTION instrument_registry.resolve_token(p_broker text, p_key text,
                                                  p_at timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
RETURN (
    SELECT CASE WHEN t.broker = p_broker AND t.instrument_key = p_key
                 AND (t.valid_to IS NULL OR t.valid_to > p_at)
           THEN t.instrument_token END
      FROM instrument_registry.broker_instrument_tokens t
     WHERE (t.broker, t.instrument_key, t.valid_from) <= (p_broker, p_key, p_at)
     ORDER BY t.broker DESC, t.instrument_key DESC, t.valid_from DESC
     LIMIT 1
);
COMMENT ON FUNCTION instrument_registry.resolve_token(text, text, timestamptz) IS 'Broker token of an instrument_key at a time (NULL: none then)';

-- The broker whose tokens the legacy tables hold; set by the first registry import.
SELECT keyshift.define_setting(
    'registry.legacy_broker', 'text', NULL,
    'Broker whose tokens the legacy token tables hold; set by the first keyshift registry import, changed with an audited reason');
