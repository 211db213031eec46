//! Throw-away Redis and Postgres servers on spare loopback ports, owned by
//! one test: it may stop, kill and restart them without touching the shared
//! services. Everything they start is killed, and every file removed, when
//! they are dropped, also when the test fails.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped server may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// Waits until something accepts TCP connections on `port`.
async fn wait_until_listening(port: u16, what: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "{what} did not start on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `signal` (a `kill -s` name) to `child` and waits for it to exit,
/// killing it outright after [`STOP_TIMEOUT`].
fn signal_and_reap(child: &mut Child, signal: &str) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A directory of its own under the system's temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "metacast-faults-{what}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).expect("create a temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` that keeps nothing on disk, like the one in production:
/// a restart comes back empty.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server: clients see their connections reset, then refused.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (from the redis-server package) is installed");
        self.child = Some(child);
        wait_until_listening(self.port, "redis-server").await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Postgres cluster of its own (`initdb` into a temp dir), trust auth,
/// listening on loopback only.
pub struct PostgresServer {
    pub port: u16,
    bin: PathBuf,
    /// The user the server runs as: `postgres` when we are root (initdb
    /// refuses to run as root), else ourselves.
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
    // Dropped last: the server is gone by then.
    dir: TempDir,
}

impl PostgresServer {
    pub async fn start() -> Self {
        let dir = TempDir::new("pg");
        let run_as = postgres_user_if_root();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the temp dir");
        }
        let bin = postgres_bin_dir();
        let status = Self::command(&bin, "initdb", run_as)
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed: {status}");
        let mut server = Self {
            port: free_port(),
            bin,
            run_as,
            child: None,
            dir,
        };
        server.restart().await;
        server
    }

    /// The URL of database `name` on this server (metacast creates it).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Fast shutdown: open sessions are terminated, new ones refused.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_and_reap(&mut child, "INT");
        }
    }

    /// Starts the server again on the same port, with the same data.
    pub async fn restart(&mut self) {
        self.stop();
        let child = Self::command(&self.bin, "postgres", self.run_as)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Speed over durability: the cluster dies with the test.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        wait_until_listening(self.port, "postgres").await;
    }

    fn command(bin: &Path, program: &str, run_as: Option<(u32, u32)>) -> Command {
        let mut command = Command::new(bin.join(program));
        if let Some((uid, gid)) = run_as {
            command.uid(uid).gid(gid);
        }
        command
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // Immediate shutdown: nothing of this cluster needs to survive.
        if let Some(mut child) = self.child.take() {
            signal_and_reap(&mut child, "QUIT");
        }
    }
}

/// `PG_BIN_DIR`, else the newest `/usr/lib/postgresql/<version>/bin`
/// (Debian's layout), else whatever `PATH` finds.
fn postgres_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .max_by_key(|(version, _)| *version);
    newest.map(|(_, bin)| bin).unwrap_or_default()
}

/// `(uid, gid)` of the `postgres` user when this process runs as root.
fn postgres_user_if_root() -> Option<(u32, u32)> {
    // /proc/self belongs to the process's effective user.
    let root = std::fs::metadata("/proc/self").ok()?.uid() == 0;
    if !root {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let entry = passwd
        .lines()
        .find(|line| line.starts_with("postgres:"))
        .expect("running as root needs a postgres user to run initdb as");
    let fields: Vec<&str> = entry.split(':').collect();
    Some((
        fields[2].parse().expect("postgres uid"),
        fields[3].parse().expect("postgres gid"),
    ))
}
