//! The `metacast` binary: parse the command line, then hand over to the library.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use metacast::auth::{JwtKeys, MetacastClaim, TokenRequest};
use metacast::cli::{Cli, Command, ServeArgs};
use metacast::config::Settings;

/// jemalloc keeps idle connections smaller than glibc's malloc: hyper gives
/// each an 8 KiB read and an 8 KiB write buffer of which an idle stream
/// touches a few hundred bytes, and jemalloc puts no headers in the pages
/// after them (measured with `bash bench/sse.sh`: 15.5 → 14.3 KiB per idle
/// stream at 10 000 streams, 19.6 → 17 KiB at 1 000).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const PUBLISHED_SECRET_WARNING: &str = "METACAST_JWT_SECRET is the published docker-compose.yml \
     default: anyone can mint tokens this server accepts. Set a secret of your own \
     (at least 32 random bytes) for anything beyond a local try-out.";

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command.unwrap_or(Command::Serve(ServeArgs::default()))).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("metacast: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Openapi => {
            println!("{}", metacast::api::openapi().to_pretty_json()?);
        }
        Command::Token(args) => {
            let settings = Settings::from_env()?;
            // stderr: stdout is the token alone, for `$(metacast token …)`.
            if settings.uses_published_secret() {
                eprintln!("metacast: warning: {PUBLISHED_SECRET_WARNING}");
            }
            println!("{}", metacast::cli::mint(&settings, &args)?);
        }
        Command::Migrate => {
            let settings = Settings::from_env()?;
            metacast::telemetry::init(settings.log_format);
            metacast::db::connect_and_migrate(&settings).await?;
            tracing::info!("migrations applied");
        }
        Command::Serve(args) => serve(args).await?,
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut settings = Settings::from_env()?;
    args.apply(&mut settings);
    metacast::telemetry::init(settings.log_format);
    if args.dev {
        // Said, because tokens minted with the configured secret stop
        // working here, which is puzzling when it happens silently.
        if settings.jwt.secret.is_some() {
            tracing::warn!(
                "serve --dev: the configured METACAST_JWT_SECRET is replaced by a throw-away secret; \
                 tokens signed with it are refused"
            );
        }
        settings.jwt.secret = Some(metacast::cli::throwaway_secret());
    }
    if settings.uses_published_secret() {
        tracing::warn!("{PUBLISHED_SECRET_WARNING}");
    }
    let state = metacast::app::connect(settings).await?;
    let listener = metacast::app::bind(&state).await?;
    if args.dev {
        print_dev_banner(&state.jwt_keys, listener.local_addr()?)?;
    }
    metacast::app::serve(state, listener).await
}

/// `serve --dev`: an admin token and a curl line to paste.
fn print_dev_banner(keys: &JwtKeys, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let token = keys.mint(&TokenRequest {
        subject: "dev-admin".into(),
        claim: MetacastClaim {
            admin: true,
            ..MetacastClaim::default()
        },
        ttl: Duration::from_secs(24 * 3600),
    })?;
    println!(
        "\nmetacast dev mode: a throw-away JWT secret; tokens die with this process.\n\
         admin token (24 h):\n  {token}\n\n\
         try:\n  export TOKEN={token}\n  \
         curl -i -X PUT http://{addr}/v1/rooms/lobby/metadata -H \"Authorization: Bearer $TOKEN\" \
         -H 'Content-Type: application/json' -d '{{\"topic\":\"hello\"}}'\n"
    );
    Ok(())
}
