-- The outbox keeps only events not yet known to be in Redis: a row is
-- deleted once its event is appended. A delete writes no new row version,
-- where a "published" mark wrote a whole new copy of the row and an entry
-- in each of its indexes. Rows are found by room and sequence only.
delete from outbox where published_at is not null;
alter table outbox drop column published_at;
drop index outbox_created_at;
alter table outbox drop column id;
alter table outbox drop constraint outbox_room_seq_key;
alter table outbox add primary key (room, seq);

-- Rows the relay could not append, set aside so they never hold up their
-- room or any other; the room's streams were told to resync.
create table outbox_quarantine (
    room           text collate "C" not null,
    seq            bigint      not null,
    event_type     text        not null,
    payload        jsonb       not null,
    created_at     timestamptz not null,
    quarantined_at timestamptz not null default now(),
    error          text        not null,
    primary key (room, seq)
);
