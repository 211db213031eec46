-- Ceiling for R2: one autocommitted single-row UPDATE merging one key into
-- the document, against pgbench_rooms (a copy of `rooms`, with its
-- updated_at trigger). metacast's PATCH does more per request (row lock,
-- UPDATE, outbox INSERT, Redis publish, outbox mark): that is the point of
-- the ratio.
\set n random(10000, 19999)
\set v random(1, 1000000000)
update pgbench_rooms
   set metadata = metadata || jsonb_build_object('hits', :v::bigint), version = version + 1
 where id = 'r-' || :n::text;
