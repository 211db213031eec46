-- Ceiling for R1: the primary-key read metacast's GET does (same columns,
-- same predicate), against pgbench_rooms, a copy of `rooms`.
\set n random(10000, 19999)
select id, metadata, version, created_at, updated_at, deleted_at
  from pgbench_rooms where id = 'r-' || :n::text and deleted_at is null;
