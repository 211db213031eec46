//! What every participant of a run shares: the knobs, the instances'
//! addresses, the log of what was done (for the history printed on a
//! failure), the violations found and the counts of what happened.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The run's knobs, from the environment.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// `METACAST_CHAOS_SEED`; a fresh one (printed) when unset.
    pub seed: u64,
    /// `METACAST_CHAOS_SECS` (default 60): how long clients act.
    pub duration: Duration,
    /// `METACAST_CHAOS_CLIENTS` (default 12).
    pub clients: usize,
    /// `METACAST_CHAOS_ROOMS` (default 4): few, so clients collide.
    pub rooms: usize,
    /// `METACAST_CHAOS_KILLS` (default on): the nemesis SIGKILLs instances.
    pub kills: bool,
}

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(raw) => raw
            .parse()
            .unwrap_or_else(|_| panic!("{name}={raw} is not valid")),
        Err(_) => default,
    }
}

impl Knobs {
    pub fn from_env() -> Self {
        let fresh = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |elapsed| elapsed.as_nanos() as u64);
        Self {
            seed: knob("METACAST_CHAOS_SEED", fresh),
            duration: Duration::from_secs(knob("METACAST_CHAOS_SECS", 60)),
            clients: knob("METACAST_CHAOS_CLIENTS", 12),
            rooms: knob("METACAST_CHAOS_ROOMS", 4),
            kills: knob::<u8>("METACAST_CHAOS_KILLS", 1) != 0,
        }
    }
}

/// How much of the log a run keeps: a long run's would not fit in memory.
const LOG_ENTRIES: usize = 200_000;
/// How many violations get their history printed.
const EXPLAINED: usize = 5;

/// One thing a participant did and what came of it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub at: Duration,
    pub who: String,
    pub what: String,
    pub outcome: String,
}

pub struct World {
    pub knobs: Knobs,
    pub rooms: Vec<String>,
    pub addresses: Vec<SocketAddr>,
    started: Instant,
    stopping: AtomicBool,
    /// The latest [`LOG_ENTRIES`] entries.
    log: Mutex<VecDeque<Entry>>,
    /// The first violations, each with its history as it was then.
    explained: Mutex<Vec<(String, Vec<Entry>)>>,
    violations: Mutex<Vec<String>>,
    counts: Mutex<BTreeMap<String, u64>>,
}

impl World {
    pub fn new(knobs: Knobs, addresses: Vec<SocketAddr>) -> Self {
        let rooms = (0..knobs.rooms).map(|n| format!("chaos-{n}")).collect();
        Self {
            knobs,
            rooms,
            addresses,
            started: Instant::now(),
            stopping: AtomicBool::new(false),
            log: Mutex::default(),
            explained: Mutex::default(),
            violations: Mutex::default(),
            counts: Mutex::default(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Clients and the nemesis stop acting.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn record(&self, who: &str, what: String, outcome: String) {
        let entry = Entry {
            at: self.elapsed(),
            who: who.to_owned(),
            what,
            outcome,
        };
        let mut log = self.log.lock().expect("log");
        if log.len() == LOG_ENTRIES {
            log.pop_front();
        }
        log.push_back(entry);
    }

    pub fn count(&self, what: &str) {
        *self
            .counts
            .lock()
            .expect("counts")
            .entry(what.to_owned())
            .or_default() += 1;
    }

    pub fn counted(&self, what: &str) -> u64 {
        self.counts
            .lock()
            .expect("counts")
            .get(what)
            .copied()
            .unwrap_or_default()
    }

    pub fn violation(&self, what: String) {
        self.record("checker", "VIOLATION".to_owned(), what.clone());
        let mut explained = self.explained.lock().expect("explained");
        if explained.len() < EXPLAINED {
            explained.push((what.clone(), self.history_of(&ids_in(&what))));
        }
        drop(explained);
        self.violations.lock().expect("violations").push(what);
    }

    /// Writes the whole log to `path`.
    pub fn dump(&self, path: &std::path::Path) {
        let text: String = self
            .log
            .lock()
            .expect("log")
            .iter()
            .map(|e| {
                format!(
                    "{:>9.3}s {:<14} {} => {}\n",
                    e.at.as_secs_f64(),
                    e.who,
                    e.what,
                    e.outcome
                )
            })
            .collect();
        std::fs::write(path, text).expect("write the chaos log");
    }

    /// The first violations with the history behind each.
    pub fn explained(&self) -> Vec<(String, Vec<Entry>)> {
        self.explained.lock().expect("explained").clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().expect("violations").clone()
    }

    pub fn summary(&self) -> String {
        let counts = self.counts.lock().expect("counts");
        let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.join(" ")
    }

    /// The log entries that mention any of `ids` (rooms, connections,
    /// sessions) or were made by one of them (a subscriber), plus every
    /// nemesis action: the least history that explains
    /// a violation about them.
    pub fn history_of(&self, ids: &[String]) -> Vec<Entry> {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|entry| {
                entry.who == "nemesis"
                    || ids.contains(&entry.who)
                    || ids.iter().any(|id| {
                        entry.what.contains(id.as_str()) || entry.outcome.contains(id.as_str())
                    })
            })
            .cloned()
            .collect()
    }
}

/// The ids a violation's text names: connection and session ids (UUIDs),
/// else the room.
pub fn ids_in(text: &str) -> Vec<String> {
    let words: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .collect();
    let uuids: Vec<String> = words
        .iter()
        .filter(|word| uuid::Uuid::try_parse(word).is_ok())
        .map(|word| (*word).to_owned())
        .collect();
    let who = words.first().map(|w| (*w).to_owned()).into_iter();
    if !uuids.is_empty() {
        return uuids.into_iter().chain(who).collect();
    }
    words
        .iter()
        .filter(|word| word.starts_with("chaos-"))
        .map(|word| (*word).to_owned())
        .collect()
}
