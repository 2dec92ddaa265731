//! Server configuration: command-line flags with `TESSERA_…` environment equivalents.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use url::Url;
use uuid::Uuid;

use crate::turn::TurnSecret;

/// Tessera rendezvous server: hardware-key enrollment, login and invitations for invitation-only circles.
#[derive(Debug, Parser)]
#[command(name = "tessera-server", version, about)]
pub struct Cli {
    /// What to do; without a command the server runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The server's settings.
    #[command(flatten)]
    pub config: Config,
}

/// Operator commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Create another circle and print its one-time admin invitation link (safe while the server runs).
    NewCircle,
}

/// How the attestation of a newly enrolled key is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttestationPolicy {
    /// Any authenticator that performs user verification.
    None,
    /// Only authenticators whose reported AAGUID is in the list.
    Aaguids(Vec<Uuid>),
}

impl std::str::FromStr for AttestationPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("none") {
            return Ok(AttestationPolicy::None);
        }
        let list = text
            .split(',')
            .map(|item| {
                Uuid::parse_str(item.trim())
                    .map_err(|_| format!("{item:?} is not an AAGUID (expected a UUID, or `none`)"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if list.is_empty() {
            return Err("empty AAGUID list".into());
        }
        Ok(AttestationPolicy::Aaguids(list))
    }
}

/// Everything the server needs to run.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address and port to listen on.
    #[arg(
        long,
        env = "TESSERA_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,
    /// Directory that holds the SQLite database (created if missing).
    #[arg(
        long,
        env = "TESSERA_DATA_DIR",
        default_value = "./tessera-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// The URL members open; its host is the WebAuthn relying-party id. Use https outside localhost.
    #[arg(
        long,
        env = "TESSERA_ORIGIN",
        default_value = "http://localhost:8080",
        global = true
    )]
    pub origin: Url,
    /// Which keys may enroll: `none` (any key with user verification) or a comma-separated list of
    /// AAGUIDs, the admitted models, each proven by an attestation up to an `--attestation-ca` root.
    #[arg(
        long,
        env = "TESSERA_ATTESTATION",
        default_value = "none",
        global = true
    )]
    pub attestation: AttestationPolicy,
    /// The attestation roots of the admitted models' vendors: PEM files, comma-separated (needed
    /// with an AAGUID list).
    #[arg(
        long = "attestation-ca",
        env = "TESSERA_ATTESTATION_CAS",
        value_delimiter = ',',
        global = true
    )]
    pub attestation_cas: Vec<PathBuf>,
    /// Lifetime of a login session, in seconds (60 to 2592000, 30 days).
    #[arg(
        long,
        env = "TESSERA_SESSION_TTL_SECS",
        default_value_t = 12 * 3600,
        value_parser = clap::value_parser!(i64).range(60..=30 * 86_400),
        global = true
    )]
    pub session_ttl_secs: i64,
    /// Lifetime of a WebAuthn ceremony (the time to touch the key), in seconds (30 to 3600).
    #[arg(
        long,
        env = "TESSERA_CEREMONY_TTL_SECS",
        default_value_t = 300,
        value_parser = clap::value_parser!(i64).range(30..=3_600),
        global = true
    )]
    pub ceremony_ttl_secs: i64,
    /// WebAuthn ceremonies (logins, enrollments) that may wait for a key at once, each a few KiB
    /// of memory; one address range (an IPv4 /24, an IPv6 /64) may hold a hundredth of them.
    #[arg(
        long,
        env = "TESSERA_MAX_PENDING_CEREMONIES",
        default_value_t = 100_000,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(100..=10_000_000),
        global = true
    )]
    pub max_pending_ceremonies: usize,
    /// WebAuthn ceremonies allowed per client (an IPv4 address, an IPv6 /64) per minute (kept in
    /// memory only).
    #[arg(
        long,
        env = "TESSERA_CEREMONY_RATE_PER_MINUTE",
        default_value_t = 60,
        global = true
    )]
    pub ceremony_rate_per_minute: u32,
    /// Reverse proxies whose `X-Forwarded-For` names the client (addresses or CIDR ranges,
    /// comma-separated, e.g. `127.0.0.1,::1` for a proxy on the same machine). Without one, every
    /// client is its connection's peer: behind a proxy, all would share one rate limit.
    #[arg(
        long = "trusted-proxy",
        env = "TESSERA_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_proxy,
        global = true
    )]
    pub trusted_proxies: Vec<IpNet>,
    /// Invitations an admin may issue per minute.
    #[arg(
        long,
        env = "TESSERA_INVITATION_RATE_PER_MINUTE",
        default_value_t = 30,
        global = true
    )]
    pub invitation_rate_per_minute: u32,
    /// Time a client has to send a request's headers (from connecting, or from its previous
    /// response), and then its body, in seconds (1 to 300); a slower or silent connection is closed.
    #[arg(
        long,
        env = "TESSERA_READ_TIMEOUT_SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=300),
        global = true
    )]
    pub read_timeout_secs: u64,
    /// Largest signalling frame accepted, in bytes.
    #[arg(long, env = "TESSERA_WS_MAX_FRAME_BYTES", default_value_t = 64 * 1024, global = true)]
    pub ws_max_frame_bytes: usize,
    /// Signalling frames a connection may send per second (bursts of twice that).
    #[arg(
        long,
        env = "TESSERA_WS_FRAMES_PER_SECOND",
        default_value_t = 50,
        global = true
    )]
    pub ws_frames_per_second: u32,
    /// Refused frames after which a connection is closed for abuse.
    #[arg(
        long,
        env = "TESSERA_WS_MAX_REFUSALS",
        default_value_t = 100,
        global = true
    )]
    pub ws_max_refusals: u32,
    /// Signalling connections one member may hold at once (browser tabs, CLI devices).
    #[arg(
        long,
        env = "TESSERA_WS_CONNECTIONS_PER_MEMBER",
        default_value_t = 8,
        global = true
    )]
    pub ws_connections_per_member: usize,
    /// Presence announcements one device may cause per minute (bursts of four); past it, a
    /// device that keeps reconnecting is announced once more, in its latest state, when the
    /// rate allows.
    #[arg(
        long,
        env = "TESSERA_WS_PRESENCE_PER_MINUTE",
        default_value_t = 240,
        global = true
    )]
    pub ws_presence_per_minute: u32,
    /// Seconds of silence after which a connection is closed (the server pings every third of it).
    #[arg(
        long,
        env = "TESSERA_WS_IDLE_TIMEOUT_SECS",
        default_value_t = 60,
        global = true
    )]
    pub ws_idle_timeout_secs: u64,
    /// Seconds between each connection's checks that its session is still valid (an expired
    /// session's connections are closed within this).
    #[arg(
        long,
        env = "TESSERA_WS_SESSION_RECHECK_SECS",
        default_value_t = 30,
        global = true
    )]
    pub ws_session_recheck_secs: u64,
    /// ICE servers members' devices may use (`stun:`, `turn:`, `turns:` URLs, comma-separated),
    /// handed out by `GET /api/v1/turn`. None by default: peers connect directly.
    #[arg(
        long = "ice-url",
        env = "TESSERA_ICE_URLS",
        value_delimiter = ',',
        global = true
    )]
    pub ice_urls: Vec<String>,
    /// The secret shared with the TURN server (coturn `static-auth-secret`), to sign short-lived
    /// credentials with. Prefer the environment variable to the command line.
    #[arg(
        long,
        env = "TESSERA_TURN_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub turn_secret: Option<TurnSecret>,
    /// How long TURN credentials stay valid, in seconds (1 to 604800, 7 days). Devices fetch new
    /// ones every third of it; nothing can take them back sooner, so a revoked member may relay
    /// through TURN until they expire: keep it short.
    #[arg(
        long,
        env = "TESSERA_TURN_TTL_SECS",
        default_value_t = 3600,
        value_parser = clap::value_parser!(u64).range(1..=7 * 86_400),
        global = true
    )]
    pub turn_ttl_secs: u64,
    /// Log filter (tracing syntax), e.g. `info` or `tessera_server=debug`.
    #[arg(long, env = "TESSERA_LOG", default_value = "info", global = true)]
    pub log: String,
}

