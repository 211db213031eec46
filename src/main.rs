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
            println!("{}", metacast::cli::mint(&Settings::from_env()?, &args)?);
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
    if args.dev {
        settings.jwt.secret = Some(metacast::cli::throwaway_secret());
    }
    metacast::telemetry::init(settings.log_format);
    let state = metacast::app::connect(settings).await?;
    let listener = metacast::app::bind(&state).await?;
    if args.dev {
        print_dev_banner(&state.keys, listener.local_addr()?)?;
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
