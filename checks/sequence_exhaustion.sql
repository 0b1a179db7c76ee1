-- id: sequence_exhaustion
-- severity: error
-- steps: any
-- summary: sequences that have used preflight.max_sequence_used_fraction of their range, or of the integer column they feed
-- remedy: widen the column to bigint (ALTER ... TYPE bigint rewrites the table: plan it as a migration) or ALTER SEQUENCE ... MAXVALUE; CYCLE is never the fix for a key
-- params: preflight.max_sequence_used_fraction
-- A serial column is integer while its sequence counts to 2^63: the inserts
-- fail at 2^31, so the column's type bounds the range, not the sequence's.
-- last_value is NULL for sequences never used or not readable by this role.
with seqs as (
    select s.schemaname, s.sequencename, s.last_value, s.max_value, col.column_ref, col.column_type,
           least(s.max_value,
                 case col.column_type when 'smallint' then 32767
                                      when 'integer' then 2147483647
                                      else s.max_value end) as effective_max
      from pg_catalog.pg_sequences s
      left join lateral (
            select pg_catalog.format('%I.%I.%I', tn.nspname, t.relname, a.attname) as column_ref,
                   pg_catalog.format_type(a.atttypid, a.atttypmod) as column_type
              from pg_catalog.pg_depend d
              join pg_catalog.pg_attribute a on a.attrelid = d.refobjid and a.attnum = d.refobjsubid
              join pg_catalog.pg_class t on t.oid = d.refobjid
              join pg_catalog.pg_namespace tn on tn.oid = t.relnamespace
             where d.classid = 'pg_catalog.pg_class'::regclass
               and d.objid = (select sc.oid from pg_catalog.pg_class sc
                               join pg_catalog.pg_namespace sn on sn.oid = sc.relnamespace
                              where sn.nspname = s.schemaname and sc.relname = s.sequencename)
               and d.refclassid = 'pg_catalog.pg_class'::regclass
               and d.deptype in ('a', 'i') and d.refobjsubid > 0
             limit 1) col on true
     where s.increment_by > 0 and s.last_value is not null
)
select pg_catalog.format('%I.%I', schemaname, sequencename) as sequence, column_ref as "column", column_type,
       last_value, effective_max as max_value,
       pg_catalog.round(last_value::numeric / effective_max, 4) as used_fraction
  from seqs
 where last_value::numeric / effective_max >= $1::numeric
 order by 6 desc
