-- Sessions: one row per session of a room. Redis decides first-in/last-out;
-- this table records it durably. At most one open session per room.
create table sessions (
    id             uuid primary key,
    room           text collate "C" not null references rooms (id),
    started_at     timestamptz not null default now(),
    ended_at       timestamptz,
    peak_occupancy integer     not null default 0,
    -- The live session metadata while open; '{}' after the end.
    metadata       jsonb       not null default '{}',
    version        bigint      not null default 0 check (version >= 0),
    -- The metadata as it was when the session ended.
    final_metadata jsonb,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now()
);

create unique index sessions_one_open_per_room on sessions (room) where ended_at is null;
create index sessions_history on sessions (room, started_at desc, id desc);

select trigger_updated_at('sessions');

-- Transactional outbox: each durable change records its event in the same
-- transaction. No foreign key to rooms: `room.deleted` must outlive the room.
-- `seq` numbers a room's durable events (taken on the locked room row), so
-- they reach the Redis stream in commit order and at most once.
create table outbox (
    id           bigserial primary key,
    room         text collate "C" not null,
    seq          bigint      not null,
    event_type   text        not null,
    payload      jsonb       not null,
    created_at   timestamptz not null default now(),
    -- Set once the event is known to be in the room's Redis stream.
    published_at timestamptz,
    unique (room, seq)
);

create index outbox_created_at on outbox (created_at);
create index outbox_unpublished on outbox (created_at) where published_at is null;

alter table rooms add column event_seq bigint not null default 0;
