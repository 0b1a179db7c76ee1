-- Downgrade of legacy_baseline. These are production tables: they are dropped
-- only when every one of them is empty (a fresh or CI database). On a
-- database that holds legacy rows the downgrade stops with an error and
-- changes nothing; `alembic stamp base` is how such a database leaves the chain.
DO $baseline_down$
DECLARE
    t text;
    has_rows boolean;
BEGIN
    FOREACH t IN ARRAY ARRAY['market.instrument_metadata', 'market.subscriptions',
                             'market.data_bars', 'market.derived_data_bars',
                             'trading.positions', 'screener.index_memberships']
    LOOP
        IF pg_catalog.to_regclass(t) IS NOT NULL THEN
            -- regclass::text is the quoted, qualified name.
            EXECUTE pg_catalog.format('SELECT EXISTS (SELECT 1 FROM %s)',
                                      pg_catalog.to_regclass(t)::text) INTO has_rows;
            IF has_rows THEN
                RAISE EXCEPTION 'legacy_baseline downgrade refused: % holds rows', t
                    USING HINT = 'the legacy tables are production data; use "alembic stamp base" to leave the chain without dropping them';
            END IF;
        END IF;
    END LOOP;
END
$baseline_down$;

DROP VIEW IF EXISTS market.bars_1m;
DROP TABLE IF EXISTS screener.index_memberships;
DROP TABLE IF EXISTS trading.positions;
DROP TABLE IF EXISTS market.derived_data_bars;
DROP TABLE IF EXISTS market.data_bars;
DROP TABLE IF EXISTS market.subscriptions;
DROP TABLE IF EXISTS market.instrument_metadata;
DROP SCHEMA IF EXISTS screener;
DROP SCHEMA IF EXISTS trading;
DROP SCHEMA IF EXISTS market;
