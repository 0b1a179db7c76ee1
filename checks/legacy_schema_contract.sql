-- id: legacy_schema_contract
-- severity: error
-- steps: upgrade
-- summary: a legacy table lacks a column the baseline's contract needs, or has it with another type
-- remedy: bring the table in line with sql/legacy_baseline.sql (or fix the contract in a new revision) before the first revision runs
-- Run before `alembic upgrade` on an existing database: legacy_baseline creates
-- only what is absent, so a table that exists with other columns would pass
-- unnoticed and the later revisions would fail on it. Extra columns are fine.
-- A table that is absent is reported only once the database is stamped
-- (keyshift.alembic_version exists): then nothing will create it.
with contract(table_schema, table_name, column_name, data_type) as (
    values
    ('market', 'instrument_metadata', 'instrument_token', 'bigint'),
    ('market', 'instrument_metadata', 'tradingsymbol', 'text'),
    ('market', 'instrument_metadata', 'exchange', 'text'),
    ('market', 'instrument_metadata', 'instrument_type', 'text'),
    ('market', 'subscriptions', 'id', 'bigint'),
    ('market', 'subscriptions', 'instrument_token', 'bigint'),
    ('market', 'subscriptions', 'subscriber', 'text'),
    ('market', 'subscriptions', 'mode', 'text'),
    ('market', 'subscriptions', 'created_at', 'timestamp with time zone'),
    ('market', 'data_bars', 'instrument_token', 'bigint'),
    ('market', 'data_bars', 'timeframe', 'text'),
    ('market', 'data_bars', 'ts', 'timestamp with time zone'),
    ('market', 'data_bars', 'open', 'numeric'),
    ('market', 'data_bars', 'high', 'numeric'),
    ('market', 'data_bars', 'low', 'numeric'),
    ('market', 'data_bars', 'close', 'numeric'),
    ('market', 'data_bars', 'volume', 'bigint'),
    ('market', 'derived_data_bars', 'symbol', 'text'),
    ('market', 'derived_data_bars', 'timeframe', 'text'),
    ('market', 'derived_data_bars', 'ts', 'timestamp with time zone'),
    ('market', 'derived_data_bars', 'open', 'numeric'),
    ('market', 'derived_data_bars', 'high', 'numeric'),
    ('market', 'derived_data_bars', 'low', 'numeric'),
    ('market', 'derived_data_bars', 'close', 'numeric'),
    ('market', 'derived_data_bars', 'volume', 'bigint'),
    ('trading', 'positions', 'account_id', 'text'),
    ('trading', 'positions', 'instrument_token', 'bigint'),
    ('trading', 'positions', 'quantity', 'numeric'),
    ('trading', 'positions', 'avg_price', 'numeric'),
    ('trading', 'positions', 'updated_at', 'timestamp with time zone'),
    ('screener', 'index_memberships', 'index_name', 'text'),
    ('screener', 'index_memberships', 'instrument_token', 'bigint'),
    ('screener', 'index_memberships', 'weight', 'numeric'),
    ('screener', 'index_memberships', 'effective_from', 'date'),
    ('screener', 'index_memberships', 'effective_to', 'date')
), found as (
    select c.*, r.oid as relid, pg_catalog.format_type(a.atttypid, a.atttypmod) as actual_type
      from contract c
      left join pg_catalog.pg_namespace n on n.nspname = c.table_schema
      left join pg_catalog.pg_class r on r.relnamespace = n.oid and r.relname = c.table_name
                                     and r.relkind in ('r', 'p')
      left join pg_catalog.pg_attribute a on a.attrelid = r.oid and a.attname = c.column_name
                                         and a.attnum > 0 and not a.attisdropped
)
select pg_catalog.format('%I.%I', table_schema, table_name) as "table", column_name as "column",
       data_type as expected_type, actual_type,
       case when relid is null then 'table missing'
            when actual_type is null then 'column missing'
            else 'type differs' end as problem
  from found
 where (relid is null and pg_catalog.to_regclass('keyshift.alembic_version') is not null)
    or (relid is not null and actual_type is distinct from data_type)
 order by 1, 2
