//! The `tessera-server` binary: parses the configuration and runs the server or an operator command.

use anyhow::Context as _;
use clap::Parser as _;
use tessera_server::config::{Cli, Command};
use tessera_server::store::SqliteStore;
use tessera_server::{Application, circle, clock::Clock};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.config;
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&config.log).context("--log is not a valid filter")?)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(config.clone()).await?;
            if let Some(link) = app.first_invitation() {
                print_admin_link(link);
            }
            println!("Tessera is serving {} (port {})", config.origin, app.port());
            app.run().await;
        }
        Command::NewCircle => {
            let store = SqliteStore::open(&config.data_dir).await?;
            let created =
                circle::create_circle(&store, &config.origin_base(), Clock::default().now())
                    .await?;
            print_admin_link(&created.url);
        }
    }
    Ok(())
}

/// Shows the operator a new circle's one-time admin invitation link (on the console, never in the logs).
fn print_admin_link(link: &str) {
    println!("A new circle was created. Its first admin enrolls a hardware key at this link,");
    println!("valid for 24 hours and usable once (it is shown only now):");
    println!();
    println!("    {link}");
    println!();
}
