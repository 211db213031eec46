//! The nemesis: SIGKILLs a random instance now and then and starts it again
//! on the same port, mid-request for whoever was talking to it.

use std::sync::Arc;
use std::time::Duration;

use crate::instance::Process;
use crate::rng::Rng;
use crate::world::World;

/// Kills and restarts instances until the world stops; returns them all
/// running.
pub async fn run(world: Arc<World>, mut instances: Vec<Process>, mut rng: Rng) -> Vec<Process> {
    loop {
        let pause = Duration::from_millis(3000 + rng.below(6000));
        let deadline = tokio::time::Instant::now() + pause;
        while tokio::time::Instant::now() < deadline && !world.stopping() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if world.stopping() || !world.knobs.kills {
            return instances;
        }
        let victim = rng.below(instances.len() as u64) as usize;
        instances[victim].sigkill().await;
        world.record("nemesis", format!("SIGKILL i{victim}"), String::new());
        world.count("nemesis-kill");
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1500))).await;
        instances[victim].restart().await;
        world.record("nemesis", format!("restarted i{victim}"), String::new());
    }
}
