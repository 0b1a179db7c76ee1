-- id: dead_letter_backlog
-- severity: error
-- steps: any
-- summary: more open dead letters than preflight.max_open_dead_letters (listed by source)
-- remedy: keyshift dlq list, fix the cause (usually a missing mapping: keyshift registry import), keyshift dlq retry --all; resolve the rest with a note
-- params: preflight.max_open_dead_letters
-- requires: keyshift.dead_letters
select s.source, s.open_letters, s.oldest, s.total_open, $1::bigint as threshold
  from (select d.source, pg_catalog.count(*) as open_letters, pg_catalog.min(d.first_seen) as oldest,
               pg_catalog.sum(pg_catalog.count(*)) over () as total_open
          from keyshift.dead_letters d
         where d.resolved_at is null
         group by d.source) s
 where s.total_open > $1::bigint
 order by s.open_letters desc
