-- Rooms and their metadata document. A deleted room keeps its row as a
-- tombstone (deleted_at set) so a re-created room continues its version
-- counter and later its session history.
create table rooms (
    -- "C" collation: byte order, so cursors and prefix ranges agree with
    -- starts_with() whatever the database's locale.
    id         text collate "C" primary key,
    metadata   jsonb       not null default '{}',
    version    bigint      not null default 0 check (version >= 0),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    deleted_at timestamptz
);

select trigger_updated_at('rooms');
