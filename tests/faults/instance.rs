//! metacast under test: in-process (started the way `metacast serve` starts
//! it, background work included) or as the real binary, which a test can
//! SIGKILL.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use metacast::auth::{JwtKeys, MetacastClaim, TokenRequest};
use metacast::config::Settings;
use metacast::state::AppState;

use crate::client::{Api, Outcome};

/// The HS256 secret of every instance here.
const SECRET: &str = "faults-secret-faults-secret-faults!";

/// The environment of an instance on the given stores: the test secret, a
/// fast sweeper and reconciler (so repairs are observed within seconds).
pub fn environment(
    database_url: &str,
    redis_url: &str,
    listen: SocketAddr,
) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", database_url.to_owned()),
        ("REDIS_URL", redis_url.to_owned()),
        ("METACAST_LISTEN", listen.to_string()),
        ("METACAST_JWT_SECRET", SECRET.to_owned()),
        ("METACAST_REDIS_PREFIX", "faults:".to_owned()),
        ("METACAST_SHUTDOWN_DRAIN_SECS", "0".to_owned()),
        ("METACAST_SWEEP_INTERVAL_MS", "200".to_owned()),
        ("METACAST_RECONCILE_INTERVAL_SECS", "1".to_owned()),
        ("METACAST_STREAM_GRACE_MS", "500".to_owned()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

/// The settings an instance built from `env` runs with.
pub fn settings(env: &[(String, String)]) -> Settings {
    Settings::from_lookup(|name| {
        env.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    })
    .expect("valid settings")
}

/// An admin token accepted by every instance built from [`environment`].
pub fn admin_token(env: &[(String, String)]) -> String {
    let keys = JwtKeys::new(&settings(env).jwt).expect("valid keys");
    keys.mint(&TokenRequest {
        subject: "admin".into(),
        claim: MetacastClaim {
            admin: true,
            ..MetacastClaim::default()
        },
        ttl: Duration::from_secs(3600),
    })
    .expect("mintable token")
}

/// An instance inside the test process; stops when dropped.
pub struct InProcess {
    pub state: AppState,
    pub api: Api,
}

impl InProcess {
    pub async fn start(database_url: &str, redis_url: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let env = environment(
            database_url,
            redis_url,
            listener.local_addr().expect("address"),
        );
        let state = metacast::app::connect(settings(&env))
            .await
            .expect("connect to the test's stores");
        // What `app::serve` starts, minus its signal handler: the sweeper,
        // the reconciler, the outbox relay and the event subscription.
        metacast::app::spawn_background(&state).expect("background work");
        let router = metacast::api::router(state.clone());
        let lifecycle = state.lifecycle.clone();
        let head_timeout = state.settings.request_timeout;
        tokio::spawn(async move {
            metacast::http::serve(listener, router, head_timeout, async move {
                lifecycle.stopped().await;
            })
            .await;
        });
        let base = format!("http://{}", state.settings.listen);
        let api = Api::new(&base, &admin_token(&env));
        Self { state, api }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.state.lifecycle.stop();
    }
}

/// The `metacast serve` binary as a child process; killed when dropped.
pub struct Process {
    env: Vec<(String, String)>,
    child: tokio::process::Child,
    pub api: Api,
}

impl Process {
    /// Starts `metacast serve` with `env` and waits until it is ready.
    pub async fn start(env: Vec<(String, String)>) -> Self {
        let listen = env
            .iter()
            .find(|(name, _)| name == "METACAST_LISTEN")
            .map(|(_, value)| value.clone())
            .expect("METACAST_LISTEN");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_metacast"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(name, value)| (name, value)))
            // No stray .env from the working directory.
            .current_dir(std::env::temp_dir())
            .stdout(std::process::Stdio::null())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                std::process::Stdio::inherit()
            } else {
                std::process::Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("spawn metacast");
        let api = Api::new(&format!("http://{listen}"), &admin_token(&env));
        let mut process = Self { env, child, api };
        process.wait_ready().await;
        process
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Outcome::Answered(ready) = self
                .api
                .try_send(axum::http::Method::GET, "/readyz", &[], None)
                .await
                && ready.status.is_success()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("metacast exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "metacast not ready in 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no shutdown, no flushing, nothing after this instruction.
    pub async fn sigkill(&mut self) {
        self.child.start_kill().expect("SIGKILL metacast");
        self.child.wait().await.expect("reap metacast");
    }

    /// Starts the binary again with the same environment (and port).
    pub async fn restart(&mut self) {
        *self = Self::start(self.env.clone()).await;
    }
}
