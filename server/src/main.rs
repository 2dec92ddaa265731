//! The `tessera-server` binary: parses the configuration and runs the server or an operator command.

use anyhow::Context as _;
use clap::Parser as _;
use tessera_server::config::{Cli, Command};
use tessera_server::store::{SqliteStore, Store as _};
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
            println!("Tessera is serving {} (port {})", config.origin, app.port());
            if let Some(link) = app.first_invitation() {
                println!();
                println!(
                    "A new circle was created. Its first admin enrolls a hardware key at this link,"
                );
                println!("valid for 24 hours and usable once (it is shown only now):");
                println!();
                println!("    {link}");
                println!();
            }
            app.run().await.context("the server stopped")?;
        }
        Command::NewCircle => {
            let store = SqliteStore::open(&config.data_dir).await?;
            let created =
                circle::create_circle(&store, &config.origin_base(), Clock::default().now())
                    .await?;
            store.ping().await?;
            println!(
                "A new circle was created. Its first admin enrolls a hardware key at this link,"
            );
            println!("valid for 24 hours and usable once (it is shown only now):");
            println!();
            println!("    {}", created.url);
        }
    }
    Ok(())
}
