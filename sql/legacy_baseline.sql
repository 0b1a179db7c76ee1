-- The token-centric schema that production already has (revision legacy_baseline).
-- Every object is created only where absent, so applying this to a database
-- that already holds the legacy tables changes nothing; a DBA with such a
-- database may equally run `alembic stamp legacy_baseline`.
-- Plain data_bars (not range-partitioned): partitioning is optional in the
-- legacy contract and a partitioned parent cannot take CREATE INDEX CONCURRENTLY.

CREATE SCHEMA IF NOT EXISTS market;
CREATE SCHEMA IF NOT EXISTS trading;
CREATE SCHEMA IF NOT EXISTS screener;

-- V1 lookup table: one row per broker token.
CREATE TABLE IF NOT EXISTS market.instrument_metadata (
    instrument_token bigint PRIMARY KEY,
    tradingsymbol    text NOT NULL,
    exchange         text NOT NULL,
    instrument_type  text NOT NULL,
    name             text,
    lot_size         integer,
    tick_size        numeric,
    expiry           date,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS market.subscriptions (
    id               bigserial PRIMARY KEY,
    instrument_token bigint NOT NULL,
    subscriber       text NOT NULL,
    mode             text NOT NULL DEFAULT 'ltp',
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS market.data_bars (
    instrument_token bigint NOT NULL,
    timeframe        text NOT NULL,
    ts               timestamptz NOT NULL,
    open             numeric NOT NULL,
    high             numeric NOT NULL,
    low              numeric NOT NULL,
    close            numeric NOT NULL,
    volume           bigint NOT NULL DEFAULT 0,
    CONSTRAINT data_bars_pkey PRIMARY KEY (instrument_token, timeframe, ts)
);

-- Synthetic instruments (DXY and the like) have no broker token: keyed by symbol.
CREATE TABLE IF NOT EXISTS market.derived_data_bars (
    symbol      text NOT NULL,
    timeframe   text NOT NULL,
    ts          timestamptz NOT NULL,
    open        numeric NOT NULL,
    high        numeric NOT NULL,
    low         numeric NOT NULL,
    close       numeric NOT NULL,
    volume      bigint NOT NULL DEFAULT 0,
    computed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT derived_data_bars_pkey PRIMARY KEY (symbol, timeframe, ts)
);

CREATE TABLE IF NOT EXISTS trading.positions (
    account_id       text NOT NULL,
    instrument_token bigint NOT NULL,
    quantity         numeric NOT NULL,
    avg_price        numeric NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT positions_pkey PRIMARY KEY (account_id, instrument_token)
);

CREATE TABLE IF NOT EXISTS screener.index_memberships (
    index_name       text NOT NULL,
    instrument_token bigint NOT NULL,
    weight           numeric NOT NULL,
    effective_from   date NOT NULL,
    effective_to     date,
    CONSTRAINT index_memberships_pkey PRIMARY KEY (index_name, instrument_token, effective_from),
    CONSTRAINT index_memberships_period_check
        CHECK (effective_to IS NULL OR effective_to >= effective_from)
);

-- The view readers use: every 1m bar, from the broker table and the derived one.
-- Created only where absent: a production view is left exactly as it is.
DO $baseline$
BEGIN
    IF pg_catalog.to_regclass('market.bars_1m') IS NULL THEN
        CREATE VIEW market.bars_1m AS
            SELECT b.instrument_token, NULL::text AS symbol, b.ts,
                   b.open, b.high, b.low, b.close, b.volume
              FROM market.data_bars b
             WHERE b.timeframe = '1m'
            UNION ALL
            SELECT NULL::bigint, d.symbol, d.ts,
                   d.open, d.high, d.low, d.close, d.volume
              FROM market.derived_data_bars d
             WHERE d.timeframe = '1m';
    END IF;
END
$baseline$;