/// A trusted proxy: a CIDR range, or one address.
fn parse_proxy(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or a CIDR range"))
}

impl Config {
    /// The WebAuthn relying-party id: the origin's host.
    ///
    /// # Errors
    /// When the origin has no host.
    pub fn rp_id(&self) -> Result<String, String> {
        self.origin
            .host_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("the origin {} has no host", self.origin))
    }

    /// The origin without a trailing slash, for building links.
    #[must_use]
    pub fn origin_base(&self) -> String {
        self.origin.as_str().trim_end_matches('/').to_owned()
    }

    /// Whether cookies must be marked `Secure` (the origin is https).
    #[must_use]
    pub fn secure_cookies(&self) -> bool {
        self.origin.scheme() == "https"
    }

    /// The session cookie's name: `__Host-` prefixed on https, plain on http (the prefix needs
    /// `Secure`, which a plain-http origin cannot set).
    #[must_use]
    pub fn session_cookie(&self) -> &'static str {
        if self.secure_cookies() {
            tessera_wire::SECURE_SESSION_COOKIE
        } else {
            tessera_wire::SESSION_COOKIE
        }
    }

    /// A configuration for tests: listens on 127.0.0.1 port 0, data in `data_dir`.
    #[must_use]
    pub fn for_tests(data_dir: PathBuf, origin: Url) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            origin,
            attestation: AttestationPolicy::None,
            attestation_cas: Vec::new(),
            session_ttl_secs: 12 * 3600,
            ceremony_ttl_secs: 300,
            ceremony_rate_per_minute: 10_000,
            max_pending_ceremonies: 100_000,
            invitation_rate_per_minute: 10_000,
            trusted_proxies: Vec::new(),
            read_timeout_secs: 30,
            ws_max_frame_bytes: 64 * 1024,
            ws_frames_per_second: 50,
            ws_max_refusals: 100,
            ws_connections_per_member: 8,
            ws_idle_timeout_secs: 60,
            ws_session_recheck_secs: 30,
            ws_presence_per_minute: 240,
            ice_urls: Vec::new(),
            turn_secret: None,
            turn_ttl_secs: 12 * 3600,
            log: "warn".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trusted_proxy_is_an_address_or_a_range_and_nothing_else() {
        assert_eq!(
            parse_proxy(" 127.0.0.1 "),
            Ok("127.0.0.1/32".parse().expect("net"))
        );
        assert_eq!(parse_proxy("::1"), Ok("::1/128".parse().expect("net")));
        assert_eq!(
            parse_proxy("10.0.0.0/8"),
            Ok("10.0.0.0/8".parse().expect("net"))
        );
        for wrong in ["", "localhost", "10.0.0.0/33", "1.2.3", "proxy.example.org"] {
            let refused = parse_proxy(wrong).expect_err(wrong);
            assert!(
                refused.contains("not an address or a CIDR range"),
                "{refused}"
            );
        }
    }

    #[test]
    fn attestation_policy_parses() {
        assert_eq!(
            "none".parse::<AttestationPolicy>(),
            Ok(AttestationPolicy::None)
        );
        let id = "cb69481e-8ff7-4039-93ec-0a2729a154a8";
        assert_eq!(
            format!("{id}, {id}").parse::<AttestationPolicy>(),
            Ok(AttestationPolicy::Aaguids(vec![
                Uuid::parse_str(id).expect("uuid"),
                Uuid::parse_str(id).expect("uuid")
            ]))
        );
        assert!("yubikey".parse::<AttestationPolicy>().is_err());
    }

    #[test]
    fn lifetimes_out_of_their_ranges_are_refused_at_start() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(
                ["tessera-server", "--origin", "https://tessera.example"]
                    .iter()
                    .chain(args),
            )
        };
        let defaults = parse(&[]).expect("the defaults parse");
        assert_eq!(defaults.config.session_ttl_secs, 12 * 3600);
        for refused in [
            ["--session-ttl-secs", "0"],
            ["--session-ttl-secs", "59"],
            ["--session-ttl-secs", "31536000"],
            ["--ceremony-ttl-secs", "0"],
            ["--ceremony-ttl-secs", "86400"],
            ["--turn-ttl-secs", "0"],
        ] {
            let error = parse(&refused).expect_err("refused");
            assert!(
                error.to_string().contains(refused[1]) || error.to_string().contains("range"),
                "{refused:?}: {error}"
            );
        }
        let set =
            parse(&["--session-ttl-secs", "3600", "--ceremony-ttl-secs", "60"]).expect("in range");
        assert_eq!(
            (set.config.session_ttl_secs, set.config.ceremony_ttl_secs),
            (3600, 60)
        );
    }

    #[test]
    fn every_option_has_help() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--listen",
            "--data-dir",
            "--origin",
            "--attestation",
            "TESSERA_ORIGIN",
        ] {
            assert!(help.contains(flag), "--help lacks {flag}");
        }
    }
}
