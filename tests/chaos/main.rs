//! The randomized checker: many clients and a nemesis against three
//! metacast instances on one Postgres and one Redis, then the invariants
//! (invariants.rs) and every stream's fold (fold.rs) at quiescence. Seeded:
//! `METACAST_CHAOS_SEED` replays each client's choices (the interleaving
//! itself is the machine's). docs/chaos.md describes it and its knobs.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, a panic is the failure report"
)]

#[allow(dead_code, reason = "shared with tests/faults, which uses all of it")]
#[path = "../faults/client.rs"]
mod client;
mod fold;
#[allow(dead_code, reason = "shared with tests/faults, which uses all of it")]
#[path = "../faults/harness.rs"]
mod harness;
#[allow(dead_code, reason = "shared with tests/faults, which uses all of it")]
#[path = "../faults/instance.rs"]
mod instance;
mod invariants;
mod nemesis;
mod ops;
mod rng;
#[path = "../common/sse_text.rs"]
mod sse_text;
mod streams;
mod world;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metacast::auth::{JwtKeys, MetacastClaim, TokenRequest};

use crate::client::Api;
use crate::fold::Fold;
use crate::harness::{PostgresServer, RedisServer, free_port};
use crate::instance::{Process, environment, settings};
use crate::rng::Rng;
use crate::world::{Knobs, World};

