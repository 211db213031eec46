//! Subscribers: clients' short visits to a room stream (opened, maybe
//! resumed elsewhere, closed), clients' connection streams, and one
//! observer per room that follows it for the whole run, resuming on another
//! instance whenever its own dies. Every frame goes through a [`Fold`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::{Api, Next, Opened, Stream};
use crate::fold::Fold;
use crate::rng::Rng;
use crate::world::World;

/// How a reading ended.
enum Ending {
    /// The server closed the stream (or its instance died).
    Ended,
    /// The reader stopped on its own.
    Stopped,
}

/// Reads `stream` into `fold` until it ends or `stop` says so.
async fn read(
    world: &World,
    who: &str,
    stream: &mut Stream,
    fold: &Mutex<Fold>,
    stop: impl Fn() -> bool,
) -> Ending {
    loop {
        match stream.next_within(Duration::from_millis(200)).await {
            Next::Frame(frame) => {
                let data = frame.data.to_string();
                let shown: String = data.chars().take(400).collect();
                world.record(
                    who,
                    format!(
                        "{} frame {} {}",
                        fold.lock().expect("fold").room,
                        frame.event,
                        frame.id
                    ),
                    shown,
                );
                let applied = fold.lock().expect("fold").apply(&frame);
                if let Err(rule) = applied {
                    world.violation(format!(
                        "{who} on {}: {rule} (frame {} {data})",
                        fold.lock().expect("fold").room,
                        frame.id
                    ));
                }
            }
            Next::Ended => return Ending::Ended,
            Next::Quiet => {}
        }
        if stop() {
            return Ending::Stopped;
        }
    }
}

/// Opens the room's stream on `api`, resuming after `fold`'s last id.
async fn open(world: &World, who: &str, api: &Api, fold: &Mutex<Fold>) -> Option<Stream> {
    let (room, resume) = {
        let fold = fold.lock().expect("fold");
        (
            fold.room.clone(),
            fold.resume_from.clone().filter(|_| !fold.ended),
        )
    };
    let path = format!("/v1/rooms/{room}/events");
    match api.try_stream(&path, resume.as_deref()).await {
        Opened::Stream(stream) => {
            world.record(
                who,
                format!("open {path} after {resume:?}"),
                "200".to_owned(),
            );
            world.count("stream-opened");
            Some(stream)
        }
        Opened::Refused(response) => {
            if response.status.is_server_error() {
                world.violation(format!("{who}: GET {path} answered {response:?}"));
            }
            world.record(
                who,
                format!("open {path} after {resume:?}"),
                format!("{}", response.status.as_u16()),
            );
            None
        }
        Opened::Unreachable(err) => {
            world.record(who, format!("open {path}"), format!("unreachable: {err}"));
            None
        }
    }
}

/// A client's visit: the stream is read for `lifetime`, then (if `resume`)
/// closed and resumed on another instance for as long again.
pub async fn visit(
    world: Arc<World>,
    apis: Vec<Api>,
    room: String,
    lifetime: Duration,
    resume: bool,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let who = format!("visitor-{seed:x}");
    let fold = Mutex::new(Fold::new(&room));
    for _ in 0..if resume { 2 } else { 1 } {
        // A stream that ended (the room was deleted) is followed anew.
        let ended = fold.lock().expect("fold").ended;
        if ended {
            *fold.lock().expect("fold") = Fold::new(&room);
        }
        let api = rng.pick(&apis);
        let Some(mut stream) = open(&world, &who, api, &fold).await else {
            return;
        };
        let until = Instant::now() + lifetime;
        if let Ending::Ended = read(&world, &who, &mut stream, &fold, || {
            Instant::now() > until || world.stopping()
        })
        .await
        {
            return;
        }
    }
}

/// A connection's own stream, held open for `lifetime` (it keeps the lease).
pub async fn hold_connection_stream(world: Arc<World>, api: Api, id: String, lifetime: Duration) {
    let path = format!("/v1/connections/{id}/events");
    match api.try_stream(&path, None).await {
        Opened::Stream(mut stream) => {
            world.record("conn-stream", format!("open {path}"), "200".to_owned());
            let until = Instant::now() + lifetime;
            while Instant::now() < until && !world.stopping() {
                if let Next::Ended = stream.next_within(Duration::from_millis(200)).await {
                    break;
                }
            }
        }
        Opened::Refused(response) => {
            if response.status.is_server_error() {
                world.violation(format!("GET {path} answered {response:?}"));
            }
        }
        Opened::Unreachable(_) => {}
    }
}

/// Follows `room` until `stop`: resumes after its last id when its stream
/// ends, and starts over (a fresh `sync`) once the stream ended at the
/// room's deletion.
pub async fn observe(
    world: Arc<World>,
    apis: Vec<Api>,
    fold: Arc<Mutex<Fold>>,
    stop: Arc<AtomicBool>,
) {
    let room = fold.lock().expect("fold").room.clone();
    let who = format!("observer-{room}");
    let mut next = 0;
    while !stop.load(Ordering::SeqCst) {
        {
            let mut fold = fold.lock().expect("fold");
            if fold.ended {
                *fold = Fold::new(&room);
            }
        }
        next = (next + 1) % apis.len();
        match open(&world, &who, &apis[next], &fold).await {
            Some(mut stream) => {
                read(&world, &who, &mut stream, &fold, || {
                    stop.load(Ordering::SeqCst)
                })
                .await;
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