const INSTANCES: usize = 3;
/// Longer than the reconciler's start grace plus a round, so every repair
/// it owes has been made when the invariants are read.
const SETTLE: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_across_three_instances_keeps_every_invariant() {
    let knobs = Knobs::from_env();
    eprintln!(
        "chaos: METACAST_CHAOS_SEED={} for {:?} with {} clients",
        knobs.seed, knobs.duration, knobs.clients
    );
    let pg = PostgresServer::start().await;
    let redis = RedisServer::start().await;
    let environments: Vec<_> = (0..INSTANCES)
        .map(|_| {
            let mut env = environment(
                &pg.url("metacast"),
                &redis.url(),
                ([127, 0, 0, 1], free_port()).into(),
            );
            env.retain(|(name, _)| name != "METACAST_REDIS_PREFIX");
            env.push(("METACAST_REDIS_PREFIX".to_owned(), "chaos:".to_owned()));
            env
        })
        .collect();
    let mut instances = Vec::new();
    for env in &environments {
        instances.push(Process::start(env.clone()).await);
    }
    let checker_settings = settings(&environments[0]);
    let addresses: Vec<_> = environments
        .iter()
        .map(|env| settings(env).listen)
        .collect();
    let keys = JwtKeys::new(&checker_settings.jwt).expect("keys");
    let state = metacast::app::connect(checker_settings)
        .await
        .expect("the checker's view of the stores");
    let world = Arc::new(World::new(knobs.clone(), addresses.clone()));
    let apis_of = |subject: &str| -> (Vec<Api>, String) {
        let token = keys
            .mint(&TokenRequest {
                subject: subject.to_owned(),
                claim: MetacastClaim {
                    admin: true,
                    ..MetacastClaim::default()
                },
                ttl: Duration::from_secs(3600),
            })
            .expect("token");
        (
            addresses
                .iter()
                .map(|a| Api::new(&format!("http://{a}"), &token))
                .collect(),
            token,
        )
    };
    let (admin, _) = apis_of("checker");

    let stop_observers = Arc::new(AtomicBool::new(false));
    let folds: Vec<_> = world
        .rooms
        .iter()
        .map(|room| Arc::new(Mutex::new(Fold::new(room))))
        .collect();
    let observers: Vec<_> = folds
        .iter()
        .map(|fold| {
            tokio::spawn(streams::observe(
                world.clone(),
                admin.clone(),
                fold.clone(),
                stop_observers.clone(),
            ))
        })
        .collect();
    let clients: Vec<_> = (0..knobs.clients)
        .map(|n| {
            let name = format!("client-{n}");
            let (apis, token) = apis_of(&name);
            let rng = Rng::fork(knobs.seed, n as u64 + 1);
            tokio::spawn(ops::Client::new(name, rng, apis, token, world.clone()).run())
        })
        .collect();
    let nemesis = tokio::spawn(nemesis::run(
        world.clone(),
        instances,
        Rng::fork(knobs.seed, 0),
    ));

    tokio::time::sleep(knobs.duration).await;
    world.stop();
    for client in clients {
        tokio::time::timeout(Duration::from_secs(60), client)
            .await
            .expect("a client hung")
            .unwrap();
    }
    let instances = nemesis.await.unwrap();

    // Quiescence with every connection kept alive: occupancy, sessions and
    // streams must agree.
    let keep = Arc::new(AtomicBool::new(true));
    let keeper = tokio::spawn(keep_alive(admin[0].clone(), state.clone(), keep.clone()));
    tokio::time::sleep(SETTLE).await;
    invariants::connections(&world, &state).await;
    for room in &world.rooms {
        invariants::occupancy(&world, &state, room).await;
    }
    for fold in &folds {
        let fold = fold.lock().unwrap().clone();
        invariants::fold_matches(&world, &admin[0], &fold).await;
    }

    // Every lease runs out: nothing may stay open.
    keep.store(false, Ordering::SeqCst);
    keeper.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !invariants::indexed_connections(&state).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "connections outlived their leases"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(SETTLE).await;
    invariants::all_ended(&world, &state, &world.rooms).await;

    // Every room deleted: nothing left behind.
    for room in &world.rooms {
        admin[0].delete(&format!("/v1/rooms/{room}")).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    invariants::nothing_left(&world, &state).await;
    stop_observers.store(true, Ordering::SeqCst);
    for observer in observers {
        observer.await.unwrap();
    }
    drop(instances);

    report(&world, &knobs);
}

/// Heartbeats every live connection while `keep` holds.
async fn keep_alive(api: Api, state: metacast::state::AppState, keep: Arc<AtomicBool>) {
    while keep.load(Ordering::SeqCst) {
        let mut redis = state.redis.clone();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(state.redis_keys.all_connections())
            .arg(0)
            .arg(-1)
            .query_async(&mut redis)
            .await
            .expect("Redis answers");
        for id in ids {
            api.send(
                axum::http::Method::POST,
                &format!("/v1/connections/{id}/heartbeat"),
                &[],
                None,
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The summary line; on a violation, the seed and the history behind it.
fn report(world: &World, knobs: &Knobs) {
    eprintln!(
        "chaos: seed {} ran {:?}: {}",
        knobs.seed,
        knobs.duration,
        world.summary()
    );
    let violations = world.violations();
    if !violations.is_empty() {
        let path = std::env::temp_dir().join(format!("metacast-chaos-{}.log", knobs.seed));
        world.dump(&path);
        eprintln!(
            "chaos: the run's latest log entries are in {}",
            path.display()
        );
    }
    for violation in &violations {
        eprintln!(
            "chaos violation: {}",
            violation.chars().take(300).collect::<String>()
        );
    }
    for (violation, history) in world.explained() {
        eprintln!("\nchaos VIOLATION: {violation}\nhistory:");
        for entry in history.iter().rev().take(80).rev() {
            eprintln!(
                "  {:>9.3}s {:<14} {} => {}",
                entry.at.as_secs_f64(),
                entry.who,
                entry.what,
                entry.outcome
            );
        }
    }
    assert!(
        violations.is_empty(),
        "chaos: {} violations with METACAST_CHAOS_SEED={}",
        violations.len(),
        knobs.seed
    );
    let minutes = (knobs.duration.as_secs() / 60).max(1);
    for (what, at_least) in [
        ("answered-2xx", 200 * minutes),
        ("stream-opened", 10 * minutes),
    ] {
        assert!(
            world.counted(what) >= at_least,
            "chaos did too little: {what} {} < {at_least}",
            world.counted(what)
        );
    }
    if knobs.kills && knobs.duration >= Duration::from_secs(20) {
        assert!(
            world.counted("nemesis-kill") >= 1,
            "the nemesis never struck"
        );
    }
}
